"""The fast CIFAR-10 recipe with each ingredient removed in turn, at a reduced budget.

    python -m ge2ms_jax.sweep --sweep experiments/sweeps/cifar10_fast_ablation.py:epochs=2 \
        --workdir runs/c10_fast_ablation --config.data.source=cifar10-train-jpeg.tar.gz

Every run is `experiments/cifar10.py:fast` with the schedule ended after `epochs` (passed on to the
experiment; without it, the recipe's full 24), on the 45,000 training images, scored on the 5,000 held-out images (the
recipe's validation split: QANN top-1 in `results.md`; the converted SNN equals it up to float32
rounding). The first run is the whole recipe; each other run removes one ingredient and keeps the
rest, so the table shows what each one buys at equal budget (wall time and steps are in the table):

* `no_whitening`: the stem starts from random weights, not from patch-whitening statistics;
* `no_label_smoothing`: one-hot targets instead of smoothing 0.2;
* `no_nesterov`: heavy-ball momentum instead of Nesterov's;
* `no_zero_init`: BatchNorm without a learned scale, so that no residual branch starts at zero;
* `no_flip_translate`: no random crop (translation) or mirror augmentation.

One more run is not an ingredient but the part the recipe must keep: `dense_not_gwssa` replaces the
GW-SSA stage by a third convolutional stage, to show what the attention stage costs in accuracy at
this budget (the shipped recipe keeps it: it is what makes the network Ge²mS-T).

`benchmarks/cifar10_ablation.py` turns the finished runs into `benchmarks/results/cifar10_ablation.json`,
whose table is in docs/training.md (section 9b).

Flip test-time augmentation (`config.evals.tta = "flip"`, counted in the SNN's operations) is
measured by evaluating the shipped model both ways, not by a run of its own (docs/training.md, 9b).
"""

from ge2ms_jax.configs import common

CONFIG = "experiments/cifar10.py:fast"
EXPERIMENT_ARGS = ("epochs",)
_TARGETS = "normalize('cifar10')|onehot(10, smoothing=0.2)"
ABLATIONS = {
    "full_recipe": {},
    "no_whitening": {"init_whiten": 0},
    "no_label_smoothing": {"pp_train": "random_crop(32, pad=2)|flip_lr|normalize('cifar10')|onehot(10)"},
    "no_nesterov": {"optax.nesterov": False},
    "no_zero_init": {"model.bn_scale": False},
    "no_flip_translate": {"pp_train": _TARGETS},
    "dense_not_gwssa": {"model.kinds": ("dense", "dense", "dense")},
}


def get_sweep(arg=None):
  """One run per entry of `ABLATIONS`, the whole recipe first."""
  common.parse_arg(arg)  # No keys of its own (`epochs` goes to the experiment).
  return [dict(overrides) for overrides in ABLATIONS.values()]
