"""Experiment configs without the training stack.

Everything here imports only the standard library, ml_collections and `ge2ms_jax.config_utils`, so
building any experiment's config (`experiments/*.py`, `--config`) loads none of jax's training
libraries (flax, optax, orbax, grain, tensorflow_datasets):

  common         the defaults of every config section (trainer, model variants, data, sparsity,
                 distillation, workdir lock) and the helpers experiments share (config strings,
                 `runlocal` shrinking, the sparse fine-tuning recipe).
  fashion_mnist  the Fashion-MNIST recipes (experiments/fashion_mnist.py, stbp_fashion_mnist.py).
  cifar          the CIFAR recipes (experiments/cifar10.py, cifar100.py, stbp_cifar10.py).

The modules that use a section (`train`, `model`, `data`, `sparsity`, ...) read its defaults from
here, so each default has one home.
"""
