"""Input pipeline: TFDS ArrayRecord data read with grain, batch-vectorised numpy preprocessing.

No TensorFlow is imported or needed, neither to prepare the datasets this package builds nor to
read any dataset.

    from ge2ms_jax import data
    config.update(data.default_config("cifar10"))
    config.data.source = "path/to/cifar10-train-jpeg.tar.gz"
    info = data.dataset_info(config)     # DatasetInfo(name, num_classes, image_shape, splits, ...)
    it = data.build_iterator(config, "train", global_batch_size=256, sharding=sharding, seed=0)
    batch = next(it)                     # image [B,H,W,C] f32, label [B] i32, target [B,K] f32
    state = it.get_state()               # JSON-serialisable; it.set_state(state) resumes exactly

Datasets (`config.data.name`):
  fashion_mnist       the Fashion-MNIST subset embedded in the package (10,000 train / 2,500 test,
                      class-balanced; 28x28x1).
  fashion_mnist_full  the full set (60,000 / 10,000) from `config.data.source`, a directory of its
                      IDX files (default: where Debian's `dataset-fashion-mnist` installs them).
  cifar10, cifar100   an ImageFolder directory or `.tar.gz` of one (`config.data.source`), 32x32x3;
                      a validation split is held out of "train" unless the source has one.
  imagenet2012        TFDS's own `imagenet2012`, prepared beforehand as ArrayRecord in data_dir.
  synthetic           generated examples of any shape (tests and benchmarks).
Everything but imagenet2012 and synthetic is prepared automatically into `data_dir` on first use
(safe when several processes start at once); later uses read the prepared files.

Config fields:
  config.data.name                 one of `DATASETS`.
  config.data.data_dir             where prepared TFDS/ArrayRecord data lives; None:
                                   `$GE2MS_DATA_DIR` or `~/.cache/ge2ms_jax/tensorflow_datasets`.
  config.data.source               the ImageFolder dir/.tar.gz (cifar*) or IDX dir
                                   (fashion_mnist_full).
  config.data.train_split          split used for training ("train").
  config.data.eval_split           split used for evaluation ("test"; "validation" for cifar and
                                   imagenet2012).
  config.data.validation_fraction  fraction of each class of "train" held out as "validation"
                                   (ImageFolder sources without a validation folder; 0.1 for cifar).
  config.data.tune_fraction        then a fraction of each class of the remaining "train" held out
                                   as "tune": a split to choose settings on (e.g. a sweep's eval
                                   split) that leaves "validation"/"test" untouched until the end.
  config.data.split_seed           seed of that hold-out draw.
  config.data.skip_corrupt         skip (and count) corrupt images instead of failing.
  config.data.image_shape, num_classes, num_train_examples, num_eval_examples
                                   the synthetic dataset's shape and sizes.
  config.pp_train, config.pp_eval  preprocessing strings (see `preprocess`), e.g.
                                   "random_crop(32, pad=4)|flip_lr|randaugment(2, 9)|"
                                   "normalize('cifar10')|onehot(10, smoothing=0.1)".
  config.input.shuffle             shuffle training epochs (True).
  config.input.num_workers         grain worker processes making batches (0: in this process).
  config.input.num_threads         threads making batches ahead in each process (2).
  config.input.prefetch            batches made ahead (4).
  config.input.seed                if set, the data seed, replacing `build_iterator(seed=...)`.
  config.input.return_index        add "index" int32 [B] (example index in the split, -1 for
                                   padding) to batches.
"""

from ge2ms_jax.data.pipeline import (
    DataIterator,
    DatasetInfo,
    StreamPlan,
    build_iterator,
    dataset_info,
)
from ge2ms_jax.data.preprocess import get_preprocess_fn, register, registered_ops
from ge2ms_jax.data.sources import (
    DATASETS,
    default_config,
    default_data_dir,
    open_dataset,
)

__all__ = [
    "DATASETS",
    "DataIterator",
    "DatasetInfo",
    "StreamPlan",
    "build_iterator",
    "dataset_info",
    "default_config",
    "default_data_dir",
    "get_preprocess_fn",
    "open_dataset",
    "register",
    "registered_ops",
]
