"""STBP baseline on Fashion-MNIST: the same network with IF/LIF neurons trained through time.

    python -m ge2ms_jax.main --config experiments/stbp_fashion_mnist.py:neuron=lif,T=4 --workdir /tmp/stbp

Identical to `fashion_mnist.py` except for the neurons: `config.model.neuron_kind` is "if" or "lif"
and the network runs `T` time steps with surrogate gradients, so its training memory and time grow
with T (the quantized ANN's do not). LIF neurons charge in STBP's own form, `v <- v (1 - 1/tau) + x`
(`config.model.decay_input`; docs/training.md says why). Config string: `neuron=if|lif`, `T=4`,
`variant`, `data`, `runlocal`, `epochs` (a shorter or longer schedule than `fashion_mnist.py`'s; 0
keeps it).
"""

import pathlib

from ge2ms_jax import config_utils


def get_config(arg=None):
  """The experiment config; see the module docstring for the config string."""
  arg = config_utils.parse_arg(arg, neuron="lif", T=4, variant="tiny", data="fashion_mnist",
                               runlocal=False, epochs=0.0)
  base = config_utils.load_module(str(pathlib.Path(__file__).with_name("fashion_mnist.py")))
  config = base.get_config(f"variant={arg.variant},data={arg.data}" +
                           (",runlocal" if arg.runlocal else ""))
  if arg.neuron not in ("if", "lif"):
    raise config_utils.ConfigError(f"neuron={arg.neuron!r}: the STBP baseline uses 'if' or 'lif'.")
  config.model.neuron_kind = arg.neuron
  config.model.time_steps = arg.T
  if arg.epochs < 0:
    raise config_utils.ConfigError(f"epochs={arg.epochs}: a number of epochs > 0, or 0 for the default.")
  if arg.epochs:
    config.total_epochs = float(arg.epochs)
  return config
