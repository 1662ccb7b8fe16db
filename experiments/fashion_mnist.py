"""Fashion-MNIST, the default experiment: the `tiny` Ge2mS-T quantized ANN on 28x28 grey images.

    python -m ge2ms_jax.main --config experiments/fashion_mnist.py --workdir /tmp/fm
    python -m ge2ms_jax.main --config experiments/fashion_mnist.py:runlocal --workdir /tmp/fm_local

Config string: `variant=tiny` (model variant), `data=fashion_mnist` (the subset shipped with the
package; `fashion_mnist_full` reads the full IDX files from `config.data.source`), `runlocal` (a
minute-long run on a laptop CPU: a narrower model, 20 steps), `sparse` (the recipe of
`checkpoints/fashion_mnist_tiny_sparse`: 7 epochs of spike-aware fine-tuning of
`checkpoints/fashion_mnist_tiny`, `configs.common.reference_overrides`), `spike_aware` (the main job's
recipe: trained from scratch with `5 * max(0, SOPs/MAC - 0.40)` in the loss, the setting
experiments/sweeps/fashion_mnist_main_sparsity.py chose on a tune split; the main job runs it):

    python -m ge2ms_jax.main --config experiments/fashion_mnist.py:data=fashion_mnist_full,sparse \
        --workdir runs/fm_sparse --mode all
"""

from ge2ms_jax.configs import fashion_mnist


def get_config(arg=None):
  """The experiment config (the recipe is `ge2ms_jax.configs.fashion_mnist`); see the docstring."""
  return fashion_mnist.get_config(arg)
