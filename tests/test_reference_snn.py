"""The production spike path against an independent NumPy oracle (`tests/reference_snn.py`).

Every neuron site, every time step, on the two shipped models and real test images:
float64 spikes identical; float32 spikes (each site teacher-forced with the production input spikes)
differ only where the float64 membrane sits within float32 rounding of a level boundary. A
synthetic model with mixed per-site codes, and a check that a broken production rounding is caught
by the oracle although QANN and SNN (which share the rounding) still agree.
"""

from __future__ import annotations

import functools
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ge2ms_jax import config_utils
from ge2ms_jax import conversion
from ge2ms_jax import loading
from ge2ms_jax import model as models
from ge2ms_jax import neurons
from ge2ms_jax import snn
from ge2ms_jax.data import formats
from ge2ms_jax.data import preprocess
from ge2ms_jax.data import splits

import reference_snn as R  # tests/ has no __init__.py, so pytest puts it on sys.path

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_IMAGES = 32
EPS32 = float(np.finfo(np.float32).eps)
# A flip in float32 is accepted only within this many float32 epsilons of the boundary, relative to
# the magnitude of the summed terms (Σ|terms| in level units): the two implementations sum in
# different orders, and each ordering's error is bounded by a small multiple of eps * Σ|terms|.
FLIP_TOLERANCE_EPS = 64
MAX_FLIP_FRACTION = 1e-4

SHIPPED = {
    "fashion_mnist": dict(spec="experiments/fashion_mnist.py", export=REPO / "checkpoints" / "fashion_mnist_tiny"),
    "cifar10": dict(spec="experiments/cifar10.py:variant=tiny", export=REPO / "checkpoints" / "cifar10_tiny"),
}


# ---------------------------------------------------------------------------------------------
# Loading the shipped models and real images
# ---------------------------------------------------------------------------------------------
def _cifar_source() -> pathlib.Path | None:
  candidates = [os.environ.get("GE2MS_CIFAR10"), REPO.parent / "shared" / "data" / "cifar10-train-jpeg.tar.gz"]
  for c in candidates:
    if c and pathlib.Path(c).exists():
      return pathlib.Path(c)
  return None


def _images(name: str, config: ml_collections.ConfigDict) -> np.ndarray:
  """`NUM_IMAGES` real evaluation images `[B, H, W, C]` float32, normalised by the experiment's pp_eval."""
  if name == "fashion_mnist":
    with np.load(formats.EMBEDDED_PATH) as z:
      images = z["test_images"]
    pick = np.linspace(0, len(images) - 1, NUM_IMAGES).astype(int)
    raw = images[pick][..., None]
  else:
    source = _cifar_source()
    if source is None:
      pytest.skip("CIFAR-10 images not found: set GE2MS_CIFAR10 to the ImageFolder .tar.gz/directory, "
                  "or provide ../shared/data/cifar10-train-jpeg.tar.gz next to the repository")
    # The experiment's held-out validation split (the eval split), spread over its classes.
    reader = formats.FolderReader(source)
    layout = formats.scan_folder(reader, num_classes=10)
    layout = splits.hold_out(layout, float(config.data.validation_fraction), int(config.data.split_seed))
    files = layout.files["validation"]
    pick = np.linspace(0, len(files) - 1, NUM_IMAGES).astype(int)
    wanted = [files[i][0] for i in pick]
    raw = np.stack([np.asarray(formats.decode_image(data, 3, rel)) for rel, data in reader.read(wanted)])
  batch = preprocess.get_preprocess_fn(config.pp_eval)(
      {"image": raw, "label": np.zeros(len(raw), np.int32)}, np.random.default_rng(0))
  return np.asarray(batch["image"], np.float32)


