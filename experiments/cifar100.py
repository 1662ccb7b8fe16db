"""CIFAR-100: the `s` Ge2mS-T quantized ANN on 32x32 RGB images, 100 classes.

    python -m ge2ms_jax.main --config experiments/cifar100.py --workdir /tmp/c100 \
        --config.data.source=/path/to/cifar100-imagefolder

The settings are those of `cifar10.py` with 100 classes. Config string: `variant=s`, `cpu`, `runlocal` (as in `cifar10.py`).
"""

import pathlib

from ge2ms_jax import config_utils


def get_config(arg=None):
  """The experiment config; see the module docstring for the config string."""
  cifar = config_utils.load_module(str(pathlib.Path(__file__).with_name("cifar10.py")))
  return cifar.cifar_config(arg, "cifar100")
