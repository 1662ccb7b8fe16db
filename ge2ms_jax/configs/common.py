"""The defaults of every config section, and the helpers experiments share.

    from ge2ms_jax.configs import common
    config = common.base_config()                 # trainer: optimizer, schedule, mesh, ckpt, evals
    config.update(common.data_config("cifar10"))   # data, pp_train, pp_eval, input
    config.model = common.model_config("tiny")     # the network

Imports only ml_collections and `config_utils`: a config is built without jax's training stack.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from ge2ms_jax import config_utils

# The config-string and override helpers every experiment uses, importable from here.
ConfigError = config_utils.ConfigError
parse_arg = config_utils.parse_arg
apply_overrides = config_utils.apply_overrides


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
# Each variant: stem channels, per-stage (kind, dim, depth, stride), attention layout, resolutions.
MODEL_VARIANTS: dict[str, dict[str, Any]] = {
    "tiny": dict(stem_channels=32, kinds=("conv", "attn"), dims=(64, 192), depths=(1, 2),
                 head_dim=32, window_sizes=(2, 4, 0), heads_per_window=(2, 2, 2), mlp_ratio=4,
                 image_sizes=(28, 32)),
    "s": dict(stem_channels=48, kinds=("conv", "conv", "attn"), dims=(96, 192, 384), depths=(1, 2, 6),
              head_dim=32, window_sizes=(2, 4, 0), heads_per_window=(4, 4, 4), mlp_ratio=4,
              image_sizes=(32, 64, 224)),
    "b": dict(stem_channels=96, kinds=("conv", "conv", "attn"), dims=(192, 384, 768), depths=(1, 2, 8),
              head_dim=64, window_sizes=(2, 7, 0), heads_per_window=(4, 4, 4), mlp_ratio=4,
              image_sizes=(224, 256, 288, 384)),
    # Airbench-like: full 3x3 convolutions in wide early stages (downsampling by strided convs, not
    # max-pooling), GW-SSA on the last 4x4 grid. BatchNorm keeps its scale, so that every residual
    # branch starts at zero (without it the untrained attention block costs 6.5 points in an epoch).
    "fast": dict(stem_channels=32, kinds=("dense", "dense", "attn"), dims=(64, 256, 256), depths=(1, 1, 1),
                 head_dim=32, window_sizes=(2, 0), heads_per_window=(4, 4), mlp_ratio=2,
                 image_sizes=(32,)),
}

def model_config(variant: str = "tiny") -> ml_collections.ConfigDict:
  """The model config of a variant (the `config.model` of an experiment).

  Fields: `variant`, `num_classes`, `image_size`, `in_channels`, `dtype` ("float32" | "bfloat16"),
  the architecture (`stem_channels`, `kinds`, `dims`, `depths`, `head_dim`, `window_sizes` with 0 =
  global, `heads_per_window`, `mlp_ratio`, `attn_shift` = -1 for automatic), and the neurons:
  `neuron` (default `base`, `groups`, `theta_init`, `per_channel`, `method`), `neuron_overrides`
  ("REGEX=BASE,GROUPS;..." on site names such as "stage1/block0/attn_q"), and for the STBP baseline
  `neuron_kind` ("expg" | "if" | "lif"), `time_steps`, `tau`, `decay_input`, `surrogate`, `alpha`, `reset`;
  and `conv_impl` ("auto" | "xla" | "cpu", `layers.resolve_conv_impl`: how convolutions and BatchNorm
  are computed, not what; a checkpoint loads under any of them).
  """
  if variant not in MODEL_VARIANTS:
    raise ValueError(f"unknown model variant {variant!r}; choose one of {sorted(MODEL_VARIANTS)}.")
  v = MODEL_VARIANTS[variant]
  c = ml_collections.ConfigDict()
  c.variant = variant
  c.num_classes = 10 if variant == "tiny" else 1000
  c.image_size = v["image_sizes"][0]
  c.in_channels = 1 if variant == "tiny" else 3
  c.dtype = "float32"
  c.stem_channels = v["stem_channels"]
  c.kinds = v["kinds"]
  c.dims = v["dims"]
  c.depths = v["depths"]
  c.head_dim = v["head_dim"]
  c.window_sizes = v["window_sizes"]
  c.heads_per_window = v["heads_per_window"]
  c.mlp_ratio = v["mlp_ratio"]
  c.attn_shift = -1
  # Downsampling stride of each stage's first conv (1 or 2); () = 2 for every stage.
  c.strides = tuple(v.get("strides", ()))
  # False: BatchNorm without a learned scale (gamma fixed at 1; the neuron threshold scales instead).
  c.bn_scale = bool(v.get("bn_scale", True))
  # `method`: how spike mode computes ExpG-IF spikes (neurons.expg_if; all give the same spikes):
  # "closed" computes the digits in one elementwise pass, about 25% faster end to end than "scan".
  c.neuron = ml_collections.ConfigDict(dict(base=2, groups=4, theta_init=1.0, per_channel=False,
                                            method="closed"))
  c.neuron_overrides = ""
  c.neuron_kind = "expg"
  c.time_steps = 4
  c.tau = 2.0
  # LIF charge: False is STBP's own form (Wu et al., 2018), v <- v (1 - 1/tau) + x, in which one spike
  # through an identity shortcut (weight 1) reaches threshold 1 and passes on; True (SpikingJelly's
  # default) charges v += (x - v) / tau, which never lets it fire in T steps, so with the residual
  # shortcuts of this network no spike reaches the head and the baseline cannot learn.
  c.decay_input = False
  c.surrogate = "atan"
  c.alpha = 2.0
  c.reset = "soft"
  c.conv_impl = "auto"
  return c


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
DATASETS = ("fashion_mnist", "fashion_mnist_full", "cifar10", "cifar100", "imagenet2012",
            "synthetic")
COMMON_DATA = dict(data_dir=None, source=None, train_split="train", eval_split="test",
                    validation_fraction=0.0, tune_fraction=0.0, split_seed=0, skip_corrupt=False)
SYNTHETIC_DATA = dict(image_shape=(32, 32, 3), num_classes=10, num_train_examples=1024,
                       num_eval_examples=256)
DATA_FIELDS = ("name",) + tuple(COMMON_DATA) + tuple(SYNTHETIC_DATA)
INPUT_DEFAULTS = dict(shuffle=True, num_workers=0, num_threads=2, prefetch=4, seed=None,
                      return_index=False)


def data_config(name: str) -> ml_collections.ConfigDict:
  """The default data, preprocessing and input config of a dataset.

  Returns:
    A ConfigDict with `data`, `pp_train`, `pp_eval` and `input` (see `ge2ms_jax.data`'s module
    docstring for the fields), ready for `config.update(data_config(name))`.
  """
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}.")
  data = dict(name=name, **COMMON_DATA)
  if name in ("fashion_mnist", "fashion_mnist_full"):
    pp_train = "random_crop(28, pad=2)|flip_lr|normalize('fashion_mnist')|onehot(10)"
    pp_eval = "normalize('fashion_mnist')|onehot(10)"
  elif name in ("cifar10", "cifar100"):
    k = 10 if name == "cifar10" else 100
    data.update(eval_split="validation", validation_fraction=0.1)
    pp_train = (f"random_crop(32, pad=4)|flip_lr|randaugment(2, 9)|normalize('{name}')"
                f"|onehot({k}, smoothing=0.1)")
    pp_eval = f"normalize('{name}')|onehot({k})"
  elif name == "imagenet2012":
    data.update(eval_split="validation")
    pp_train = ("decode_jpeg_and_inception_crop(224)|flip_lr|randaugment(2, 9)"
                "|normalize('imagenet')|onehot(1000, smoothing=0.1)|mixup(0.8, cutmix_alpha=1.0)")
    pp_eval = "decode|resize_small(256)|central_crop(224)|normalize('imagenet')|onehot(1000)"
  else:  # synthetic
    data.update(SYNTHETIC_DATA)
    pp_train = "flip_lr|value_range(-1, 1)|onehot(10)"
    pp_eval = "value_range(-1, 1)|onehot(10)"
  return ml_collections.ConfigDict(dict(
      data=data, pp_train=pp_train, pp_eval=pp_eval, input=dict(INPUT_DEFAULTS)))


# ---------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------
# Parameters whose path matches one of these regexes get no weight decay (optim.weight_decay_mask).
WD_EXCLUDE = (r"(^|/)bias$", r"(^|/)scale$", r"theta", r"threshold")


def sparsity_config() -> ml_collections.ConfigDict:
  """`config.sparsity` (ge2ms_jax/sparsity.py): off by default."""
  return ml_collections.ConfigDict(dict(weight=0.0, target=0.0, track=False))


def distill_config() -> ml_collections.ConfigDict:
  """`config.distill` (ge2ms_jax/distill.py): off by default."""
  return ml_collections.ConfigDict(dict(teacher="", weight=0.5, temperature=2.0))


def workdir_lock_config() -> ml_collections.ConfigDict:
  """`config.workdir_lock` (ge2ms_jax/workdir_lock.py): heartbeat interval and stale timeout, s."""
  return ml_collections.ConfigDict(dict(heartbeat_s=30.0, stale_after_s=300.0))


def base_config() -> ml_collections.ConfigDict:
  """The trainer's part of an experiment config, with defaults; experiments add model and data.

  Fields are described where they are read: `ge2ms_jax.train` (trainer), `optim` (optax, schedule),
  `sharding` (mesh, rules), `checkpoint` (ckpt), `sparsity`, `distill`, `workdir_lock`.
  """
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 0            # > 0 wins over total_epochs.
  c.total_epochs = 1.0
  c.batch_size = 128           # Global, over all processes and devices.

  c.optax = ml_collections.ConfigDict()
  c.optax.name = "adamw"       # "adamw" | "sgd"
  c.optax.lr = 1e-3            # Peak learning rate.
  c.optax.b1 = 0.9
  c.optax.b2 = 0.999
  c.optax.eps = 1e-8
  c.optax.momentum = 0.9       # sgd only.
  c.optax.nesterov = False     # sgd only.
  c.optax.wd = 0.05            # Decoupled for adamw, L2 added to the gradient for sgd.
  c.optax.wd_exclude = list(WD_EXCLUDE)
  c.optax.clip_norm = 1.0      # Global-norm clipping; 0 disables.
  c.optax.grad_accum_steps = 1
  c.optax.ema_decay = 0.0      # 0 disables the EMA of the parameters.

  c.schedule = ml_collections.ConfigDict()
  c.schedule.decay_type = "cosine"  # "cosine" | "linear" | "constant"
  c.schedule.warmup_steps = 0
  c.schedule.warmup_epochs = 0.0    # Used when warmup_steps is 0.
  c.schedule.min_lr_ratio = 0.0     # Final lr = lr * min_lr_ratio.

  c.mesh = [("data", -1), ("fsdp", 1)]
  c.sharding_rules = [(".*", "fsdp")]

  c.log_every_steps = 50
  c.ckpt = ml_collections.ConfigDict()
  c.ckpt.every_steps = 1000    # 0: only at the end (and on preemption).
  c.ckpt.keep = 3
  c.ckpt.keep_period = 0       # Also keep every checkpoint at a multiple of this step (0: off).
  c.ckpt.async_save = True
  c.ckpt.min_free_mb = 256     # Start-up fails unless the workdir has this much free (and twice
                               # the train state's size); 0 disables the space check.

  # A non-finite loss or gradient norm: "stop" raises FloatingPointError naming the step, the
  # metric and the last good checkpoint; "skip" leaves the state unchanged for that step (the batch
  # is consumed) and stops only after `nan_max_skips` consecutive skipped steps.
  c.nan_policy = "stop"        # "stop" | "skip"
  c.nan_max_skips = 10

  c.evals = ml_collections.ConfigDict()
  c.evals.every_steps = 1000   # 0: only at the end.
  c.evals.split = ""           # "": config.data.eval_split.
  c.evals.batch_size = 256
  c.evals.tta = ""             # "flip": logits averaged with the left-right mirrored image's.

  # Spike-aware training (ge2ms_jax/sparsity.py): weight * SOPs/MAC of the converted network.
  c.sparsity = sparsity_config()
  # Fine-tuning: start from these QANN variables (an export, an Orbax checkpoint step folder, or a
  # workdir) with a fresh optimizer; a checkpoint in this run's own workdir still wins (resume).
  c.init_from = ""
  # Knowledge distillation (ge2ms_jax/distill.py): also match a trained teacher's soft labels.
  c.distill = distill_config()
  # One run per workdir (ge2ms_jax/workdir_lock.py): the holder's heartbeat interval, and the
  # heartbeat age after which a lock counts as left behind by a dead run and is taken over.
  c.workdir_lock = workdir_lock_config()
  return c


# ---------------------------------------------------------------------------------------------
# Shared recipe pieces
# ---------------------------------------------------------------------------------------------
def shrink_model_for_local(m: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks a model config in place to the laptop-sized network of `runlocal`; returns it."""
  m.stem_channels = 8
  m.dims = tuple(8 * sum(m.heads_per_window) if kind == "attn" else 16 for kind in m.kinds)
  m.depths = tuple(1 for _ in m.kinds)
  m.head_dim = 8
  return m


