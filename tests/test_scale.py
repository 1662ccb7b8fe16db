"""The ImageNet-scale plan (`benchmarks/scale.py`) and the accelerator script (`benchmarks/accelerator.py`)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import accelerator  # noqa: E402  pylint: disable=wrong-import-position
import scale  # noqa: E402  pylint: disable=wrong-import-position

HLO = """
ENTRY %main {
  %all-reduce.1 = f32[1024,768]{1,0} all-reduce(f32[1024,768]{1,0} %p), replica_groups={{0,1,2,3,4,5,6,7}}, to_apply=%add
  %all-reduce-start.2 = (f32[10]{0}, bf16[20]{0}) all-reduce-start(f32[10]{0} %a, bf16[20]{0} %b), replica_groups=[2,4]<=[8], to_apply=%add
  %all-reduce-done.2 = (f32[10]{0}, bf16[20]{0}) all-reduce-done(%all-reduce-start.2)
  %all-gather.3 = bf16[8,64]{1,0} all-gather(bf16[4,64]{1,0} %c), replica_groups={{0,1},{2,3},{4,5},{6,7}}, dimensions={0}
  %reduce-scatter.4 = f32[16]{0} reduce-scatter(f32[128]{0} %d), replica_groups={{0,1,2,3,4,5,6,7}}, dimensions={0}
  ROOT %collective-permute.5 = s32[3]{0} collective-permute(s32[3]{0} %e), source_target_pairs={{0,1}}
}
"""


def test_collectives_are_read_from_hlo_with_group_sizes():
  got = scale.collectives(HLO, devices=8)
  assert got["all-reduce"]["count"] == 2  # the -done half of an async pair is not counted again
  assert got["all-reduce"]["result_bytes"] == 1024 * 768 * 4 + 10 * 4 + 20 * 2
  assert got["all-reduce"]["sent_bytes"] == pytest.approx(2 * 7 / 8 * 1024 * 768 * 4 + 2 * 3 / 4 * 80)
  assert got["all-gather"] == {"count": 1, "result_bytes": 8 * 64 * 2, "sent_bytes": pytest.approx(0.5 * 1024)}
  assert got["reduce-scatter"]["sent_bytes"] == pytest.approx(7 * 64)
  assert got["collective-permute"] == {"count": 1, "result_bytes": 12, "sent_bytes": 12.0}
  assert "all-to-all" not in got


def test_depthwise_excess_counts_only_depthwise_kernels():
  class Layer:
    def __init__(self, name, kind, macs):
      self.name, self.kind, self.macs = name, kind, macs
  count = {"layers": [Layer("a/dw/syn", "conv", 100), Layer("a/pw/syn", "dense", 1000), Layer("a/full/syn", "conv", 50)]}
  shapes = {"a/dw/syn/kernel": (3, 3, 1, 64), "a/pw/syn/kernel": (1, 1, 64, 64), "a/full/syn/kernel": (3, 3, 8, 8)}
  assert scale.depthwise_wgrad_excess(count, shapes) == 2.0 * 100 * 63


def _row(per_device_batch, temp, devices=8, fsdp=1):
  return {"variant": "b", "devices": devices, "fsdp": fsdp, "per_device_batch": per_device_batch,
          "global_batch": per_device_batch * devices, "analytic_train_flops_per_image": 1e11,
          "memory": {"argument": 2e9, "output": 2e9, "alias": 2e9, "temp": temp},
          "bytes_accessed": 1e11, "collectives": {"all-reduce": {"count": 1, "result_bytes": 1e9, "sent_bytes": 1.75e9}}}


def test_roofline_fits_memory_linearly_and_names_the_bound():
  rows = [_row(16, 1e9 + 16 * 0.5e9), _row(32, 1e9 + 32 * 0.5e9)]
  out = {(r["chip"], r["per_device_batch"]): r for r in scale.roofline(rows, mfu=0.5)}
  v5e, v5p = out[("tpu_v5e", 32)], out[("tpu_v5p", 32)]
  assert v5e["peak_bytes_per_device"] == 2e9 + 1e9 + 16e9
  assert not v5e["fits"] and v5p["fits"]  # 19 GB against 16 GB and 95 GB of HBM
  assert v5p["max_per_device_batch"] == int((0.9 * 95e9 - 3e9) // 0.5e9)
  assert v5p["times"]["compute"] == pytest.approx(32 * 1e11 / (459e12 * 0.5))
  assert v5p["times"]["communication"] == pytest.approx(1.75e9 / 600e9)
  assert v5p["bound"] == "compute" and v5p["step_seconds"] == v5p["times"]["compute"]
  assert v5p["hbm_seconds_upper_bound"] == pytest.approx(1e11 / 2765e9)
  assert v5p["images_per_second"] == pytest.approx(256 / v5p["step_seconds"])


def test_accelerator_script_says_there_is_no_accelerator_on_cpu(capsys):
  assert accelerator.main(["--out", "/nonexistent/never_written.json"]) == {}
  assert "no GPU or TPU here" in capsys.readouterr().out


@pytest.mark.slow  # One compile and two steps of the runlocal network, about twenty seconds.
def test_accelerator_smoke_measures_a_row(tmp_path):
  out = tmp_path / "accelerator.json"
  result = accelerator.main(["--smoke", "--rows", "s_32", "--out", str(out)])
  row = result["rows"][0]
  assert row["row"] == "s_32" and row["backend"] == "cpu" and row["images_per_second"] > 0
  assert row["compile_seconds"] > 0 and row["planned_bytes_per_device"] > 0
  assert json.loads(out.read_text())["rows"][0]["global_batch"] == row["global_batch"]


@pytest.mark.slow  # Two compiles in fresh 8-device processes, a minute or two.
def test_scale_quick_compiles_both_meshes(tmp_path):
  result = scale.main(["--quick", "--out", str(tmp_path / "scale.json")])
  data, fsdp = result["rows"]
  assert data["mesh"] == {"data": 8, "fsdp": 1} and fsdp["mesh"] == {"data": 4, "fsdp": 2}
  assert set(data["collectives"]) == {"all-reduce"}  # pure data parallelism: gradients only
  assert "all-gather" in fsdp["collectives"]  # sharded parameters are gathered
  assert fsdp["memory"]["argument"] < data["memory"]["argument"]
  # XLA prices depthwise weight gradients as dense (2.2x the analytic count here); without that excess
  # its FLOPs are the analytic 6 x MACs plus the elementwise work.
  assert 0.9 < scale._ratio(data, "flops_corrected") < 1.5 < scale._ratio(data, "flops")  # noqa: SLF001
