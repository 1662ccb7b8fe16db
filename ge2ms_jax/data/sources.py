"""Datasets by name: their default configs, preparation and random-access sources.

`open_dataset(config.data)` prepares the named dataset if needed (see `builders.prepare`) and
returns an `OpenDataset`: its classes, stored image shape, split sizes, and a `Source` per split.
A `Source` reads a batch of examples by index, `read(indices) -> {"image", "label"}`, through
`tfds` ArrayRecord data sources (or, for "synthetic", by generating them); it is picklable and
opens its files lazily in each process, so input worker processes can use it.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pathlib
import threading
from typing import Any, Sequence

import numpy as np

from ge2ms_jax.data import builders
from ge2ms_jax.data import formats
from ge2ms_jax.configs import common as configs_common

DATASETS = configs_common.DATASETS
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck")


def default_data_dir() -> str:
  """`$GE2MS_DATA_DIR`, else `~/.cache/ge2ms_jax/tensorflow_datasets`."""
  return os.environ.get("GE2MS_DATA_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "ge2ms_jax", "tensorflow_datasets")


# ---------------------------------------------------------------------------------------------
# Default configs
# ---------------------------------------------------------------------------------------------
DATA_FIELDS = configs_common.DATA_FIELDS
INPUT_DEFAULTS = configs_common.INPUT_DEFAULTS
# The default data, preprocessing and input config of a dataset (fields: `ge2ms_jax.data`).
default_config = configs_common.data_config


def data_settings(data_config) -> dict[str, Any]:
  """`config.data` as a plain dict with defaults filled in; unknown fields raise ValueError."""
  given = dict(data_config) if data_config is not None else {}
  unknown = sorted(set(given) - set(DATA_FIELDS))
  if unknown:
    raise ValueError(f"unknown config.data fields {unknown}; valid fields: {', '.join(DATA_FIELDS)}.")
  name = given.get("name")
  if name not in DATASETS:
    raise ValueError(f"config.data.name must be one of {', '.join(DATASETS)}, got {name!r}.")
  settings = dict(configs_common.COMMON_DATA)
  settings.update(default_config(name).data.to_dict())
  settings.update({k: v for k, v in given.items()})
  return settings


def input_settings(input_config) -> dict[str, Any]:
  """`config.input` as a plain dict with defaults filled in; unknown fields raise ValueError."""
  given = dict(input_config) if input_config is not None else {}
  unknown = sorted(set(given) - set(INPUT_DEFAULTS))
  if unknown:
    raise ValueError(f"unknown config.input fields {unknown}; valid fields: "
                     f"{', '.join(INPUT_DEFAULTS)}.")
  settings = dict(INPUT_DEFAULTS)
  settings.update(given)
  for key in ("num_workers", "num_threads", "prefetch"):
    if not isinstance(settings[key], int) or settings[key] < 0:
      raise ValueError(f"config.input.{key} must be an int >= 0, got {settings[key]!r}.")
  return settings


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------
class Source:
  """Random access to one split: `len(source)`, `source.read(indices)`.

  `read` returns `{"image": uint8 [n, H, W, C] (or a list of n encoded images), "label": int32
  [n]}` for int indices `[n]`.
  """

  def __len__(self) -> int:
    raise NotImplementedError

  def read(self, indices: np.ndarray) -> dict[str, Any]:
    raise NotImplementedError


class TfdsSource(Source):
  """A split of prepared TFDS ArrayRecord files (opened lazily, once per process)."""

  def __init__(self, directory: str, split: str, num_examples: int, encoded: bool,
               tfds_name: str | None = None, data_dir: str | None = None):
    """Reads `split` of the prepared files in `directory`, or, with `tfds_name`, of TFDS's own
    registered dataset of that name in `data_dir` (through `tfds.data_source`)."""
    self.directory = directory
    self.split = split
    self.encoded = encoded
    self.tfds_name = tfds_name
    self.data_dir = data_dir
    self._len = num_examples
    self._ds = None
    self._lock = threading.Lock()

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_ds"] = None
    state["_lock"] = None
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def _data_source(self):
    with self._lock:
      if self._ds is None:
        import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
        decoders = {"image": tfds.decode.SkipDecoding()} if self.encoded else None
        if self.tfds_name is not None:
          self._ds = tfds.data_source(self.tfds_name, split=self.split, data_dir=self.data_dir,
                                      decoders=decoders)
        else:
          builder = tfds.builder_from_directory(self.directory)
          self._ds = builder.as_data_source(self.split, decoders=decoders)
      return self._ds

  def __len__(self) -> int:
    return self._len

  def read(self, indices):
    records = self._data_source().__getitems__([int(i) for i in indices])
    labels = np.fromiter((r["label"] for r in records), np.int32, len(records))
    if self.encoded:
      images = [r["image"] for r in records]
    else:
      images = np.stack([r["image"] for r in records]) if records else np.zeros((0,), np.uint8)
    return {"image": images, "label": labels}


class SyntheticSource(Source):
  """Deterministic random examples of any shape: example `i` depends only on `(seed, i)`.

  Labels are uniform over the classes; each image is uniform noise in [0, 128) plus a
  class-dependent brightness (`label * 127 // (num_classes - 1)`), so a model can learn it.
  """

  def __init__(self, image_shape: Sequence[int], num_classes: int, num_examples: int, seed: int):
    self.image_shape = tuple(int(s) for s in image_shape)
    self.num_classes = int(num_classes)
    self._len = int(num_examples)
    self.seed = int(seed)

  def __len__(self) -> int:
    return self._len

  def read(self, indices):
    n = len(indices)
    images = np.empty((n,) + self.image_shape, np.uint8)
    labels = np.empty((n,), np.int32)
    step = 127 // max(self.num_classes - 1, 1)
    for j, i in enumerate(indices):
      rng = np.random.default_rng([self.seed, int(i)])
      labels[j] = rng.integers(self.num_classes)
      images[j] = rng.integers(0, 128, self.image_shape, dtype=np.uint8) + np.uint8(labels[j] * step)
    return {"image": images, "label": labels}


@dataclasses.dataclass
class OpenDataset:
  """A dataset ready to read.

  Attributes:
    name: the config's dataset name.
    num_classes: number of classes; labels are in `[0, num_classes)`.
    class_names: the class names, by label.
    stored_shape: `(H, W, C)` of the stored images, or None if they are stored encoded at their
      own sizes (ImageNet).
    splits: `{split: number of examples}`.
    skipped: `{split: [files]}` skipped as corrupt while preparing.
    sources: `{split: Source}`.
  """
  name: str
  num_classes: int
  class_names: tuple[str, ...]
  stored_shape: tuple[int, int, int] | None
  splits: dict[str, int]
  skipped: dict[str, list[str]]
  sources: dict[str, Source]

  def source(self, split: str) -> Source:
    """The split's source; ValueError naming the available splits if it is unknown."""
    if split not in self.sources:
      raise ValueError(f"dataset {self.name!r} has no split {split!r}; its splits are "
                       f"{sorted(self.sources)}.")
    return self.sources[split]

  @property
  def encoded(self) -> bool:
    return self.stored_shape is None


