"""CIFAR-10: the `s` Ge2mS-T quantized ANN on 32x32 RGB images.

    python -m ge2ms_jax.main --config experiments/cifar10.py --workdir /tmp/c10 \
        --config.data.source=/path/to/cifar10-train-jpeg.tar.gz

`config.data.source` is an ImageFolder directory or `.tar.gz` of one; 10% of each class of "train" is
held out as "validation" (the eval split) unless the source has a validation folder.
Config string: `variant=s` (or `tiny`), `cpu`, `runlocal`, `sparse` (with `variant=tiny,cpu`: the
recipe of `checkpoints/cifar10_tiny_sparse`, 7 epochs of spike-aware fine-tuning of
`checkpoints/cifar10_tiny`, `sparsity.reference_overrides`), `fast` (the fast CIFAR-10 recipe on two
CPU cores, below), `epochs=N` (with `fast`: its schedule ended after N epochs instead of 24).

The defaults are the GPU recipe (300 epochs, RandAugment, batch 256). `cpu` is the budget of the
CIFAR-10 reference model, about 80 minutes of two CPU cores for `tiny`: 10 epochs at batch 64 with
Fashion-MNIST's learning rate and crop-and-flip augmentation only, since a model that sees each image
ten times underfits rather than overfits and RandAugment then costs accuracy:

    python -m ge2ms_jax.main --config experiments/cifar10.py:variant=tiny,cpu --workdir runs/c10_tiny \
        --config.data.source=cifar10-train-jpeg.tar.gz --mode all
    python -m ge2ms_jax.main --config experiments/cifar10.py:variant=tiny,cpu,sparse --workdir runs/c10_sparse \
        --config.data.source=cifar10-train-jpeg.tar.gz --mode all

`fast` (issue 26) learns from the fast-training ANN recipes (airbench) what carries over to quantized
activations: the `fast` model variant (full 3x3 convolutions in wide stages, strided-conv downsampling,
a GW-SSA stage on the 4x4 grid, residual branches that start at zero), a stem initialised from
patch-whitening statistics, Nesterov SGD at batch 128, a short warm-up and a linear decay
to zero, label smoothing 0.2, flip-and-translate augmentation. A prototype, not yet at its goal
(3 epochs reached 61% on the held-out images; docs/training.md, section 9b, has what limits it):

    python -m ge2ms_jax.main --config experiments/cifar10.py:fast --workdir runs/c10_fast \
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
  arg = config_utils.parse_arg(arg, variant="s", cpu=False, runlocal=False, sparse=False, fast=False,
                               epochs=0.0)
  config = train.base_config()
  config.update(data.default_config(dataset))

  if arg.fast:
    if arg.variant not in ("s", "fast") or arg.cpu or arg.sparse:
      raise config_utils.ConfigError(
          f"config string item `fast` sets its own model and budget; it does not combine with "
          f"variant={arg.variant}, cpu={arg.cpu} or sparse={arg.sparse}.")
    arg.variant = "fast"
  elif arg.epochs:
    raise config_utils.ConfigError(
        "config string item `epochs` goes with `fast` (experiments/cifar10.py:fast,epochs=4).")
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
  if arg.fast:
    fast_recipe(config, dataset, arg.epochs or 24.0)
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


def fast_recipe(config, dataset, epochs):
  """The optimizer, schedule and augmentation of config string item `fast` (in place)."""
  k = config.model.num_classes
  config.batch_size = 128
  config.total_epochs = float(epochs)
  config.optax.name = "sgd"
  config.optax.nesterov = True
  config.optax.momentum = 0.9
  config.optax.lr = 0.1
  config.optax.wd = 5e-4           # L2 on the kernels (biases, thresholds excluded)
  config.optax.clip_norm = 0.0
  config.schedule.decay_type = "linear"
  config.schedule.warmup_epochs = min(1.0, 0.1 * epochs)
  config.init_whiten = 5000        # stem kernel from patch-whitening statistics (train.whiten_kernel)
  config.pp_train = f"random_crop(32, pad=2)|flip_lr|normalize('{dataset}')|onehot({k}, smoothing=0.2)"
  config.log_every_steps = 20
  config.ckpt.every_steps = 200
  config.evals.every_steps = 0     # the held-out images are evaluated at the end (and by --mode all)
  config.evals.batch_size = 500


def get_config(arg=None):
  """The experiment config; see the module docstring for the config string."""
  return cifar_config(arg, "cifar10")
