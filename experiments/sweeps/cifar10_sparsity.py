"""Spike-aware fine-tuning of the shipped CIFAR-10 model: accuracy against synaptic operations.

    python -m ge2ms_jax.sweep --sweep experiments/sweeps/cifar10_sparsity.py --workdir runs/sparsity_c10 \
        --config.data.source=cifar10-train-jpeg.tar.gz
    python benchmarks/sparsity.py --dataset cifar10 --sweep_workdir runs/sparsity_c10 \
        --config.data.source=cifar10-train-jpeg.tar.gz

Each run fine-tunes `checkpoints/cifar10_tiny` (the `cpu` budget's recipe) for one epoch of its
45,000 training images less a 10% "tune" split, with the loss `cross-entropy + weight * SOPs/MAC`,
over weights starting at 0, and one run with a target ratio and two epochs (run second). The 5,000 "validation" images the shipped model is reported on stay out
of training and of the choice; `benchmarks/sparsity.py` reports every run on them once.
"""

from ge2ms_jax import config_utils
from ge2ms_jax import sparsity

CONFIG = "experiments/cifar10.py:variant=tiny,cpu"
# The last run pulls hard until SOPs/MAC reaches TARGET, then only accuracy: the sparse reference model's
# recipe, given 2 epochs to recover its accuracy at that sparsity.
TARGET = dict(weight=15.0, target=0.25, epochs=2.0)
WEIGHTS = (0.0, 2.0, 5.0)


def get_sweep(arg=None):
  """One run per loss weight, then the target run."""
  config_utils.parse_arg(arg)
  common = sparsity.finetune_overrides("checkpoints/cifar10_tiny", epochs=1.0, lr=2e-3)
  # The control and the target run first: the ones the choice and the sparse reference model need.
  runs = [dict(common, **{"sparsity.weight": w}) for w in WEIGHTS]
  return runs[:1] + [sparsity.target_run(common, **TARGET)] + runs[1:]
