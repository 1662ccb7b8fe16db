#!/usr/bin/env bash
# The main job in the project's own environment: train the tiny Ge2mS-T QANN on the embedded
# Fashion-MNIST subset with the spike-aware loss, convert it to a spiking network, simulate it, and
# write the report.
#   scripts/main.sh                                    workdir: workdirs/fashion_mnist
#   WORKDIR=/tmp/fm scripts/main.sh --config.total_epochs=1
# Running it again on the same workdir resumes (or, when training is done, only re-reports).
source "$(dirname "$0")/env.sh"
exec python -m ge2ms_jax.main --config experiments/fashion_mnist.py:spike_aware \
  --workdir "${WORKDIR:-workdirs/fashion_mnist}" --mode all "$@"
