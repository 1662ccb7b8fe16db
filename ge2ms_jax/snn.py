"""Running the converted spiking network: simulation, statistics, and QANN/SNN verification.

`simulate(snn_variables, images, mode, config=...)` runs the network of `conversion.convert`:

* `mode="spike"`: the faithful simulation. Every layer after the first consumes the binary spikes of
  each time step (time folded into the batch), accumulates with the power-of-two step weights, and
  fires through `expg_if`. Every synaptic product (convolutions, dense layers, both attention
  products, residual integrations) checks that one operand is in {0, 1}; a violation raises
  `MultiplicationFreeError` naming the layer.
* `mode="fused"`: each layer applied to the weighted sum of its input spikes (the fast path), with
  exact synaptic-operation counts derived from the spike counts.

Both return the logits and per-layer statistics (`LayerStats`): synaptic operations, MACs of the
encoding layer, spikes, neurons, time steps and firing rates. Only spike mode shows that the network
is multiplication-free; `check_label(mode)` is the label every output carries to say which it was.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ge2ms_jax import layers as L
from ge2ms_jax import model as models
from ge2ms_jax import spikes as sp

Array = jax.Array
SIM_MODES = ("spike", "fused")
# What a result may claim about how it was obtained: the fused path never materialises spike trains,
# so it neither simulates spike by spike nor checks that products are multiplication-free.
CHECK_LABELS = {
    "spike": "spike: simulated spike by spike, multiplication-free checked",
    "fused": "fused: not simulated spike by spike, not checked",
}


def check_label(mode: str | None) -> str:
  """The label of a simulation mode (`CHECK_LABELS`); an unrecorded mode claims no check."""
  if mode is None:
    return "unknown: simulation mode not recorded, not known to be checked"
  if mode not in CHECK_LABELS:
    raise ValueError(f"check_label: mode must be one of {SIM_MODES} or None, got {mode!r}.")
  return CHECK_LABELS[mode]


MultiplicationFreeError = sp.MultiplicationFreeError


@dataclasses.dataclass
class LayerStats:
  """Statistics of one layer or neuron site over the simulated images (totals, not per image).

  Attributes:
    name: module path, e.g. `"stage1/block0/attn_q"` or `"stage1/block0/attn_p1"`.
    kind: `"synapse"` (conv/dense), `"attention"` (a product), `"shortcut"` (identity synapse into a
      membrane), or `"neuron"`.
    sops: synaptic operations (accumulates) driven by spikes.
    macs: multiply-accumulates on real-valued input (the encoding layer).
    shifts, scalings: per-window rescalings of accumulators by the step weights (shifts for a
      power-of-two base, multiplications otherwise), once per output and group.
    spikes, neurons, steps: for neuron sites: spikes fired, neurons (per window), time steps.
    code: `(base, groups)` of a neuron site.
    per_step: spikes (neurons) or synaptic operations (synapses) per time step, spike mode only
      (None for an attention product whose head groups' spike operands differ in time steps).
  """
  name: str
  kind: str
  sops: float = 0.0
  macs: float = 0.0
  shifts: float = 0.0
  scalings: float = 0.0
  spikes: float = 0.0
  neurons: int = 0
  steps: int = 0
  code: tuple[int, int] | None = None
  per_step: list[float] | None = None

  @property
  def firing_rate(self) -> float:
    """Spikes per neuron per time step."""
    return self.spikes / (self.neurons * self.steps) if self.neurons and self.steps else 0.0

  @property
  def spikes_per_neuron(self) -> float:
    return self.spikes / self.neurons if self.neurons else 0.0


@dataclasses.dataclass
class SimResult:
  """Logits `[B, classes]` and the per-layer statistics of a simulation.

  `mode` is the simulation mode ("spike" | "fused"; None when unknown); `check_label(mode)` says
  whether the run was checked multiplication-free.
  """
  logits: Array
  layers: list[LayerStats]
  num_images: int
  mode: str | None = None

  def to_json(self) -> dict:
    return {"num_images": self.num_images, "mode": self.mode, "snn_check": check_label(self.mode),
            "layers": [dataclasses.asdict(s) | {"firing_rate": s.firing_rate} for s in self.layers]}


def _frozen(config: ml_collections.ConfigDict) -> ml_collections.FrozenConfigDict:
  if isinstance(config, ml_collections.FrozenConfigDict):
    return config
  return ml_collections.FrozenConfigDict(config)


def _mutable(mode: str, stats: bool) -> list[str]:
  """The collections a run makes mutable: the statistics if wanted, the operand checks in spike mode."""
  return (["stats"] if stats else []) + ([sp.CHECKS] if mode == "spike" else [])


@functools.lru_cache(maxsize=16)
def _apply_fn(config: ml_collections.FrozenConfigDict, mode: str, stats: bool = True):
  """`run(variables, images) -> (logits, stats)`, jitted once per (config, mode, stats); in spike
  mode it raises `MultiplicationFreeError` when a spike-train operand held a value other than 0 or 1.
  `run.lower` compiles the same program ahead of time."""
  net = models.build(config, mode=mode)
  mutable = _mutable(mode, stats)

  @jax.jit
  def jitted(variables, images):
    if not mutable:
      return net.apply(variables, images), {}, {}
    logits, state = net.apply(variables, images, mutable=mutable)
    return logits, state.get("stats", {}), state.get(sp.CHECKS, {})

  def run(variables, images):
    logits, collected, checks = jitted(variables, images)
    raise_unless_binary(checks)
    return logits, collected

  run.lower = jitted.lower
  return run


def raise_unless_binary(checks: Mapping[str, Any]) -> None:
  """Raises if any operand check of a spike-mode run (the `"checks"` collection) failed.

  Raises:
    MultiplicationFreeError: naming every layer whose spike-train operand held a value not in {0, 1}.
  """
  bad: list[str] = []

  def visit(tree, path):
    for key, value in tree.items():
      if isinstance(value, Mapping):
        visit(value, path + [key])
      elif not all(bool(np.all(np.asarray(v))) for v in value):
        name = "/".join(path if key == "synapse" else path + [key])
        bad.append(name[: -len("/syn")] if name.endswith("/syn") else name)

  visit(checks, [])
  if bad:
    raise MultiplicationFreeError(
        "spike-train operands holding values other than 0 and 1 (graded values: multiplications in the "
        "spiking network) at: " + ", ".join(sorted(bad)))


def _kind(key: str) -> str:
  if key in ("neuron", "synapse"):
    return key
  if key == "head_mean":
    return "scale"
  return "attention" if re.fullmatch(r"attn_(p\d+|scale)", key) else "shortcut"


def collect_stats(stats: Mapping[str, Any]) -> list[LayerStats]:
  """Flattens the sown `"stats"` collection into `LayerStats`, in network order.

  Raises:
    MultiplicationFreeError: naming every product whose operand was not binary.
  """
  rows: list[LayerStats] = []
  bad: list[str] = []
  order: dict[str, int] = {}

  def visit(tree, path):
    for key, value in tree.items():
      if isinstance(value, Mapping):
        visit(value, path + [key])
        continue
      # A sown value: a tuple with one entry per call (attention products: one per head group).
      name = "/".join(path if key in ("synapse", "neuron") else path + [key])
      if name.endswith("/syn"):
        name = name[: -len("/syn")]
      kind = _kind(key)
      row = LayerStats(name=name, kind=kind)
      order[name] = min(int(np.min(e["order"])) for e in value) if all("order" in e for e in value) else 0
      ragged = False
      for entry in value:
        entry = jax.tree.map(np.asarray, entry)
        if "binary" in entry and not bool(entry["binary"]):
          bad.append(name)
        row.sops += float(entry.get("sops", 0.0))
        row.macs += float(entry.get("macs", 0.0))
        row.shifts += float(entry.get("shifts", 0.0))
        row.scalings += float(entry.get("scalings", 0.0))
        if kind == "neuron":
          row.spikes += float(entry["spikes"])
          row.neurons += int(entry["neurons"])
          row.steps = int(entry["steps"])
          row.code = tuple(int(c) for c in entry["code"])
        per_step = entry.get("spikes_per_step", entry.get("sops_per_step", entry.get("nnz")))
        if per_step is not None and not ragged:
          ps = np.asarray(per_step, np.float64)
          if row.per_step is not None and len(row.per_step) != len(ps):
            # Head groups whose spike operands have different codes (time steps): their steps do
            # not line up, so the row has no per-step profile.
            ragged, row.per_step = True, None
            continue
          row.per_step = ps.tolist() if row.per_step is None else (np.asarray(row.per_step) + ps).tolist()
      rows.append(row)

  visit(stats, [])
  rows.sort(key=lambda r: order[r.name])
  if bad:
    raise MultiplicationFreeError(
        "synaptic products without a {0, 1} operand (multiplications in the spiking network) at: "
        + ", ".join(sorted(set(bad))))
  return rows


def simulate(snn_variables: Mapping[str, Any], images: Array, mode: str = "spike", *,
             config: ml_collections.ConfigDict, stats: bool = True) -> SimResult:
  """Runs the converted SNN on a batch.

  Args:
    snn_variables: `{"params": ...}` from `conversion.convert`.
    images: `[B, H, W, C]` float images (normalised like the training data).
    mode: `"spike"` (binary spike trains, multiplication-free check) or `"fused"`.
    config: the model config the network was trained and converted with.
    stats: collect per-layer statistics (and, in spike mode, check every product's operands). The
      fused path without statistics is the fastest way to the SNN's outputs.

  Returns:
    `SimResult(logits [B, classes], layers, num_images=B)` (`layers` empty without statistics).

  Raises:
    ValueError: for an unknown mode; MultiplicationFreeError: if a product lost its binary operand,
      or a spike-train operand held values other than 0 and 1.
  """
  if mode not in SIM_MODES:
    raise ValueError(f"simulate: mode must be one of {SIM_MODES}, got {mode!r}.")
  if mode == "spike" and not stats:
    raise ValueError("simulate: spike mode always collects statistics, since they carry the "
                     "multiplication-free check; use mode='fused' for outputs alone.")
  logits, collected = _apply_fn(_frozen(config), mode, stats)(snn_variables, images)
  return SimResult(logits=logits, layers=collect_stats(collected), num_images=int(images.shape[0]),
                   mode=mode)


def merge(results: list[SimResult]) -> SimResult:
  """Sums the statistics of several batches (logits `[sum B, classes]` concatenated).

  The merged mode is the batches' common mode, None if they differ (a mix is not all checked).
  """
  first = results[0]
  rows = [dataclasses.replace(r) for r in first.layers]
  for res in results[1:]:
    for row, other in zip(rows, res.layers):
      row.sops += other.sops
      row.macs += other.macs
      row.shifts += other.shifts
      row.scalings += other.scalings
      row.spikes += other.spikes
      row.neurons += other.neurons
      if row.per_step is not None and other.per_step is not None:
        row.per_step = (np.asarray(row.per_step) + np.asarray(other.per_step)).tolist()
  modes = {r.mode for r in results}
  return SimResult(logits=jnp.concatenate([r.logits for r in results]), layers=rows,
                   num_images=sum(r.num_images for r in results),
                   mode=modes.pop() if len(modes) == 1 else None)


# ---------------------------------------------------------------------------------------------
# Verification: the QANN and the SNN side by side, layer by layer
# ---------------------------------------------------------------------------------------------
def neuron_site_outputs(net: nn.Module, variables, images, *, stats: bool = True) -> tuple[Array, dict[str, Any]]:
  """Logits and what every neuron site returned, in the order the network calls its sites.

  Args:
    net: a built network (any mode); variables: its variables; images: `[B, H, W, C]`.
    stats: make the `"stats"` collection mutable (the fused and QANN neurons then return `Coded`
      values); without it spike mode compiles faster. Spike mode checks every spike-train operand
      either way.

  Returns:
    `(logits [B, classes], {site: output})`: arrays (QANN), `spikes.Coded` (fused, QANN with stats)
    or `spikes.SpikeTrain` (spike mode; `.spikes` is `[T, B, H, W, C]`).

  Raises:
    MultiplicationFreeError: in spike mode, when a spike-train operand held values other than 0, 1.
  """
  order: list[str] = []

  def is_neuron(module, _):
    if isinstance(module, L.Neuron):
      order.append("/".join(module.path))  # at trace time: the order the network calls its sites
      return True
    return False

  @jax.jit
  def run(variables, images):
    logits, state = net.apply(variables, images, mutable=["intermediates"] + _mutable(net.mode, stats),
                              capture_intermediates=is_neuron)
    return logits, state["intermediates"], state.get(sp.CHECKS, {})

  logits, inter, checks = run(variables, images)
  raise_unless_binary(checks)
  out = {}

  def visit(tree, path):
    for key, value in tree.items():
      if key == "__call__":
        out["/".join(path)] = value[0]
      elif isinstance(value, Mapping):
        visit(value, path + [key])

  visit(inter, [])
  return logits, {site: out[site] for site in dict.fromkeys(order)}


def _neuron_outputs(net: nn.Module, variables, images) -> tuple[Array, dict[str, Array]]:
  """Logits and the value of every neuron site's output, in network order."""
  logits, outputs = neuron_site_outputs(net, variables, images)
  return logits, {site: sp.dense(value) for site, value in outputs.items()}


def verify(qann_variables: Mapping[str, Any], snn_variables: Mapping[str, Any], images: Array, *,
           config: ml_collections.ConfigDict, mode: str = "spike") -> list[dict[str, Any]]:
  """Runs the QANN and the SNN side by side and compares every neuron site's output.

  Args:
    qann_variables: trained `{"params", "batch_stats"}`.
    snn_variables: their conversion.
    images: `[B, H, W, C]`.
    config: the model config; mode: the SNN mode.

  Returns:
    one row per neuron site, in order: `{"site", "max_abs_diff", "max_abs_value", "mismatch_fraction"}`
    (the fraction of neurons whose value differs by more than 1e-5 of the site's scale), then a final
    row `{"site": "logits", ...}`.
  """
  qann = models.build(config, "qann")
  snn = models.build(config, mode)
  lq, a = _neuron_outputs(qann, qann_variables, images)
  ls, b = _neuron_outputs(snn, snn_variables, images)
  rows = []
  for site, va in a.items():
    vb = b[site].astype(va.dtype)
    diff = jnp.abs(va - vb)
    scale = float(jnp.max(jnp.abs(va))) or 1.0
    rows.append({"site": site, "max_abs_diff": float(jnp.max(diff)), "max_abs_value": scale,
                 "mismatch_fraction": float(jnp.mean(diff > 1e-5 * scale))})
  rows.append({"site": "logits", "max_abs_diff": float(jnp.max(jnp.abs(lq - ls))),
               "max_abs_value": float(jnp.max(jnp.abs(lq))),
               "mismatch_fraction": float(jnp.mean(jnp.argmax(lq, -1) != jnp.argmax(ls, -1)))})
  return rows


def format_verify(rows: list[dict[str, Any]]) -> str:
  """A terminal table of `verify` rows."""
  width = max(len(r["site"]) for r in rows)
  lines = [f"{'site':<{width}}  {'max |qann - snn|':>16}  {'max |qann|':>10}  {'mismatch':>9}"]
  for r in rows:
    lines.append(f"{r['site']:<{width}}  {r['max_abs_diff']:>16.3e}  {r['max_abs_value']:>10.4f}  "
                 f"{100 * r['mismatch_fraction']:>8.3f}%")
  return "\n".join(lines)
