"""Spike-aware fine-tuning of the shipped CIFAR-10 model: accuracy against synaptic operations.

    python -m ge2ms_jax.sweep --sweep experiments/sweeps/cifar10_sparsity.py --workdir runs/sparsity_c10 \
        --config.data.source=cifar10-train-jpeg.tar.gz
    python benchmarks/sparsity.py --dataset cifar10 --sweep_workdir runs/sparsity_c10 \
        --config.data.source=cifar10-train-jpeg.tar.gz

Each run fine-tunes `checkpoints/cifar10_tiny` (the `cpu` budget's recipe) for one epoch of its
45,000 training images less a 10% "tune" split, with the loss `cross-entropy + weight * SOPs/MAC`,
over weights starting at 0, and two runs with a target ratio, run first: three epochs at weight 5,
and two at weight 15 with distillation from the shipped model. These are the candidates the shipped
sparse model's recipe was chosen from; that recipe (`configs.common.reference_overrides`: weight 10,
lr 2e-3, target 0.28, 7 epochs, no distillation) is not one of these runs. The 5,000 "validation"
images the shipped model is reported on stay out of training and of the choice;
`benchmarks/sparsity.py` reports every run on them once.
"""

from ge2ms_jax.configs import common

CONFIG = "experiments/cifar10.py:variant=tiny,cpu"
# The target run pulls until SOPs/MAC reaches TARGET, then only accuracy, given 3 epochs to recover
# its accuracy at that sparsity. The target sits below the 0.30 goal
# because the hinge is met on augmented training batches, not on the images the model is reported on.
TARGET = dict(weight=5.0, target=0.28, epochs=3.0)
WEIGHTS = (0.0, 2.0, 5.0)
# At weight 5 the cross-entropy holds SOPs/MAC near 0.32, above the target. This run pulls three
# times harder, to a lower target, for two epochs, with the shipped model as teacher
# (ge2ms_jax/distill.py) so the sparse student keeps the dense model's soft labels.
DISTILLED = dict(weight=15.0, target=0.27, epochs=2.0, distill_weight=0.7)


def get_sweep(arg=None):
  """The two target runs, then one run per loss weight."""
  common.parse_arg(arg)
  base = common.finetune_overrides("checkpoints/cifar10_tiny", epochs=1.0, lr=2e-3)
  # The target runs and the control first: the ones the choice of the shipped recipe needed.
  runs = [dict(base, **{"sparsity.weight": w}) for w in WEIGHTS]
  d = dict(DISTILLED)
  distilled = common.target_run(
      common.finetune_overrides("checkpoints/cifar10_tiny", epochs=1.0, lr=2e-3,
                                  distill_weight=d.pop("distill_weight")), **d)
  return [common.target_run(base, **TARGET), distilled] + runs
