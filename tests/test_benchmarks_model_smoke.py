"""Smoke tests of the attention and SNN benchmarks: in-process, small shapes, JSON to a tmp path."""

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
