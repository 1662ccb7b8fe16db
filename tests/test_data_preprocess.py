"""Tests of the preprocessing ops (ge2ms_jax/data/preprocess.py, image_ops.py)."""

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from ge2ms_jax.data import image_ops
from ge2ms_jax.data import preprocess as pp


def _images(b=8, h=12, w=10, c=3, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (b, h, w, c), dtype=np.uint8)


def _batch(images, num_classes=10):
  labels = np.arange(len(images), dtype=np.int32) % num_classes
  return {"image": images, "label": labels}


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------
def test_parse_ops_and_arguments():
  ops = pp.parse("random_crop(32, pad=4)|flip_lr|randaugment(2, 9)|normalize('cifar10')"
                 "|onehot(10, smoothing=0.1)")
  assert [o.name for o in ops] == ["random_crop", "flip_lr", "randaugment", "normalize", "onehot"]
  assert ops[0].args == (32,) and ops[0].kwargs == {"pad": 4}
  assert ops[4].kwargs == {"smoothing": 0.1}
  # A '|' inside a string argument does not split.
  assert len(pp.parse("normalize(mean=(0.5,), std=(0.25,))|onehot(3)")) == 2


@pytest.mark.parametrize("spec, match", [
    ("flip_lr|no_such_op(3)", "unknown preprocessing op 'no_such_op'.*registered ops: .*flip_lr"),
    ("random_crop(32, padding=4)", r"random_crop\(32, padding=4\).*signature is random_crop\(size"),
    ("onehot(num_classes)", "arguments must be Python literals"),
    ("flip_lr(", "not valid syntax"),
    ("random_crop(-3)", "size must be a positive int"),
    ("normalize('mnist')", "unknown stats 'mnist'; known: imagenet"),
    ("randaugment(2, 9, ops=['rotate', 'blur'])", r"unknown ops \['blur'\]"),
])
def test_bad_specs_name_the_problem(spec, match):
  with pytest.raises(ValueError, match=match):
    pp.get_preprocess_fn(spec)


def test_preprocess_is_picklable_and_deterministic():
  import pickle
  fn = pp.get_preprocess_fn("random_crop(10, pad=2)|flip_lr|randaugment(2, 9)|value_range(0, 1)")
  fn2 = pickle.loads(pickle.dumps(fn))
  x = _images()
  a = fn(_batch(x), np.random.default_rng(3))["image"]
  b = fn2(_batch(x), np.random.default_rng(3))["image"]
  c = fn(_batch(x), np.random.default_rng(4))["image"]
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


# ---------------------------------------------------------------------------------------------
# Crops and flips
# ---------------------------------------------------------------------------------------------
def test_random_crop_takes_windows_of_the_padded_image():
  x = _images(b=16)
  out = pp.get_preprocess_fn("random_crop((12, 10), pad=3)")(_batch(x), np.random.default_rng(0))
  y = out["image"]
  assert y.shape == x.shape and y.dtype == np.uint8
  padded = np.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)))
  offsets = set()
  for i in range(len(x)):
    hits = [(t, l) for t in range(7) for l in range(7)
            if np.array_equal(padded[i, t:t + 12, l:l + 10], y[i])]
    assert hits, f"example {i} is not a window of its padded image"
    offsets.add(hits[0])
  assert len(offsets) > 1  # offsets are drawn per example


def test_flip_lr_probability_extremes():
  x = _images()
  always = pp.get_preprocess_fn("flip_lr(1.0)")(_batch(x), np.random.default_rng(0))["image"]
  never = pp.get_preprocess_fn("flip_lr(0.0)")(_batch(x), np.random.default_rng(0))["image"]
  np.testing.assert_array_equal(always, x[:, :, ::-1])
  np.testing.assert_array_equal(never, x)


def test_variable_size_images_crop_resize_and_stack_errors():
  rng = np.random.default_rng(0)
  imgs = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(40, 60), (50, 30)]]
  out = pp.get_preprocess_fn("resize_small(32)|central_crop(32)")(
      {"image": list(imgs), "label": np.zeros(2, np.int32)}, rng)
  assert out["image"].shape == (2, 32, 32, 3)
  out = pp.get_preprocess_fn("inception_crop(24)")({"image": list(imgs), "label": None}, rng)
  assert out["image"].shape == (2, 24, 24, 3) and out["image"].dtype == np.uint8
  with pytest.raises(ValueError, match="flip_lr: needs images of one size.*resize"):
    pp.get_preprocess_fn("flip_lr")({"image": list(imgs), "label": None}, rng)


