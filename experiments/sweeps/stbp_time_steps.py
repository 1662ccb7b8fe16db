"""STBP baseline against the quantized ANN over the number of time steps T on Fashion-MNIST.

    python -m ge2ms_jax.sweep --sweep experiments/sweeps/stbp_time_steps.py --workdir /tmp/stbp_T

The STBP runs (LIF neurons, trained through T steps) use the same network and schedule as the QANN
runs; the QANN's code (b = 2, G = T) has the same T. Compare accuracy and the `steps_per_sec` in
each run's metrics: the QANN's cost stays flat in T, STBP's grows.
"""

from ge2ms_jax import sweep

CONFIG = "experiments/stbp_fashion_mnist.py"


def get_sweep(arg=None):
  """The runs: neuron kind ∈ {lif, expg} × T ∈ {1, 2, 4, 8}."""
  del arg
  runs = []
  for t in (1, 2, 4, 8):
    runs += sweep.product({"model.neuron_kind": ["lif", "expg"], "model.time_steps": [t, t],
                           "model.neuron.base": [2, 2], "model.neuron.groups": [4, t]})
  return runs
