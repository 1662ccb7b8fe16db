"""Energy accounting of the spiking network (METHOD.md §4; definitions in docs/energy.md).

    E_SNN = E_MAC * MACs(encoding layer) + E_AC * SOPs + E_shift * shifts + E_scale * scalings
    E_ANN = E_MAC * MACs(every layer, attention products included)

per image, under a named energy preset (`ENERGY_PRESETS`, Horowitz, ISSCC 2014, 45 nm):

* `"fp32_45nm"` (the default, the papers' convention): `E_MAC = 4.6 pJ` (fp32 multiply 3.7 + fp32
  add 0.9), `E_AC = 0.9 pJ` (fp32 add).
* `"int_45nm"` (the QANN as integer arithmetic, the SNN accumulating integers): `E_MAC = 0.3 pJ`
  (8-bit multiply 0.2 + 32-bit add 0.1), `E_AC = 0.1 pJ` (32-bit add).

* SOPs are counted from the actual spikes: for every time step, each spike of a synapse's input
  triggers one accumulate per output it reaches (`nnz x fan-out`, exact at borders and strides);
  residual integrations add one accumulate per incoming spike; an attention product accumulates the
  other operand's free axis per spike.
* Power-of-two step weights: spikes of one group share the weight `theta * b**-g`, so an accumulator
  is rescaled once per output and group. With `b` a power of two that is a shift (`E_shift`, 0 pJ in
  both presets: the group's partial sum is shifted into the accumulator, a wiring choice in digital
  logic); otherwise it is a multiplication (`E_scale`, by default the preset's `E_MAC`). The
  attention's `2**-k` output scale is one shift per output. All counts are reported, whatever their
  price.
* Real multiplications besides the encoding layer's MACs are `scalings`: rescales by a non-power-of-
  two step weight, the thresholds θ of both operands of an attention product (one multiplication
  per output element, and one per element of a spike-train operand whose value is taken), and the
  mean over tokens of the head when the token count is not a power of two.
* `ops_per_mac = (SOPs + encoding MACs + scalings) / ANN MACs` per image counts every operation the
  SNN performs but the power-of-two shifts: the number that "fewer operations than the ANN" is
  stated on. `sop_per_mac` (SOPs alone per ANN MAC) is kept beside it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Sequence

import numpy as np

from ge2ms_jax.snn import LayerStats, SimResult, check_label


@dataclasses.dataclass(frozen=True)
class EnergyModel:
  """Energy per operation in picojoules.

  Attributes:
    e_mac_pj: one multiply-accumulate (the encoding layer of the SNN, every layer of the ANN).
    e_ac_pj: one accumulate (a synaptic operation driven by a spike).
    e_shift_pj: one rescale of an accumulator by a power of two.
    e_scale_pj: one rescale by another factor; None prices it as a MAC.
    name: the preset's key in `ENERGY_PRESETS`; empty for hand-made constants (`label` then names
      the preset with the same constants, if any).
  """
  e_mac_pj: float = 4.6
  e_ac_pj: float = 0.9
  e_shift_pj: float = 0.0
  e_scale_pj: float | None = None  # None: same as e_mac_pj
  name: str = ""

  def __post_init__(self):
    for name in ("e_mac_pj", "e_ac_pj", "e_shift_pj"):
      value = getattr(self, name)
      if not isinstance(value, (int, float)) or value < 0 or not np.isfinite(value):
        raise ValueError(f"EnergyModel: {name} must be a finite number >= 0 (picojoules), got {value!r}.")

  @property
  def scale_pj(self) -> float:
    """Energy of a non-power-of-two rescale (a MAC unless set)."""
    return self.e_mac_pj if self.e_scale_pj is None else self.e_scale_pj

  @property
  def label(self) -> str:
    """The preset name, or that of the preset with the same constants, or "custom"."""
    if self.name:
      return self.name
    for key, preset in ENERGY_PRESETS.items():
      if dataclasses.replace(preset, name="") == self:
        return key
    return "custom"


# Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014, 45 nm, 0.9 V:
# fp32 mult 3.7 pJ, fp32 add 0.9 pJ; 8-bit mult 0.2 pJ, 8-bit add 0.03 pJ, 32-bit mult 3.1 pJ,
# 32-bit add 0.1 pJ. docs/energy.md gives the reasons for each pairing.
ENERGY_PRESETS: dict[str, EnergyModel] = {
    # The convention of the spiking-transformer papers: every operation in fp32.
    # MAC = fp32 multiply 3.7 + fp32 add 0.9; AC = fp32 add.
    "fp32_45nm": EnergyModel(e_mac_pj=4.6, e_ac_pj=0.9, e_shift_pj=0.0, name="fp32_45nm"),
    # Integer hardware on both sides: int8 weights times activations of at most 8 bits fit an
    # 8-bit multiplier, sums go into a 32-bit accumulator; a spike adds an int8 weight to the same
    # 32-bit accumulator. MAC = 8-bit multiply 0.2 + 32-bit add 0.1; AC = 32-bit add.
    "int_45nm": EnergyModel(e_mac_pj=0.3, e_ac_pj=0.1, e_shift_pj=0.0, name="int_45nm"),
}
DEFAULT_PRESET = "fp32_45nm"
PRESET_DESCRIPTIONS: dict[str, str] = {
    "fp32_45nm": "fp32 arithmetic, 45 nm (papers' convention): MAC 4.6 pJ, AC 0.9 pJ",
    "int_45nm": "integer arithmetic, 45 nm: MAC 0.3 pJ (8-bit mult + 32-bit add), AC 0.1 pJ (32-bit add)",
}


@dataclasses.dataclass
class LayerEnergy:
  """Per-image costs of one layer."""
  name: str
  kind: str
  macs: float
  sops: float
  shifts: float
  scalings: float
  energy_pj: float
  firing_rate: float | None = None
  spikes_per_neuron: float | None = None
  code: tuple[int, int] | None = None


@dataclasses.dataclass
class EnergyReport:
  """Energy per image of the SNN, and of the same network run as an ANN.

  Attributes:
    layers: per-layer costs (synapses, attention products, shortcuts) and neuron sites.
    snn_mj, ann_mj: millijoules per image.
    sops, macs_first: synaptic operations and encoding-layer MACs per image.
    ann_macs: MACs per image of the ANN.
    spikes_per_neuron, firing_rate: network averages over all neuron sites.
    time_steps: the largest window of any site (`T`).
    model: the energy constants the layers are priced with.
    num_images: images the statistics were summed over.
    snn_mode: the simulation mode the statistics came from ("spike" | "fused"; None: unknown).
  """
  layers: list[LayerEnergy]
  snn_mj: float
  ann_mj: float
  sops: float
  macs_first: float
  ann_macs: float
  shifts: float
  scalings: float
  spikes_per_neuron: float
  firing_rate: float
  time_steps: int
  model: EnergyModel
  num_images: int
  snn_mode: str | None = None

  @property
  def ratio(self) -> float:
    """ANN energy / SNN energy."""
    return self.ann_mj / self.snn_mj if self.snn_mj else float("inf")

  @property
  def sop_per_mac(self) -> float:
    """SNN synaptic operations per image / ANN MACs per image (encoding MACs not in the numerator)."""
    return self.sops / self.ann_macs if self.ann_macs else float("inf")

  @property
  def ops(self) -> float:
    """Every operation of the SNN per image but the power-of-two shifts: SOPs + encoding MACs + scalings."""
    return self.sops + self.macs_first + self.scalings

  @property
  def ops_per_mac(self) -> float:
    """SNN operations per image (`ops`: SOPs, encoding MACs, real multiplications) / ANN MACs per image."""
    return self.ops / self.ann_macs if self.ann_macs else float("inf")

  @property
  def snn_check(self) -> str:
    """Whether the statistics come from a spike-by-spike, multiplication-free-checked run."""
    return check_label(self.snn_mode)

  def reprice(self, model: EnergyModel) -> "EnergyReport":
    """The same counts priced with other constants (a new report; the counts are shared)."""
    layers = [dataclasses.replace(r, energy_pj=_layer_pj(model, r.macs, r.sops, r.shifts, r.scalings))
              for r in self.layers]
    return dataclasses.replace(self, layers=layers, model=model,
                               snn_mj=sum(r.energy_pj for r in layers) * 1e-9,
                               ann_mj=model.e_mac_pj * self.ann_macs * 1e-9)

  def presets(self, presets: Mapping[str, EnergyModel] | None = None) -> dict[str, dict[str, float]]:
    """Energy per image under each preset (default `ENERGY_PRESETS`).

    Returns:
      `{preset: {"snn_mj_per_image", "ann_mj_per_image", "ann_over_snn"}}`.
    """
    out = {}
    for name, model in (ENERGY_PRESETS if presets is None else presets).items():
      r = self.reprice(model)
      out[name] = {"snn_mj_per_image": r.snn_mj, "ann_mj_per_image": r.ann_mj, "ann_over_snn": r.ratio}
    return out

  def to_json(self) -> dict[str, Any]:
    """The report as JSON-ready data, with the ratio, SOPs/MAC, check label and every preset."""
    d = dataclasses.asdict(self)
    d["ratio_ann_over_snn"] = self.ratio
    d["sop_per_mac"] = self.sop_per_mac
    d["ops_per_image"] = self.ops
    d["ops_per_mac"] = self.ops_per_mac
    d["snn_check"] = self.snn_check
    d["energy_presets"] = self.presets()
    return d

  def save_json(self, path: str) -> None:
    """Writes `to_json()` to `path`."""
    with open(path, "w") as f:
      json.dump(self.to_json(), f, indent=1)

  def format_table(self) -> str:
    """A per-layer table and a summary, for the terminal."""
    width = max([len(r.name) for r in self.layers] + [10])
    head = (f"{'layer':<{width}}  {'kind':<9} {'MACs':>10} {'SOPs':>11} {'shifts':>9} {'uJ':>9} "
            f"{'rate':>7} {'spk/neu':>7} code")
    lines = [head, "-" * len(head)]
    for r in self.layers:
      rate = f"{r.firing_rate:7.4f}" if r.firing_rate is not None else " " * 7
      spn = f"{r.spikes_per_neuron:7.3f}" if r.spikes_per_neuron is not None else " " * 7
      code = f"({r.code[0]},{r.code[1]})" if r.code else ""
      lines.append(f"{r.name:<{width}}  {r.kind:<9} {r.macs:>10.3g} {r.sops:>11.4g} {r.shifts:>9.3g} "
                   f"{r.energy_pj * 1e-6:>9.4f} {rate} {spn} {code}")
    lines += ["-" * len(head),
              f"SNN: {self.snn_mj:.5f} mJ/image  (encoding MACs {self.macs_first:.4g}, SOPs {self.sops:.4g}, "
              f"shifts {self.shifts:.4g}, scalings {self.scalings:.4g}; T = {self.time_steps}, "
              f"{self.spikes_per_neuron:.3f} spikes/neuron, firing rate {self.firing_rate:.4f})",
              f"ANN: {self.ann_mj:.5f} mJ/image  ({self.ann_macs:.4g} MACs)   ANN/SNN = {self.ratio:.2f}x",
              f"SOPs/MAC {self.sop_per_mac:.3f}  (SNN SOPs per image / ANN MACs per image)",
              f"ops/MAC {self.ops_per_mac:.3f}  ((SOPs + encoding MACs + scalings) per image / ANN MACs per image)",
              f"constants ({self.model.label}): E_MAC {self.model.e_mac_pj} pJ, E_AC {self.model.e_ac_pj} pJ, "
              f"E_shift {self.model.e_shift_pj} pJ, E_scale {self.model.scale_pj} pJ; {self.num_images} images"]
    for name, e in self.presets().items():
      lines.append(f"preset {name:<10} SNN {e['snn_mj_per_image']:.6f} mJ  ANN {e['ann_mj_per_image']:.6f} mJ  "
                   f"ANN/SNN {e['ann_over_snn']:.2f}x  ({PRESET_DESCRIPTIONS.get(name, '')})")
    lines.append(f"simulation: {self.snn_check}")
    return "\n".join(lines)

  def plot(self, path: str) -> None:
    """Writes a PNG: energy per layer (bars) and firing rate per neuron site."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    syn = [r for r in self.layers if r.kind != "neuron"]
    neu = [r for r in self.layers if r.kind == "neuron"]
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.22 * len(syn)), 8))
    colors = {"synapse": "tab:blue", "attention": "tab:orange", "shortcut": "tab:green"}
    axes[0].bar(range(len(syn)), [r.energy_pj * 1e-6 for r in syn],
                color=[colors.get(r.kind, "tab:gray") if r.macs == 0 else "tab:red" for r in syn])
    axes[0].set_xticks(range(len(syn)), [r.name for r in syn], rotation=90, fontsize=6)
    axes[0].set_ylabel("energy per image (uJ)")
    axes[0].set_title(f"SNN {self.snn_mj:.4f} mJ vs ANN {self.ann_mj:.4f} mJ per image ({self.model.label}; "
                      f"{self.snn_check})\n"
                      "red: encoding MACs, blue: conv/dense, orange: attention, green: shortcuts", fontsize=9)
    axes[1].bar(range(len(neu)), [r.firing_rate or 0.0 for r in neu], color="tab:purple")
    axes[1].set_xticks(range(len(neu)), [r.name for r in neu], rotation=90, fontsize=6)
    axes[1].set_ylabel("firing rate (spikes / neuron / step)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _layer_pj(model: EnergyModel, macs: float, sops: float, shifts: float, scalings: float) -> float:
  return model.e_mac_pj * macs + model.e_ac_pj * sops + model.e_shift_pj * shifts + model.scale_pj * scalings


def energy_report(sim: SimResult | Sequence[LayerStats], ann_macs: float, num_images: int | None = None,
                  model: EnergyModel = ENERGY_PRESETS[DEFAULT_PRESET], *,
                  snn_mode: str | None = None) -> EnergyReport:
  """Energy per image from simulation statistics.

  Args:
    sim: a `snn.SimResult` (or its layer list, then `num_images` is required).
    ann_macs: MACs per image of the same network as an ANN (`model.count(config)["macs"]`).
    num_images: images the statistics were summed over.
    model: energy constants, e.g. `ENERGY_PRESETS["int_45nm"]` (default: the fp32 preset).
    snn_mode: the simulation mode of a layer list (a `SimResult` carries its own).

  Returns:
    an `EnergyReport`.
  """
  if isinstance(sim, SimResult):
    rows, num_images = sim.layers, sim.num_images
    snn_mode = sim.mode if snn_mode is None else snn_mode
  else:
    rows = list(sim)
  if not num_images or num_images < 1:
    raise ValueError(f"energy_report: num_images must be >= 1, got {num_images!r}.")
  n = float(num_images)
  layers: list[LayerEnergy] = []
  tot = dict(macs=0.0, sops=0.0, shifts=0.0, scalings=0.0)
  spikes = neurons = 0.0
  spike_steps = 0.0
  t_max = 0
  for r in rows:
    if r.kind == "neuron":
      layers.append(LayerEnergy(r.name, r.kind, 0.0, 0.0, 0.0, 0.0, 0.0, r.firing_rate,
                                r.spikes_per_neuron, r.code))
      spikes += r.spikes
      neurons += r.neurons
      spike_steps += r.neurons * r.steps
      t_max = max(t_max, r.steps)
      continue
    per = dict(macs=r.macs / n, sops=r.sops / n, shifts=r.shifts / n, scalings=r.scalings / n)
    layers.append(LayerEnergy(r.name, r.kind, energy_pj=_layer_pj(model, **per), **per))
    for k in tot:
      tot[k] += per[k]
  snn_pj = sum(r.energy_pj for r in layers)
  return EnergyReport(layers=layers, snn_mj=snn_pj * 1e-9, ann_mj=model.e_mac_pj * ann_macs * 1e-9,
                      sops=tot["sops"], macs_first=tot["macs"], ann_macs=float(ann_macs),
                      shifts=tot["shifts"], scalings=tot["scalings"],
                      spikes_per_neuron=spikes / neurons if neurons else 0.0,
                      firing_rate=spikes / spike_steps if spike_steps else 0.0, time_steps=t_max,
                      model=model, num_images=int(num_images), snn_mode=snn_mode)
