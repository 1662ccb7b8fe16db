"""STBP baseline against the quantized ANN over the number of time steps T on Fashion-MNIST.

    python -m ge2ms_jax.sweep --sweep experiments/sweeps/stbp_time_steps.py --workdir /tmp/stbp_T
    python -m ge2ms_jax.sweep --sweep experiments/sweeps/stbp_time_steps.py:runlocal --workdir /tmp/stbp_T_local
    python -m ge2ms_jax.sweep --sweep experiments/sweeps/stbp_time_steps.py:epochs=1 --workdir runs/stbp_T

The STBP runs (LIF neurons, trained through T steps) use the same network and schedule as the QANN
runs; the QANN's code (b = 2, G = T) has the same T. Compare accuracy and the `steps_per_sec` in
each run's metrics: the QANN's cost stays flat in T, STBP's grows. `runlocal` is passed on to the
experiment (`stbp_fashion_mnist.py:runlocal`, 20 steps of a narrow network per run), and so is
`epochs=N` (every run N epochs instead of the experiment's 5; the README's table is `epochs=1`).
"""

from ge2ms_jax.configs import common
from ge2ms_jax import sweep

CONFIG = "experiments/stbp_fashion_mnist.py"
EXPERIMENT_ARGS = ("runlocal", "epochs")


def get_sweep(arg=None):
  """The runs: neuron kind ∈ {lif, expg} × T ∈ {1, 2, 4, 8}."""
  common.parse_arg(arg)  # No keys of its own: anything else is an error.
  runs = []
  for t in (1, 2, 4, 8):
    runs += sweep.product({"model.neuron_kind": ["lif", "expg"], "model.time_steps": [t, t],
                           "model.neuron.base": [2, 2], "model.neuron.groups": [4, t]})
  return runs
