"""STBP baseline on Fashion-MNIST: the same network with IF/LIF neurons trained through time.

    python -m ge2ms_jax.main --config experiments/stbp_fashion_mnist.py:neuron=lif,T=4 --workdir /tmp/stbp

Identical to `fashion_mnist.py` except for the neurons: `config.model.neuron_kind` is "if" or "lif"
and the network runs `T` time steps with surrogate gradients, so its training memory and time grow
with T (the quantized ANN's do not). LIF neurons charge in STBP's own form, `v <- v (1 - 1/tau) + x`
(`config.model.decay_input`; docs/training.md says why). Config string: `neuron=if|lif`, `T=4`,
`variant`, `data`, `runlocal`, `epochs` (a shorter or longer schedule than `fashion_mnist.py`'s; 0
keeps it).
"""

from ge2ms_jax.configs import fashion_mnist


def get_config(arg=None):
  """The experiment config (`ge2ms_jax.configs.fashion_mnist.stbp_config`); see the docstring."""
  return fashion_mnist.stbp_config(arg)
