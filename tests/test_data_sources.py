"""Tests of dataset preparation and reading: layouts, bad input, eval data, ImageNet, no TensorFlow."""

import gzip
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import textwrap

import numpy as np
import pytest
from PIL import Image

from ge2ms_jax import data
from ge2ms_jax.data import formats
from ge2ms_jax.data import splits

from test_data import check_batch, make_image_folder  # pylint: disable=g-bad-import-order

REPO = pathlib.Path(__file__).resolve().parents[1]


def folder_config(source, data_dir, name="cifar10", **data_fields):
  cfg = data.default_config(name)
  cfg.data.update(source=str(source), data_dir=str(data_dir), **data_fields)
  return cfg


def ten_classes(root, **kw):
  kw.setdefault("classes", [f"c{i}" for i in range(10)])
  kw.setdefault("per_class", 3)
  return make_image_folder(root, **kw)


# ---------------------------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------------------------
def test_layout_class_folders_split_folders_and_wrappers(tmp_path):
  flat = make_image_folder(tmp_path / "flat", per_class=2, size=4)
  layout = formats.scan_folder(formats.FolderReader(flat))
  assert layout.classes == ("cat", "dog", "frog") and list(layout.files) == ["train"]
  assert len(layout.files["train"]) == 6

  split = tmp_path / "wrap" / "cifar"
  make_image_folder(split, per_class=2, size=4, split="train")
  make_image_folder(split, classes=("cat", "dog"), per_class=1, size=4, split="val")
  layout = formats.scan_folder(formats.FolderReader(tmp_path / "wrap"))
  assert sorted(layout.files) == ["train", "validation"]
  assert {c for _, c in layout.files["validation"]} == {"cat", "dog"}

  held = splits.hold_out(formats.scan_folder(formats.FolderReader(
      make_image_folder(tmp_path / "ho", per_class=10, size=4))), 0.3, seed=0)
  for c in ("cat", "dog", "frog"):
    assert sum(1 for _, k in held.files["validation"] if k == c) == 3
    assert sum(1 for _, k in held.files["train"] if k == c) == 7
  again = splits.hold_out(formats.scan_folder(formats.FolderReader(tmp_path / "ho")), 0.3, 0)
  assert again.files == held.files


def test_tar_gz_source_equals_directory_source(tmp_path):
  src = ten_classes(tmp_path / "src" / "train", size=32)
  archive = tmp_path / "cifar.tar.gz"
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(src, arcname="train")
  batches = []
  for source in (src.parent, archive):
    cfg = folder_config(source, tmp_path / "dd", validation_fraction=0.0)
    info = data.dataset_info(cfg)
    assert info.splits == {"train": 30}
    it = data.build_iterator(cfg, "validation" if False else "train", global_batch_size=30,
                             train=False, process_index=0, process_count=1)
    batches.append(next(it))
  for k in ("image", "label"):
    np.testing.assert_array_equal(batches[0][k], batches[1][k])


def test_preparation_is_reused_and_safe_when_concurrent(tmp_path):
  src = ten_classes(tmp_path / "src", size=32)
  dd = tmp_path / "dd"
  script = textwrap.dedent(f"""
      from ge2ms_jax import data
      cfg = data.default_config("cifar10")
      cfg.data.update(source={str(src)!r}, data_dir={str(dd)!r})
      print(data.dataset_info(cfg).splits)
  """)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env) for _ in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err.decode()[-2000:]
    assert "'train': 20" in out.decode() and "'validation': 10" in out.decode()
  prepared = list((dd / "ge2ms_image_folder").glob("cifar10_*/1.0.0/dataset_info.json"))
  assert len(prepared) == 1
  assert not list((dd / "ge2ms_image_folder").glob("*/incomplete*"))


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------
def test_missing_source_and_data(tmp_path):
  with pytest.raises(ValueError, match=f"image folder {tmp_path / 'nope'} does not exist"):
    data.dataset_info(folder_config(tmp_path / "nope", tmp_path / "dd"))
  cfg = data.default_config("cifar10")
  with pytest.raises(ValueError, match="needs config.data.source"):
    data.dataset_info(cfg)
  cfg = data.default_config("fashion_mnist_full")
  cfg.data.source = str(tmp_path / "idx")
  with pytest.raises(ValueError, match="full Fashion-MNIST set was not found at .*idx"):
    data.dataset_info(cfg)
  cfg = data.default_config("imagenet2012")
  cfg.data.data_dir = str(tmp_path / "dd")
  with pytest.raises(ValueError, match="imagenet2012 is not prepared in .*docs/data.md"):
    data.dataset_info(cfg)


