"""TFDS builders that write image-classification data to ArrayRecord, without TensorFlow.

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
import gzip
import hashlib
import io
import json
import logging
import os
import pathlib
import tarfile
from typing import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

log = logging.getLogger(__name__)

EMBEDDED_PATH = pathlib.Path(__file__).parent / "embedded" / "fashion_mnist_subset.npz"
# Where Debian's package dataset-fashion-mnist puts the full set.
DEBIAN_FASHION_MNIST = pathlib.Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = ("t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                         "sneaker", "bag", "ankle_boot")
FASHION_MNIST_SHAPE = (28, 28, 1)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif",
                    ".tiff")
# Folder names taken as splits (lower case) and the split each becomes.
SPLIT_FOLDERS = {"train": "train", "test": "test", "val": "validation", "valid": "validation",
                 "validation": "validation"}


def _digest(*parts) -> str:
  return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


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


# ---------------------------------------------------------------------------------------------
# IDX files (Fashion-MNIST)
# ---------------------------------------------------------------------------------------------
def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an IDX file (optionally gzipped) of unsigned bytes.

  Returns:
    uint8 array: `[N, rows, cols]` for an `idx3` image file, `[N]` for an `idx1` label file.

  Raises:
    ValueError: naming the file if it is not a valid uint8 IDX file.
  """
  path = pathlib.Path(path)
  opener = gzip.open if path.suffix == ".gz" else open
  try:
    with opener(path, "rb") as f:
      data = f.read()
  except (OSError, EOFError) as e:
    raise ValueError(f"cannot read IDX file {path}: {e}") from None
  if len(data) < 4 or data[0] != 0 or data[1] != 0:
    raise ValueError(f"{path} is not an IDX file (bad magic number).")
  if data[2] != 0x08:
    raise ValueError(f"{path}: IDX data type 0x{data[2]:02x} is not unsigned bytes (0x08).")
  ndim = data[3]
  header = 4 + 4 * ndim
  if len(data) < header:
    raise ValueError(f"{path}: truncated IDX header.")
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  if len(data) - header != int(np.prod(shape)):
    raise ValueError(f"{path}: IDX header says shape {shape} ({int(np.prod(shape))} bytes) but "
                     f"the file holds {len(data) - header} bytes; it is truncated or corrupt.")
  return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def find_idx_pairs(directory: str | os.PathLike) -> dict[str, tuple[pathlib.Path, pathlib.Path]]:
  """Finds `<prefix>-images-idx3-ubyte[.gz]` / `<prefix>-labels-idx1-ubyte[.gz]` pairs.

  Returns:
    `{split: (images_path, labels_path)}` where `train` -> "train", `t10k`/`test` -> "test" and
    any other prefix is its own split name.

  Raises:
    ValueError: if the directory is missing, holds no pair, or a file lacks its partner.
  """
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise ValueError(f"IDX directory {directory} does not exist; give a directory with "
                     "Fashion-MNIST IDX files (e.g. train-images-idx3-ubyte.gz) or install "
                     "Debian's package dataset-fashion-mnist.")
  found: dict[str, dict[str, pathlib.Path]] = {}
  for p in sorted(directory.iterdir()):
    name = p.name[:-3] if p.name.endswith(".gz") else p.name
    for kind, tag in (("images", "-images-idx3-ubyte"), ("labels", "-labels-idx1-ubyte")):
      if name.endswith(tag):
        prefix = name[:-len(tag)]
        split = {"train": "train", "t10k": "test", "test": "test"}.get(prefix, prefix)
        if kind in found.setdefault(split, {}):
          raise ValueError(f"{directory}: two {kind} files for split {split!r}: "
                           f"{found[split][kind].name} and {p.name}.")
        found[split][kind] = p
  if not found:
    raise ValueError(f"no IDX files (*-images-idx3-ubyte[.gz], *-labels-idx1-ubyte[.gz]) in "
                     f"{directory}.")
  pairs = {}
  for split, kinds in found.items():
    if set(kinds) != {"images", "labels"}:
      missing = ({"images", "labels"} - set(kinds)).pop()
      raise ValueError(f"{directory}: split {split!r} has {next(iter(kinds.values())).name} but "
                       f"no {missing} file.")
    pairs[split] = (kinds["images"], kinds["labels"])
  return pairs


def load_idx_split(images_path, labels_path, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
  """Reads one IDX split as `(images uint8 [N, 28, 28, 1], labels int64 [N])`, checked."""
  images = read_idx(images_path)
  labels = read_idx(labels_path)
  if images.ndim != 3 or labels.ndim != 1:
    raise ValueError(f"{images_path} / {labels_path}: expected an idx3 image file and an idx1 "
                     f"label file, got shapes {images.shape} and {labels.shape}.")
  if images.shape[1:] != FASHION_MNIST_SHAPE[:2]:
    raise ValueError(f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, "
                     f"Fashion-MNIST images are 28x28.")
  if len(images) != len(labels):
    raise ValueError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                     f"{len(labels)} labels.")
  if labels.size and labels.max() >= num_classes:
    raise ValueError(f"{labels_path}: label {labels.max()} is outside [0, {num_classes}).")
  return images[..., None], labels.astype(np.int64)


