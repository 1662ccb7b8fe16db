"""Energy presets, SOPs/MAC and the simulation label of energy reports (docs/energy.md)."""

import json
import pathlib

import numpy as np
import pytest

from ge2ms_jax import energy as E
from ge2ms_jax import snn

REPO = pathlib.Path(__file__).resolve().parents[1]


def _rows():
  """One encoding layer (12 MACs), one spiking synapse (80 SOPs, 16 shifts, 4 scalings), one site."""
  return [snn.LayerStats("enc", "synapse", macs=12.0),
          snn.LayerStats("n", "neuron", spikes=20.0, neurons=12, steps=2, code=(2, 2)),
          snn.LayerStats("out", "synapse", sops=80.0, shifts=16.0, scalings=4.0)]


def test_presets_are_the_45nm_sums_of_horowitz():
  fp32, integer = E.ENERGY_PRESETS["fp32_45nm"], E.ENERGY_PRESETS["int_45nm"]
  assert fp32.e_mac_pj == pytest.approx(3.7 + 0.9) and fp32.e_ac_pj == 0.9
  assert integer.e_mac_pj == pytest.approx(0.2 + 0.1) and integer.e_ac_pj == 0.1
  assert fp32.e_shift_pj == integer.e_shift_pj == 0.0
  assert integer.scale_pj == integer.e_mac_pj  # a non-power-of-two rescale is a MAC of the preset
  assert E.EnergyModel().label == "fp32_45nm"  # the old default constants are the fp32 preset
  assert E.EnergyModel(e_ac_pj=0.5).label == "custom"


@pytest.mark.parametrize("preset,mac,ac", [("fp32_45nm", 4.6, 0.9), ("int_45nm", 0.3, 0.1)])
def test_energy_by_hand_under_each_preset(preset, mac, ac):
  ann_macs = 240.0
  rep = E.energy_report(_rows(), ann_macs, num_images=2, model=E.ENERGY_PRESETS[preset])
  # Per image: 6 encoding MACs, 40 SOPs, 8 shifts (free), 2 scalings (priced as MACs).
  assert rep.snn_mj == pytest.approx((mac * 6 + ac * 40 + mac * 2) * 1e-9)
  assert rep.ann_mj == pytest.approx(mac * ann_macs * 1e-9)
  assert rep.sop_per_mac == pytest.approx(40 / 240)
  assert rep.presets()[preset]["ann_over_snn"] == pytest.approx(rep.ratio)


def test_reprice_equals_a_report_made_with_that_preset():
  fp32 = E.energy_report(_rows(), 240.0, num_images=1)
  integer = E.energy_report(_rows(), 240.0, num_images=1, model=E.ENERGY_PRESETS["int_45nm"])
  again = fp32.reprice(E.ENERGY_PRESETS["int_45nm"])
  assert again.snn_mj == pytest.approx(integer.snn_mj) and again.ann_mj == pytest.approx(integer.ann_mj)
  assert [r.energy_pj for r in again.layers] == pytest.approx([r.energy_pj for r in integer.layers])
  assert fp32.model.name == "fp32_45nm"  # repricing leaves the original alone
  presets = fp32.presets()
  assert set(presets) == {"fp32_45nm", "int_45nm"}
  assert presets["int_45nm"]["snn_mj_per_image"] == pytest.approx(integer.snn_mj)
  # Integer arithmetic narrows the gap: a MAC costs 3x an AC instead of 5.1x.
  assert presets["int_45nm"]["ann_over_snn"] < presets["fp32_45nm"]["ann_over_snn"]


@pytest.mark.parametrize("mode,label", [
    ("spike", "spike: simulated spike by spike, multiplication-free checked"),
    ("fused", "fused: not simulated spike by spike, not checked"),
    (None, "unknown: simulation mode not recorded, not known to be checked")])
