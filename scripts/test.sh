#!/usr/bin/env bash
# Runs the test suite (slow tests excluded) in the project's own environment.
#   scripts/test.sh               default run
#   scripts/test.sh -m slow       the slow tests only
#   scripts/test.sh tests/test_neurons.py -k lossless
source "$(dirname "$0")/env.sh"
exec python -m pytest -n "${PYTEST_WORKERS:-2}" -q "$@"
