"""Raw image-classification formats, read without TensorFlow: IDX files, the embedded subset, and
ImageFolder directories or archives, with the one image decoder every path uses.

  - Fashion-MNIST as IDX files (`read_idx`, `find_idx_pairs`, `load_idx_split`) or the subset
    embedded in the package (`EMBEDDED_PATH`, `load_embedded`).
  - ImageFolder (`<split>/<class>/<image>` or `<class>/<image>`) in a directory or a `.tar`/`.tar.gz`
    archive (`FolderReader`, `scan_folder`).
  - `decode_image`: bytes of one image file to a PIL image, a corrupt file a `ValueError` naming it;
    the TFDS builders (`builders`) and the preprocessing ops (`preprocess`) both decode with it.

Which examples become the held-out splits is `splits`; writing datasets to ArrayRecord is `builders`.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import pathlib
import tarfile
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

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


def digest(*parts) -> str:
  """A short stable hash of JSON-able `parts` (names of prepared datasets, source fingerprints)."""
  return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


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
      return digest(real, st.st_size, st.st_mtime_ns)
    entries = []
    for root, dirs, files in os.walk(self.path):
      dirs.sort()
      for f in sorted(files):
        st = os.stat(os.path.join(root, f))
        entries.append((os.path.relpath(os.path.join(root, f), self.path), st.st_size,
                        st.st_mtime_ns))
      entries.extend((os.path.relpath(os.path.join(root, d), self.path) + "/", 0, 0) for d in dirs)
    return digest(real, entries)

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


class _Listing:
  """An archive's or folder's listing as a tree: each folder's subfolders and its direct image count."""

  def __init__(self, reader: FolderReader):
    files, dirs = reader.listing()
    self.images = [f for f in files if _is_image(f)]
    self.children: dict[str, set[str]] = {}
    for d in dirs:
      self.children.setdefault(d.rsplit("/", 1)[0] if "/" in d else "", set()).add(d)
    self.direct_images: dict[str, int] = {}
    for f in self.images:
      parent = f.rsplit("/", 1)[0] if "/" in f else ""
      self.direct_images[parent] = self.direct_images.get(parent, 0) + 1

  @staticmethod
  def name(d: str) -> str:
    return d.rsplit("/", 1)[-1]

  def visible(self, d: str) -> list[str]:
    """The subfolders of `d`, hidden ones (`.x`, `__x`) left out."""
    return sorted(c for c in self.children.get(d, ()) if not self.name(c).startswith((".", "__")))


def _split_folders(reader: FolderReader, tree: _Listing) -> dict[str, str]:
  """{split: folder}: below single wrapping folders, split folders, or class folders ("train")."""
  root = ""
  while (len(tree.visible(root)) == 1 and not tree.direct_images.get(root)
         and tree.name(tree.visible(root)[0]).lower() not in SPLIT_FOLDERS
         and not tree.direct_images.get(tree.visible(root)[0])):
    root = tree.visible(root)[0]
  top = tree.visible(root)
  if not top:
    raise ValueError(f"{reader.path} holds no class folders; expected <class>/<image> or "
                     "<split>/<class>/<image>.")
  if not any(tree.name(d).lower() in SPLIT_FOLDERS for d in top):
    return {"train": root}
  others = [tree.name(d) for d in top if tree.name(d).lower() not in SPLIT_FOLDERS]
  if others:
    raise ValueError(f"{reader.describe(root or '.')} mixes split folders with other folders "
                     f"{others}; split folders are {sorted(SPLIT_FOLDERS)}.")
  split_dirs = {SPLIT_FOLDERS[tree.name(d).lower()]: d for d in top}
  if len(split_dirs) != len(top):
    raise ValueError(f"{reader.describe(root or '.')}: two folders name the same split: "
                     f"{[tree.name(d) for d in top]}.")
  return split_dirs


def _class_files(reader: FolderReader, tree: _Listing, split_dirs: Mapping[str, str]
                 ) -> dict[str, dict[str, list[str]]]:
  """{split: {class folder name: its image files, sorted}}; every image must be in a class folder."""
  per_split: dict[str, dict[str, list[str]]] = {}
  for split, sdir in split_dirs.items():
    loose = tree.direct_images.get(sdir, 0)
    if loose:
      raise ValueError(f"{reader.describe(sdir or '.')} holds {loose} images outside class "
                       "folders; every image must be in a <class>/ folder.")
    classes = tree.visible(sdir)
    if not classes:
      raise ValueError(f"split folder {reader.describe(sdir)} holds no class folders.")
    per_split[split] = {}
    for cdir in classes:
      prefix = cdir + "/"
      found = sorted(f for f in tree.images if f.startswith(prefix))
      if not found:
        raise ValueError(f"class folder {reader.describe(cdir)} is empty (no image files with "
                         f"extensions {', '.join(IMAGE_EXTENSIONS)}).")
      per_split[split][tree.name(cdir)] = found
  return per_split


def _class_names(reader: FolderReader, per_split: Mapping[str, Mapping[str, list[str]]],
                 class_names: Sequence[str] | None) -> tuple[str, ...]:
  """The classes in label order: `class_names`, else the training split's folders, sorted."""
  given = class_names is not None
  base = per_split.get("train") or next(iter(per_split.values()))
  classes = tuple(class_names) if given else tuple(sorted(base))
  for split, by_class in per_split.items():
    unknown = sorted(set(by_class) - set(classes))
    if unknown and given:
      raise ValueError(f"{reader.path}: class folders {unknown} (split {split!r}) are not "
                       f"classes of this dataset; expected folder names from {list(classes)}.")
    if unknown:
      raise ValueError(f"{reader.path}: split {split!r} has class folders {unknown} that the "
                       f"training split lacks ({list(classes)}).")
  return classes


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
  tree = _Listing(reader)
  per_split = _class_files(reader, tree, _split_folders(reader, tree))
  classes = _class_names(reader, per_split, class_names)
  if num_classes is not None and len(classes) != num_classes:
    raise ValueError(f"{reader.path} has {len(classes)} class folders ({list(classes)[:5]}...), "
                     f"the dataset expects {num_classes}.")
  layout = {s: [(f, c) for c in sorted(by_class) for f in by_class[c]]
            for s, by_class in per_split.items()}
  return FolderLayout(files=layout, classes=classes)


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------
def decode_image(data: bytes, channels: int, where: str, prepare: Callable | None = None):
  """Decodes one image file to a PIL image with `channels` (1: "L", 3: "RGB").

  Args:
    data: the file's bytes (JPEG, PNG, ...).
    channels: 1 or 3.
    where: the file's name for the error message.
    prepare: called with the opened image before its pixels are read (e.g. to set JPEG draft mode).

  Raises:
    ValueError: naming `where` when the file is corrupt or not an image.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    img = Image.open(io.BytesIO(data))
    if prepare is not None:
      prepare(img)
    img.load()
    return img.convert("L" if channels == 1 else "RGB")
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise ValueError(f"corrupt image {where}: {type(e).__name__}: {e}") from None