def test_every_output_says_how_the_snn_was_simulated(mode, label):
  rep = E.energy_report(_rows(), 240.0, num_images=1, snn_mode=mode)
  assert rep.snn_check == label
  assert rep.format_table().splitlines()[-1] == f"simulation: {label}"
  data = rep.to_json()
  assert data["snn_check"] == label and set(data["energy_presets"]) == set(E.ENERGY_PRESETS)
  json.dumps(data)
  if mode is not None:
    assert snn.check_label(mode) == label
    # A SimResult carries its mode into the report; merging keeps it only when every batch agrees.
    sim = snn.SimResult(logits=np.zeros((1, 2)), layers=_rows(), num_images=1, mode=mode)
    assert E.energy_report(snn.merge([sim, sim]), 240.0).snn_check == label
    other = "fused" if mode == "spike" else "spike"
    mixed = snn.merge([sim, snn.SimResult(np.zeros((1, 2)), _rows(), 1, mode=other)])
    assert mixed.mode is None and "not known to be checked" in E.energy_report(mixed, 240.0).snn_check
  with pytest.raises(ValueError, match="check_label"):
    snn.check_label("approximate")


def test_shipped_report_under_both_presets():
  # The numbers docs/energy.md quotes, recomputed from the shipped report's counts.
  report = json.loads((REPO / "checkpoints" / "fashion_mnist_tiny" / "report" / "report.json").read_text())
  e = report["energy"]
  layers = [E.LayerEnergy(**{k: v for k, v in r.items()}) for r in e["layers"]]
  fields = {k: e[k] for k in ("snn_mj", "ann_mj", "sops", "macs_first", "ann_macs", "shifts", "scalings",
                              "spikes_per_neuron", "firing_rate", "time_steps", "num_images")}
  rep = E.EnergyReport(layers=layers, model=E.ENERGY_PRESETS["fp32_45nm"], **fields)
  presets = rep.presets()
  assert presets["fp32_45nm"]["snn_mj_per_image"] == pytest.approx(e["snn_mj"], rel=1e-9)
  assert rep.sop_per_mac == pytest.approx(1.139, abs=5e-4)
  assert rep.ops_per_mac == pytest.approx(1.144, abs=5e-4)
  assert rep.ops_per_mac == pytest.approx(report["metrics"]["ops_per_mac"], rel=1e-12)
  assert presets["fp32_45nm"]["ann_over_snn"] == pytest.approx(4.40, abs=5e-3)
  assert presets["int_45nm"]["ann_over_snn"] == pytest.approx(2.60, abs=5e-3)
  assert presets["int_45nm"]["snn_mj_per_image"] == pytest.approx(0.007079, abs=5e-7)
  assert presets["int_45nm"]["ann_mj_per_image"] == pytest.approx(0.018418, abs=5e-7)


def test_training_cost_from_a_run_result():
  from ge2ms_jax import cost
  peak = cost.cpu_peak()
  assert peak["cores"] >= 1 and peak["flops_per_cycle"] in (2, 16, 32, 64)
  assert peak["peak_gflops"] is None or peak["peak_gflops"] == pytest.approx(
      peak["cores"] * peak["clock_ghz"] * peak["flops_per_cycle"])
  fixed = {"cores": 2, "clock_ghz": 2.5, "flops_per_cycle": 64, "vector": "avx512f", "peak_gflops": 320.0}
  c = cost.training_cost(1e8, 512, {"step": 1000, "seconds": 4000.0, "train_seconds": 3000.0,
                                    "eval_images": 5000}, fixed)
  assert c["images_seen"] == 512_000 and c["train_flops"] == 6 * 1e8 * 512_000
  assert c["eval_flops"] == 2 * 1e8 * 5000
  assert c["train_gflops_per_s"] == pytest.approx(c["train_flops"] / 3000 / 1e9)
  assert c["peak_fraction"] == pytest.approx(c["train_gflops_per_s"] / 320.0)
  assert "0.307 PFLOP of training" in cost.format_cost(c) and "32% of the CPU" in cost.format_cost(c)
  # A run that predates the step timing has no rate; no run, no cost.
  old = cost.training_cost(1e8, 512, {"step": 10, "seconds": 40.0}, fixed)
  assert old["train_gflops_per_s"] is None and old["eval_flops"] is None and "GFLOP/s" not in cost.format_cost(old)
  assert cost.training_cost(1e8, 512, None, fixed) is None