def _from_builder(name: str, builder, encoded: bool = False, tfds_name: str | None = None,
                  data_dir: str | None = None) -> OpenDataset:
  features = builder.info.features
  labels = features["label"]
  image = features["image"]
  shape = None if encoded else tuple(int(s) for s in image.shape)
  splits = {s: int(info.num_examples) for s, info in builder.info.splits.items()}
  directory = os.fspath(builder.data_dir)
  sources = {s: TfdsSource(directory, s, n, encoded, tfds_name, data_dir) for s, n in splits.items()}
  return OpenDataset(name=name, num_classes=int(labels.num_classes),
                     class_names=tuple(labels.names), stored_shape=shape, splits=splits,
                     skipped=builders.skipped_files(builder), sources=sources)


def _data_dir(settings) -> str:
  return os.fspath(pathlib.Path(settings["data_dir"] or default_data_dir()).expanduser())


def open_dataset(data_config) -> OpenDataset:
  """Prepares (if needed) and opens the dataset `config.data` names.

  Raises:
    ValueError: for unknown fields or names, a missing source, or bad input data (naming the file
      or folder).
  """
  s = data_settings(data_config)
  name = s["name"]
  data_dir = _data_dir(s)
  if name == "synthetic":
    shape = tuple(s["image_shape"])
    if len(shape) != 3 or min(shape) < 1:
      raise ValueError(f"config.data.image_shape must be (H, W, C) of positive ints, got {shape}.")
    k = int(s["num_classes"])
    if k < 1:
      raise ValueError(f"config.data.num_classes must be >= 1, got {k}.")
    sizes = {"train": int(s["num_train_examples"]), "test": int(s["num_eval_examples"])}
    sources = {split: SyntheticSource(shape, k, n, seed=i) for i, (split, n) in enumerate(sizes.items())}
    return OpenDataset(name=name, num_classes=k, class_names=tuple(str(i) for i in range(k)),
                       stored_shape=shape, splits=sizes, skipped={}, sources=sources)
  if name == "fashion_mnist":
    if s["source"] is not None:
      raise ValueError("config.data.source is not used by 'fashion_mnist' (the embedded subset); "
                       "use name='fashion_mnist_full' to read IDX files from a directory.")
    config_name, make = builders.idx_config(None, float(s["validation_fraction"]),
                                            float(s.get("tune_fraction", 0.0)), int(s["split_seed"]))
    return _from_builder(name, builders.prepare(data_dir, builders.Ge2msIdx, config_name, make))
  if name == "fashion_mnist_full":
    source = s["source"] or os.fspath(formats.DEBIAN_FASHION_MNIST)
    if not pathlib.Path(source).is_dir():
      raise ValueError(f"the full Fashion-MNIST set was not found at {source}; install Debian's "
                       "package dataset-fashion-mnist, or set config.data.source to a directory "
                       "of its IDX files (or use name='fashion_mnist', the embedded subset).")
    config_name, make = builders.idx_config(source, float(s["validation_fraction"]),
                                            float(s.get("tune_fraction", 0.0)), int(s["split_seed"]))
    return _from_builder(name, builders.prepare(data_dir, builders.Ge2msIdx, config_name, make))
  if name in ("cifar10", "cifar100"):
    if not s["source"]:
      raise ValueError(f"dataset {name!r} needs config.data.source: an ImageFolder directory "
                       "(<split>/<class>/<image> or <class>/<image>) or a .tar.gz of one.")
    config_name, make = builders.folder_config(
        s["source"], num_classes=10 if name == "cifar10" else 100, class_names=None,
        image_shape=(32, 32, 3), channels=3, validation_fraction=float(s["validation_fraction"]),
        tune_fraction=float(s.get("tune_fraction", 0.0)), split_seed=int(s["split_seed"]),
        skip_corrupt=bool(s["skip_corrupt"]), prefix=name)
    return _from_builder(name, builders.prepare(data_dir, builders.Ge2msImageFolder, config_name,
                                                make))
  if name == "imagenet2012":
    return _open_imagenet(data_dir)
  raise AssertionError(name)