def load_embedded(path: str | os.PathLike = EMBEDDED_PATH) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """The embedded Fashion-MNIST subset: `{"train": (images, labels), "test": (...)}`."""
  path = pathlib.Path(path)
  if not path.exists():
    raise ValueError(f"the embedded Fashion-MNIST subset {path} is missing; reinstall the package "
                     "or regenerate it with `python -m ge2ms_jax.data.make_embedded`.")
  with np.load(path) as z:
    return {s: (z[f"{s}_images"][..., None], z[f"{s}_labels"].astype(np.int64))
            for s in ("train", "test")}


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
  _check_fractions(validation_fraction, tune_fraction)
  if validation_fraction or tune_fraction:
    name, make = idx_config(source)
    name = f"{name}_held{_digest(validation_fraction, tune_fraction, split_seed)[:8]}"
    return name, lambda: dataclasses.replace(make(), name=name, validation_fraction=validation_fraction,
                                             tune_fraction=tune_fraction, split_seed=split_seed)
  if source is None:
    if not EMBEDDED_PATH.exists():
      load_embedded()  # raises the explanatory error
    digest = hashlib.sha256(EMBEDDED_PATH.read_bytes()).hexdigest()[:16]
    name = f"embedded_{digest}"
    return name, lambda: IdxConfig(name=name, description="embedded Fashion-MNIST subset")
  source = pathlib.Path(source).expanduser().resolve()
  pairs = find_idx_pairs(source)
  stats = sorted((s, [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in pair])
                 for s, pair in pairs.items())
  name = f"idx_{_digest(os.fspath(source), stats)}"
  return name, lambda: IdxConfig(name=name, source=os.fspath(source),
                                 description=f"IDX files in {source}")


# ---------------------------------------------------------------------------------------------
# ImageFolder directories and archives
# ---------------------------------------------------------------------------------------------
class FolderReader:
  """Lists and reads the files of an ImageFolder directory or `.tar`/`.tar.gz` archive."""

  def __init__(self, path: str | os.PathLike):
    self.path = pathlib.Path(path).expanduser()
    if not self.path.exists():
      raise ValueError(f"image folder {self.path} does not exist; give an ImageFolder directory "
                       "(<split>/<class>/<image> or <class>/<image>) or a .tar/.tar.gz of one.")
    self.is_archive = self.path.is_file()
    self._contents: dict[str, bytes] | None = None
    if self.is_archive and not tarfile.is_tarfile(self.path):
      raise ValueError(f"{self.path} is a file but not a tar archive; give an ImageFolder "
                       "directory or a .tar/.tar.gz of one.")

  def fingerprint(self) -> str:
    """Changes when the source changes (archive: size and time; directory: every file's)."""
    real = os.path.realpath(self.path)
    if self.is_archive:
      st = self.path.stat()
      return _digest(real, st.st_size, st.st_mtime_ns)
    entries = []
    for root, dirs, files in os.walk(self.path):
      dirs.sort()
      for f in sorted(files):
        st = os.stat(os.path.join(root, f))
        entries.append((os.path.relpath(os.path.join(root, f), self.path), st.st_size,
                        st.st_mtime_ns))
      entries.extend((os.path.relpath(os.path.join(root, d), self.path) + "/", 0, 0) for d in dirs)
    return _digest(real, entries)

  def listing(self) -> tuple[list[str], set[str]]:
    """`(files, dirs)`: relative POSIX paths of all regular files and of all folders.

    An archive is read in this one pass and its image files are kept in memory for `read`
    (ImageFolder archives here are CIFAR-sized; a gzip stream cannot be read out of order).
    """
    files, dirs = [], set()
    if self.is_archive:
      self._contents = {}
      with tarfile.open(self.path) as tar:
        for m in tar:
          name = _member_name(m)
          if m.isdir():
            dirs.add(name)
          elif m.isfile():
            files.append(name)
            if _is_image(name):
              self._contents[name] = tar.extractfile(m).read()
    else:
      for root, ds, fs in os.walk(self.path):
        rel = os.path.relpath(root, self.path)
        rel = "" if rel == "." else rel.replace(os.sep, "/")
        dirs.update(f"{rel}/{d}" if rel else d for d in ds)
        files.extend(f"{rel}/{f}" if rel else f for f in fs)
    for f in files:  # folders implied by file paths (archives need not list them)
      parts = f.split("/")[:-1]
      dirs.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    dirs.discard("")
    return sorted(files), dirs

  def describe(self, rel: str) -> str:
    """A file's name for messages: `archive.tar.gz:train/cat/1.jpg` or its full path."""
    return f"{self.path}:{rel}" if self.is_archive else os.fspath(self.path / rel)

  def read(self, wanted: Sequence[str]) -> Iterator[tuple[str, bytes]]:
    """Yields `(relative path, bytes)` of the `wanted` files, in the given order."""
    if self.is_archive:
      if getattr(self, "_contents", None) is None:
        self.listing()
      for rel in wanted:
        yield rel, self._contents[rel]
    else:
      for rel in wanted:
        yield rel, (self.path / rel).read_bytes()


