"""Spike-aware fine-tuning of checkpoints/cifar10_fast: which target and learning rate, chosen on the
held-out images.

    python -m ge2ms_jax.sweep --sweep experiments/sweeps/cifar10_fast_sparsity.py --workdir runs/c10_fast_sparsity \
        --config.data.source=cifar10-train-jpeg.tar.gz

Every run is `experiments/cifar10.py:fast,sparse` (the fast recipe's optimizer and augmentation from
the dense model's weights, `10 * max(0, SOPs/MAC - target)` in the loss) for two epochs of the 45,000
training images, scored on the 5,000 held-out images, the fast recipes' validation split; the last
run also distils from the dense model (`ge2ms_jax/distill.py`, weight 0.5, temperature 2). The
shipped sparse model's setting is the run with the best held-out top-1 among those whose converted
network performs at most 0.30 operations per ANN MAC on those images, measured by

    python -m ge2ms_jax.main --config experiments/cifar10.py:fast --mode evaluate --workdir DIR \
        --config.data.source=cifar10-train-jpeg.tar.gz

Config string: `quick` (3 steps per run: a check that the sweep runs, not a result).
"""

from ge2ms_jax.configs import cifar
from ge2ms_jax.configs import common

CONFIG = "experiments/cifar10.py:fast,sparse"
# (target SOPs/MAC on training batches, peak learning rate, distillation weight).
SETTINGS = ((0.27, 0.01, 0.0), (0.30, 0.01, 0.0), (0.30, 0.005, 0.0), (0.30, 0.01, 0.5), (0.30, 0.02, 0.0))


def get_sweep(arg=None):
  """One run per (target, learning rate, distillation weight)."""
  arg = common.parse_arg(arg, quick=False)
  base = {"total_steps": 3, "schedule.warmup_steps": 1} if arg.quick else {}
  runs = []
  for target, lr, distill in SETTINGS:
    run = dict(base, **{"sparsity.target": target, "optax.lr": lr})
    if distill:
      run.update(cifar.fast_distill_overrides(distill))
    runs.append(run)
  return runs