def shrink_for_local(config: ml_collections.ConfigDict) -> None:
  """Shrinks a config in place for a quick CPU run (every experiment's `runlocal`): 20 steps."""
  shrink_model_for_local(config.model)
  config.batch_size = 32
  config.total_steps = 20
  config.schedule.warmup_steps = 2
  config.log_every_steps = 5
  config.ckpt.every_steps = 10
  config.evals.every_steps = 10
  config.evals.batch_size = 64
  config.input.num_threads = 1


def finetune_overrides(init_from: str, epochs: float, lr: float, warmup_steps: int = 50,
                       distill_weight: float = 0.0) -> dict[str, Any]:
  """Config overrides of a spike-aware fine-tuning run from a trained model.

  The run starts from `init_from` with a fresh optimizer, trains `epochs` on "train" less a
  class-stratified 10% "tune" split, and evaluates on "tune", so that a sweep picks its setting on
  images that are neither trained on nor the test images. With `distill_weight` > 0 the model it
  starts from is also its teacher (`ge2ms_jax/distill.py`, temperature 2).
  """
  overrides = {"init_from": init_from, "total_epochs": float(epochs), "optax.lr": float(lr),
               "schedule.warmup_steps": int(warmup_steps), "data.tune_fraction": 0.1,
               "data.eval_split": "tune", "sparsity.track": True}
  if distill_weight:
    overrides.update({"distill.teacher": init_from, "distill.weight": float(distill_weight)})
  return overrides