def _member_name(m: tarfile.TarInfo) -> str:
  name = m.name.strip("/")
  return name[2:] if name.startswith("./") else name


@dataclasses.dataclass
class FolderLayout:
  """An ImageFolder's splits: `files[split] = [(relative path, class name)]`, classes sorted."""
  files: dict[str, list[tuple[str, str]]]
  classes: tuple[str, ...]


def _is_image(name: str) -> bool:
  base = name.rsplit("/", 1)[-1]
  return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


def scan_folder(reader: FolderReader, num_classes: int | None = None,
                class_names: Sequence[str] | None = None) -> FolderLayout:
  """Works out an ImageFolder's splits and classes.

  The root may be wrapped in single folders that are not split names. Below it come either split
  folders (`train`, `test`, `val`/`valid`/`validation`), each with class folders, or class folders
  directly (one split, "train"). Images may sit in subfolders of a class folder.

  Args:
    reader: the folder or archive.
    num_classes: if given, the number of class folders required.
    class_names: if given, the classes every folder name must be one of (labels follow their order).

  Raises:
    ValueError: naming the folder that is empty, the class folder that is not expected, or the
      wrong number of classes.
  """
  files, dirs = reader.listing()
  images = [f for f in files if _is_image(f)]
  children: dict[str, set[str]] = {}
  for d in dirs:
    parent = d.rsplit("/", 1)[0] if "/" in d else ""
    children.setdefault(parent, set()).add(d)
  direct_images = {}
  for f in images:
    parent = f.rsplit("/", 1)[0] if "/" in f else ""
    direct_images[parent] = direct_images.get(parent, 0) + 1

  def name(d):
    return d.rsplit("/", 1)[-1]

  def visible(d):
    return sorted(c for c in children.get(d, ()) if not name(c).startswith((".", "__")))

  root = ""
  while (len(visible(root)) == 1 and not direct_images.get(root)
         and name(visible(root)[0]).lower() not in SPLIT_FOLDERS
         and not direct_images.get(visible(root)[0])):
    root = visible(root)[0]
  top = visible(root)
  if not top:
    raise ValueError(f"{reader.path} holds no class folders; expected <class>/<image> or "
                     "<split>/<class>/<image>.")
  if any(name(d).lower() in SPLIT_FOLDERS for d in top):
    others = [name(d) for d in top if name(d).lower() not in SPLIT_FOLDERS]
    if others:
      raise ValueError(f"{reader.describe(root or '.')} mixes split folders with other folders "
                       f"{others}; split folders are {sorted(SPLIT_FOLDERS)}.")
    split_dirs = {SPLIT_FOLDERS[name(d).lower()]: d for d in top}
    if len(split_dirs) != len(top):
      raise ValueError(f"{reader.describe(root or '.')}: two folders name the same split: "
                       f"{[name(d) for d in top]}.")
  else:
    split_dirs = {"train": root}

  per_split: dict[str, dict[str, list[str]]] = {}
  for split, sdir in split_dirs.items():
    loose = direct_images.get(sdir, 0)
    if loose:
      raise ValueError(f"{reader.describe(sdir or '.')} holds {loose} images outside class "
                       "folders; every image must be in a <class>/ folder.")
    classes = visible(sdir)
    if not classes:
      raise ValueError(f"split folder {reader.describe(sdir)} holds no class folders.")
    per_split[split] = {}
    for cdir in classes:
      prefix = cdir + "/"
      found = sorted(f for f in images if f.startswith(prefix))
      if not found:
        raise ValueError(f"class folder {reader.describe(cdir)} is empty (no image files with "
                         f"extensions {', '.join(IMAGE_EXTENSIONS)}).")
      per_split[split][name(cdir)] = found

  if class_names is not None:
    classes = tuple(class_names)
    for split, by_class in per_split.items():
      unknown = sorted(set(by_class) - set(classes))
      if unknown:
        raise ValueError(f"{reader.path}: class folders {unknown} (split {split!r}) are not "
                         f"classes of this dataset; expected folder names from {list(classes)}.")
  else:
    base = per_split.get("train") or next(iter(per_split.values()))
    classes = tuple(sorted(base))
    for split, by_class in per_split.items():
      unknown = sorted(set(by_class) - set(classes))
      if unknown:
        raise ValueError(f"{reader.path}: split {split!r} has class folders {unknown} that the "
                         f"training split lacks ({list(classes)}).")
  if num_classes is not None and len(classes) != num_classes:
    raise ValueError(f"{reader.path} has {len(classes)} class folders ({list(classes)[:5]}...), "
                     f"the dataset expects {num_classes}.")
  layout = {s: [(f, c) for c in sorted(by_class) for f in by_class[c]]
            for s, by_class in per_split.items()}
  return FolderLayout(files=layout, classes=classes)


