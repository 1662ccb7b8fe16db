"""Operation counts of the production spike path against the independent NumPy oracle.

The oracle (`tests/reference_snn.py`) counts synaptic operations, encoding MACs and real
multiplications from its own spikes, with fan-outs it derives from the layer shapes; production
counts them in its layers (`snn.simulate(mode="spike")`). In float64 both fire identical spikes
(`test_reference_snn.py`), so every layer's counts must be equal, on all four shipped models and
real images. Three deliberate breaks of the production counting (an attention fan-out doubled, a
shortcut's count dropped, a stride-2 convolution counted as stride 1) must each be caught.
"""

from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ge2ms_jax import config_utils
from ge2ms_jax import conversion
from ge2ms_jax import energy
from ge2ms_jax import layers as L
from ge2ms_jax import loading
from ge2ms_jax import model as models
from ge2ms_jax import snn
from ge2ms_jax import spikes as sp

import reference_snn as R
import test_reference_snn as T

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_IMAGES = 8
SHIPPED = {
    "fashion_mnist_tiny": ("fashion_mnist", "experiments/fashion_mnist.py"),
    "fashion_mnist_tiny_sparse": ("fashion_mnist", "experiments/fashion_mnist.py"),
    "cifar10_tiny": ("cifar10", "experiments/cifar10.py:variant=tiny"),
    "cifar10_tiny_sparse": ("cifar10", "experiments/cifar10.py:variant=tiny"),
}
KEYS = ("sops", "macs", "scalings")


class Model:
  """A shipped model in float64 (config, converted parameters) and `NUM_IMAGES` real images."""

  def __init__(self, name: str):
    dataset, spec = SHIPPED[name]
    config = config_utils.load_config(spec)
    variables = loading.load(config, str(REPO / "checkpoints" / name)).variables
    images = T._images(dataset, config)  # noqa: SLF001 (the oracle tests' real images)
    pick = np.linspace(0, len(images) - 1, NUM_IMAGES).astype(int)
    self.images = images[pick].astype(np.float64)
    self.config = ml_collections.ConfigDict(config.model.to_dict())
    self.config.dtype = "float64"
    with jax.enable_x64(True):
      v64 = jax.tree.map(lambda a: np.asarray(a, np.float64), variables)
      self.params = jax.tree.map(np.asarray, conversion.convert(v64, self.config, check=False))

  @functools.cached_property
  def oracle(self) -> dict[str, dict[str, float]]:
    return R.simulate(self.params, self.config, self.images, np.float64).ops

  def production(self) -> list[snn.LayerStats]:
    """Per-layer statistics of production spike mode (traced anew: patched counters take effect)."""
    snn._apply_fn.cache_clear()  # noqa: SLF001
    try:
      with jax.enable_x64(True):
        return snn.simulate(self.params, jnp.asarray(self.images), "spike", config=self.config).layers
    finally:
      snn._apply_fn.cache_clear()  # noqa: SLF001


@functools.lru_cache(maxsize=None)
def _model(name: str) -> Model:
  return Model(name)


@pytest.fixture(scope="module", autouse=True)
def _release():
  yield
  _model.cache_clear()


def differences(oracle: dict[str, dict[str, float]], production: list[snn.LayerStats]) -> dict[str, tuple]:
  """`{layer: (oracle counts, production counts)}` for every layer where they differ; a layer that
  only one side lists counts as all zeros on the other."""
  prod = {r.name: {k: getattr(r, k) for k in KEYS} for r in production if r.kind != "neuron"}
  zero = dict.fromkeys(KEYS, 0.0)
  out = {}
  for name in sorted(set(prod) | set(oracle)):
    a, b = oracle.get(name, zero), prod.get(name, zero)
    if any(a[k] != b[k] for k in KEYS):
      out[name] = (a, b)
  return out


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_per_layer_operation_counts_equal_the_oracle(name):
  m = _model(name)
  layers = m.production()
  diff = differences(m.oracle, layers)
  assert not diff, diff
  # Not vacuous: every kind of counted layer is present and busy.
  ops = m.oracle
  assert ops["stem_conv"]["macs"] > 0 and ops["head"]["sops"] > 0
  assert all(ops[n]["sops"] > 0 for n in ops if n.endswith(("_shortcut", "attn_p1", "attn_p2", "/down")))
  assert sum(ops[n]["scalings"] for n in ops if "attn_p" in n) > 0
  # And the totals the reports state follow from the same counts.
  report = energy.energy_report(snn.SimResult(logits=None, layers=layers, num_images=NUM_IMAGES, mode="spike"),
                                models.count(m.config)["macs"])
  total = sum(sum(row.values()) for row in ops.values()) / NUM_IMAGES
  assert report.ops == pytest.approx(total, rel=1e-12)
  print(f"\n{name}: {len(ops)} counted layers equal; ops/MAC {report.ops_per_mac:.4f} on {NUM_IMAGES} images")