def _capture(model_config: ml_collections.ConfigDict, snn_variables: Any, images: Any
             ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """Production spike mode: logits `[B, classes]` and `{site: spikes [T, B, H, W, C] bool}` in
  network order. A fresh jit each call, so a patched kernel is traced anew.

  The same `net.apply` as `snn.simulate(mode="spike")`, without the "stats" collection: the spikes do
  not depend on it, and leaving the statistics out makes compiling several times faster.
  """
  logits, outputs = snn.neuron_site_outputs(models.build(model_config, "spike"), snn_variables, images,
                                            stats=False)
  return np.asarray(logits), {site: np.asarray(t.spikes).astype(bool) for site, t in outputs.items()}


class Shipped:
  """A shipped model, its images, and the production float32 spikes (computed once per session)."""

  def __init__(self, name: str):
    spec = SHIPPED[name]
    self.name = name
    self.config = config_utils.load_config(spec["spec"])
    # The command line's loading, adoption of the recorded architecture included.
    self.variables = loading.load(self.config, str(spec["export"])).variables
    self.model = self.config.model
    self.images = _images(name, self.config)
    # check=False: the conversion's operation audit is tested elsewhere and costs a QANN trace here.
    self.snn32 = conversion.convert(self.variables, self.model, check=False)
    self.logits32, self.spikes32 = _capture(self.model, self.snn32, jnp.asarray(self.images))

  @functools.cached_property
  def float64(self) -> tuple[ml_collections.ConfigDict, dict, dict]:
    """`(model config with dtype float64, QANN variables, converted parameters)`, float64 numpy."""
    cfg = ml_collections.ConfigDict(self.model.to_dict())
    cfg.dtype = "float64"
    with jax.enable_x64(True):
      v64 = jax.tree.map(lambda a: np.asarray(a, np.float64), self.variables)
      snn64 = jax.tree.map(np.asarray, conversion.convert(v64, cfg, check=False))
    return cfg, v64, snn64

  def capture64(self, count: int = NUM_IMAGES) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Production float64 spike mode on the first `count` images: logits and spikes."""
    cfg, _, snn64 = self.float64
    with jax.enable_x64(True):
      logits, spikes = _capture(cfg, snn64, jnp.asarray(self.images[:count], jnp.float64))
    assert logits.dtype == np.float64
    return logits, spikes


@functools.lru_cache(maxsize=None)
def _shipped(name: str) -> Shipped:
  return Shipped(name)


@pytest.fixture(params=sorted(SHIPPED))
def shipped(request) -> Shipped:
  return _shipped(request.param)


@pytest.fixture(scope="module", autouse=True)
def _release_shipped():
  """The cached models and spike trains (a few hundred MB) are freed when this module is done."""
  yield
  _shipped.cache_clear()


# ---------------------------------------------------------------------------------------------
# Comparisons
# ---------------------------------------------------------------------------------------------
def _compare_sites(reference: dict[str, np.ndarray], production: dict[str, np.ndarray]) -> dict[str, int]:
  """Spike mismatches per site (every step and neuron counted), after checking names and shapes."""
  assert list(reference) == list(production), "the oracle and production visit different neuron sites"
  out = {}
  for site, spikes in production.items():
    assert reference[site].shape == spikes.shape, (site, reference[site].shape, spikes.shape)
    out[site] = int(np.count_nonzero(reference[site] != spikes))
  return out


def _theta(params: Any, site: str) -> np.ndarray:
  node = params
  for key in site.split("/"):
    node = node[key]
  return np.asarray(node["theta"], np.float64)


def _check_float32_flips(bundle: Shipped, oracle32: R.Result) -> tuple[int, int, float]:
  """Checks that every float32 flip is a one-level disagreement at a rounding boundary.

  Returns:
    `(flipped neurons, neurons, worst distance to the boundary in units of eps32 * Σ|terms|)`.
  """
  prod = bundle.spikes32
  neurons_total = sum(s[0].size for s in prod.values())
  flipped_sites = {s for s in prod if np.any(oracle32.spikes[s] != prod[s])}
  if not flipped_sites:
    return 0, neurons_total, 0.0
  params64 = jax.tree.map(lambda a: np.asarray(a, np.float64), bundle.snn32["params"])
  # The exact current given the production's input spikes and the float32 parameters (held exactly
  # in float64), and the magnitude of its terms (the same sums with |weights|, |bias|, |pixels|).
  exact = R.simulate(params64, bundle.model, bundle.images.astype(np.float64), np.float64, forced=prod,
                     only=flipped_sites, return_currents=True).currents
  mags = R.simulate(jax.tree.map(np.abs, params64), bundle.model, np.abs(bundle.images.astype(np.float64)),
                    np.float64, forced=prod, only=flipped_sites, return_currents=True).currents
  flips, worst = 0, 0.0
  for site in sorted(flipped_sites):
    base, groups = R.site_code(bundle.model, site)
    n_prod = R.levels_of(prod[site], base, groups)
    n_ref = R.levels_of(oracle32.spikes[site], base, groups)
    where = n_prod != n_ref
    assert np.array_equal(where, np.any(prod[site] != oracle32.spikes[site], axis=0)), site
    assert np.all(np.abs(n_prod[where] - n_ref[where]) == 1), f"{site}: a float32 flip of more than one level"
    theta = _theta(params64, site)
    u = R.level_units(exact[site], theta, base, groups)
    mag = R.level_units(mags[site], theta, base, groups)
    boundary = np.maximum(n_prod, n_ref)[where] - 0.5
    dist = np.abs(u[where] - boundary)
    scale = EPS32 * (mag[where] + boundary + 1.0)
    ratio = float(np.max(dist / scale))
    assert ratio <= FLIP_TOLERANCE_EPS, (
        f"{site}: a float32 flip {float(np.max(dist)):.3g} levels from the nearest boundary "
        f"({ratio:.1f} eps * Σ|terms|): not a rounding effect")
    flips += int(np.count_nonzero(where))
    worst = max(worst, ratio)
  return flips, neurons_total, worst


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("base,groups", [(2, 4), (4, 2), (3, 2), (16, 1), (2, 1)])
def test_oracle_neuron_is_lossless(base, groups):
  # METHOD.md §1, checked on the oracle alone: the weighted spikes are Q(I), the level
  # clip(floor(I L / θ + 1/2), 0, L - 1) times θ / L, for currents away from the rounding boundaries.
  rng = np.random.default_rng(base * 10 + groups)
  levels = base**groups
  theta = np.asarray([0.7, 1.3, 2.0])
  u = rng.uniform(-3, levels + 3, (4000, 3))
  u = np.where(np.abs(u - np.round(u - 0.5) - 0.5) < 1e-6, u + 1e-3, u)  # keep off the boundaries
  spikes = R.fire(u * theta / levels, theta, base, groups)
  assert spikes.shape == (groups * (base - 1), 4000, 3)
  n = R.levels_of(spikes, base, groups)
  np.testing.assert_array_equal(n, np.clip(np.floor(u + 0.5), 0, levels - 1))
  train = R.Train(spikes=spikes, theta=theta, base=base, groups=groups)
  value = np.tensordot(np.ones(spikes.shape[0]), spikes * train.step_weights(np.float64)[:, None, :], axes=1)
  np.testing.assert_allclose(value, n * theta / levels, rtol=1e-12, atol=1e-12)
  # Fire-first inside each group: a group's spikes are a prefix of its b - 1 steps.
  per_group = spikes.reshape(groups, base - 1, -1)
  assert np.all(per_group[:, 1:] <= per_group[:, :-1])


def test_float64_spikes_are_identical_at_every_site_and_step(shipped):
  cfg, _, params64 = shipped.float64
  logits, prod = shipped.capture64()
  ref = R.simulate(params64, cfg, shipped.images.astype(np.float64), np.float64)
  mismatches = _compare_sites(ref.spikes, prod)
  total = sum(s.size for s in prod.values())
  print(f"\n{shipped.name} float64: {sum(mismatches.values())} spike mismatches of {total} "
        f"(sites x steps x neurons, {len(prod)} sites, {NUM_IMAGES} images)")
  assert sum(mismatches.values()) == 0, {s: m for s, m in mismatches.items() if m}
  np.testing.assert_allclose(ref.logits, logits, rtol=0, atol=1e-9)
  np.testing.assert_array_equal(np.argmax(ref.logits, -1), np.argmax(logits, -1))


def test_float32_flips_are_rare_and_only_at_rounding_boundaries(shipped):
  ref = R.simulate(shipped.snn32, shipped.model, shipped.images, np.float32, forced=shipped.spikes32)
  mismatches = _compare_sites(ref.spikes, shipped.spikes32)
  flips, total, worst = _check_float32_flips(shipped, ref)
  per_site = {s: int(np.count_nonzero(np.any(ref.spikes[s] != shipped.spikes32[s], axis=0)))
              for s in shipped.spikes32}
  message = (f"{shipped.name} float32 (teacher-forced): {flips} flipped neurons of {total} "
             f"({sum(mismatches.values())} step mismatches), worst {worst:.2f} eps*Σ|terms| from a boundary; "
             f"per site: { {s: n for s, n in per_site.items() if n} }")
  print("\n" + message)
  assert flips <= MAX_FLIP_FRACTION * total, message
  # Logits from the forced last spikes: the head alone, summed in a different order.
  np.testing.assert_allclose(ref.logits, shipped.logits32, rtol=1e-4, atol=1e-4 * np.max(np.abs(shipped.logits32)))


def _randomise(shapes: Any, seed: int) -> Any:
  """Trained-looking float64 variables for `shapes` (thresholds > 0, variances > 0)."""
  rng = np.random.default_rng(seed)
  leaves, tree = jax.tree_util.tree_flatten_with_path(shapes)
  out = []
  for path, leaf in leaves:
    name = jax.tree_util.keystr(path)
    noise = rng.standard_normal(leaf.shape)
    if "theta" in name:
      value = 0.5 + 0.5 * np.abs(noise)
    elif "'var'" in name:
      value = 0.5 + np.abs(noise)
    elif "'mean'" in name or "'bias'" in name:
      value = 0.1 * noise
    elif "'scale'" in name:
      value = 1.0 + 0.3 * noise
    else:
      value = noise * np.sqrt(2.0 / max(1, int(np.prod(leaf.shape[:-1]))))
    out.append(np.asarray(value, np.float64))
  return jax.tree_util.tree_unflatten(tree, out)


def random_converted(cfg: ml_collections.ConfigDict, images: np.ndarray, seed: int) -> dict:
  """The converted float64 parameters of `cfg` (dtype float64) with `_randomise`d variables."""
  with jax.enable_x64(True):
    net = models.build(cfg, "qann")
    shapes = jax.eval_shape(lambda x: net.init({"params": jax.random.key(0)}, x, train=False),
                            jax.ShapeDtypeStruct(images.shape, jnp.float64))
    variables = _randomise({k: shapes[k] for k in ("params", "batch_stats")}, seed=seed)
    return conversion.convert(variables, cfg, check=False)


def test_synthetic_mixed_codes_float64_identical():
  # Runlocal size. 28x28 makes the attention grid 7x7, which windows 2 and 4 do not divide (padding
  # is the mask); per-channel thresholds everywhere but the attention operands; explicit shifts;
  # codes (2,4) by default, (4,2), (3,2) and (2,3) on various sites, q, k, v with different codes.
  fields = models.default_config("tiny").to_dict()
  fields.update(image_size=28, in_channels=1, stem_channels=8, dims=(16, 48), depths=(1, 2), head_dim=8,
                attn_shift=(1, 3, 5), dtype="float64",
                neuron_overrides=(r"stem_n=4,2;mix_n_dw=3,2;n_down=3,2;ffn_n_up=4,2;attn_q$=4,2;attn_k$=3,2;"
                                  r"attn_n_mix=3,2;mlp_n_up=4,2;block1/.*_out=3,2;stage1/block0/mlp_n_out=2,3"))
  fields["neuron"]["per_channel"] = True
  cfg = ml_collections.ConfigDict(fields)
  images = np.random.default_rng(1).standard_normal((4, 28, 28, 1))
  converted = random_converted(cfg, images, seed=7)
  with jax.enable_x64(True):
    logits, prod = _capture(cfg, converted, jnp.asarray(images))
  ref = R.simulate(converted, cfg, images, np.float64)
  mismatches = _compare_sites(ref.spikes, prod)
  assert sum(mismatches.values()) == 0, {s: m for s, m in mismatches.items() if m}
  steps = {prod[s].shape[0] for s in prod}
  assert steps == {3, 4, 6}, f"expected the step counts of (2,3), (2,4)/(3,2) and (4,2), got {steps}"
  silent = [s for s, x in prod.items() if not x.any()]
  assert not silent, f"sites that never fire make the comparison vacuous: {silent}"
  np.testing.assert_allclose(ref.logits, logits, rtol=0, atol=1e-9)


def _broken_signed_level(current, theta, levels):
  """The production level rounding (estimate, then exact boundary corrections) with the half-level
  offset replaced by 0.3 of a level."""
  ct = jnp.promote_types(current.dtype, jnp.float32)
  x = current.astype(ct)
  s = neurons.level_step(theta, levels, ct)
  off = jnp.asarray(0.3, ct)
  m = jnp.clip(jnp.floor(x / s + off), -1, levels)
  m = m - (x < (m - off) * s).astype(ct) + (x >= (m + 1 - off) * s).astype(ct)
  return jnp.clip(m, -1, levels)


def test_oracle_catches_a_rounding_bug_that_qann_snn_agreement_misses(monkeypatch):
  # float64, where the clean production path matches the oracle exactly (the test above), so any
  # mismatch is the bug's.
  bundle = _shipped("fashion_mnist")
  cfg, v64, snn64 = bundle.float64
  count = 16
  monkeypatch.setattr(neurons, "_signed_level", _broken_signed_level)
  snn._apply_fn.cache_clear()  # noqa: SLF001 (jitted programs traced with the real rounding)
  try:
    logits, prod = bundle.capture64(count)
    with jax.enable_x64(True):
      qann = np.asarray(jax.jit(lambda v, x: models.build(cfg, "qann").apply(v, x))(
          v64, jnp.asarray(bundle.images[:count], jnp.float64)))
  finally:
    snn._apply_fn.cache_clear()  # noqa: SLF001
  # The bug is invisible to the QANN/SNN check: both sides round the same wrong way, so their
  # predictions agree and their logits are equal to float64 noise...
  agreement = float(np.mean(np.argmax(qann, -1) == np.argmax(logits, -1)))
  assert agreement == 1.0, agreement
  np.testing.assert_allclose(logits, qann, rtol=0, atol=1e-9)
  # ...while the patch did change the network (it reached both sides).
  assert np.max(np.abs(logits - bundle.logits32[:count])) > 1e-2 * np.max(np.abs(bundle.logits32)), "no effect"
  ref = R.simulate(snn64, cfg, bundle.images[:count].astype(np.float64), np.float64, forced=prod)
  mismatches = _compare_sites(ref.spikes, prod)
  bad_sites = [s for s, m in mismatches.items() if m]
  print(f"\nbroken rounding: {sum(mismatches.values())} spike mismatches against the oracle at "
        f"{len(bad_sites)} of {len(mismatches)} sites (QANN/SNN agreement {100 * agreement:.0f}%)")
  assert sum(mismatches.values()) > 0 and len(bad_sites) == len(mismatches), mismatches
