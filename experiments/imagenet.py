"""ImageNet-1k: the `b` Ge2mS-T quantized ANN at 224x224, for TPU/GPU pods.

    python -m ge2ms_jax.main --config experiments/imagenet.py --workdir gs://bucket/ge2ms_b \
        --config.data.data_dir=gs://bucket/tensorflow_datasets

Reads TFDS's `imagenet2012` prepared as ArrayRecord in `config.data.data_dir` (see
docs/training.md). bfloat16 compute, float32 parameters, EMA of the weights, AdamW with cosine decay
and a 20-epoch warm-up at a global batch of 1024. Config string: `variant=b` (or `s`), `fsdp=1`
(size of the parameter-sharding axis; the rest of the devices are `data`), `runlocal` (the `s`
model on small synthetic images, for a CPU check of the whole set-up).
"""

from ge2ms_jax.configs import common


def get_config(arg=None):
  """The experiment config; see the module docstring for the config string."""
  arg = common.parse_arg(arg, variant="b", fsdp=1, runlocal=False)
  config = common.base_config()
  config.update(common.data_config("imagenet2012"))
  config.input.num_workers = 16

  config.model = common.model_config(arg.variant)
  config.model.num_classes = 1000
  config.model.image_size = 224
  config.model.in_channels = 3
  config.model.dtype = "bfloat16"

  config.batch_size = 1024
  config.total_epochs = 300.0
  config.optax.name = "adamw"
  config.optax.lr = 1e-3
  config.optax.b2 = 0.99
  config.optax.wd = 0.05
  config.optax.clip_norm = 1.0
  config.optax.ema_decay = 0.9998
  config.schedule.decay_type = "cosine"
  config.schedule.warmup_epochs = 20.0
  config.schedule.min_lr_ratio = 0.01

  config.mesh = [("data", -1), ("fsdp", arg.fsdp)]
  # Shard every large matrix over fsdp; keep small vectors (BN, thresholds, biases) replicated, and
  # the depthwise kernels ([3, 3, 1, C], 9 C values): with C split over fsdp, XLA computes a grouped
  # convolution by gathering the whole batch's activations onto every device (benchmarks/scale.py
  # measured 117 GB gathered per step and device for `b` on a data 8 x fsdp 8 mesh).
  config.sharding_rules = [(r"(bias|scale|mean|var|theta)$", "replicate"),
                           (r"_dw(_v)?/syn/kernel$", "replicate"), (r".*", "fsdp")]

  config.log_every_steps = 100
  config.ckpt.every_steps = 2500
  config.ckpt.keep = 3
  config.ckpt.keep_period = 25000
  config.evals.every_steps = 2500
  config.evals.batch_size = 1024

  if arg.runlocal:
    config.update(common.data_config("synthetic"))
    config.data.image_shape = (64, 64, 3)
    config.data.num_classes = 1000
    config.pp_train = "flip_lr|value_range(-1, 1)|onehot(1000, smoothing=0.1)"
    config.pp_eval = "value_range(-1, 1)|onehot(1000)"
    config.model = common.model_config("s")
    config.model.num_classes = 1000
    config.model.image_size = 64
    config.model.in_channels = 3
    config.model.stem_channels = 8
    config.model.dims = (16, 16, 8 * sum(config.model.heads_per_window))
    config.model.depths = (1, 1, 1)
    config.model.head_dim = 8
    config.batch_size = 16
    config.total_steps = 10
    config.schedule.warmup_steps = 2
    config.optax.ema_decay = 0.9
    config.log_every_steps = 5
    config.ckpt.every_steps = 5
    config.evals.every_steps = 0
    config.evals.batch_size = 32
  return config