def _double_fanout(original):
  return lambda *args, **kwargs: 2 * original(*args, **kwargs)


def _drop_shortcut(original):
  def add(module, current, shortcut, name="shortcut"):
    if isinstance(shortcut, sp.SpikeTrain):  # integrate without recording the accumulates
      return current + sp.dense(shortcut).astype(current.dtype)
    return original(module, current, shortcut, name)
  return add


def _ignore_stride(original):
  return lambda counts, k, stride: original(counts, k, 1)


BREAKS = {
    "attention fan-out doubled": (sp, "einsum_fanout", _double_fanout, "attn_p"),
    "shortcut count dropped": (L, "add_to_current", _drop_shortcut, "_shortcut"),
    "stride-2 convolution counted as stride 1": (L, "_box_sum", _ignore_stride, "/down"),
}


@pytest.mark.parametrize("brk", sorted(BREAKS))
def test_each_break_of_the_production_count_is_caught(brk, monkeypatch):
  m = _model("fashion_mnist_tiny_sparse")
  module, attr, make, where = BREAKS[brk]
  monkeypatch.setattr(module, attr, make(getattr(module, attr)))
  diff = differences(m.oracle, m.production())
  assert diff, f"{brk}: the comparison did not notice"
  assert all(where in name for name in diff), (brk, sorted(diff))


def test_counts_with_mixed_codes_and_padded_windows_equal_the_oracle():
  # Non-power-of-two bases (their rescales are multiplications), per-channel thresholds, a 7x7
  # attention grid that windows 2 and 4 pad, a token count (49) that makes the head's mean a
  # multiplication.
  fields = models.default_config("tiny").to_dict()
  fields.update(image_size=28, in_channels=1, stem_channels=8, dims=(16, 48), depths=(1, 1), head_dim=8,
                attn_shift=(1, 3, 5), dtype="float64",
                neuron_overrides=r"stem_n=4,2;mix_n_dw=3,2;n_down=3,2;attn_q$=4,2;attn_k$=3,2;attn_v$=3,2")
  fields["neuron"]["per_channel"] = True
  cfg = ml_collections.ConfigDict(fields)
  images = np.random.default_rng(3).standard_normal((3, 28, 28, 1))
  converted = T.random_converted(cfg, images, seed=5)
  with jax.enable_x64(True):
    layers = snn.simulate(converted, jnp.asarray(images), "spike", config=cfg).layers
  ops = R.simulate(converted, cfg, images, np.float64).ops
  assert not differences(ops, layers)
  assert ops["head_mean"]["scalings"] == 3 * 10
  assert ops["stage0/block0/mix_pw"]["scalings"] > 0  # fed by the base-3 code of mix_n_dw
  assert ops["stage1/block0/attn_p1"]["scalings"] > ops["stage1/block0/attn_p2"]["scalings"] > 0


def test_dense_stages_and_strides_equal_the_oracle():
  # The fast recipe's layout, shrunk: dense (full 3x3) stages after stride-1 and stride-2 convolutions,
  # BatchNorm without a scale (folded all the same), and a GW-SSA stage; spikes and every layer's counts.
  cfg = models.default_config("fast")
  cfg.update(dict(num_classes=10, in_channels=3, image_size=32, stem_channels=8, dims=(8, 16, 16),
                  strides=(1, 2, 2), head_dim=8, heads_per_window=(1, 1), bn_scale=False, dtype="float64"))
  images = np.random.default_rng(4).standard_normal((2, 32, 32, 3))
  converted = T.random_converted(cfg, images, seed=6)
  with jax.enable_x64(True):
    logits, prod = T._capture(cfg, converted, jnp.asarray(images))  # noqa: SLF001
    layers = snn.simulate(converted, jnp.asarray(images), "spike", config=cfg).layers
  ref = R.simulate(converted, cfg, images, np.float64)
  assert not any(T._compare_sites(ref.spikes, prod).values())  # noqa: SLF001
  np.testing.assert_allclose(ref.logits, logits, rtol=0, atol=1e-9)
  assert not differences(ref.ops, layers)
  assert ref.ops["stage0/block0/conv2"]["sops"] > 0 and ref.ops["stage0/block0/shortcut"]["sops"] > 0
