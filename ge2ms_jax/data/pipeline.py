"""Batches: which examples each process reads at each step, preprocessing, and the iterator.

The example stream. A split of `n` examples is read as one endless stream of positions `0, 1, 2,
...`; position `s` is example `perm_e[s mod n]` of epoch `e = s // n`, where `perm_e` is a
permutation drawn from `(seed, e)` (the identity without shuffling). Global batch `k` is positions
`[k * B, (k + 1) * B)`, and process `p` of `P` reads the `B / P` positions starting at
`k * B + p * B / P`. So every epoch visits every example exactly once across the processes, and
the examples of global batch `k` do not depend on the number of processes. A training iterator
with `num_epochs` yields `num_epochs * n // B` batches (None: endless); an evaluation iterator
(`train=False`) reads each epoch in order, pads the last batch with copies of real examples and
marks them with `mask` 0, so every example counts exactly once.

Batch `k` is a pure function of the data, the preprocessing string, the seed, `k` and `p`: random
ops draw from `np.random.default_rng([seed, k, p, train])`. Batches are made by a
`grain.MapDataset` over batch indices (threads, and optionally worker processes, work ahead), and
the iterator's state is the index of the next batch, so a restored iterator continues with exactly
the batches an uninterrupted one would have produced.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import threading
from typing import Any

import numpy as np

from ge2ms_jax.data import preprocess as pp_lib
from ge2ms_jax.data import sources as sources_lib

STATE_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the model and trainer need to know about a dataset.

  Attributes:
    name: `config.data.name`.
    num_classes: labels are in `[0, num_classes)`; targets have this many columns.
    image_shape: `(H, W, C)` of the images in batches (after `config.pp_eval`).
    splits: `{split: number of examples}`.
    class_names: names of the classes, by label.
    stored_shape: `(H, W, C)` of the stored images, None if stored encoded (ImageNet).
    skipped: `{split: number of corrupt files skipped}` (with `config.data.skip_corrupt`).
  """
  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  splits: dict[str, int]
  class_names: tuple[str, ...] = ()
  stored_shape: tuple[int, int, int] | None = None
  skipped: dict[str, int] = dataclasses.field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Which examples: the stream plan
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StreamPlan:
  """The examples of each batch for one process (see the module docstring).

  Attributes:
    num_examples: `n`, the split's size.
    global_batch_size: `B`, examples per step over all processes.
    process_index, process_count: `p` and `P`; `B` must be a multiple of `P`.
    seed: seed of the epoch permutations.
    shuffle: permute each epoch (training) or read in order.
    train: endless/epoch-count stream without padding (True), or padded passes with a mask.
    num_epochs: passes over the data; None is endless for training and 1 for evaluation.
  """
  num_examples: int
  global_batch_size: int
  process_index: int = 0
  process_count: int = 1
  seed: int = 0
  shuffle: bool = True
  train: bool = True
  num_epochs: int | None = None

  def __post_init__(self):
    if self.num_examples < 1:
      raise ValueError(f"the split is empty (num_examples={self.num_examples}).")
    if not isinstance(self.global_batch_size, (int, np.integer)) or self.global_batch_size < 1:
      raise ValueError(f"global_batch_size must be a positive int, got {self.global_batch_size!r}.")
    if self.process_count < 1 or not 0 <= self.process_index < self.process_count:
      raise ValueError(f"need 0 <= process_index < process_count, got {self.process_index} of "
                       f"{self.process_count}.")
    if self.global_batch_size % self.process_count:
      raise ValueError(f"global_batch_size {self.global_batch_size} is not a multiple of the "
                       f"process count {self.process_count}.")
    if self.num_epochs is not None and (not isinstance(self.num_epochs, (int, np.integer))
                                        or self.num_epochs < 1):
      raise ValueError(f"num_epochs must be None or an int >= 1, got {self.num_epochs!r}.")
    if self.train and self.num_epochs is not None and self.num_batches == 0:
      raise ValueError(f"{self.num_epochs} epoch(s) of {self.num_examples} examples do not fill "
                       f"one global batch of {self.global_batch_size}.")

  @property
  def local_batch_size(self) -> int:
    return self.global_batch_size // self.process_count

  @property
  def batches_per_pass(self) -> int:
    """Evaluation: batches of one padded pass, `ceil(n / B)`."""
    return math.ceil(self.num_examples / self.global_batch_size)

  @property
  def num_batches(self) -> int | None:
    """Batches the iterator yields; None for an endless training stream."""
    if self.train:
      if self.num_epochs is None:
        return None
      return self.num_epochs * self.num_examples // self.global_batch_size
    return (self.num_epochs or 1) * self.batches_per_pass

  def permutation(self, epoch: int) -> np.ndarray:
    """The order of epoch `epoch`: int64 `[n]`."""
    return _permutation(self.num_examples, self.seed, int(epoch), self.shuffle)

  def indices(self, step: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Examples of this process's share of batch `step`.

    Returns:
      `(indices int64 [B / P], mask)`: mask is None for training, else float32 `[B / P]`, 1 for
      real examples and 0 for padding (padding repeats real examples).
    """
    bl = self.local_batch_size
    offset = self.process_index * bl + np.arange(bl, dtype=np.int64)
    n = self.num_examples
    if self.train:
      pos = step * self.global_batch_size + offset
      epochs = pos // n
      out = np.empty(bl, np.int64)
      for e in np.unique(epochs):
        sel = epochs == e
        out[sel] = self.permutation(e)[pos[sel] % n]
      return out, None
    pos = (step % self.batches_per_pass) * self.global_batch_size + offset
    mask = (pos < n).astype(np.float32)
    return np.where(pos < n, pos, pos % n), mask


@functools.lru_cache(maxsize=4)
def _permutation(n: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
  if not shuffle:
    return np.arange(n, dtype=np.int64)
  perm = np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)
  perm.setflags(write=False)
  return perm


# ---------------------------------------------------------------------------------------------
# Making one batch
# ---------------------------------------------------------------------------------------------
class BatchMaker:
  """`maker(step) -> local batch dict of numpy arrays`; picklable for worker processes."""

  def __init__(self, source: sources_lib.Source, plan: StreamPlan, pp_spec: str, num_classes: int,
               seed: int, return_index: bool = False):
    self.source = source
    self.plan = plan
    self.pp_spec = pp_spec
    self.preprocess = pp_lib.get_preprocess_fn(pp_spec)
    self.num_classes = num_classes
    self.seed = seed
    self.return_index = return_index

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    step = int(step)
    idx, mask = self.plan.indices(step)
    batch = self.source.read(idx)
    rng = np.random.default_rng([self.seed, step, self.plan.process_index, int(self.plan.train)])
    batch = self.preprocess(batch, rng)
    batch = finalize(batch, self.num_classes, self.pp_spec)
    if mask is not None:
      batch["mask"] = mask
    if self.return_index:
      batch["index"] = idx.astype(np.int32) if mask is None else np.where(mask > 0, idx, -1).astype(
          np.int32)
    return batch


def finalize(batch: dict[str, Any], num_classes: int, pp_spec: str) -> dict[str, np.ndarray]:
  """Checks a preprocessed batch and completes it: float32 "image", int32 "label", float32
  "target" (plain one-hot if the preprocessing made none)."""
  image = batch.get("image")
  if not isinstance(image, np.ndarray) or image.ndim != 4:
    raise ValueError(f"preprocessing {pp_spec!r} must give images of one size as [B, H, W, C]; "
                     "add resize/central_crop/inception_crop ops.")
  if image.dtype != np.float32:
    raise ValueError(f"preprocessing {pp_spec!r} leaves {image.dtype} images; end it with "
                     "normalize(...) or value_range(...) so the model gets float32.")
  label = np.asarray(batch["label"]).astype(np.int32)
  if label.size and (label.min() < 0 or label.max() >= num_classes):
    raise ValueError(f"labels outside [0, {num_classes}): range [{label.min()}, {label.max()}].")
  target = batch.get("target")
  if target is None:
    target = np.zeros((label.shape[0], num_classes), np.float32)
    target[np.arange(label.shape[0]), label] = 1.0
  target = np.asarray(target, np.float32)
  if target.shape != (label.shape[0], num_classes):
    raise ValueError(f"preprocessing {pp_spec!r} gives targets of shape {target.shape}, the "
                     f"dataset has {num_classes} classes: fix onehot(...)'s num_classes.")
  out = {k: v for k, v in batch.items() if k not in ("image", "label", "target")}
  out.update(image=image, label=label, target=target)
  return out


# ---------------------------------------------------------------------------------------------
# The iterator
# ---------------------------------------------------------------------------------------------
class DataIterator:
  """Iterator of batches with a saveable state.

  `next(it)` gives a dict of `[B, ...]` arrays: global `jax.Array`s laid out by `sharding` (built
  from this process's share), or this process's numpy share when `sharding` is None.
  `get_state()` is a JSON-serialisable dict; `set_state(state)` continues from it.
  """

  def __init__(self, maker: BatchMaker, input_settings: dict[str, Any], sharding=None,
               fingerprint: dict[str, Any] | None = None):
    import grain  # pylint: disable=g-import-not-at-top
    self.plan = maker.plan
    self.num_batches = maker.plan.num_batches
    self.sharding = sharding
    self._fingerprint = dict(fingerprint or {})
    ds = grain.MapDataset.range(self.num_batches if self.num_batches is not None else sys.maxsize)
    ds = ds.map(maker)
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=input_settings["num_threads"],
                                                 prefetch_buffer_size=input_settings["prefetch"]))
    if input_settings["num_workers"] > 0:
      # Grain's worker processes read absl flags; a program not started by absl.app has not
      # parsed them, so their defaults are taken.
      from absl import flags  # pylint: disable=g-import-not-at-top
      if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
      it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=input_settings["num_workers"],
          per_worker_buffer_size=max(1, input_settings["prefetch"])))
    self._it = iter(it_ds)
    self._lock = threading.Lock()

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, Any]:
    with self._lock:
      local = next(self._it)
    if self.sharding is None:
      return local
    import jax  # pylint: disable=g-import-not-at-top
    b = self.plan.global_batch_size
    return {k: jax.make_array_from_process_local_data(self.sharding, v, (b,) + v.shape[1:])
            for k, v in local.items()}

  def get_state(self) -> dict[str, Any]:
    """The position in the stream, with what the stream depends on (JSON-serialisable)."""
    with self._lock:
      return {"format": STATE_FORMAT, "pipeline": dict(self._fingerprint),
              "grain": self._it.get_state()}

  def set_state(self, state: dict[str, Any]) -> None:
    """Continues from `state` (from `get_state` of an iterator of the same data and settings).

    Raises:
      ValueError: if the state is from an iterator over other data, batch size, seed or
        preprocessing (naming what differs).
    """
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or "grain" not in state:
      raise ValueError(f"not an input-pipeline state (format {STATE_FORMAT}): {state!r:.200}")
    saved = state.get("pipeline", {})
    diff = {k: (saved.get(k), v) for k, v in self._fingerprint.items() if saved.get(k) != v}
    if diff:
      raise ValueError("the saved input state is from another pipeline; differing settings "
                       f"(saved, now): {diff}.")
    with self._lock:
      self._it.set_state(state["grain"])

  def close(self) -> None:
    """Stops worker threads/processes."""
    close = getattr(self._it, "close", None)
    if close is not None:
      close()


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------
def _infer_image_shape(ds: sources_lib.OpenDataset, pp_spec: str) -> tuple[int, int, int]:
  """Runs the preprocessing on two dummy examples to learn the output image shape."""
  if ds.encoded:
    images = [sources_lib.encode_dummy_jpeg()] * 2
  else:
    images = np.zeros((2,) + tuple(ds.stored_shape), np.uint8)
  labels = np.asarray([0, ds.num_classes - 1], np.int32)
  out = pp_lib.get_preprocess_fn(pp_spec)({"image": images, "label": labels},
                                          np.random.default_rng(0))
  out = finalize(out, ds.num_classes, pp_spec)
  return tuple(int(s) for s in out["image"].shape[1:])


def _open(config, eval_data=None) -> tuple[sources_lib.OpenDataset, sources_lib.OpenDataset]:
  """`(base, ds)`: the dataset the model is trained on, and the one to read (`eval_data` or base)."""
  if "data" not in config:
    raise ValueError("config has no 'data' section; start from ge2ms_jax.data.default_config(name).")
  if eval_data is not None:
    base = sources_lib.eval_base(config.data)
    return base, sources_lib.open_eval_data(eval_data, base, config.data)
  ds = sources_lib.open_dataset(config.data)
  return ds, ds


def _pp_spec(config, train: bool) -> str:
  key = "pp_train" if train else "pp_eval"
  spec = config.get(key)
  if not isinstance(spec, str):
    raise ValueError(f"config.{key} must be a preprocessing string, got {spec!r}.")
  return spec


def dataset_info(config, eval_data: str | None = None) -> DatasetInfo:
  """Describes the dataset `config.data` names (preparing it first if needed).

  Args:
    config: a ConfigDict with `data`, `pp_train`, `pp_eval` (and `input`).
    eval_data: optional user data for evaluation (see `build_iterator`); its splits are reported.

  Returns:
    A `DatasetInfo`; `image_shape` is the shape `config.pp_eval` gives.

  Raises:
    ValueError: for a bad config or data (naming the field, file or folder), or if `pp_train` and
      `pp_eval` give different image shapes.
  """
  base, ds = _open(config, eval_data or None)
  shape = _infer_image_shape(base, _pp_spec(config, False))
  train_shape = _infer_image_shape(base, _pp_spec(config, True))
  if train_shape != shape:
    raise ValueError(f"config.pp_train gives images of shape {train_shape} but config.pp_eval "
                     f"gives {shape}; the model needs one input shape.")
  return DatasetInfo(name=base.name, num_classes=base.num_classes, image_shape=shape,
                     splits=dict(ds.splits), class_names=base.class_names or ds.class_names,
                     stored_shape=base.stored_shape,
                     skipped={s: len(v) for s, v in ds.skipped.items() if v})


def build_iterator(config, split: str = "train", *, global_batch_size: int, sharding=None,
                   seed: int = 0, train: bool = True, num_epochs: int | None = None,
                   eval_data: str | None = None, process_index: int | None = None,
                   process_count: int | None = None) -> DataIterator:
  """An iterator of preprocessed batches of one split.

  Args:
    config: ConfigDict with `data`, `pp_train`, `pp_eval`, `input` (see the package docstring).
    split: the split to read ("train", "test", "validation", ...).
    global_batch_size: examples per batch over all processes; a multiple of the process count.
    sharding: a `NamedSharding` for the batch's leading axis; batches are then global jax.Arrays
      made with `jax.make_array_from_process_local_data`. None: this process's numpy share.
    seed: seed of the order and augmentation (`config.input.seed`, when set, replaces it).
    train: shuffle and use `pp_train`, endless unless `num_epochs`; False: in order with
      `pp_eval`, one padded pass (or `num_epochs` passes) with a "mask".
    num_epochs: passes over the split; None: endless (train) or one (eval).
    eval_data: read this path instead of the configured dataset: an ImageFolder directory or
      `.tar.gz` of one, or a directory of Fashion-MNIST IDX files. Its class folders must be
      classes of the configured dataset and its images of its size. The split read is `split` if
      the data has it, else its only split.
    process_index, process_count: this process's place among the input processes; default
      `jax.process_index()` / `jax.process_count()`. Overriding them is for tests and tools that
      read one process's share without sharding.

  Returns:
    A `DataIterator` whose batches hold "image" float32 `[B, H, W, C]`, "label" int32 `[B]`,
    "target" float32 `[B, num_classes]`, and for evaluation "mask" float32 `[B]` (B the global
    batch with a sharding, else this process's share).
  """
  inp = sources_lib.input_settings(config.get("input"))
  _, ds = _open(config, eval_data)
  if eval_data is not None and split not in ds.splits:
    if len(ds.splits) != 1:
      raise ValueError(f"eval_data {eval_data} has splits {sorted(ds.splits)} and none is "
                       f"{split!r}; pass split= one of them.")
    split = next(iter(ds.splits))
  source = ds.source(split)
  if sharding is not None:
    import jax  # pylint: disable=g-import-not-at-top
    jp, jc = jax.process_index(), jax.process_count()
    if (process_index is not None and process_index != jp) or (
        process_count is not None and process_count != jc):
      raise ValueError(f"with a sharding, process_index/process_count are jax's ({jp} of {jc}), "
                       f"got {process_index} of {process_count}.")
    process_index, process_count = jp, jc
  elif process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  seed = int(inp["seed"]) if inp["seed"] is not None else int(seed)
  plan = StreamPlan(num_examples=len(source), global_batch_size=int(global_batch_size),
                    process_index=int(process_index), process_count=int(process_count), seed=seed,
                    shuffle=bool(inp["shuffle"]) and train, train=bool(train), num_epochs=num_epochs)
  pp_spec = _pp_spec(config, train)
  maker = BatchMaker(source, plan, pp_spec, ds.num_classes, seed, bool(inp["return_index"]))
  fingerprint = dict(dataset=ds.name, data=str(eval_data or config.data.get("source")), split=split,
                     num_examples=len(source), global_batch_size=int(global_batch_size),
                     seed=seed, train=bool(train), shuffle=plan.shuffle, num_epochs=num_epochs,
                     preprocess=pp_spec)
  return DataIterator(maker, inp, sharding=sharding, fingerprint=fingerprint)