def test_empty_class_folder_is_named(tmp_path):
  src = ten_classes(tmp_path / "src", size=32)
  for f in (src / "c3").iterdir():
    f.unlink()
  (src / "c3" / "notes.txt").write_text("not an image")
  with pytest.raises(ValueError, match=f"class folder {src / 'c3'} is empty"):
    data.dataset_info(folder_config(src, tmp_path / "dd"))


def test_wrong_number_of_classes(tmp_path):
  src = make_image_folder(tmp_path / "src", size=32)
  with pytest.raises(ValueError, match="has 3 class folders .*the dataset expects 10"):
    data.dataset_info(folder_config(src, tmp_path / "dd"))


def test_corrupt_image_named_or_skipped_with_count(tmp_path):
  src = ten_classes(tmp_path / "src", size=32, fmt="JPEG")
  good = (src / "c5" / "1.jpeg").read_bytes()
  (src / "c5" / "1.jpeg").write_bytes(good[:len(good) // 3])     # truncated JPEG
  with pytest.raises(ValueError, match=f"corrupt image {src / 'c5' / '1.jpeg'}.*skip_corrupt"):
    data.dataset_info(folder_config(src, tmp_path / "dd", validation_fraction=0.0))
  cfg = folder_config(src, tmp_path / "dd", validation_fraction=0.0, skip_corrupt=True)
  info = data.dataset_info(cfg)
  assert info.splits == {"train": 29} and info.skipped == {"train": 1}
  batch = next(data.build_iterator(cfg, global_batch_size=29, train=False, process_index=0,
                                   process_count=1))
  assert np.bincount(batch["label"], minlength=10)[5] == 2


def test_mismatched_image_size_is_named(tmp_path):
  src = ten_classes(tmp_path / "src", size=32)
  Image.fromarray(np.zeros((30, 32, 3), np.uint8)).save(src / "c7" / "odd.png")
  with pytest.raises(ValueError, match=f"image {src / 'c7' / 'odd.png'} is 30x32 .* are 32x32"):
    data.dataset_info(folder_config(src, tmp_path / "dd"))


def test_bad_idx_files(tmp_path):
  d = tmp_path / "idx"
  d.mkdir()
  (d / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big")
                                              + (28).to_bytes(4, "big") * 2 + b"\x00" * 100)
  (d / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big")
                                              + b"\x01" * 5)
  with pytest.raises(ValueError, match="train-images-idx3-ubyte: IDX header says shape"):
    formats.load_idx_split(*formats.find_idx_pairs(d)["train"])
  (d / "train-labels-idx1-ubyte").unlink()
  with pytest.raises(ValueError, match="split 'train' has train-images-idx3-ubyte but no labels"):
    formats.find_idx_pairs(d)


# ---------------------------------------------------------------------------------------------
# Evaluation on user data
# ---------------------------------------------------------------------------------------------
def _write_idx(path, arr):
  header = b"\x00\x00\x08" + bytes([arr.ndim]) + b"".join(int(s).to_bytes(4, "big")
                                                           for s in arr.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + arr.astype(np.uint8).tobytes())


def test_eval_data_idx_and_image_folder(tmp_path):
  dd = tmp_path / "dd"
  cfg = data.default_config("fashion_mnist")
  cfg.data.data_dir = str(dd)
  idx = tmp_path / "idx"
  idx.mkdir()
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (13, 28, 28), dtype=np.uint8)
  labels = np.arange(13) % 10
  _write_idx(idx / "t10k-images-idx3-ubyte.gz", images)
  _write_idx(idx / "t10k-labels-idx1-ubyte.gz", labels)
  batches = list(data.build_iterator(cfg, "test", global_batch_size=8, train=False,
                                     eval_data=str(idx), process_index=0, process_count=1))
  assert len(batches) == 2
  check_batch(batches[0], 8, (28, 28, 1), 10, eval_batch=True)
  got = np.concatenate([b["label"][b["mask"] > 0] for b in batches])
  np.testing.assert_array_equal(np.sort(got), np.sort(labels))

  # An ImageFolder named by the dataset's classes, grey 28x28 PNGs.
  folder = make_image_folder(tmp_path / "eval", classes=("bag", "sandal"), per_class=3, size=28,
                             channels=1)
  info = data.dataset_info(cfg, eval_data=str(folder))
  assert info.splits == {"train": 6}
  batch = next(data.build_iterator(cfg, "test", global_batch_size=6, train=False,
                                   eval_data=str(folder), process_index=0, process_count=1))
  assert sorted(batch["label"].tolist()) == [5, 5, 5, 8, 8, 8]   # sandal = 5, bag = 8

  wrong = make_image_folder(tmp_path / "wrong", classes=("bag", "cat"), per_class=1, size=28,
                            channels=1)
  with pytest.raises(ValueError, match=r"class folders \['cat'\] .* are not classes of this"):
    data.build_iterator(cfg, global_batch_size=2, train=False, eval_data=str(wrong))
  big = make_image_folder(tmp_path / "big", classes=("bag",), per_class=1, size=32, channels=1)
  with pytest.raises(ValueError, match="bag/0.png is 32x32 .* are 28x28"):
    data.build_iterator(cfg, global_batch_size=2, train=False, eval_data=str(big))


# ---------------------------------------------------------------------------------------------
# ImageNet through TFDS's own imagenet2012 builder
# ---------------------------------------------------------------------------------------------
def make_fake_imagenet(data_dir: pathlib.Path, n_train=12, n_val=5) -> None:
  """Writes ArrayRecord files laid out and described exactly like TFDS's prepared imagenet2012
  (same features: JPEG image, 1000-class label, file name), with random JPEGs of random sizes."""
  import tensorflow_datasets as tfds
  labels_file = (pathlib.Path(tfds.__file__).parent / "datasets" / "imagenet2012" / "labels.txt")

  class FakeImagenet(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("5.1.0")
    code_path = None

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(encoding_format="jpeg"),
          "label": tfds.features.ClassLabel(names_file=labels_file),
          "file_name": tfds.features.Text()}), supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(n_train, 0),
              "validation": self._generate_examples(n_val, 1)}

    def _generate_examples(self, n, seed):
      rng = np.random.default_rng(seed)
      for i in range(n):
        h, w = rng.integers(60, 140, 2)
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
        yield i, {"image": buf.getvalue(), "label": int(rng.integers(1000)),
                  "file_name": f"{i}.JPEG"}

  tmp = data_dir.parent / "fake_build"
  b = FakeImagenet(data_dir=str(tmp), file_format="array_record")
  b.download_and_prepare(file_format="array_record")
  src = pathlib.Path(b.data_dir)
  dst = data_dir / "imagenet2012" / "5.1.0"
  dst.mkdir(parents=True)
  for f in src.iterdir():
    shutil.copy(f, dst / f.name.replace(b.name, "imagenet2012"))
  info = json.loads((dst / "dataset_info.json").read_text())
  info["name"] = "imagenet2012"
  (dst / "dataset_info.json").write_text(json.dumps(info))


