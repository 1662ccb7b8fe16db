"""benchmarks/train_memory.py in its quick form: the QANN's memory is flat in T, STBP's grows."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "train_memory.py"


@pytest.mark.slow  # Compiles ten training steps in worker processes: a few minutes on 2 cores.
def test_quick_benchmark_writes_its_ratios(tmp_path):
  spec = importlib.util.spec_from_file_location("benchmarks_train_memory", BENCHMARK)
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  out = tmp_path / "train_memory.json"
  returned = bench.main(["--quick", "--out", str(out)])
  saved = json.loads(out.read_text())
  assert saved == json.loads(json.dumps(returned))
  assert saved["quick"] is True and saved["config"]["time_steps"] == [1, 4]
  rows = {(r["kind"], r["T"]): r for r in saved["rows"]}
  assert set(rows) == {("qann", 1), ("qann", 4), ("stbp", 1), ("stbp", 4)}
  assert rows[("qann", 4)]["groups"] == 4 and rows[("stbp", 4)]["time_steps"] == 4
  assert saved["ratios"]["qann_compiled_peak_max_over_min"] <= 1.05
  assert saved["ratios"]["stbp_compiled_peak_T4_over_T1"] > 2.0
  assert saved["targets"]["qann_met"] and saved["targets"]["stbp_grows_with_T"]
  assert [t["variant"] for t in saved["throughput"]] == ["tiny", "s"]
  assert all(t["images_per_sec"] > 0 for t in saved["throughput"])
