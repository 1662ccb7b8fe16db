"""Preprocessing ops named in config strings, applied to whole batches.

A preprocessing string chains registered ops with `|`, each written like a Python call with literal
arguments (big_vision style):

    "random_crop(32, pad=4)|flip_lr|randaugment(2, 9)|normalize('cifar10')|onehot(10, smoothing=0.1)"

`get_preprocess_fn(spec)` parses it into a `Preprocess`, a callable `(batch, rng) -> batch` on a
batch dict with

  - "image": uint8 `[B, H, W, C]`; or, before the images share a size (ImageNet), a list of `B`
    uint8 arrays `[H_i, W_i, C]` or of encoded image bytes (decoded by `decode*` ops);
  - "label": int32 `[B]`;

and the ops add or change "image" (float32 after `normalize`/`value_range`) and "target" (float32
`[B, num_classes]`, from `onehot`, mixed by `mixup`). Every random op draws from the
`np.random.Generator` it is given, vectorised over the batch, so a batch is a pure function of
(data, spec, seed).

Register a new op with `@register("name")` on a factory that takes the op's arguments and returns
a function `(batch, rng) -> batch`.

Ops (sizes are an int for a square or an `(height, width)` pair):

  decode(channels=3)                         encoded bytes -> uint8 images
  decode_jpeg_and_inception_crop(size, area_min=5, area_max=100)
                                             decode + random-resized crop (JPEG draft mode)
  inception_crop(size, area_min=5, area_max=100)   random-resized crop of decoded images
  resize(size)                               bilinear resize to `size`
  resize_small(size)                         bilinear resize, shorter side to `size`
  central_crop(size)                         centre crop
  random_crop(size, pad=0, fill=0)           pad every side by `pad`, then a random window
  flip_lr(prob=0.5)                          random horizontal mirror
  randaugment(num_layers=2, magnitude=9, ops=None, fill=128)
                                             RandAugment: per example and layer, one random op of
                                             `RANDAUGMENT_OPS` at a fixed magnitude (0..10)
  normalize(stats=None, mean=None, std=None) (x - mean) / std on 0..255 pixels -> float32;
                                             stats in `NORMALIZATION_STATS`
  value_range(lo=-1, hi=1)                   0..255 -> [lo, hi] float32
  onehot(num_classes, smoothing=0.0)         "target" = (1 - s) * onehot + s / num_classes
  mixup(alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5)
                                             per example, mixup or cutmix with the mirrored batch
                                             (example b with B-1-b); mixes "image" and "target"
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
from typing import Any, Callable

import numpy as np

from ge2ms_jax.data import formats
from ge2ms_jax.data import image_ops

Batch = dict[str, Any]
Op = Callable[[Batch, np.random.Generator], Batch]

_REGISTRY: dict[str, Callable[..., Op]] = {}


def register(name: str) -> Callable[[Callable[..., Op]], Callable[..., Op]]:
  """Decorator registering an op factory under `name` (a valid Python identifier)."""
  if not name.isidentifier():
    raise ValueError(f"register: op name must be a Python identifier, got {name!r}.")

  def wrap(factory: Callable[..., Op]) -> Callable[..., Op]:
    if name in _REGISTRY and _REGISTRY[name] is not factory:
      raise ValueError(f"register: an op named {name!r} is already registered.")
    _REGISTRY[name] = factory
    return factory

  return wrap


def registered_ops() -> list[str]:
  """Names of all registered ops, sorted."""
  return sorted(_REGISTRY)


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class OpSpec:
  """One parsed op: its name and literal arguments."""
  name: str
  args: tuple
  kwargs: dict


def parse(spec: str) -> list[OpSpec]:
  """Parses a preprocessing string into its ops.

  Args:
    spec: ops joined by `|`, each `name` or `name(literal args)`; empty parts are ignored.

  Returns:
    The ops in order.

  Raises:
    ValueError: naming the part that is not a call with literal arguments, or an unknown op (with
      the list of registered ones).
  """
  if not isinstance(spec, str):
    raise ValueError(f"preprocessing spec must be a string like \"flip_lr|normalize('cifar10')\", "
                     f"got {spec!r}.")
  ops = []
  for part in (p.strip() for p in _split_top_level(spec)):
    if not part:
      continue
    try:
      node = ast.parse(part, mode="eval").body
    except SyntaxError as e:
      raise ValueError(f"preprocessing op {part!r} in {spec!r} is not valid syntax: {e.msg}.") from None
    if isinstance(node, ast.Name):
      name, args, kwargs = node.id, (), {}
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
      name = node.func.id
      try:
        args = tuple(ast.literal_eval(a) for a in node.args)
        kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
      except ValueError:
        raise ValueError(f"preprocessing op {part!r}: arguments must be Python literals "
                         "(numbers, strings, tuples, lists, None).") from None
      if any(k is None for k in kwargs):
        raise ValueError(f"preprocessing op {part!r}: **kwargs are not allowed.")
    else:
      raise ValueError(f"preprocessing op {part!r} in {spec!r} must be a name or a call like "
                       "'random_crop(32, pad=4)'.")
    if name not in _REGISTRY:
      raise ValueError(f"unknown preprocessing op {name!r} in {spec!r}; registered ops: "
                       f"{', '.join(registered_ops())}.")
    ops.append(OpSpec(name, args, kwargs))
  return ops


def _split_top_level(spec: str) -> list[str]:
  """Splits at `|` outside brackets and quotes."""
  parts, depth, quote, cur = [], 0, None, []
  for ch in spec:
    if quote:
      quote = None if ch == quote else quote
    elif ch in "'\"":
      quote = ch
    elif ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == "|" and depth == 0:
      parts.append("".join(cur))
      cur = []
      continue
    cur.append(ch)
  parts.append("".join(cur))
  return parts


class Preprocess:
  """A parsed preprocessing chain: `Preprocess(spec)(batch, rng) -> batch`.

  Picklable (it is rebuilt from `spec`), so it can be sent to input worker processes.
  """

  def __init__(self, spec: str):
    self.spec = spec
    self.op_specs = parse(spec)
    self._ops = [_build(o, spec) for o in self.op_specs]

  def __call__(self, batch: Batch, rng: np.random.Generator) -> Batch:
    batch = dict(batch)
    for fn in self._ops:
      batch = fn(batch, rng)
    return batch

  def __reduce__(self):
    return (Preprocess, (self.spec,))

  def __repr__(self) -> str:
    return f"Preprocess({self.spec!r})"


def get_preprocess_fn(spec: str) -> Preprocess:
  """Parses `spec` and builds its ops (see the module docstring); raises ValueError if invalid."""
  return Preprocess(spec)


def _build(o: OpSpec, spec: str) -> Op:
  factory = _REGISTRY[o.name]
  try:
    inspect.signature(factory).bind(*o.args, **o.kwargs)
  except TypeError as e:
    raise ValueError(f"preprocessing op {o.name}{_fmt_args(o)} in {spec!r}: {e}; the op's "
                     f"signature is {o.name}{inspect.signature(factory)}.") from None
  op = factory(*o.args, **o.kwargs)

  def run(batch: Batch, rng: np.random.Generator) -> Batch:
    return op(batch, rng)

  run.__name__ = o.name
  return run


def _fmt_args(o: OpSpec) -> str:
  parts = [repr(a) for a in o.args] + [f"{k}={v!r}" for k, v in o.kwargs.items()]
  return f"({', '.join(parts)})"


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def _size(size, op: str) -> tuple[int, int]:
  """An int or (h, w) pair -> (h, w) of positive ints."""
  if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
    size = (int(size), int(size))
  if (not isinstance(size, (tuple, list)) or len(size) != 2
      or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in size)):
    raise ValueError(f"{op}: size must be a positive int or an (height, width) pair, got {size!r}.")
  return int(size[0]), int(size[1])


def stack_images(images, op: str) -> np.ndarray:
  """Returns the batch's images as one `[B, H, W, C]` array, or raises naming `op`.

  Images still encoded, or of different sizes, cannot be stacked: the error says which op to put
  first.
  """
  if isinstance(images, np.ndarray):
    return images
  if any(isinstance(im, (bytes, np.bytes_)) for im in images):
    raise ValueError(f"{op}: images are still encoded; put 'decode' or "
                     "'decode_jpeg_and_inception_crop(...)' before it in the preprocessing string.")
  shapes = {im.shape for im in images}
  if len(shapes) != 1:
    raise ValueError(f"{op}: needs images of one size, got {len(shapes)} sizes (e.g. "
                     f"{sorted(shapes)[:3]}); put resize/central_crop/inception_crop before it.")
  return np.stack(images)


def _uint8_images(batch: Batch, op: str) -> np.ndarray:
  images = stack_images(batch["image"], op)
  if images.dtype != np.uint8:
    raise ValueError(f"{op}: works on uint8 pixels, got {images.dtype}; put it before "
                     "normalize/value_range.")
  return images


def _image_list(images, op: str) -> list[np.ndarray]:
  """Per-example view of decoded images (a stacked batch is split without copying)."""
  if isinstance(images, np.ndarray):
    return list(images)
  if any(isinstance(im, (bytes, np.bytes_)) for im in images):
    raise ValueError(f"{op}: images are still encoded; put 'decode' before it.")
  return list(images)


def _maybe_stack(images: list[np.ndarray]):
  """Stacks per-example results when they share a shape (the common case after a crop)."""
  if images and len({im.shape for im in images}) == 1:
    return np.stack(images)
  return images


def _pil():
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return Image


def _pil_resize(image: np.ndarray, hw: tuple[int, int], box=None) -> np.ndarray:
  """Bilinear resize of one uint8 `[H, W, C]` image to `hw`, optionally of a crop `box`."""
  Image = _pil()
  c = image.shape[-1]
  pil = Image.fromarray(image[..., 0] if c == 1 else image)
  out = np.asarray(pil.resize((hw[1], hw[0]), Image.BILINEAR, box=box))
  return out[..., None] if c == 1 else out


def _crop_box(rng: np.random.Generator, h: int, w: int, area_min: float, area_max: float,
              attempts: int = 10) -> tuple[float, float, float, float]:
  """Inception-style crop `(left, top, right, bottom)`: area in [area_min, area_max] % of the
  image, aspect ratio log-uniform in [3/4, 4/3]; falls back to the central square-ish crop."""
  area = h * w
  log_r = (math.log(3 / 4), math.log(4 / 3))
  for _ in range(attempts):
    target = area * rng.uniform(area_min, area_max) / 100.0
    ratio = math.exp(rng.uniform(*log_r))
    cw = int(round(math.sqrt(target * ratio)))
    ch = int(round(math.sqrt(target / ratio)))
    if 0 < cw <= w and 0 < ch <= h:
      top = int(rng.integers(0, h - ch + 1))
      left = int(rng.integers(0, w - cw + 1))
      return left, top, left + cw, top + ch
  # Fallback: the whole image cut to the nearest allowed aspect ratio, centred.
  ratio = w / h
  if ratio < 3 / 4:
    cw, ch = w, int(round(w / (3 / 4)))
  elif ratio > 4 / 3:
    ch, cw = h, int(round(h * (4 / 3)))
  else:
    cw, ch = w, h
  top, left = (h - ch) // 2, (w - cw) // 2
  return left, top, left + cw, top + ch


def _check_area(area_min, area_max, op: str) -> None:
  if not 0 < area_min <= area_max <= 100:
    raise ValueError(f"{op}: need 0 < area_min <= area_max <= 100 (percent of the image), got "
                     f"area_min={area_min}, area_max={area_max}.")


# ---------------------------------------------------------------------------------------------
# Decoding, resizing and cropping
# ---------------------------------------------------------------------------------------------
def _as_array(pil, channels: int) -> np.ndarray:
  arr = np.asarray(pil, np.uint8)
  return arr[..., None] if channels == 1 else arr


def _check_channels(channels, op: str) -> None:
  if channels not in (1, 3):
    raise ValueError(f"{op}: channels must be 1 or 3, got {channels!r}.")


@register("decode")
def decode(channels: int = 3) -> Op:
  """Decodes encoded images (JPEG/PNG bytes) to uint8 `[H, W, channels]` each."""
  _check_channels(channels, "decode")

  def op(batch, rng):
    del rng
    images = [im if isinstance(im, np.ndarray) else
              _as_array(formats.decode_image(im, channels, f"{i} of the batch"), channels)
              for i, im in enumerate(batch["image"])]
    batch["image"] = _maybe_stack(images)
    return batch

  return op


@register("decode_jpeg_and_inception_crop")
def decode_jpeg_and_inception_crop(size, area_min: float = 5, area_max: float = 100,
                                   channels: int = 3) -> Op:
  """Decodes and takes an Inception-style random-resized crop, resized to `size`.

  JPEGs are decoded in PIL's draft mode at the smallest DCT scale that still gives the crop at
  least `size` pixels, which makes ImageNet decoding several times faster.
  """
  hw = _size(size, "decode_jpeg_and_inception_crop")
  _check_area(area_min, area_max, "decode_jpeg_and_inception_crop")
  _check_channels(channels, "decode_jpeg_and_inception_crop")
  Image = _pil()

  def one(data, rng, where):
    if isinstance(data, np.ndarray):
      left, top, right, bottom = _crop_box(rng, data.shape[0], data.shape[1], area_min, area_max)
      return _pil_resize(data, hw, box=(left, top, right, bottom))
    crop = {}

    def draft(img):  # the crop is drawn from the full size, before the pixels are read
      crop["full"] = img.size
      crop["box"] = _crop_box(rng, img.size[1], img.size[0], area_min, area_max)
      left, top, right, bottom = crop["box"]
      scale = min((right - left) / hw[1], (bottom - top) / hw[0])
      if img.format == "JPEG" and scale >= 2:
        img.draft("L" if channels == 1 else "RGB", (math.ceil(img.size[0] / scale), math.ceil(img.size[1] / scale)))

    img = formats.decode_image(data, channels, where, prepare=draft)
    (full_w, full_h), (left, top, right, bottom) = crop["full"], crop["box"]
    sx, sy = img.size[0] / full_w, img.size[1] / full_h
    box = (left * sx, top * sy, right * sx, bottom * sy)
    out = np.asarray(img.resize((hw[1], hw[0]), Image.BILINEAR, box=box), np.uint8)
    return out[..., None] if channels == 1 else out

  def op(batch, rng):
    batch["image"] = np.stack([one(im, rng, f"{i} of the batch") for i, im in enumerate(batch["image"])])
    return batch

  return op


@register("inception_crop")
def inception_crop(size, area_min: float = 5, area_max: float = 100) -> Op:
  """Random-resized crop (area in [area_min, area_max] % of the image) of decoded images."""
  hw = _size(size, "inception_crop")
  _check_area(area_min, area_max, "inception_crop")

  def op(batch, rng):
    out = []
    for im in _image_list(batch["image"], "inception_crop"):
      box = _crop_box(rng, im.shape[0], im.shape[1], area_min, area_max)
      out.append(_pil_resize(im, hw, box=box))
    batch["image"] = np.stack(out)
    return batch

  return op


def _each_image(name: str, fn: Callable[[np.ndarray], np.ndarray], stack=np.stack) -> Op:
  """The op applying `fn` (one `[H, W, C]` image to another) to every image of a batch, then
  `stack`ing them (`_maybe_stack` where sizes may differ)."""
  def op(batch, rng):
    del rng
    batch["image"] = stack([fn(im) for im in _image_list(batch["image"], name)])
    return batch

  return op


@register("resize")
def resize(size) -> Op:
  """Bilinear resize of every image to `size`."""
  hw = _size(size, "resize")

  return _each_image("resize", lambda im: im if im.shape[:2] == hw else _pil_resize(im, hw))


@register("resize_small")
def resize_small(size: int) -> Op:
  """Bilinear resize keeping the aspect ratio, the shorter side to `size`."""
  if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
    raise ValueError(f"resize_small: size must be a positive int, got {size!r}.")

  def one(im):
    h, w = im.shape[:2]
    s = size / min(h, w)
    hw = (max(size, int(round(h * s))), max(size, int(round(w * s))))
    return im if hw == (h, w) else _pil_resize(im, hw)

  return _each_image("resize_small", one, stack=_maybe_stack)  # Sizes may differ: stacked only if equal.


@register("central_crop")
def central_crop(size) -> Op:
  """Crops the centre `size` window out of every image (each at least that large)."""
  hw = _size(size, "central_crop")

  def one(im):
    h, w = im.shape[:2]
    if h < hw[0] or w < hw[1]:
      raise ValueError(f"central_crop({hw}): image of size {(h, w)} is smaller than the crop; "
                       "resize it first (e.g. resize_small).")
    top, left = (h - hw[0]) // 2, (w - hw[1]) // 2
    return im[top:top + hw[0], left:left + hw[1]]

  return _each_image("central_crop", one)


@register("random_crop")
def random_crop(size, pad: int = 0, fill: int = 0) -> Op:
  """Pads each side by `pad` pixels of value `fill`, then crops a random `size` window."""
  hw = _size(size, "random_crop")
  if not isinstance(pad, int) or pad < 0:
    raise ValueError(f"random_crop: pad must be an int >= 0, got {pad!r}.")

  def op(batch, rng):
    images = _uint8_images(batch, "random_crop")
    if pad:
      images = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=fill)
    b, h, w, _ = images.shape
    if h < hw[0] or w < hw[1]:
      raise ValueError(f"random_crop: padded images are {(h, w)}, smaller than the crop {hw}.")
    top = rng.integers(0, h - hw[0] + 1, size=b)
    left = rng.integers(0, w - hw[1] + 1, size=b)
    batch["image"] = image_ops.crop(images, top, left, *hw)
    return batch

  return op


@register("flip_lr")
def flip_lr(prob: float = 0.5) -> Op:
  """Mirrors each image left-right with probability `prob`."""
  if not 0 <= prob <= 1:
    raise ValueError(f"flip_lr: prob must be in [0, 1], got {prob!r}.")

  def op(batch, rng):
    images = stack_images(batch["image"], "flip_lr")
    batch["image"] = image_ops.flip_lr(images, rng.random(images.shape[0]) < prob)
    return batch

  return op


# ---------------------------------------------------------------------------------------------
# RandAugment
# ---------------------------------------------------------------------------------------------
# Each op: (images [n,H,W,C] uint8, level in [0, 1], signs [n] of +-1, fill) -> images. Severity
# grows with the level for every op ("increasing" variants of posterize and solarize).
def _ra_translate(images, level, signs, fill, axis):
  n, h, w, _ = images.shape
  shift = np.round(0.45 * level * (w if axis == "x" else h) * signs)
  zeros = np.zeros(n)
  if axis == "x":
    return image_ops.translate(images, shift, zeros, fill)
  return image_ops.translate(images, zeros, shift, fill)


_RANDAUGMENT: dict[str, Callable] = {
    "auto_contrast": lambda x, lv, s, f: image_ops.autocontrast(x),
    "equalize": lambda x, lv, s, f: image_ops.equalize(x),
    "invert": lambda x, lv, s, f: image_ops.invert(x),
    "rotate": lambda x, lv, s, f: image_ops.rotate(x, 30.0 * lv * s, f),
    "posterize": lambda x, lv, s, f: image_ops.posterize(x, 8 - int(round(4 * lv))),
    "solarize": lambda x, lv, s, f: image_ops.solarize(x, 256 - int(round(256 * lv))),
    "solarize_add": lambda x, lv, s, f: image_ops.solarize_add(x, int(round(110 * lv))),
    "color": lambda x, lv, s, f: image_ops.color(x, 1.0 + 0.9 * lv * s),
    "contrast": lambda x, lv, s, f: image_ops.contrast(x, 1.0 + 0.9 * lv * s),
    "brightness": lambda x, lv, s, f: image_ops.brightness(x, 1.0 + 0.9 * lv * s),
    "sharpness": lambda x, lv, s, f: image_ops.sharpness(x, 1.0 + 0.9 * lv * s),
    "shear_x": lambda x, lv, s, f: image_ops.shear(x, 0.3 * lv * s, "x", f),
    "shear_y": lambda x, lv, s, f: image_ops.shear(x, 0.3 * lv * s, "y", f),
    "translate_x": lambda x, lv, s, f: _ra_translate(x, lv, s, f, "x"),
    "translate_y": lambda x, lv, s, f: _ra_translate(x, lv, s, f, "y"),
}
RANDAUGMENT_OPS = tuple(_RANDAUGMENT)


@register("randaugment")
def randaugment(num_layers: int = 2, magnitude: float = 9, ops=None, fill: int = 128) -> Op:
  """RandAugment: `num_layers` times, each example gets one op drawn uniformly from `ops`.

  Magnitude 0..10 sets every op's strength (level = magnitude / 10): rotate up to 30 degrees,
  shear up to 0.3, translate up to 45% of the side, colour/contrast/brightness/sharpness factors
  1 +- 0.9, posterize to 8 - 4 level bits, solarize above 256 (1 - level), solarize_add + 110 level.
  Signed ops draw their sign per example. Examples are grouped by op so each op runs vectorised.
  """
  if not isinstance(num_layers, int) or num_layers < 0:
    raise ValueError(f"randaugment: num_layers must be an int >= 0, got {num_layers!r}.")
  if not 0 <= magnitude <= 10:
    raise ValueError(f"randaugment: magnitude must be in [0, 10], got {magnitude!r}.")
  names = tuple(ops) if ops is not None else RANDAUGMENT_OPS
  unknown = [n for n in names if n not in _RANDAUGMENT]
  if unknown or not names:
    raise ValueError(f"randaugment: unknown ops {unknown} (or an empty list); valid ops: "
                     f"{', '.join(RANDAUGMENT_OPS)}.")
  fns = [_RANDAUGMENT[n] for n in names]
  level = magnitude / 10.0

  def op(batch, rng):
    images = _uint8_images(batch, "randaugment")
    b = images.shape[0]
    for _ in range(num_layers):
      choice = rng.integers(len(fns), size=b)
      signs = np.where(rng.random(b) < 0.5, -1.0, 1.0)
      out = np.empty_like(images)
      for j, fn in enumerate(fns):
        sel = np.flatnonzero(choice == j)
        if sel.size:
          out[sel] = fn(images[sel], level, signs[sel], fill)
      images = out
    batch["image"] = images
    return batch

  return op


# ---------------------------------------------------------------------------------------------
# To float, targets, mixing
# ---------------------------------------------------------------------------------------------
# Per-channel mean and std of the training sets, in units of 0..1 pixels.
NORMALIZATION_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "unit": ((0.0,), (1.0,)),
}


@register("normalize")
def normalize(stats: str | None = None, mean=None, std=None) -> Op:
  """`(pixels / 255 - mean) / std` as float32, from named `stats` or explicit per-channel values."""
  if stats is not None:
    if stats not in NORMALIZATION_STATS:
      raise ValueError(f"normalize: unknown stats {stats!r}; known: "
                       f"{', '.join(NORMALIZATION_STATS)} (or pass mean=..., std=...).")
    if mean is not None or std is not None:
      raise ValueError("normalize: give either stats or mean/std, not both.")
    mean, std = NORMALIZATION_STATS[stats]
  if mean is None or std is None:
    raise ValueError("normalize: needs stats='cifar10' (etc.) or both mean and std.")
  mean = np.atleast_1d(np.asarray(mean, np.float32))
  std = np.atleast_1d(np.asarray(std, np.float32))
  if np.any(std <= 0):
    raise ValueError(f"normalize: std must be > 0, got {std.tolist()}.")
  scale = (1.0 / (255.0 * std)).astype(np.float32)
  offset = (-mean / std).astype(np.float32)

  def op(batch, rng):
    del rng
    images = _uint8_images(batch, "normalize")
    c = images.shape[-1]
    if scale.size not in (1, c):
      raise ValueError(f"normalize: {scale.size} channel statistics for images with {c} channels "
                       f"(stats={stats!r}); use statistics of the dataset being read.")
    batch["image"] = images.astype(np.float32) * scale + offset
    return batch

  return op


@register("value_range")
def value_range(lo: float = -1.0, hi: float = 1.0) -> Op:
  """Maps 0..255 pixels linearly onto `[lo, hi]` as float32."""
  if not hi > lo:
    raise ValueError(f"value_range: need hi > lo, got lo={lo}, hi={hi}.")
  scale = np.float32((hi - lo) / 255.0)

  def op(batch, rng):
    del rng
    batch["image"] = _uint8_images(batch, "value_range").astype(np.float32) * scale + np.float32(lo)
    return batch

  return op


@register("onehot")
def onehot(num_classes: int, smoothing: float = 0.0) -> Op:
  """Adds "target" float32 `[B, num_classes]`: one-hot labels with label smoothing."""
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"onehot: num_classes must be an int >= 1, got {num_classes!r}.")
  if not 0 <= smoothing < 1:
    raise ValueError(f"onehot: smoothing must be in [0, 1), got {smoothing!r}.")
  off = np.float32(smoothing / num_classes)
  on = np.float32(1.0 - smoothing) + off

  def op(batch, rng):
    del rng
    labels = np.asarray(batch["label"])
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
      raise ValueError(f"onehot({num_classes}): labels must be in [0, {num_classes}), got range "
                       f"[{labels.min()}, {labels.max()}]; is num_classes right for this dataset?")
    target = np.full((labels.shape[0], num_classes), off, np.float32)
    target[np.arange(labels.shape[0]), labels] = on
    batch["target"] = target
    return batch

  return op


@register("mixup")
def mixup(alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0,
          switch_prob: float = 0.5) -> Op:
  """Mixup / CutMix per example with the mirrored batch (example b with B-1-b).

  Each example is mixed with probability `prob`; then it is CutMix with probability
  `switch_prob` (when both alphas are > 0), else mixup. The weight `lam` of the example itself is
  drawn from Beta(alpha, alpha); for CutMix a box of area `(1 - lam)` of the image is pasted from
  the partner and `lam` is corrected to the box's clipped area. Needs float images and "target".
  """
  if alpha < 0 or cutmix_alpha < 0 or (alpha == 0 and cutmix_alpha == 0):
    raise ValueError(f"mixup: need alpha >= 0, cutmix_alpha >= 0 and one of them > 0, got "
                     f"alpha={alpha}, cutmix_alpha={cutmix_alpha}.")
  if not (0 <= prob <= 1 and 0 <= switch_prob <= 1):
    raise ValueError(f"mixup: prob and switch_prob must be in [0, 1], got {prob}, {switch_prob}.")

  def op(batch, rng):
    images = stack_images(batch["image"], "mixup")
    if images.dtype != np.float32 or "target" not in batch:
      raise ValueError("mixup: needs float images and a 'target'; put it after normalize(...) "
                       "and onehot(...).")
    b, h, w, _ = images.shape
    use_cut = (rng.random(b) < switch_prob) if alpha > 0 and cutmix_alpha > 0 else (
        np.full(b, cutmix_alpha > 0))
    lam = np.where(use_cut, rng.beta(max(cutmix_alpha, 1e-8), max(cutmix_alpha, 1e-8), b),
                   rng.beta(max(alpha, 1e-8), max(alpha, 1e-8), b))
    lam = np.where(rng.random(b) < prob, lam, 1.0)
    # CutMix box: side fractions sqrt(1 - lam), centre uniform, clipped to the image.
    cut = np.sqrt(1.0 - lam)
    cy, cx = rng.integers(0, h, b), rng.integers(0, w, b)
    y0 = np.clip(cy - np.round(cut * h / 2), 0, h).astype(np.int64)
    y1 = np.clip(cy + np.round(cut * h / 2), 0, h).astype(np.int64)
    x0 = np.clip(cx - np.round(cut * w / 2), 0, w).astype(np.int64)
    x1 = np.clip(cx + np.round(cut * w / 2), 0, w).astype(np.int64)
    rows, cols = np.arange(h)[None, :, None], np.arange(w)[None, None, :]
    box = ((rows >= y0[:, None, None]) & (rows < y1[:, None, None])
           & (cols >= x0[:, None, None]) & (cols < x1[:, None, None]))
    box &= use_cut[:, None, None]
    lam = np.where(use_cut, 1.0 - (y1 - y0) * (x1 - x0) / (h * w), lam).astype(np.float32)
    partner = images[::-1]
    mixed = np.where(use_cut[:, None, None, None], images, lam[:, None, None, None] * images
                     + (1 - lam[:, None, None, None]) * partner)
    batch["image"] = np.where(box[..., None], partner, mixed).astype(np.float32)
    target = batch["target"]
    batch["target"] = (lam[:, None] * target + (1 - lam[:, None]) * target[::-1]).astype(np.float32)
    return batch

  return op
