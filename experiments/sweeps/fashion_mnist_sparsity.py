"""Spike-aware fine-tuning of the shipped Fashion-MNIST model: accuracy against synaptic operations.

    python -m ge2ms_jax.sweep --sweep experiments/sweeps/fashion_mnist_sparsity.py --workdir runs/sparsity_fm
    python benchmarks/sparsity.py --dataset fashion_mnist --sweep_workdir runs/sparsity_fm

Each run fine-tunes `checkpoints/fashion_mnist_tiny` for one epoch of the full training set less a
10% "tune" split, with the loss `cross-entropy + weight * SOPs/MAC` (`ge2ms_jax/sparsity.py`), over
weights starting at 0 (the same fine-tuning without the term), and one run with a target ratio and
three epochs. `benchmarks/sparsity.py` then picks on the tune split and reports every run on the
10,000 test images once.

Config string: `quick` (3 steps per run on the embedded subset, with
`--config experiments/fashion_mnist.py`: a check that the sweep runs, not a result).
"""

from ge2ms_jax import config_utils
from ge2ms_jax import sparsity

CONFIG = "experiments/fashion_mnist.py:data=fashion_mnist_full"
# The last run pulls hard until SOPs/MAC reaches TARGET, then only accuracy: the sparse reference model's
# recipe, given 3 epochs to recover its accuracy at that sparsity.
TARGET = dict(weight=15.0, target=0.25, epochs=3.0)
WEIGHTS = (0.0, 2.0, 5.0, 15.0)


def get_sweep(arg=None):
  """One run per loss weight, then the target run."""
  arg = config_utils.parse_arg(arg, quick=False)
  common = sparsity.finetune_overrides("checkpoints/fashion_mnist_tiny", epochs=1.0, lr=2e-3)
  if arg.quick:
    common.update({"total_steps": 3, "schedule.warmup_steps": 1, "evals.batch_size": 512})
  if arg.quick:
    return [dict(common, **{"sparsity.weight": w}) for w in WEIGHTS[:2]]
  return [dict(common, **{"sparsity.weight": w}) for w in WEIGHTS] + [sparsity.target_run(common, **TARGET)]