def _jpeg(h, w, seed=0):
  buf = io.BytesIO()
  arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
  Image.fromarray(arr).save(buf, format="JPEG")
  return buf.getvalue()


def test_decode_ops_on_encoded_images():
  data = [_jpeg(300, 200), _jpeg(120, 160, 1)]
  rng = np.random.default_rng(0)
  out = pp.get_preprocess_fn("decode_jpeg_and_inception_crop(64)")({"image": data, "label": None},
                                                                   rng)
  assert out["image"].shape == (2, 64, 64, 3) and out["image"].dtype == np.uint8
  out = pp.get_preprocess_fn("decode|resize_small(64)|central_crop(64)")(
      {"image": data, "label": None}, rng)
  assert out["image"].shape == (2, 64, 64, 3)
  with pytest.raises(ValueError, match="still encoded.*decode"):
    pp.get_preprocess_fn("random_crop(8)")({"image": data, "label": None}, rng)


@pytest.mark.parametrize("spec", ["decode", "decode_jpeg_and_inception_crop(64)"])
def test_decode_ops_name_a_corrupt_image(spec):
  # The one decoder of ge2ms_jax.data.formats, which the dataset builders use too.
  data = [_jpeg(64, 64), _jpeg(64, 64, 1)[:200]]  # the second file cut short
  with pytest.raises(ValueError, match="corrupt image 1 of the batch"):
    pp.get_preprocess_fn(spec)({"image": data, "label": None}, np.random.default_rng(0))


# ---------------------------------------------------------------------------------------------
# Image ops against PIL, RandAugment
# ---------------------------------------------------------------------------------------------
def test_equalize_and_autocontrast_match_pil():
  x = _images(b=6, h=20, w=17)
  x[:, :, :, 1] = x[:, :, :, 1] // 3 + 40   # a low-contrast channel
  x[0, :, :, 2] = 77                         # a constant channel
  eq, ac = image_ops.equalize(x), image_ops.autocontrast(x)
  for i in range(len(x)):
    np.testing.assert_array_equal(eq[i], np.asarray(ImageOps.equalize(Image.fromarray(x[i]))))
    np.testing.assert_array_equal(ac[i], np.asarray(ImageOps.autocontrast(Image.fromarray(x[i]))))


def test_geometric_ops():
  x = _images(b=4, h=9, w=9)
  np.testing.assert_array_equal(image_ops.rotate(x, np.full(4, 90.0)), np.rot90(x, 1, axes=(1, 2)))
  big = _images(b=4, h=20, w=20)
  pil = np.stack([np.asarray(Image.fromarray(big[i]).rotate(30, resample=Image.NEAREST,
                                                            fillcolor=(128, 128, 128)))
                  for i in range(4)])
  # Same geometry as PIL; only source positions exactly halfway between pixels may round apart.
  assert (image_ops.rotate(big, np.full(4, 30.0)) == pil).mean() > 0.99
  t = image_ops.translate(x, np.full(4, 2), np.full(4, -1))
  np.testing.assert_array_equal(t[:, :8, 2:], x[:, 1:, :7])
  assert (t[:, :, :2] == 128).all() and (t[:, 8] == 128).all()
  np.testing.assert_array_equal(image_ops.shear(x, np.zeros(4), "x"), x)


def test_color_ops():
  x = _images()
  np.testing.assert_array_equal(image_ops.posterize(x, 3), x & 0b11100000)
  np.testing.assert_array_equal(image_ops.solarize(x, 128), np.where(x >= 128, 255 - x, x))
  np.testing.assert_array_equal(image_ops.brightness(x, np.ones(8)), x)
  np.testing.assert_array_equal(image_ops.contrast(x, 1.0), x)
  assert (image_ops.brightness(x, 0.0) == 0).all()
  grey = image_ops.color(x, 0.0)
  assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()


