"""STBP baseline on CIFAR-10: the same network with IF/LIF neurons trained through time.

    python -m ge2ms_jax.main --config experiments/stbp_cifar10.py:neuron=lif,T=4 --workdir /tmp/stbp \
        --config.data.source=/path/to/cifar10-train-jpeg.tar.gz

Identical to `cifar10.py` except for the neurons (`config.model.neuron_kind`, `time_steps` = T).
Config string: `neuron=if|lif`, `T=4`, `variant`, `runlocal`.
"""

import pathlib

from ge2ms_jax import config_utils


def get_config(arg=None):
  """The experiment config; see the module docstring for the config string."""
  arg = config_utils.parse_arg(arg, neuron="lif", T=4, variant="s", runlocal=False)
  base = config_utils.load_module(str(pathlib.Path(__file__).with_name("cifar10.py")))
  config = base.get_config(f"variant={arg.variant}" + (",runlocal" if arg.runlocal else ""))
  if arg.neuron not in ("if", "lif"):
    raise config_utils.ConfigError(f"neuron={arg.neuron!r}: the STBP baseline uses 'if' or 'lif'.")
  config.model.neuron_kind = arg.neuron
  config.model.time_steps = arg.T
  return config
