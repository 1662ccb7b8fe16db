"""Vectorised numpy image operations on whole batches.

Every function here takes a batch of images `[B, H, W, C]` (uint8 unless stated otherwise) and
per-example parameters as arrays of length `B`, and works on the whole batch at once: per-example
Python loops are what makes an input pipeline slow on a few cores. Randomness is never drawn here;
the callers (`preprocess.py`) draw the parameters from a seeded `np.random.Generator`.

Geometric transforms sample with nearest-neighbour interpolation and fill pixels that come from
outside the image with a constant (`fill`, 128 by default, the RandAugment convention).
"""

from __future__ import annotations

import numpy as np

# ITU-R 601-2 luma weights, the ones PIL uses for `convert("L")`.
_LUMA = np.asarray([0.299, 0.587, 0.114], np.float32)


def _as_uint8(x: np.ndarray) -> np.ndarray:
  """Rounds and clips a float array to uint8."""
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _per_example(v, n: int, dtype=np.float32) -> np.ndarray:
  """Broadcasts a scalar or `[n]` parameter to `[n, 1, 1, 1]` for image arithmetic."""
  return np.broadcast_to(np.asarray(v, dtype), (n,)).reshape(n, 1, 1, 1)


# ---------------------------------------------------------------------------------------------
# Cropping and flipping
# ---------------------------------------------------------------------------------------------
def crop(images: np.ndarray, top: np.ndarray, left: np.ndarray, height: int,
         width: int) -> np.ndarray:
  """Crops a different window out of each image.

  Args:
    images: `[B, H, W, C]`.
    top, left: int arrays `[B]`, the window's corner in each image; `0 <= top <= H - height`.
    height, width: the window's size.

  Returns:
    `[B, height, width, C]`, same dtype.
  """
  b = images.shape[0]
  rows = np.asarray(top)[:, None] + np.arange(height)[None, :]     # [B, h]
  cols = np.asarray(left)[:, None] + np.arange(width)[None, :]     # [B, w]
  return images[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def flip_lr(images: np.ndarray, flip: np.ndarray) -> np.ndarray:
  """Mirrors the images where `flip` (bool `[B]`) is set; `[B, H, W, C]` -> same."""
  flip = np.asarray(flip, bool)
  return np.where(flip[:, None, None, None], images[:, :, ::-1], images)


# ---------------------------------------------------------------------------------------------
# Affine warps (rotate, shear, translate)
# ---------------------------------------------------------------------------------------------
def affine(images: np.ndarray, matrices: np.ndarray, fill: int = 128) -> np.ndarray:
  """Warps each image by an affine map, nearest-neighbour.

  Args:
    images: `[B, H, W, C]`.
    matrices: `[B, 2, 3]`, mapping an output pixel's `(x, y, 1)` (column, row) to the input
      position it is sampled from.
    fill: value of output pixels whose source lies outside the image.

  Returns:
    `[B, H, W, C]`, same dtype.
  """
  b, h, w, _ = images.shape
  ys, xs = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
  m = np.asarray(matrices, np.float32)
  src_x = m[:, 0, 0, None, None] * xs + m[:, 0, 1, None, None] * ys + m[:, 0, 2, None, None]
  src_y = m[:, 1, 0, None, None] * xs + m[:, 1, 1, None, None] * ys + m[:, 1, 2, None, None]
  ix = np.rint(src_x).astype(np.int32)
  iy = np.rint(src_y).astype(np.int32)
  inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
  out = images[np.arange(b)[:, None, None], np.clip(iy, 0, h - 1), np.clip(ix, 0, w - 1)]
  return np.where(inside[..., None], out, np.asarray(fill, images.dtype))


def rotate(images: np.ndarray, degrees: np.ndarray, fill: int = 128) -> np.ndarray:
  """Rotates each image about its centre by `degrees[b]` (counter-clockwise); `[B,H,W,C]`."""
  b, h, w, _ = images.shape
  theta = np.deg2rad(np.asarray(degrees, np.float32))
  cos, sin = np.cos(theta), np.sin(theta)
  cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
  # The inverse rotation maps each output pixel back to its source (rows grow downwards, so a
  # counter-clockwise turn on screen is a clockwise one in (x, y)).
  m = np.zeros((b, 2, 3), np.float32)
  m[:, 0, 0], m[:, 0, 1] = cos, -sin
  m[:, 1, 0], m[:, 1, 1] = sin, cos
  m[:, 0, 2] = cx - cos * cx + sin * cy
  m[:, 1, 2] = cy - sin * cx - cos * cy
  return affine(images, m, fill)


def shear(images: np.ndarray, amount: np.ndarray, axis: str, fill: int = 128) -> np.ndarray:
  """Shears each image by `amount[b]` along `axis` ("x" or "y"); `[B, H, W, C]` -> same."""
  b = images.shape[0]
  m = np.zeros((b, 2, 3), np.float32)
  m[:, 0, 0] = m[:, 1, 1] = 1.0
  if axis == "x":
    m[:, 0, 1] = amount
  elif axis == "y":
    m[:, 1, 0] = amount
  else:
    raise ValueError(f"shear: axis must be 'x' or 'y', got {axis!r}.")
  return affine(images, m, fill)


def translate(images: np.ndarray, dx: np.ndarray, dy: np.ndarray, fill: int = 128) -> np.ndarray:
  """Shifts each image by `(dx[b], dy[b])` pixels (right, down); `[B, H, W, C]` -> same."""
  b = images.shape[0]
  m = np.zeros((b, 2, 3), np.float32)
  m[:, 0, 0] = m[:, 1, 1] = 1.0
  m[:, 0, 2] = -np.asarray(dx, np.float32)
  m[:, 1, 2] = -np.asarray(dy, np.float32)
  return affine(images, m, fill)


# ---------------------------------------------------------------------------------------------
# Colour operations (PIL.ImageOps / ImageEnhance semantics, per example)
# ---------------------------------------------------------------------------------------------
def grayscale(images: np.ndarray) -> np.ndarray:
  """Luma of uint8 images as float32 `[B, H, W, 1]` (the image itself if it has one channel)."""
  x = images.astype(np.float32)
  if images.shape[-1] == 1:
    return x
  return np.tensordot(x[..., :3], _LUMA, axes=([-1], [0]))[..., None]


def blend(degenerate: np.ndarray, images: np.ndarray, factor) -> np.ndarray:
  """`degenerate + factor * (images - degenerate)`, per-example factor `[B]`, clipped to uint8."""
  f = _per_example(factor, images.shape[0])
  d = degenerate.astype(np.float32)
  return _as_uint8(d + f * (images.astype(np.float32) - d))


def brightness(images: np.ndarray, factor) -> np.ndarray:
  """Blends with black: factor 0 gives black, 1 the image; `[B, H, W, C]` uint8."""
  return blend(np.zeros_like(images), images, factor)


def color(images: np.ndarray, factor) -> np.ndarray:
  """Blends with the grey image (saturation); `[B, H, W, C]` uint8."""
  return blend(np.broadcast_to(grayscale(images), images.shape), images, factor)


def contrast(images: np.ndarray, factor) -> np.ndarray:
  """Blends with the image's mean grey level; `[B, H, W, C]` uint8."""
  mean = grayscale(images).mean(axis=(1, 2, 3), keepdims=True)
  return blend(np.broadcast_to(mean, images.shape), images, factor)


def sharpness(images: np.ndarray, factor) -> np.ndarray:
  """Blends with a smoothed image (PIL's 3x3 SMOOTH kernel, borders kept); `[B,H,W,C]` uint8."""
  x = images.astype(np.float32)
  h, w = images.shape[1:3]
  if h < 3 or w < 3:
    return images.copy()
  # Kernel [[1,1,1],[1,5,1],[1,1,1]] / 13 on interior pixels.
  acc = 4.0 * x[:, 1:-1, 1:-1]
  for dy in (0, 1, 2):
    for dx in (0, 1, 2):
      acc = acc + x[:, dy:h - 2 + dy, dx:w - 2 + dx]
  smooth = x.copy()
  smooth[:, 1:-1, 1:-1] = np.rint(acc / 13.0)
  return blend(smooth, images, factor)


def solarize(images: np.ndarray, threshold) -> np.ndarray:
  """Inverts pixels at or above `threshold[b]`; `[B, H, W, C]` uint8."""
  t = _per_example(threshold, images.shape[0], np.int32)
  return np.where(images.astype(np.int32) >= t, 255 - images, images).astype(np.uint8)


def solarize_add(images: np.ndarray, addition, threshold: int = 128) -> np.ndarray:
  """Adds `addition[b]` to pixels below `threshold`, clipped; `[B, H, W, C]` uint8."""
  a = _per_example(addition, images.shape[0], np.int32)
  x = images.astype(np.int32)
  return np.where(x < threshold, np.clip(x + a, 0, 255), x).astype(np.uint8)


def posterize(images: np.ndarray, bits) -> np.ndarray:
  """Keeps the `bits[b]` (1..8) most significant bits of every pixel; `[B, H, W, C]` uint8."""
  bits = _per_example(bits, images.shape[0], np.int32)
  shift = (8 - np.clip(bits, 1, 8)).astype(np.uint8)
  return ((images >> shift) << shift).astype(np.uint8)


def invert(images: np.ndarray) -> np.ndarray:
  """`255 - images`."""
  return (255 - images).astype(np.uint8)


def _apply_lut(images: np.ndarray, lut: np.ndarray) -> np.ndarray:
  """Maps every pixel through its (image, channel) table: `lut` `[B * C, 256]` uint8."""
  b, h, w, c = images.shape
  chans = images.transpose(0, 3, 1, 2).reshape(b * c, h * w)
  out = np.take_along_axis(lut, chans.astype(np.intp), axis=1)
  return out.reshape(b, c, h, w).transpose(0, 2, 3, 1)


def autocontrast(images: np.ndarray) -> np.ndarray:
  """Stretches each image channel to the full [0, 255] range (PIL.ImageOps.autocontrast).

  `[B, H, W, C]` uint8 -> same. Like PIL, the table value `v * scale - lo * scale` is truncated
  (in float64, the same arithmetic as PIL's), and a constant channel is left as it is.
  """
  b, _, _, c = images.shape
  lo = images.min(axis=(1, 2)).reshape(b * c, 1).astype(np.float64)
  hi = images.max(axis=(1, 2)).reshape(b * c, 1).astype(np.float64)
  flat = hi <= lo
  scale = 255.0 / np.where(flat, 1.0, hi - lo)
  v = np.arange(256, dtype=np.float64)[None, :]
  lut = np.clip(np.floor(v * scale + (-lo * scale)), 0, 255)
  lut = np.where(flat, v, lut).astype(np.uint8)
  return _apply_lut(images, lut)


def equalize(images: np.ndarray) -> np.ndarray:
  """Histogram equalisation of each image channel (PIL.ImageOps.equalize); `[B,H,W,C]` uint8."""
  b, h, w, c = images.shape
  # One row of 256 bins per (image, channel).
  chans = images.transpose(0, 3, 1, 2).reshape(b * c, h * w).astype(np.int64)
  rows = np.arange(b * c)[:, None]
  hist = np.bincount((rows * 256 + chans).ravel(), minlength=b * c * 256).reshape(b * c, 256)
  # PIL: step = (number of pixels - count of the last non-empty bin) // 255.
  last_bin = 255 - np.argmax(hist[:, ::-1] > 0, axis=1)
  step = (h * w - hist[rows[:, 0], last_bin]) // 255
  cum = np.cumsum(hist, axis=1) - hist                     # pixels strictly below each value
  safe = np.maximum(step, 1)[:, None]
  lut = np.clip((cum + safe // 2) // safe, 0, 255)
  identity = np.broadcast_to(np.arange(256), lut.shape)
  lut = np.where((step > 0)[:, None], lut, identity).astype(np.uint8)
  return _apply_lut(images, lut)