def _open_imagenet(data_dir: str) -> OpenDataset:
  """TFDS's own `imagenet2012`, prepared by the user as ArrayRecord in `data_dir`."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(data_dir) / "imagenet2012"
  versions = sorted(root.glob("*/dataset_info.json")) if root.is_dir() else []
  if not versions:
    raise ValueError(f"imagenet2012 is not prepared in {data_dir} (no {root}/<version>/"
                     "dataset_info.json). Prepare it once with TFDS's imagenet2012 builder and "
                     "file_format='array_record' into this data_dir (see docs/data.md), or set "
                     "config.data.data_dir to where it is prepared.")
  builder = tfds.builder("imagenet2012", data_dir=data_dir)
  files = list(pathlib.Path(builder.data_dir).glob("*.array_record*"))
  if not files:
    raise ValueError(f"imagenet2012 in {builder.data_dir} is not in ArrayRecord format (found no "
                     "*.array_record-* files); prepare it with file_format='array_record' "
                     "(see docs/data.md).")
  ds = _from_builder("imagenet2012", builder, encoded=True, tfds_name="imagenet2012",
                     data_dir=data_dir)
  # The test split has no labels (all -1): it cannot be used for training or evaluation.
  ds.sources.pop("test", None)
  ds.splits.pop("test", None)
  return ds


def eval_base(data_config) -> OpenDataset:
  """The dataset a model was trained on, as far as evaluating other images needs it.

  Opens the configured dataset, except CIFAR without `config.data.source`: a checkpoint should
  evaluate on new images without its training data at hand, and all that needs is the classes and
  the 32x32x3 image size. CIFAR-10's class names are known (labels follow their sorted order, as
  they do when training from an ImageFolder); CIFAR-100 leaves them to the evaluated folder, which
  must then hold all 100 class folders.

  Returns:
    An `OpenDataset`; without a source it has no splits, and `class_names` is `()` for CIFAR-100.
  """
  s = data_settings(data_config)
  name = s["name"]
  if name in ("cifar10", "cifar100") and not s["source"]:
    classes = CIFAR10_CLASSES if name == "cifar10" else ()
    return OpenDataset(name=name, num_classes=10 if name == "cifar10" else 100,
                       class_names=classes, stored_shape=(32, 32, 3), splits={}, skipped={},
                       sources={})
  return open_dataset(data_config)


def open_eval_data(path: str | os.PathLike, base: OpenDataset, data_config) -> OpenDataset:
  """Opens user data for evaluation with the class names and image size of dataset `base`.

  Args:
    path: an ImageFolder directory or `.tar`/`.tar.gz` of one, or a directory with Fashion-MNIST
      IDX files.
    base: the dataset the model was trained on (its classes map folder names to labels).
    data_config: `config.data` (for data_dir and skip_corrupt).

  Raises:
    ValueError: if the path is missing, a class folder is unknown or empty, an image is corrupt or
      of the wrong size (naming the file).
  """
  s = data_settings(data_config)
  data_dir = _data_dir(s)
  p = pathlib.Path(path).expanduser()
  if not p.exists():
    raise ValueError(f"eval_data {p} does not exist; give an ImageFolder directory, a .tar.gz of "
                     "one, or a directory of Fashion-MNIST IDX files.")
  if p.is_dir() and any(p.glob("*-images-idx3-ubyte*")):
    if base.class_names != formats.FASHION_MNIST_CLASSES:
      raise ValueError(f"eval_data {p} holds Fashion-MNIST IDX files, but the model's dataset "
                       f"{base.name!r} has other classes.")
    config_name, make = builders.idx_config(p)
    return _from_builder("eval_data", builders.prepare(data_dir, builders.Ge2msIdx, config_name,
                                                       make))
  shape = base.stored_shape
  channels = shape[-1] if shape else 3
  # Without known class names (see `eval_base`) the folder must name all the model's classes.
  try:
    config_name, make = builders.folder_config(
        p, num_classes=None if base.class_names else base.num_classes,
        class_names=base.class_names or None, image_shape=shape, channels=channels,
        validation_fraction=0.0, split_seed=0, skip_corrupt=bool(s["skip_corrupt"]),
        prefix="eval_data")
    builder = builders.prepare(data_dir, builders.Ge2msImageFolder, config_name, make)
  except ValueError as e:
    if base.class_names:
      raise
    raise ValueError(f"{e} Without config.data.source the class names of {base.name!r} come from "
                     f"the evaluated folder, which must then hold all {base.num_classes} class "
                     "folders; or set config.data.source to the training data.") from e
  return _from_builder("eval_data", builder, encoded=shape is None)


def encode_dummy_jpeg(height: int = 256, width: int = 320) -> bytes:
  """A small JPEG, for shape inference of pipelines that start from encoded images."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  Image.new("RGB", (width, height), (128, 128, 128)).save(buf, format="JPEG")
  return buf.getvalue()
