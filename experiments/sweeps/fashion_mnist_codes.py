"""Spike codes × attention windows on Fashion-MNIST: which (base, groups) and window scales pay off.

    python -m ge2ms_jax.sweep --sweep experiments/sweeps/fashion_mnist_codes.py --workdir /tmp/sw
    python -m ge2ms_jax.sweep --sweep experiments/sweeps/fashion_mnist_codes.py:runlocal --workdir /tmp/sw

All codes have L = 16 levels: (b, G) = (2, 4) → T = 4, (4, 2) → T = 6, (16, 1) → T = 15 (rate
coding). Each is crossed with two multi-scale window layouts of the attention stage (the 7x7 grid of
the tiny model at 28 px). `runlocal` is passed on to the experiment (`fashion_mnist.py:runlocal`): its
laptop settings apply to every run.
"""

from ge2ms_jax.configs import common
from ge2ms_jax import sweep

CONFIG = "experiments/fashion_mnist.py"
EXPERIMENT_ARGS = ("runlocal",)


def get_sweep(arg=None):
  """The runs of this sweep: 3 codes × 2 window layouts."""
  common.parse_arg(arg)  # No keys of its own: anything else is an error.
  return sweep.product(
      {"model.neuron.base": [2, 4, 16], "model.neuron.groups": [4, 2, 1]},
      {"model.window_sizes": [(2, 4, 0), (2, 2, 4)]})