# Held-out splits carved from "train", in this order, and the random stream each is drawn with.
HELD_OUT_SPLITS = {"validation": (), "tune": (1,)}


def held_out(count: int, fraction: float, seed: int, class_index: int, split: str = "validation") -> set[int]:
  """Indices (into one class's `count` training examples) that `hold_out` moves to `split`:
  `round(fraction * count)` of them, at least one when the class has two or more examples and
  fraction > 0, drawn with `np.random.default_rng([seed, class_index, *stream])` (the stream of
  `HELD_OUT_SPLITS`, so that the "validation" split is the same whether or not a "tune" split is
  also carved)."""
  n_val = int(round(fraction * count))
  n_val = min(max(n_val, 1), count - 1) if count >= 2 else 0
  rng = np.random.default_rng([seed, class_index, *HELD_OUT_SPLITS[split]])
  return set(rng.permutation(count)[:n_val].tolist())


def hold_out_arrays(arrays: dict, fraction: float, seed: int, split: str, num_classes: int) -> dict:
  """`hold_out` for in-memory splits `{name: (images [N, ...], labels [N])}`."""
  if not fraction or split in arrays or "train" not in arrays:
    return arrays
  images, labels = arrays["train"]
  pick = np.zeros(len(labels), bool)
  for ci in range(num_classes):
    members = np.flatnonzero(labels == ci)
    pick[members[sorted(held_out(len(members), fraction, seed, ci, split))]] = True
  return {**arrays, "train": (images[~pick], labels[~pick]), split: (images[pick], labels[pick])}


def hold_out(layout: FolderLayout, fraction: float, seed: int, split: str = "validation") -> FolderLayout:
  """Moves a class-stratified `fraction` of "train" into a new "validation" split.

  Per class, `round(fraction * n)` files drawn with `np.random.default_rng([seed, class index])`
  (at least one when the class has two or more files and fraction > 0). A layout that already has
  a validation split, or fraction 0, is returned unchanged.
  """
  if not 0 <= fraction < 1:
    raise ValueError(f"validation_fraction must be in [0, 1), got {fraction!r}.")
  if fraction == 0 or split in layout.files or "train" not in layout.files:
    return layout
  train, val = [], []
  for ci, c in enumerate(layout.classes):
    items = [x for x in layout.files["train"] if x[1] == c]
    pick = held_out(len(items), fraction, seed, ci, split)
    for i, x in enumerate(items):
      (val if i in pick else train).append(x)
  files = dict(layout.files)
  files["train"], files[split] = train, val
  return FolderLayout(files=files, classes=layout.classes)


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


def decode_image(data: bytes, channels: int, where: str):
  """Decodes one image file to a PIL image with `channels` (1: "L", 3: "RGB"); ValueError naming
  `where` if it is corrupt."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img.convert("L" if channels == 1 else "RGB")
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise ValueError(f"corrupt image {where}: {type(e).__name__}: {e}") from None


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


def _check_fractions(validation_fraction: float, tune_fraction: float) -> None:
  for field, value in (("validation_fraction", validation_fraction), ("tune_fraction", tune_fraction)):
    if not 0 <= value < 1:
      raise ValueError(f"config.data.{field} must be in [0, 1), got {value!r}.")


def folder_config(source: str | os.PathLike, *, num_classes: int | None,
                  class_names: Sequence[str] | None, image_shape: tuple | None, channels: int,
                  validation_fraction: float, split_seed: int, skip_corrupt: bool,
                  prefix: str, tune_fraction: float = 0.0) -> tuple[str, callable]:
  """`(config name, config factory)` of an ImageFolder source and its split rules.

  The name digests the source's fingerprint and every rule, so a changed source or rule is
  prepared afresh; the factory scans the source (only needed when preparing).
  """
  reader = FolderReader(source)
  _check_fractions(validation_fraction, tune_fraction)
  rules = [reader.fingerprint(), num_classes, list(class_names or ()),
           list(image_shape) if image_shape else None, channels, validation_fraction, split_seed,
           skip_corrupt]
  key = _digest(*rules, tune_fraction) if tune_fraction else _digest(*rules)
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
