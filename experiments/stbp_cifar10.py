"""STBP baseline on CIFAR-10: the same network with IF/LIF neurons trained through time.

    python -m ge2ms_jax.main --config experiments/stbp_cifar10.py:neuron=lif,T=4 --workdir /tmp/stbp \
        --config.data.source=/path/to/cifar10-train-jpeg.tar.gz

Identical to `cifar10.py` except for the neurons (`config.model.neuron_kind`, `time_steps` = T).
Config string: `neuron=if|lif`, `T=4`, `variant`, `runlocal`.
"""

from ge2ms_jax.configs import cifar


def get_config(arg=None):
  """The experiment config (`ge2ms_jax.configs.cifar.stbp_config`); see the docstring."""
  return cifar.stbp_config(arg)
