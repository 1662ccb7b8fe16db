"""CIFAR-10: the `s` Ge2mS-T quantized ANN on 32x32 RGB images.

    python -m ge2ms_jax.main --config experiments/cifar10.py --workdir /tmp/c10 \
        --config.data.source=/path/to/cifar10-train-jpeg.tar.gz

`config.data.source` is an ImageFolder directory or `.tar.gz` of one; 10% of each class of "train" is
held out as "validation" (the eval split) unless the source has a validation folder.
Config string: `variant=s` (or `tiny`), `cpu`, `runlocal`, `sparse` (with `variant=tiny,cpu`: the
recipe of `checkpoints/cifar10_tiny_sparse`, 7 epochs of spike-aware fine-tuning of
`checkpoints/cifar10_tiny`, `sparsity.reference_overrides`).

The defaults are the GPU recipe (300 epochs, RandAugment, batch 256). `cpu` is the budget of the
CIFAR-10 reference model, about 80 minutes of two CPU cores for `tiny`: 10 epochs at batch 64 with
Fashion-MNIST's learning rate and crop-and-flip augmentation only, since a model that sees each image
ten times underfits rather than overfits and RandAugment then costs accuracy:

    python -m ge2ms_jax.main --config experiments/cifar10.py:variant=tiny,cpu --workdir runs/c10_tiny \
        --config.data.source=cifar10-train-jpeg.tar.gz --mode all
    python -m ge2ms_jax.main --config experiments/cifar10.py:variant=tiny,cpu,sparse --workdir runs/c10_sparse \
        --config.data.source=cifar10-train-jpeg.tar.gz --mode all
"""

import pathlib

from ge2ms_jax import config_utils
from ge2ms_jax import data
from ge2ms_jax import model as models
from ge2ms_jax import sparsity
from ge2ms_jax import train


def cifar_config(arg, dataset):
  """The CIFAR config for `dataset` ("cifar10" or "cifar100")."""
  arg = config_utils.parse_arg(arg, variant="s", cpu=False, runlocal=False, sparse=False)
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

  if arg.cpu:
    k = config.model.num_classes
    config.batch_size = 64
    config.total_epochs = 10.0
    config.optax.lr = 4e-3
    config.schedule.warmup_epochs = 0.5
    config.pp_train = f"random_crop(32, pad=4)|flip_lr|normalize('{dataset}')|onehot({k})"
    config.ckpt.every_steps = 500
    config.evals.every_steps = 1000
  if arg.sparse:
    if not (arg.cpu and arg.variant == "tiny" and dataset == "cifar10"):
      raise config_utils.ConfigError(
          f"config string item `sparse` with variant={arg.variant}, cpu={arg.cpu} on {dataset}: it fine-tunes "
          "the shipped checkpoints/cifar10_tiny, so it needs CIFAR-10 and `variant=tiny,cpu` "
          "(experiments/cifar10.py:variant=tiny,cpu,sparse).")
    config_utils.apply_overrides(config, sparsity.reference_overrides("checkpoints/cifar10_tiny", 7.0, 0.28))
  if arg.runlocal:
    local = config_utils.load_module(str(pathlib.Path(__file__).with_name("fashion_mnist.py")))
    local.shrink_for_local(config)
  return config


def get_config(arg=None):
  """The experiment config; see the module docstring for the config string."""
  return cifar_config(arg, "cifar10")