def target_run(common: dict[str, Any], weight: float, target: float, epochs: float) -> dict[str, Any]:
  """A sweep run that pulls with `weight` until SOPs/MAC reaches `target` and then trains for
  accuracy alone, for `epochs` (the rest of `common`, from `finetune_overrides`, unchanged)."""
  return dict(common, **{"sparsity.weight": float(weight), "sparsity.target": float(target),
                         "total_epochs": float(epochs)})


def reference_overrides(init_from: str, epochs: float, target: float) -> dict[str, Any]:
  """The recipe of the shipped sparse models (`checkpoints/*_tiny_sparse`), as config overrides.

  Starting from the dense model `init_from` with a fresh optimizer, it trains `epochs` on the whole
  training split (the test images stay unseen) with `10 * max(0, SOPs/MAC - target)` added to the loss,
  at half the dense run's peak learning rate, so that the accuracy recovers while the pull holds the
  network at the target. The target sits under the 0.30 goal by a 0.01 margin plus how far the
  evaluated ratio landed from the target on the sweeps' tune split (CIFAR-10: 0.279 at target 0.27,
  so 0.28; Fashion-MNIST: 0.275 at 0.28, so 0.295). The weight and learning rate are the sweeps'
  (experiments/sweeps/*_sparsity.py); the model is evaluated once, at the end.

  Args:
    init_from: the dense export or workdir to fine-tune.
    epochs: training epochs of the fine-tune.
    target: the SOPs/MAC below which the loss term is zero.
  """
  return {"init_from": init_from, "total_epochs": float(epochs), "optax.lr": 2e-3,
          "schedule.warmup_steps": 50, "sparsity.weight": 10.0, "sparsity.target": float(target),
          "sparsity.track": True, "evals.every_steps": 0}


def set_stbp_neurons(config: ml_collections.ConfigDict, neuron: str, time_steps: int) -> None:
  """Turns a config's network into the STBP baseline (in place): IF/LIF neurons over `time_steps`."""
  if neuron not in ("if", "lif"):
    raise ConfigError(f"neuron={neuron!r}: the STBP baseline uses 'if' or 'lif'.")
  config.model.neuron_kind = neuron
  config.model.time_steps = time_steps