def test_randaugment_shapes_determinism_and_effect():
  x = _images(b=64, h=16, w=16)
  fn = pp.get_preprocess_fn("randaugment(2, 9)")
  a = fn(_batch(x), np.random.default_rng(0))["image"]
  b = fn(_batch(x), np.random.default_rng(0))["image"]
  assert a.shape == x.shape and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  changed = np.array([not np.array_equal(a[i], x[i]) for i in range(len(x))])
  assert changed.mean() > 0.8
  # At magnitude 0 the geometric ops are the identity.
  geo = pp.get_preprocess_fn("randaugment(3, 0, ops=['rotate', 'shear_x', 'translate_y'])")
  np.testing.assert_array_equal(geo(_batch(x), np.random.default_rng(0))["image"], x)
  gray = _images(b=16, c=1)
  assert fn(_batch(gray), np.random.default_rng(0))["image"].shape == gray.shape


def test_randaugment_applies_each_op_to_its_examples_only():
  x = _images(b=32)
  out = pp.get_preprocess_fn("randaugment(1, 10, ops=['invert', 'rotate'])")(
      _batch(x), np.random.default_rng(1))["image"]
  inverted = np.array([np.array_equal(out[i], 255 - x[i]) for i in range(len(x))])
  assert 0 < inverted.sum() < len(x)


# ---------------------------------------------------------------------------------------------
# Normalisation, targets, mixing
# ---------------------------------------------------------------------------------------------
def test_normalize_and_value_range():
  x = _images(c=3)
  y = pp.get_preprocess_fn("normalize(mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))")(
      _batch(x), None)["image"]
  assert y.dtype == np.float32
  np.testing.assert_allclose(y, (x / 255.0 - 0.5) / np.array([0.25, 0.5, 1.0]), rtol=1e-5,
                             atol=1e-5)
  z = pp.get_preprocess_fn("value_range(-1, 1)")(_batch(x), None)["image"]
  assert z.min() >= -1 and z.max() <= 1
  np.testing.assert_allclose(z, x / 127.5 - 1, atol=1e-5)
  with pytest.raises(ValueError, match="3 channel statistics for images with 1 channels"):
    pp.get_preprocess_fn("normalize('cifar10')")(_batch(_images(c=1)), None)


def test_onehot_with_smoothing():
  x = _images()
  t = pp.get_preprocess_fn("onehot(10, smoothing=0.1)")(_batch(x), None)["target"]
  assert t.shape == (8, 10) and t.dtype == np.float32
  np.testing.assert_allclose(t.sum(1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(t[np.arange(8), np.arange(8)], 0.91, rtol=1e-6)
  np.testing.assert_allclose(t[0, 1], 0.01, rtol=1e-6)
  with pytest.raises(ValueError, match=r"onehot\(4\): labels must be in \[0, 4\)"):
    pp.get_preprocess_fn("onehot(4)")(_batch(x), None)


def test_mixup_mixes_images_and_targets_consistently():
  x = _images(b=16, h=8, w=8)
  rng = np.random.default_rng(0)
  base = pp.get_preprocess_fn("value_range(0, 1)|onehot(16)")(_batch(x, 16), None)
  out = pp.get_preprocess_fn("mixup(0.8, cutmix_alpha=0.0)")(dict(base), rng)
  lam = out["target"][np.arange(16), np.arange(16)]
  np.testing.assert_allclose(out["target"].sum(1), 1.0, rtol=1e-5)
  expected = lam[:, None, None, None] * base["image"] + (1 - lam[:, None, None, None]) * (
      base["image"][::-1])
  np.testing.assert_allclose(out["image"], expected, atol=1e-5)
  assert np.all(lam > 0) and np.all(lam <= 1) and np.any(lam < 0.99)

  out = pp.get_preprocess_fn("mixup(0.0, cutmix_alpha=1.0)")(dict(base), rng)
  lam = out["target"][np.arange(16), np.arange(16)]
  from_partner = np.all(out["image"] == base["image"][::-1], axis=-1) & ~np.all(
      out["image"] == base["image"], axis=-1)
  own = np.all(out["image"] == base["image"], axis=-1)
  assert np.all(from_partner | own)
  np.testing.assert_allclose(from_partner.mean(axis=(1, 2)), 1 - lam, atol=1e-6)
  with pytest.raises(ValueError, match="mixup: needs float images and a 'target'"):
    pp.get_preprocess_fn("mixup")(_batch(x), rng)
