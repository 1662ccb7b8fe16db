"""TFDS builders that write image-classification data to ArrayRecord, without TensorFlow.

The formats they read are `formats` (IDX, the embedded subset, ImageFolder, the image decoder), and
the held-out splits they carve are `splits`.

Two builders, each with configs made at run time from where the data comes from:

  - `Ge2msIdx` reads Fashion-MNIST: the subset embedded in the package (`EMBEDDED_PATH`, an `.npz`)
    or a directory of IDX files (`*-images-idx3-ubyte[.gz]`, `*-labels-idx1-ubyte[.gz]`).
  - `Ge2msImageFolder` reads an ImageFolder (`<split>/<class>/<image>` or `<class>/<image>`) from a
    directory or a `.tar`/`.tar.gz` archive of one, and can hold out a class-stratified validation
    split from its training images.

Images of a fixed size are stored decoded, as uint8 `tfds.features.Tensor` features with bytes
encoding (one bytes string per image, not a list of ints): encoding an `Image` feature from pixels
needs TensorFlow, and reading raw pixels is faster than decoding. An
ImageFolder with no fixed size keeps each file's original encoded bytes (an `Image` feature fed
bytes needs no TensorFlow either). Labels are `ClassLabel`s.

`prepare(...)` writes a dataset once into `data_dir/<builder>/<config>/<version>` (TFDS writes into a
temporary folder and renames it, and a file lock keeps concurrent processes from preparing it
twice) and returns a read-only builder of the prepared files; reading uses `as_data_source`, which
needs no TensorFlow either.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import io
import logging
import os
import pathlib
from typing import Sequence

import numpy as np
import tensorflow_datasets as tfds

from ge2ms_jax.data.formats import (EMBEDDED_PATH, FASHION_MNIST_CLASSES, FASHION_MNIST_SHAPE, FolderLayout,
                                    FolderReader, decode_image, digest, find_idx_pairs, load_embedded,
                                    load_idx_split, scan_folder)
from ge2ms_jax.data.splits import check_fractions, hold_out, hold_out_arrays

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Preparation: once, under a file lock
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _file_lock(path: pathlib.Path):
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def prepared_dir(data_dir: str | os.PathLike, builder_cls: type, config_name: str) -> pathlib.Path:
  """Where TFDS keeps a builder config's prepared files (`<data_dir>/<name>/<config>/<version>`)."""
  return pathlib.Path(data_dir) / builder_cls.name / config_name / str(builder_cls.VERSION)


def prepare(data_dir: str | os.PathLike, builder_cls: type, config_name: str,
            make_config) -> tfds.core.DatasetBuilder:
  """Prepares a dataset into `data_dir` if it is not there yet, and returns a reader of it.

  Args:
    data_dir: the TFDS data directory.
    builder_cls: `Ge2msIdx` or `Ge2msImageFolder`.
    config_name: the config's name (it encodes where the data comes from and how it is split).
    make_config: a function returning the `BuilderConfig`, called only if preparation is needed
      (it may scan the source, which is slow for archives).

  Returns:
    A read-only builder of the prepared files (`as_data_source(split)` reads them).
  """
  target = prepared_dir(data_dir, builder_cls, config_name)
  if not (target / "dataset_info.json").exists():
    lock = pathlib.Path(data_dir) / builder_cls.name / f".{config_name}.lock"
    with _file_lock(lock):
      # Another process may have finished it while this one waited for the lock.
      if not (target / "dataset_info.json").exists():
        config = make_config()
        builder = builder_cls(data_dir=os.fspath(data_dir), config=config,
                              file_format="array_record")
        # TFDS announces every preparation as a download ("Downloading and preparing dataset Unknown
        # size ..."); nothing is downloaded here, so its wording and bars give way to one line.
        tfds.disable_progress_bar()
        with contextlib.redirect_stdout(io.StringIO()):
          builder.download_and_prepare(file_format="array_record")
        if pathlib.Path(builder.data_dir) != target:
          raise RuntimeError(f"TFDS prepared into {builder.data_dir}, expected {target}.")
        counts = ", ".join(f"{name} {split.num_examples:,}" for name, split in builder.info.splits.items())
        log.info("indexed %s (%s images) into %s", getattr(config, "description", "") or config_name,
                 counts, target)
  return tfds.builder_from_directory(os.fspath(target))


