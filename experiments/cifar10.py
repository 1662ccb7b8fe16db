"""CIFAR-10: the `s` Ge2mS-T quantized ANN on 32x32 RGB images.

    python -m ge2ms_jax.main --config experiments/cifar10.py --workdir /tmp/c10 \
        --config.data.source=/path/to/cifar10-train-jpeg.tar.gz

`config.data.source` is an ImageFolder directory or `.tar.gz` of one; 10% of each class of "train" is
held out as "validation" (the eval split) unless the source has a validation folder.
Config string: `variant=s` (or `tiny`), `runlocal`.
"""

import pathlib

from ge2ms_jax import config_utils
from ge2ms_jax import data
from ge2ms_jax import model as models
from ge2ms_jax import train


def cifar_config(arg, dataset):
  """The CIFAR config for `dataset` ("cifar10" or "cifar100")."""
  arg = config_utils.parse_arg(arg, variant="s", runlocal=False)
  config = train.base_config()
  config.update(data.default_config(dataset))

  config.model = models.default_config(arg.variant)
  config.model.num_classes = {"cifar10": 10, "cifar100": 100}[dataset]
  config.model.image_size = 32
  config.model.in_channels = 3

  config.batch_size = 256
  config.total_epochs = 300.0
  config.optax.name = "adamw"
  config.optax.lr = 1e-3
  config.optax.wd = 0.05
  config.optax.clip_norm = 1.0
  config.schedule.decay_type = "cosine"
  config.schedule.warmup_epochs = 10.0

  config.log_every_steps = 100
  config.ckpt.every_steps = 2000
  config.evals.every_steps = 2000
  config.evals.batch_size = 512

  if arg.runlocal:
    local = config_utils.load_module(str(pathlib.Path(__file__).with_name("fashion_mnist.py")))
    local.shrink_for_local(config)
  return config


def get_config(arg=None):
  """The experiment config; see the module docstring for the config string."""
  return cifar_config(arg, "cifar10")
