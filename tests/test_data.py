"""Tests of the input pipeline: sources, sharding across processes, determinism, resumption."""

import json
import os
import pathlib

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P
from PIL import Image

from ge2ms_jax import data
from ge2ms_jax.data import formats
from ge2ms_jax.data import sources


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """One prepared-data folder for the whole run (shared by xdist workers; preparation is locked)."""
  base = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    base = base.parent
  return str(base / "ge2ms_data")


def make_image_folder(root: pathlib.Path, classes=("cat", "dog", "frog"), per_class=6, size=32,
                      channels=3, split=None, fmt="PNG", seed=0) -> pathlib.Path:
  """A small ImageFolder (`[split/]class/i.png`) of random images; returns `root`."""
  rng = np.random.default_rng(seed)
  for c in classes:
    d = root / split / c if split else root / c
    d.mkdir(parents=True, exist_ok=True)
    for i in range(per_class):
      arr = rng.integers(0, 256, (size, size, channels), dtype=np.uint8)
      Image.fromarray(arr[..., 0] if channels == 1 else arr).save(d / f"{i}.{fmt.lower()}", fmt)
  return root


@pytest.fixture(scope="session")
def cifar_folder(tmp_path_factory):
  return make_image_folder(tmp_path_factory.mktemp("cifar") / "src", classes=tuple(
      builders_classes()), per_class=8, split="train")


def builders_classes():
  return sources.CIFAR10_CLASSES


def cifar_config(source, data_dir, **pp):
  cfg = data.default_config("cifar10")
  cfg.data.source = str(source)
  cfg.data.data_dir = data_dir
  cfg.data.validation_fraction = 0.25
  cfg.pp_train = pp.get("pp_train", cfg.pp_train + "|mixup(0.8, cutmix_alpha=1.0)")
  return cfg


def fashion_config(data_dir):
  cfg = data.default_config("fashion_mnist")
  cfg.data.data_dir = data_dir
  return cfg


def synthetic_config(n=60, n_eval=25, shape=(6, 5, 2), k=7):
  cfg = data.default_config("synthetic")
  cfg.data.update(image_shape=shape, num_classes=k, num_train_examples=n, num_eval_examples=n_eval)
  cfg.pp_train = f"flip_lr|value_range(-1, 1)|onehot({k}, smoothing=0.1)"
  cfg.pp_eval = f"value_range(-1, 1)|onehot({k})"
  cfg.input.return_index = True
  return cfg


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(np.asarray(x[k]), np.asarray(y[k]), err_msg=k)


def check_batch(batch, b, shape, k, eval_batch=False):
  assert batch["image"].shape == (b,) + shape and batch["image"].dtype == np.float32
  assert batch["label"].shape == (b,) and batch["label"].dtype == np.int32
  assert batch["target"].shape == (b, k) and batch["target"].dtype == np.float32
  assert batch["label"].min() >= 0 and batch["label"].max() < k
  np.testing.assert_allclose(batch["target"].sum(1), 1.0, rtol=1e-5)
  assert np.isfinite(batch["image"]).all()
  if eval_batch:
    assert batch["mask"].shape == (b,) and batch["mask"].dtype == np.float32


# ---------------------------------------------------------------------------------------------
# Each source: documented shapes, dtypes, label ranges
# ---------------------------------------------------------------------------------------------
def test_fashion_mnist_embedded(data_dir):
  cfg = fashion_config(data_dir)
  info = data.dataset_info(cfg)
  assert info.num_classes == 10 and info.image_shape == (28, 28, 1)
  assert info.splits == {"train": 10000, "test": 2500}
  batch = next(data.build_iterator(cfg, "train", global_batch_size=64, process_count=1,
                                   process_index=0))
  check_batch(batch, 64, (28, 28, 1), 10)
  ev = list(data.build_iterator(cfg, "test", global_batch_size=1000, train=False, process_count=1,
                                process_index=0))
  assert len(ev) == 3 and sum(b["mask"].sum() for b in ev) == 2500
  check_batch(ev[-1], 1000, (28, 28, 1), 10, eval_batch=True)
  labels = np.concatenate([b["label"][b["mask"] > 0] for b in ev])
  assert np.bincount(labels, minlength=10).tolist() == [250] * 10


def test_embedded_subset_composition():
  with np.load(formats.EMBEDDED_PATH) as z:
    for split, per_class in (("train", 1000), ("test", 250)):
      images, labels, index = z[f"{split}_images"], z[f"{split}_labels"], z[f"{split}_source_index"]
      assert images.shape == (10 * per_class, 28, 28) and images.dtype == np.uint8
      assert np.bincount(labels, minlength=10).tolist() == [per_class] * 10
      assert np.all(np.diff(index.astype(np.int64)) > 0)
  assert formats.EMBEDDED_PATH.stat().st_size <= 6_000_000