@pytest.fixture(scope="module")
def fake_imagenet(tmp_path_factory):
  dd = tmp_path_factory.mktemp("imagenet") / "dd"
  make_fake_imagenet(dd)
  return dd


def test_imagenet2012_reads_tfds_prepared_data(fake_imagenet):
  cfg = data.default_config("imagenet2012")
  cfg.data.data_dir = str(fake_imagenet)
  cfg.pp_train = cfg.pp_train.replace("224", "64")
  cfg.pp_eval = cfg.pp_eval.replace("256", "72").replace("224", "64")
  info = data.dataset_info(cfg)
  assert info.num_classes == 1000 and info.image_shape == (64, 64, 3)
  assert info.splits == {"train": 12, "validation": 5}
  batch = next(data.build_iterator(cfg, global_batch_size=6, process_index=0, process_count=1))
  check_batch(batch, 6, (64, 64, 3), 1000)
  assert np.all(batch["target"].max(1) < 0.95)   # label smoothing (and mixup) applied
  ev = list(data.build_iterator(cfg, "validation", global_batch_size=4, train=False,
                                process_index=0, process_count=1))
  assert len(ev) == 2 and sum(b["mask"].sum() for b in ev) == 5
  check_batch(ev[0], 4, (64, 64, 3), 1000, eval_batch=True)


