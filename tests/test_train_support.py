"""Stand-ins shared by the trainer tests: a small Flax net and an in-memory input pipeline.

`TinyNet` has the model's call signature (`net.apply(variables, images, train=...)`, BatchNorm
statistics in `batch_stats`); `ArrayData` offers the input pipeline's `dataset_info` /
`build_iterator` interface over numpy arrays, with `get_state` / `set_state` and per-process slicing
of every global batch. This module holds no tests.
"""

from __future__ import annotations

import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ge2ms_jax import sharding as sharding_lib
from ge2ms_jax import train


class TinyNet(nn.Module):
  """conv3x3 → BatchNorm → relu → mean pool → dense. images [B, H, W, C] → logits [B, K]."""
  num_classes: int = 4
  width: int = 8
  dtype: str = "float32"

  @nn.compact
  def __call__(self, images, train: bool = False):
    x = images.astype(self.dtype)
    x = nn.Conv(self.width, (3, 3), use_bias=False, dtype=self.dtype, name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype, name="bn")(x)
    x = nn.relu(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)


def make_arrays(num: int, size: int = 8, channels: int = 1, num_classes: int = 4, seed: int = 0):
  """A learnable toy task: each class is a fixed random template plus noise."""
  rng = np.random.default_rng(seed)
  templates = rng.normal(size=(num_classes, size, size, channels)).astype(np.float32)
  labels = rng.integers(0, num_classes, size=num).astype(np.int32)
  images = templates[labels] + 0.5 * rng.normal(size=(num, size, size, channels)).astype(np.float32)
  return images, labels


class ArrayIterator:
  """Global batches from numpy arrays; each process builds its rows of every global batch.

  Training: a fresh permutation per epoch (from `seed` and the epoch), the last partial batch dropped.
  Eval: one pass in order, the last batch padded with `mask` = 0.
  """

  def __init__(self, images, labels, num_classes, global_batch_size, sharding, seed, train,
               num_epochs):
    self.images, self.labels, self.k = images, labels, num_classes
    self.batch, self.sharding, self.seed, self.train = global_batch_size, sharding, seed, train
    self.num_epochs = num_epochs
    self.local = global_batch_size // jax.process_count()
    self.epoch, self.position = 0, 0

  def get_state(self):
    return {"epoch": self.epoch, "position": self.position}

  def set_state(self, state):
    self.epoch, self.position = int(state["epoch"]), int(state["position"])

  def __iter__(self):
    return self

  def _order(self):
    if not self.train:
      return np.arange(len(self.labels))
    return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.labels))

  def __next__(self):
    n = len(self.labels)
    if self.train and self.position + self.batch > n:
      self.epoch, self.position = self.epoch + 1, 0
    if self.num_epochs is not None and (self.epoch >= self.num_epochs or self.position >= n):
      raise StopIteration
    idx = self._order()[self.position:self.position + self.batch]
    mask = np.ones(self.batch, np.float32)
    if len(idx) < self.batch:  # Eval only: pad.
      mask[len(idx):] = 0
      idx = np.concatenate([idx, np.zeros(self.batch - len(idx), idx.dtype)])
    self.position += self.batch
    if not self.train and self.position >= n:
      self.epoch += 1
    start = jax.process_index() * self.local
    idx, mask = idx[start:start + self.local], mask[start:start + self.local]
    labels = self.labels[idx]
    batch = {"image": self.images[idx], "label": labels,
             "target": np.eye(self.k, dtype=np.float32)[labels]}
    if not self.train:
      batch["mask"] = mask
    return sharding_lib.host_to_global(batch, self.sharding)


class ArrayData:
  """The input pipeline's interface (`dataset_info`, `build_iterator`) over in-memory splits."""

  def __init__(self, num_train=96, num_test=20, size=8, num_classes=4):
    self.num_classes = num_classes
    self.splits = {"train": make_arrays(num_train, size, num_classes=num_classes, seed=1),
                   "test": make_arrays(num_test, size, num_classes=num_classes, seed=2)}
    self.built = []

  def dataset_info(self, config, eval_data=None):
    del config, eval_data
    return types.SimpleNamespace(splits={k: len(v[1]) for k, v in self.splits.items()},
                                 num_classes=self.num_classes,
                                 image_shape=self.splits["train"][0].shape[1:])

  def build_iterator(self, config, split="train", *, global_batch_size, sharding, seed, train=True,
                     num_epochs=None, eval_data=None):
    del config, eval_data
    images, labels = self.splits[split]
    it = ArrayIterator(images, labels, self.num_classes, global_batch_size, sharding, seed, train,
                       num_epochs)
    self.built.append(it)
    return it


def small_config(**overrides) -> ml_collections.ConfigDict:
  """A trainer config sized for a few CPU steps."""
  c = train.base_config()
  c.total_steps = 6
  c.batch_size = 16
  c.optax.lr = 3e-2
  c.optax.clip_norm = 1.0
  c.log_every_steps = 1
  c.ckpt.every_steps = 0
  c.ckpt.async_save = False
  c.evals.every_steps = 0
  c.evals.batch_size = 8
  c.evals.split = "test"
  c.model = ml_collections.ConfigDict({"dtype": "float32"})
  for key, value in overrides.items():
    node = c
    parts = key.split(".")
    for part in parts[:-1]:
      node = node[part]
    with node.unlocked():
      node[parts[-1]] = value
  return c


def leaves_equal(a, b) -> bool:
  """True if two pytrees have the same structure and bit-identical leaves."""
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  if jax.tree.structure(a) != jax.tree.structure(b) or len(la) != len(lb):
    return False
  return all(np.array_equal(np.asarray(jax.device_get(x)), np.asarray(jax.device_get(y)))
             for x, y in zip(la, lb))
