"""CIFAR-10: the `s` Ge2mS-T quantized ANN on 32x32 RGB images.

    python -m ge2ms_jax.main --config experiments/cifar10.py --workdir /tmp/c10 \
        --config.data.source=/path/to/cifar10-train-jpeg.tar.gz

`config.data.source` is an ImageFolder directory or `.tar.gz` of one; 10% of each class of "train" is
held out as "validation" (the eval split) unless the source has a validation folder.
Config string: `variant=s` (or `tiny`), `cpu`, `runlocal`, `sparse` (with `variant=tiny,cpu`: the
recipe of `checkpoints/cifar10_tiny_sparse`, 7 epochs of spike-aware fine-tuning of
`checkpoints/cifar10_tiny`, `configs.common.reference_overrides`), `fast` (the fast CIFAR-10 recipe on two
CPU cores, below), `epochs=N` (with `fast`: its schedule ended after N epochs instead of 24).

The defaults are the GPU recipe (300 epochs, RandAugment, batch 256). `cpu` is the budget of the
CIFAR-10 reference model, about 80 minutes of two CPU cores for `tiny`: 10 epochs at batch 64 with
Fashion-MNIST's learning rate and crop-and-flip augmentation only, since a model that sees each image
ten times underfits rather than overfits and RandAugment then costs accuracy:

    python -m ge2ms_jax.main --config experiments/cifar10.py:variant=tiny,cpu --workdir runs/c10_tiny \
        --config.data.source=cifar10-train-jpeg.tar.gz --mode all
    python -m ge2ms_jax.main --config experiments/cifar10.py:variant=tiny,cpu,sparse --workdir runs/c10_sparse \
        --config.data.source=cifar10-train-jpeg.tar.gz --mode all

`fast` learns from the fast-training ANN recipes (airbench) what carries over to quantized
activations: the `fast` model variant (full 3x3 convolutions in wide stages, strided-conv downsampling,
a GW-SSA stage on the 4x4 grid, residual branches that start at zero), a stem initialised from
patch-whitening statistics, Nesterov SGD at batch 128, a short warm-up and a linear decay
to zero, label smoothing 0.2, flip-and-translate augmentation. Its 24 epochs reached 87.38% on the
held-out images as the converted SNN (checkpoints/cifar10_fast; its goal is 92%, docs/training.md
section 9b). `fast,sparse` fine-tunes that model with the spike-aware loss (`target`, default 0.29;
`lr`, default 0.02; `epochs`, default 4; `distill`, the weight of distillation from the dense model,
default none: the setting experiments/sweeps/cifar10_fast_sparsity.py chose), the recipe of
checkpoints/cifar10_fast_sparse (87.48% at 0.289 operations per ANN MAC, docs/sparsity.md):

    python -m ge2ms_jax.main --config experiments/cifar10.py:fast --workdir runs/c10_fast \
        --config.data.source=cifar10-train-jpeg.tar.gz --mode all
    python -m ge2ms_jax.main --config experiments/cifar10.py:fast,sparse --workdir runs/c10_fast_sparse \
        --config.data.source=cifar10-train-jpeg.tar.gz --mode all
"""

from ge2ms_jax.configs import cifar


def get_config(arg=None):
  """The experiment config (the recipe is `ge2ms_jax.configs.cifar`); see the docstring."""
  return cifar.cifar_config(arg, "cifar10")