# ---------------------------------------------------------------------------------------------
# No TensorFlow
# ---------------------------------------------------------------------------------------------
def test_no_tensorflow_is_imported(tmp_path, fake_imagenet):
  folder = ten_classes(tmp_path / "folder", size=32)
  script = textwrap.dedent(f"""
      import sys
      from ge2ms_jax import data
      dd = {str(tmp_path / "dd")!r}
      configs = []
      for name in ("fashion_mnist", "synthetic", "cifar10", "imagenet2012"):
        cfg = data.default_config(name)
        cfg.data.data_dir = dd
        configs.append(cfg)
      configs[2].data.source = {str(folder)!r}
      configs[3].data.data_dir = {str(fake_imagenet)!r}
      configs[3].pp_train = "decode_jpeg_and_inception_crop(32)|flip_lr|value_range(0, 1)"
      configs[3].pp_eval = "decode|resize_small(32)|central_crop(32)|value_range(0, 1)"
      for cfg in configs:
        data.dataset_info(cfg)
        for train in (True, False):
          split = "train" if train else cfg.data.eval_split
          it = data.build_iterator(cfg, split, global_batch_size=4, train=train)
          next(it); next(it)
      bad = [m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow.")]
      print("TF_MODULES", bad)
  """)
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"), cwd=REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "TF_MODULES []" in out.stdout


def test_cifar_eval_data_needs_no_training_source(tmp_path):
  # A checkpoint evaluates on new images without its training data: CIFAR-10's classes are known.
  cfg = data.default_config("cifar10")
  cfg.data.data_dir = str(tmp_path / "dd")
  folder = make_image_folder(tmp_path / "eval", classes=("ship", "airplane"), per_class=2)
  info = data.dataset_info(cfg, eval_data=str(folder))
  assert info.num_classes == 10 and info.image_shape == (32, 32, 3) and info.splits == {"train": 4}
  batch = next(data.build_iterator(cfg, "validation", global_batch_size=4, train=False,
                                   eval_data=str(folder), process_index=0, process_count=1))
  assert sorted(batch["label"].tolist()) == [0, 0, 8, 8]   # airplane = 0, ship = 8
  with pytest.raises(ValueError, match="needs config.data.source"):
    data.dataset_info(cfg)   # training or evaluating the configured split still needs the source

  # CIFAR-100's class names are the evaluated folder's own, so it must hold all 100 of them.
  cfg100 = data.default_config("cifar100")
  cfg100.data.data_dir = str(tmp_path / "dd")
  with pytest.raises(ValueError, match="expects 100"):
    data.dataset_info(cfg100, eval_data=str(folder))