@pytest.mark.skipif(not formats.DEBIAN_FASHION_MNIST.is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_embedded_subset_regenerates_identically(tmp_path):
  from ge2ms_jax.data import make_embedded
  out = tmp_path / "subset.npz"
  make_embedded.main(["--output", str(out)])
  assert out.read_bytes() == formats.EMBEDDED_PATH.read_bytes()


@pytest.mark.skipif(not formats.DEBIAN_FASHION_MNIST.is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_full(data_dir):
  cfg = data.default_config("fashion_mnist_full")
  cfg.data.data_dir = data_dir
  info = data.dataset_info(cfg)
  assert info.splits == {"train": 60000, "test": 10000} and info.image_shape == (28, 28, 1)
  check_batch(next(data.build_iterator(cfg, global_batch_size=32, process_count=1,
                                       process_index=0)), 32, (28, 28, 1), 10)


def test_cifar_style_image_folder(cifar_folder, data_dir):
  cfg = cifar_config(cifar_folder, data_dir)
  info = data.dataset_info(cfg)
  assert info.num_classes == 10 and info.image_shape == (32, 32, 3)
  assert info.class_names == builders_classes()
  assert info.splits == {"train": 60, "validation": 20}   # 2 of 8 per class held out
  it = data.build_iterator(cfg, "train", global_batch_size=16, process_count=1, process_index=0)
  check_batch(next(it), 16, (32, 32, 3), 10)
  ev = list(data.build_iterator(cfg, "validation", global_batch_size=16, train=False,
                                process_count=1, process_index=0))
  assert sum(b["mask"].sum() for b in ev) == 20
  labels = np.concatenate([b["label"][b["mask"] > 0] for b in ev])
  assert np.bincount(labels, minlength=10).tolist() == [2] * 10


def test_synthetic_any_shape():
  cfg = synthetic_config(shape=(7, 3, 5), k=4)
  info = data.dataset_info(cfg)
  assert info.image_shape == (7, 3, 5) and info.splits == {"train": 60, "test": 25}
  check_batch(next(data.build_iterator(cfg, global_batch_size=8, process_count=1,
                                       process_index=0)), 8, (7, 3, 5), 4)


CIFAR_TAR = os.environ.get("GE2MS_CIFAR10_TAR") or str(
    pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-train-jpeg.tar.gz")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(CIFAR_TAR), reason="the CIFAR-10 JPEG archive is absent")
def test_cifar10_archive(data_dir):
  cfg = data.default_config("cifar10")
  cfg.data.source, cfg.data.data_dir = CIFAR_TAR, data_dir
  info = data.dataset_info(cfg)
  assert info.splits == {"train": 45000, "validation": 5000}
  assert info.class_names == builders_classes()
  check_batch(next(data.build_iterator(cfg, global_batch_size=128, process_count=1,
                                       process_index=0)), 128, (32, 32, 3), 10)


# ---------------------------------------------------------------------------------------------
# Multi-process sharding
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, batch", [(60, 8), (61, 6), (7, 4)])
def test_two_processes_cover_each_epoch_exactly_once(n, batch):
  plans = [data.StreamPlan(n, batch, process_index=p, process_count=2, seed=3) for p in (0, 1)]
  steps = 5 * n // batch
  # Global stream order: per batch, process 0's share then process 1's.
  stream = np.concatenate([np.concatenate([pl.indices(k)[0] for pl in plans])
                           for k in range(steps)])
  epochs = [stream[e * n:(e + 1) * n] for e in range(len(stream) // n)]
  assert len(epochs) >= 4
  for order in epochs:
    np.testing.assert_array_equal(np.sort(order), np.arange(n))
  assert not np.array_equal(epochs[0], epochs[1])   # reshuffled every epoch
  # The two shares of one step are disjoint and together the single-process batch.
  single = data.StreamPlan(n, batch, seed=3)
  for k in range(steps):
    both = np.concatenate([pl.indices(k)[0] for pl in plans])
    np.testing.assert_array_equal(both, single.indices(k)[0])


def test_two_process_iterators_partition_the_data():
  cfg = synthetic_config(n=60)
  seen = []
  for p in (0, 1):
    it = data.build_iterator(cfg, global_batch_size=12, process_index=p, process_count=2,
                             num_epochs=2, seed=1)
    batches = list(it)
    assert len(batches) == 10 and all(b["image"].shape[0] == 6 for b in batches)
    seen.append(np.stack([b["index"] for b in batches]))   # [steps, 6]
  stream = np.concatenate([seen[0], seen[1]], axis=1).ravel()
  for e in range(2):
    np.testing.assert_array_equal(np.sort(stream[e * 60:(e + 1) * 60]), np.arange(60))


def test_two_process_eval_pads_and_masks():
  cfg = synthetic_config(n_eval=25)
  real = []
  for p in (0, 1):
    batches = list(data.build_iterator(cfg, "test", global_batch_size=8, train=False,
                                       process_index=p, process_count=2))
    assert len(batches) == 4
    for b in batches:
      check_batch(b, 4, (6, 5, 2), 7, eval_batch=True)
      assert np.all((b["index"] >= 0) == (b["mask"] > 0))
      real.append(b["index"][b["mask"] > 0])
  np.testing.assert_array_equal(np.sort(np.concatenate(real)), np.arange(25))


def test_global_arrays_with_a_sharding(data_dir):
  cfg = fashion_config(data_dir)
  mesh = jax.make_mesh((4, 2), ("data", "fsdp"), axis_types=(jax.sharding.AxisType.Explicit,) * 2)
  sharding = NamedSharding(mesh, P(("data", "fsdp")))
  it = data.build_iterator(cfg, "test", global_batch_size=16, sharding=sharding, train=False)
  ref = data.build_iterator(cfg, "test", global_batch_size=16, train=False, process_index=0,
                            process_count=1)
  batch, expected = next(it), next(ref)
  for k in ("image", "label", "target", "mask"):
    assert isinstance(batch[k], jax.Array) and batch[k].sharding == sharding
    assert batch[k].shape == expected[k].shape
    np.testing.assert_array_equal(np.asarray(batch[k]), expected[k])
  assert len(batch["image"].addressable_shards) == 8


# ---------------------------------------------------------------------------------------------
# Determinism and resumption
# ---------------------------------------------------------------------------------------------
def test_same_seed_same_batches_other_seed_other_batches(cifar_folder, data_dir):
  cfg = cifar_config(cifar_folder, data_dir)

  def run(seed):
    return take(data.build_iterator(cfg, global_batch_size=8, seed=seed, process_index=0,
                                    process_count=1), 3)

  a, b, c = run(0), run(0), run(1)
  assert_batches_equal(a, b)
  assert not np.array_equal(a[0]["image"], c[0]["image"])
  assert not np.array_equal(np.concatenate([x["label"] for x in a]),
                            np.concatenate([x["label"] for x in c]))


@pytest.mark.parametrize("workers", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_save_and_restore_continues_bit_for_bit(cifar_folder, data_dir, workers):
  cfg = cifar_config(cifar_folder, data_dir)
  cfg.input.num_workers = workers

  def new():
    return data.build_iterator(cfg, global_batch_size=8, seed=5, process_index=0, process_count=1)

  it = new()
  take(it, 9)                         # crosses the 60-example epoch boundary (7.5 batches)
  state = json.loads(json.dumps(it.get_state()))
  expected = take(it, 4)
  it.close()
  fresh = new()
  fresh.set_state(state)
  assert_batches_equal(take(fresh, 4), expected)
  fresh.close()
  # The batches are those of one uninterrupted run.
  whole = new()
  assert_batches_equal(take(whole, 13)[9:], expected)
  whole.close()


def test_restore_rejects_state_of_another_pipeline(data_dir):
  cfg = fashion_config(data_dir)
  it = data.build_iterator(cfg, global_batch_size=8, process_index=0, process_count=1)
  next(it)
  other = data.build_iterator(cfg, global_batch_size=16, process_index=0, process_count=1)
  with pytest.raises(ValueError, match="global_batch_size.*8, 16"):
    other.set_state(it.get_state())
  with pytest.raises(ValueError, match="not an input-pipeline state"):
    other.set_state({"next_index": 3})


# ---------------------------------------------------------------------------------------------
# Config handling
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", data.DATASETS)
def test_default_configs_parse(name):
  cfg = data.default_config(name)
  assert cfg.data.name == name and set(cfg) == {"data", "pp_train", "pp_eval", "input"}
  data.get_preprocess_fn(cfg.pp_train)
  data.get_preprocess_fn(cfg.pp_eval)


def test_config_errors(data_dir):
  cfg = fashion_config(data_dir)
  cfg.data.sauce = "x"
  with pytest.raises(ValueError, match=r"unknown config.data fields \['sauce'\]; valid fields: name"):
    data.dataset_info(cfg)
  cfg = fashion_config(data_dir)
  cfg.input.workers = 2
  with pytest.raises(ValueError, match=r"unknown config.input fields \['workers'\]"):
    data.build_iterator(cfg, global_batch_size=8)
  with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
    data.default_config("mnist")
  cfg = fashion_config(data_dir)
  with pytest.raises(ValueError, match="has no split 'validation'; its splits are"):
    data.build_iterator(cfg, "validation", global_batch_size=8)
  with pytest.raises(ValueError, match="not a multiple of the process count 2"):
    data.build_iterator(cfg, global_batch_size=9, process_index=0, process_count=2)
  cfg.pp_eval = "onehot(10)"
  with pytest.raises(ValueError, match="leaves uint8 images; end it with normalize"):
    data.dataset_info(cfg)
  cfg.pp_eval = "random_crop(20)|normalize('fashion_mnist')"
  with pytest.raises(ValueError, match=r"pp_train gives images of shape \(28, 28, 1\) but "
                     r"config.pp_eval gives \(20, 20, 1\)"):
    data.dataset_info(cfg)