def skipped_files(builder: tfds.core.DatasetBuilder) -> dict[str, list[str]]:
  """Corrupt files skipped while preparing, per split (`{}` if none)."""
  return dict(builder.info.metadata.get("skipped", {})) if builder.info.metadata else {}


@dataclasses.dataclass(eq=False)
class IdxConfig(tfds.core.BuilderConfig):
  """Where a `Ge2msIdx` dataset comes from: `source` None is the embedded subset; a
  `validation_fraction` of each class of "train" is held out as "validation" (see `hold_out`)."""
  source: str | None = None
  validation_fraction: float = 0.0
  tune_fraction: float = 0.0
  split_seed: int = 0


class Ge2msIdx(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST (28x28x1 uint8, 10 classes) from the embedded subset or IDX files."""

  # Nothing is downloaded, so there is no checksums file to find next to the code (and TFDS's
  # search for it needs the `importlib_resources` backport, which is not installed on Python 3.11).
  code_path = None

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Fashion-MNIST (Zalando Research, MIT licence).",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=FASHION_MNIST_SHAPE, dtype=np.uint8,
                                          encoding=tfds.features.Encoding.BYTES),
            "label": tfds.features.ClassLabel(names=FASHION_MNIST_CLASSES),
        }),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    source = self.builder_config.source
    if source is None:
      arrays = load_embedded()
    else:
      arrays = {s: load_idx_split(*p) for s, p in find_idx_pairs(source).items()}
    cfg = self.builder_config
    for split, fraction in (("validation", cfg.validation_fraction), ("tune", cfg.tune_fraction)):
      arrays = hold_out_arrays(arrays, fraction, cfg.split_seed, split, len(FASHION_MNIST_CLASSES))
    return {s: self._generate_examples(*a) for s, a in arrays.items()}

  def _generate_examples(self, images, labels):
    for i in range(len(images)):
      yield i, {"image": images[i], "label": int(labels[i])}


def idx_config(source: str | os.PathLike | None, validation_fraction: float = 0.0,
               tune_fraction: float = 0.0, split_seed: int = 0) -> tuple[str, callable]:
  """`(config name, config factory)` for the embedded subset (None) or an IDX directory, with
  `validation_fraction` and then `tune_fraction` of each class of "train" held out as "validation"
  and "tune" (see `hold_out`)."""
  check_fractions(validation_fraction, tune_fraction)
  if validation_fraction or tune_fraction:
    name, make = idx_config(source)
    name = f"{name}_held{digest(validation_fraction, tune_fraction, split_seed)[:8]}"
    return name, lambda: dataclasses.replace(make(), name=name, validation_fraction=validation_fraction,
                                             tune_fraction=tune_fraction, split_seed=split_seed)
  if source is None:
    if not EMBEDDED_PATH.exists():
      load_embedded()  # raises the explanatory error
    sha = hashlib.sha256(EMBEDDED_PATH.read_bytes()).hexdigest()[:16]
    name = f"embedded_{sha}"
    return name, lambda: IdxConfig(name=name, description="embedded Fashion-MNIST subset")
  source = pathlib.Path(source).expanduser().resolve()
  pairs = find_idx_pairs(source)
  stats = sorted((s, [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in pair])
                 for s, pair in pairs.items())
  name = f"idx_{digest(os.fspath(source), stats)}"
  return name, lambda: IdxConfig(name=name, source=os.fspath(source),
                                 description=f"IDX files in {source}")


# ---------------------------------------------------------------------------------------------
# ImageFolder directories and archives
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(eq=False)
class FolderConfig(tfds.core.BuilderConfig):
  """An ImageFolder dataset: its source, classes, stored image shape and split rules."""
  source: str = ""
  class_names: tuple = ()
  num_classes: int | None = None
  image_shape: tuple | None = None       # (H, W, C) stored decoded; None: original bytes kept
  channels: int = 3
  validation_fraction: float = 0.0
  tune_fraction: float = 0.0
  split_seed: int = 0
  skip_corrupt: bool = False
  # The file lists stay out of the repr, which TFDS logs.
  layout: FolderLayout | None = dataclasses.field(default=None, repr=False)
  reader: FolderReader | None = dataclasses.field(default=None, repr=False)


class Ge2msImageFolder(tfds.core.GeneratorBasedBuilder):
  """An ImageFolder dataset (e.g. CIFAR-10/100 as JPEG files)."""

  # Nothing is downloaded, so there is no checksums file to find next to the code (and TFDS's
  # search for it needs the `importlib_resources` backport, which is not installed on Python 3.11).
  code_path = None

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    if cfg.image_shape is not None:
      image = tfds.features.Tensor(shape=tuple(cfg.image_shape), dtype=np.uint8,
                                   encoding=tfds.features.Encoding.BYTES)
    else:
      image = tfds.features.Image(shape=(None, None, cfg.channels))
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"ImageFolder {cfg.source}",
        features=tfds.features.FeaturesDict({
            "image": image,
            "label": tfds.features.ClassLabel(names=list(cfg.class_names)),
        }),
        supervised_keys=("image", "label"),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.builder_config
    self.info.metadata["skipped"] = {}
    return {split: self._generate_examples(split, files) for split, files in cfg.layout.files.items()}

  def _generate_examples(self, split, files):
    cfg = self.builder_config
    reader = cfg.reader or FolderReader(cfg.source)
    label_of = dict(files)
    index = {c: i for i, c in enumerate(cfg.class_names)}
    skipped = []
    for rel, data in reader.read([f for f, _ in files]):
      where = reader.describe(rel)
      try:
        img = decode_image(data, cfg.channels, where)
      except ValueError:
        if not cfg.skip_corrupt:
          raise ValueError(f"corrupt image {where}; remove it, or set config.data.skip_corrupt="
                           "True to skip corrupt images (they are counted).") from None
        skipped.append(rel)
        continue
      if cfg.image_shape is not None:
        h, w = cfg.image_shape[:2]
        if img.size != (w, h):
          raise ValueError(f"image {where} is {img.size[1]}x{img.size[0]} (HxW), this dataset's "
                           f"images are {h}x{w}; resize the files, or use a dataset of that size.")
        example = np.asarray(img, np.uint8).reshape(cfg.image_shape)
      else:
        example = data
      yield rel, {"image": example, "label": index[label_of[rel]]}
    if skipped:
      log.warning("skipped %d corrupt images in split %r of %s (first: %s).", len(skipped), split,
                  cfg.source, reader.describe(skipped[0]))
    self.info.metadata["skipped"][split] = skipped


def folder_config(source: str | os.PathLike, *, num_classes: int | None,
                  class_names: Sequence[str] | None, image_shape: tuple | None, channels: int,
                  validation_fraction: float, split_seed: int, skip_corrupt: bool,
                  prefix: str, tune_fraction: float = 0.0) -> tuple[str, callable]:
  """`(config name, config factory)` of an ImageFolder source and its split rules.

  The name digests the source's fingerprint and every rule, so a changed source or rule is
  prepared afresh; the factory scans the source (only needed when preparing).
  """
  reader = FolderReader(source)
  check_fractions(validation_fraction, tune_fraction)
  rules = [reader.fingerprint(), num_classes, list(class_names or ()),
           list(image_shape) if image_shape else None, channels, validation_fraction, split_seed,
           skip_corrupt]
  key = digest(*rules, tune_fraction) if tune_fraction else digest(*rules)
  name = f"{prefix}_{key}"

  def make():
    layout = scan_folder(reader, num_classes=num_classes, class_names=class_names)
    layout = hold_out(layout, validation_fraction, split_seed)
    layout = hold_out(layout, tune_fraction, split_seed, "tune")
    return FolderConfig(name=name, source=os.fspath(reader.path.resolve()),
                        class_names=tuple(layout.classes), num_classes=num_classes,
                        image_shape=tuple(image_shape) if image_shape else None, channels=channels,
                        validation_fraction=validation_fraction, tune_fraction=tune_fraction,
                        split_seed=split_seed,
                        skip_corrupt=skip_corrupt, layout=layout, reader=reader,
                        description=f"ImageFolder {reader.path}")

  return name, make
