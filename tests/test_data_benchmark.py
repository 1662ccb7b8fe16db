"""Smoke test of benchmarks/input.py: a quick in-process run writes its JSON."""

import importlib.util
import json
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_input_benchmark_quick(tmp_path):
  spec = importlib.util.spec_from_file_location("benchmarks_input", BENCHMARKS / "input.py")
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  results = BENCHMARKS / "results" / "input.json"
  before = results.stat().st_mtime_ns if results.exists() else None
  out = tmp_path / "input.json"
  returned = bench.main(["--quick", "--no-model", "--rounds", "2", "--out", str(out),
                         "--data-dir", str(tmp_path / "dd")])
  saved = json.loads(out.read_text())
  assert saved == json.loads(json.dumps(returned))
  assert (results.stat().st_mtime_ns if results.exists() else None) == before
  rows = {r["name"]: r for r in saved["rows"]}
  assert set(rows) == {"pipeline[fashion_mnist]", "pipeline[cifar10]"}
  assert rows["pipeline[fashion_mnist]"]["image_shape"] == [28, 28, 1]
  assert rows["pipeline[cifar10]"]["image_shape"] == [32, 32, 3]
  assert "randaugment" in rows["pipeline[cifar10]"]["pp"]
  for r in rows.values():
    assert len(r["images_per_s"]) == 2 and r["median_images_per_s"] > 0
  assert saved["targets"]["met"] is None and saved["ratios"] == {}
