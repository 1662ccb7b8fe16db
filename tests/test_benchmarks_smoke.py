"""Smoke tests of the benchmark scripts: each runs in-process on small shapes and writes its JSON."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name):
  spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_neurons_benchmark_quick(tmp_path):
  bench = _load("neurons")
  results = BENCHMARKS / "results" / "neurons.json"
  before = results.stat().st_mtime_ns if results.exists() else None
  out = tmp_path / "neurons.json"
  returned = bench.main(["--quick", "--reps", "2", "--out", str(out)])

  saved = json.loads(out.read_text())
  assert saved == json.loads(json.dumps(returned))
  assert (results.stat().st_mtime_ns if results.exists() else None) == before, "wrote into benchmarks/results/"
  assert saved["quick"] is True
  for key in ("cores", "cpu", "jax", "jaxlib", "jax_backend"):
    assert saved["machine"][key], key
  assert saved["config"]["T"] == 8 and saved["config"]["current_shape"] == list(bench.QUICK_SHAPE)

  names = {r["name"] for r in saved["rows"]}
  for b, g in bench.CODES:
    for m in ("scan", "steps", "closed"):
      assert f"expg_if[{m}] b={b} G={g}" in names
  assert {"floor[float32]", "floor[bool]", "if_neuron[hard]", "if_neuron[soft]"} <= names
  for r in saved["rows"]:
    assert len(r["times_ms"]) == 2 and r["median_ms"] > 0
    assert r["input_shape"] == ([8] if r["kind"] in ("if_jax", "if_spikingjelly") else []) + list(bench.QUICK_SHAPE)

  assert set(saved["ratios_from_min_times"]) == set(saved["ratios"])
  for stat in ("median", "min"):
    assert isinstance(saved["targets"][f"closed_over_floor_met_{stat}"], bool)
  ratios = saved["ratios"]
  assert ratios["fastest_expg_method"] in ("scan", "steps", "closed")
  assert ratios["closed_over_floor"] > 0 and set(ratios["per_code"]) == {f"{b}:{g}" for b, g in bench.CODES}
  assert all(saved["checks"]["expg_methods_bit_identical"].values())
  sj = saved["spikingjelly"]
  assert sj["status"] in ("ran", "skipped")
  if sj["status"] == "skipped":
    assert sj["reason"] and saved["targets"]["spikingjelly_over_fastest_expg_met_median"] is None
    assert not any(r["framework"] == "torch" for r in saved["rows"])
  else:
    assert set(ratios["spikingjelly_over_fastest_expg_same_T"]) == {"hard", "soft"}
    assert saved["checks"]["if_jax_vs_spikingjelly_mismatches"] == {"hard": 0, "soft": 0}


def test_attention_benchmark_quick(tmp_path):
  out = tmp_path / "attention.json"
  result = _load("attention").main(["--quick", "--out", str(out)])
  saved = json.loads(out.read_text())
  assert saved["summary"].keys() == result["summary"].keys()
  rows = {(r["grid"], r["row"]) for r in saved["rows"]}
  assert rows == {(g, n) for g in (7, 14) for n in ("gw_ssa", "global_qk_first", "global_kv_first")}
  assert all(r["median_ms"] > 0 and r["temp_bytes"] is not None for r in saved["rows"])
  # Memory is planned by the compiler, so it is exact and noise-free: the (QK^T)V global attention's
  # N x N score matrix grows quadratically, the windows' linearly.
  assert saved["summary"]["global_qk_first"]["memory_exponent"] > 1.7
  assert saved["summary"]["gw_ssa"]["memory_exponent"] < 1.2


@pytest.mark.slow
def test_snn_benchmark_quick(tmp_path):
  out = tmp_path / "snn.json"
  _load("snn").main(["--quick", "--out", str(out)])
  row = json.loads(out.read_text())["rows"][0]
  assert row["variant"] == "tiny" and row["T"] == 4 and row["prediction_agreement"] >= 0.75
  assert set(row["ms_per_image"]) == {"qann", "fused", "fused_stats", "spike"}


@pytest.mark.slow  # A two-run sweep, its benchmark and a shipped candidate's report: about a minute.
def test_sparsity_benchmark_quick(tmp_path):
  # The quick sweep: two 3-step fine-tunings of the shipped model on the embedded subset.
  from ge2ms_jax import sweep  # pylint: disable=import-outside-toplevel
  spec, config = "experiments/sweeps/fashion_mnist_sparsity.py:quick", "experiments/fashion_mnist.py"
  assert sweep.main(["--sweep", spec, "--config", config, "--workdir", str(tmp_path / "sw")]) == 0
  out = tmp_path / "sparsity.json"
  assert _load("sparsity").main(["--dataset", "fashion_mnist", "--sweep", spec, "--config", config,
                                 "--sweep_workdir", str(tmp_path / "sw"), "--max_examples", "32",
                                 "--ship", str(tmp_path / "ship"), "--target_ratio", "3.0",
                                 "--out", str(out)]) == 0
  saved = json.loads(out.read_text())["fashion_mnist"]
  labels = [r["label"] for r in saved["rows"]]
  assert labels == ["shipped", "w=0", "w=2"]
  for r in saved["rows"]:
    assert r["tune"]["num_examples"] == 32 and r["test"]["num_examples"] == 32
    assert r["test"]["snn_mode"] == "spike" and 0 < r["test"]["sop_per_mac"] < 3
    assert r["test"]["sop_per_mac"] == r["test"]["sops_per_image"] / saved["ann_macs_per_image"]
  assert [r["steps"] for r in saved["rows"]] == [0, 3, 3]
  # The choice is w=2 when its tune accuracy stays within the tolerance, else none: never w=0.
  assert saved["selected"] in (None, saved["rows"][2]["run"])
  # The sparse candidate (best tune top-1 of the weight > 0 runs at or below the ratio) is shipped.
  assert saved["candidate"] == saved["rows"][2]["run"] and saved["rows"][2]["shipped_to"] == str(tmp_path / "ship")
  assert (tmp_path / "ship" / "export.json").exists() and (tmp_path / "ship" / "report" / "report.md").exists()
  assert (tmp_path / "pareto.png").stat().st_size > 0
  # A shipped model as a reference row, from its report (the shipped candidate's, here).
  assert _load("sparsity").main(["--dataset", "fashion_mnist", "--sweep", spec, "--config", config,
                                 "--sweep_workdir", str(tmp_path / "sw"), "--max_examples", "32",
                                 "--reference", str(tmp_path / "ship"), "--out", str(out)]) == 0
  again = json.loads(out.read_text())["fashion_mnist"]
  ref = again["reference"]
  assert ref["run"] == str(tmp_path / "ship") and ref["tune"] is None and ref["steps"] == 3
  for key in ("qann_top1", "snn_top1", "agreement", "sop_per_mac", "num_examples", "snn_mode"):
    assert ref["test"][key] == saved["rows"][2]["test"][key], key
  assert [r["test"] for r in again["rows"]] == [r["test"] for r in saved["rows"]]  # measured once
  assert "(trained on it)" in _load("sparsity").markdown_table(again)
  assert ref["label"] == "sparse reference: w=2, target 0, 1 epochs"  # the recipe the export records
  assert again["earlier_references"] == []  # the first reference replaces nothing
  # A new recipe written over the shipped model: the replaced row stays on record, once.
  report_json = tmp_path / "ship" / "report" / "report.json"
  rep = json.loads(report_json.read_text())
  rep["metrics"]["sop_per_mac"] /= 2
  report_json.write_text(json.dumps(rep))
  for _ in range(2):
    assert _load("sparsity").main(["--dataset", "fashion_mnist", "--sweep", spec, "--config", config,
                                   "--sweep_workdir", str(tmp_path / "sw"), "--max_examples", "32",
                                   "--reference", str(tmp_path / "ship"), "--out", str(out)]) == 0
  third = json.loads(out.read_text())["fashion_mnist"]
  assert third["earlier_references"] == [ref]
  assert third["reference"]["test"]["sop_per_mac"] == ref["test"]["sop_per_mac"] / 2
  assert "(earlier recipe, replaced)" in _load("sparsity").markdown_table(third)
  with pytest.raises(SystemExit, match="no .*export.json"):
    _load("sparsity").reference_row(str(tmp_path / "sw"), "test")
