"""Spike-aware fine-tuning of checkpoints/cifar10_fast: which target, learning rate and length,
chosen on the held-out images.

    python -m ge2ms_jax.sweep --sweep experiments/sweeps/cifar10_fast_sparsity.py --workdir runs/c10_fast_sparsity \
        --config.data.source=cifar10-train-jpeg.tar.gz

Every run is `experiments/cifar10.py:fast,sparse` (the fast recipe's optimizer and augmentation
from the dense model's weights, `10 * max(0, SOPs/MAC - target)` in the loss) for two epochs of the
45,000 training images (the last two runs four), scored on the 5,000 held-out images, the fast
recipes' validation split; one run also distils from the dense model (`ge2ms_jax/distill.py`, weight
0.5, temperature 2). The shipped sparse model's setting is the run with the best held-out top-1
among those whose converted network performs at most 0.30 operations per ANN MAC on those images,
measured by

    python -m ge2ms_jax.main --config experiments/cifar10.py:fast --mode evaluate --workdir DIR \
        --config.data.source=cifar10-train-jpeg.tar.gz

Config string: `quick` (3 steps per run: a check that the sweep runs, not a result).
"""

from ge2ms_jax.configs import cifar
from ge2ms_jax.configs import common

# The first runs had `fast,sparse`'s earlier default of 2 epochs; the base keeps it so their names
# and configs stay what they were, and the longer runs override it.
BASE_EPOCHS = 2.0
CONFIG = f"experiments/cifar10.py:fast,sparse,epochs={BASE_EPOCHS:g}"
# (target SOPs/MAC on training batches, peak learning rate, distillation weight, epochs).
SETTINGS = ((0.27, 0.01, 0.0, 2.0), (0.30, 0.01, 0.0, 2.0), (0.30, 0.005, 0.0, 2.0), (0.30, 0.01, 0.5, 2.0),
            (0.30, 0.02, 0.0, 2.0), (0.30, 0.02, 0.0, 4.0), (0.29, 0.02, 0.0, 4.0))


def get_sweep(arg=None):
  """One run per (target, learning rate, distillation weight, epochs)."""
  arg = common.parse_arg(arg, quick=False)
  base = {"total_steps": 3, "schedule.warmup_steps": 1} if arg.quick else {}
  runs = []
  for target, lr, distill, epochs in SETTINGS:
    run = dict(base, **{"sparsity.target": target, "optax.lr": lr})
    if epochs != BASE_EPOCHS:
      run["total_epochs"] = epochs
    if distill:
      run.update(cifar.fast_distill_overrides(distill))
    runs.append(run)
  return runs
