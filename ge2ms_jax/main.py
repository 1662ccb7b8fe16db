"""Command line: train, evaluate (and later convert / energy / verify) an experiment.

    python -m ge2ms_jax.main --config experiments/fashion_mnist.py:runlocal --workdir /tmp/fm
    python -m ge2ms_jax.main --config experiments/cifar10.py:variant=s --workdir gs://.../c10 \\
        --config.optax.lr=2e-3 --config.model.neuron.groups=2
    python -m ge2ms_jax.main --config ... --workdir DIR --mode evaluate [--checkpoint DIR/checkpoints/1200]

`--config` names a Python file with `get_config(arg)` and, after a colon, its config string.
`--config.key=value` flags override fields; an unknown key or a value of the wrong type is an error
naming the key (and the closest existing keys). Running `train` again on the same `--workdir`
resumes from its newest checkpoint. For several processes (one per host), pass
`--coordinator_address HOST:PORT --num_processes N --process_id I`, or set `GE2MS_COORDINATOR`,
`GE2MS_NUM_PROCESSES`, `GE2MS_PROCESS_ID` (or `GE2MS_DISTRIBUTED=auto` on Cloud TPU / SLURM).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Callable, Sequence

import ml_collections

from ge2ms_jax import config_utils

ModeFn = Callable[[ml_collections.ConfigDict, str, argparse.Namespace], int]
MODES: dict[str, ModeFn] = {}


def register_mode(name: str) -> Callable[[ModeFn], ModeFn]:
  """Registers `fn(config, workdir, args) -> exit code` as `--mode name`."""
  def wrap(fn: ModeFn) -> ModeFn:
    MODES[name] = fn
    return fn
  return wrap


@register_mode("train")
def _train(config, workdir, args) -> int:
  from ge2ms_jax import train  # pylint: disable=g-import-not-at-top
  result = train.train_and_evaluate(config, workdir)
  return 0 if result.status in ("done", "preempted") else 1


@register_mode("evaluate")
def _evaluate(config, workdir, args) -> int:
  from ge2ms_jax import train  # pylint: disable=g-import-not-at-top
  result = train.evaluate_checkpoint(config, workdir, args.checkpoint)
  print(json.dumps(result, indent=2))
  return 0


# Modes that come with later modules; they register themselves under these names when present.
_PENDING = {"convert": "conversion", "energy": "energy", "verify": "conversion"}


def _pending(mode: str, module: str) -> ModeFn:
  def fn(config, workdir, args) -> int:
    ready = sorted(m for m, f in MODES.items() if not getattr(f, "pending", False))
    raise NotImplementedError(f"--mode {mode} is not available yet: it comes with "
                              f"ge2ms_jax.{module}. Available modes: {', '.join(ready)}.")
  fn.pending = True
  return fn


for _mode, _module in _PENDING.items():
  MODES.setdefault(_mode, _pending(_mode, _module))


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, dict]:
  """Splits argv into the known flags and the `--config.key=value` overrides."""
  parser = argparse.ArgumentParser(
      prog="python -m ge2ms_jax.main", description=__doc__.split("\n\n")[0],
      epilog="Override config fields with --config.KEY=VALUE (e.g. --config.optax.lr=1e-3).")
  parser.add_argument("--config", required=True, help="experiments/NAME.py[:ARG]")
  parser.add_argument("--workdir", required=True, help="checkpoints, metrics and logs go here")
  parser.add_argument("--mode", default="train", choices=sorted(MODES))
  parser.add_argument("--checkpoint", default=None,
                      help="evaluate/convert: a checkpoint dir or step folder (default: the "
                           "workdir's newest)")
  parser.add_argument("--coordinator_address", default=None)
  parser.add_argument("--num_processes", type=int, default=None)
  parser.add_argument("--process_id", type=int, default=None)
  parser.add_argument("--log_level", default="INFO")
  args, rest = parser.parse_known_args(argv)
  try:
    overrides = config_utils.parse_override_flags(rest)
  except config_utils.ConfigError as e:
    parser.error(str(e))
  return args, overrides


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command line; returns the exit code."""
  args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
  from ge2ms_jax import sharding  # pylint: disable=g-import-not-at-top
  sharding.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
  import jax  # pylint: disable=g-import-not-at-top
  level = args.log_level.upper() if jax.process_index() == 0 else "WARNING"
  logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  for noisy in ("absl", "orbax", "jax._src"):
    logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
  try:
    config = config_utils.load_config(args.config, overrides)
  except config_utils.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return MODES[args.mode](config, args.workdir, args)


if __name__ == "__main__":
  sys.exit(main())
