"""Regenerates the embedded Fashion-MNIST subset shipped in `ge2ms_jax/data/embedded/`.

    python -m ge2ms_jax.data.make_embedded [--source DIR] [--output FILE]

`--source` is a directory of the Fashion-MNIST IDX files (default: where Debian's package
`dataset-fashion-mnist` installs them). The subset is class-balanced and fully determined by the
files: the first `TRAIN_PER_CLASS` images of each class, in file order, of the training file and
the first `TEST_PER_CLASS` of each class of the test (`t10k`) file. The `.npz` holds

  train_images uint8 [10000, 28, 28], train_labels uint8 [10000], train_source_index uint16 [10000]
  test_images  uint8 [2500, 28, 28],  test_labels  uint8 [2500],  test_source_index  uint16 [2500]

(`*_source_index`: each image's position in its original file, ascending). It is written with
fixed zip timestamps, so the same input gives the same bytes.
"""

from __future__ import annotations

import argparse
import io
import pathlib
import sys
import zipfile

import numpy as np

from ge2ms_jax.data import formats

TRAIN_PER_CLASS = 1000
TEST_PER_CLASS = 250
NUM_CLASSES = 10


def select(labels: np.ndarray, per_class: int) -> np.ndarray:
  """Indices (ascending) of the first `per_class` examples of every class; `[per_class * 10]`."""
  picks = []
  for c in range(NUM_CLASSES):
    idx = np.flatnonzero(labels == c)[:per_class]
    if len(idx) < per_class:
      raise ValueError(f"class {c} has only {len(idx)} examples, {per_class} are needed.")
    picks.append(idx)
  return np.sort(np.concatenate(picks))


def build_subset(source: str | pathlib.Path) -> dict[str, np.ndarray]:
  """The subset's arrays (see the module docstring) from the IDX files in `source`."""
  pairs = formats.find_idx_pairs(source)
  for split in ("train", "test"):
    if split not in pairs:
      raise ValueError(f"{source} lacks the Fashion-MNIST {split} files.")
  arrays = {}
  for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
    images, labels = formats.load_idx_split(*pairs[split])
    index = select(labels, per_class)
    arrays[f"{split}_images"] = images[index, :, :, 0]
    arrays[f"{split}_labels"] = labels[index].astype(np.uint8)
    arrays[f"{split}_source_index"] = index.astype(np.uint16)
  return arrays


def write_npz(path: str | pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
  """Writes a compressed `.npz` byte-for-byte reproducibly (fixed member order and timestamps)."""
  with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
    for name in sorted(arrays):
      buf = io.BytesIO()
      np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]), allow_pickle=False)
      info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
      info.compress_type = zipfile.ZIP_DEFLATED
      info.external_attr = 0o644 << 16
      zf.writestr(info, buf.getvalue(), compresslevel=9)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--source", default=str(formats.DEBIAN_FASHION_MNIST),
                      help="directory of the Fashion-MNIST IDX files")
  parser.add_argument("--output", default=str(formats.EMBEDDED_PATH), help="the .npz to write")
  args = parser.parse_args(argv)
  arrays = build_subset(args.source)
  out = pathlib.Path(args.output)
  out.parent.mkdir(parents=True, exist_ok=True)
  write_npz(out, arrays)
  counts = {s: np.bincount(arrays[f"{s}_labels"], minlength=NUM_CLASSES).tolist()
            for s in ("train", "test")}
  print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB); examples per class: {counts}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
