"""CIFAR-100: the `s` Ge2mS-T quantized ANN on 32x32 RGB images, 100 classes.

    python -m ge2ms_jax.main --config experiments/cifar100.py --workdir /tmp/c100 \
        --config.data.source=/path/to/cifar100-imagefolder

The settings are those of `cifar10.py` with 100 classes. Config string: `variant=s`, `cpu`, `runlocal` (as in `cifar10.py`).
"""

from ge2ms_jax.configs import cifar


def get_config(arg=None):
  """The experiment config (the recipe is `ge2ms_jax.configs.cifar`); see the docstring."""
  return cifar.cifar_config(arg, "cifar100")
