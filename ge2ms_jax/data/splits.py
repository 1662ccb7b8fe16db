"""Held-out splits carved from a training split: which examples "validation" and "tune" take.

Per class, a `fraction` of the training examples drawn with a seeded generator, at least one when the
class has two or more examples; "validation" and "tune" draw from separate streams, so the validation
split is the same whether or not a tune split is also carved. The same rule serves in-memory arrays
(`hold_out_arrays`, Fashion-MNIST) and ImageFolder file lists (`hold_out`).
"""

from __future__ import annotations

import numpy as np

from ge2ms_jax.data.formats import FolderLayout


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


def check_fractions(validation_fraction: float, tune_fraction: float) -> None:
  """Raises ValueError naming `config.data.validation_fraction` / `tune_fraction` outside [0, 1)."""
  for field, value in (("validation_fraction", validation_fraction), ("tune_fraction", tune_fraction)):
    if not 0 <= value < 1:
      raise ValueError(f"config.data.{field} must be in [0, 1), got {value!r}.")
