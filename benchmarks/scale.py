"""ImageNet scale on paper: the trainer's own step, compiled ahead of time for sharded meshes.

    python benchmarks/scale.py            # every row below, then the roofline; writes results/scale.json
    python benchmarks/scale.py --inference_only   # only the converted SNN's rows, into scale.json
    python benchmarks/scale.py --quick    # the runlocal network on 8 devices, two meshes (the tests run it)

Each row compiles `train.jit_update_step` (the function the `Trainer` runs, with its state and batch
shardings) of `experiments/imagenet.py` with `jax.jit(...).lower(...).compile()` on simulated devices
(XLA's host-platform device count, one fresh process per row), with the accelerator convolution path
(`model.conv_impl = "xla"`: `lax.conv_general_dilated` and flax's BatchNorm). Rows: `s` and `b` at
224 x 224, on 8 and 64 devices, on a data-only mesh and on a data x fsdp mesh, at a per-device batch
of 32 (and 16, on the 8-device data mesh, to separate per-example activation memory from the rest).

From each compiled executable it records per-device argument, output, alias and temporary bytes
(`memory_analysis()`), FLOPs and bytes accessed (`cost_analysis()`), and, read from the compiled HLO,
every collective (all-reduce, all-gather, reduce-scatter, all-to-all, collective-permute): count,
result bytes and the bytes a device sends under ring algorithms. The FLOPs are checked against the
analytic count `6 x MACs` per image (`model.count`: forward 2 x MACs, backward twice that). The
roofline (`roofline`) turns these into the largest per-chip batch, step time and images/s on TPU v5p,
TPU v5e and H100 at a stated model-FLOPs utilisation, and the resource that bounds the step. The
inference rows compile the converted SNN of `s` and `b` at 224 (fused and spike mode, 8 images, one
device, what `snn.simulate` runs) for its memory per image.

The compiled program is XLA's CPU program for the same sharded step: its collectives and memory plan
follow the same SPMD partitioning an accelerator gets, but an accelerator's compiler fuses and
schedules differently (e.g. rematerialisation, layout padding), so memory figures are an estimate
within tens of percent, stated as such in the docs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

IMAGENET_TRAIN = 1_281_167
EPOCHS = 300
MFU = 0.40  # Model-FLOPs utilisation assumed for the step-time estimate (stated beside every figure).
HBM_USABLE = 0.90  # Share of HBM a training step may plan for (the rest: runtime, fragmentation).

# Peak figures per chip, from the vendors' pages.
HARDWARE = {
    "tpu_v5p": dict(bf16_flops=459e12, hbm_bytes=95e9, hbm_bw=2765e9, link_bw=1200e9 / 2,
                    source="cloud.google.com/tpu/docs/v5p: 459 TFLOP/s bf16, 95 GB HBM2e at 2,765 GB/s, "
                           "1,200 GB/s bidirectional ICI per chip (600 GB/s one way)"),
    "tpu_v5e": dict(bf16_flops=197e12, hbm_bytes=16e9, hbm_bw=819e9, link_bw=1600e9 / 8,
                    source="cloud.google.com/tpu/docs/v5e: 197 TFLOP/s bf16, 16 GB HBM2 at 819 GB/s, "
                           "1,600 Gbps ICI per chip (200 GB/s)"),
    "h100_sxm": dict(bf16_flops=989e12, hbm_bytes=80e9, hbm_bw=3.35e12, link_bw=900e9 / 2,
                     source="NVIDIA H100 Tensor Core GPU datasheet (SXM5): 989 TFLOP/s dense bf16, 80 GB "
                            "HBM3 at 3.35 TB/s, 900 GB/s NVLink per GPU (450 GB/s one way)"),
}

# Published FLOPs per image at 224 x 224 (multiply-adds counted as the papers count them).
PUBLISHED = {
    "ViT-B/16": dict(params_m=86.6, gmacs_per_image=17.6,
                     note="DeiT-B / ViT-B/16 at 224 (Touvron et al., 2021; their GFLOPs count multiply-adds)"),
    "Spikformer-8-768": dict(params_m=66.34, gmacs_per_image=None,
                             note="Zhou et al., ICLR 2023: 74.81% at T = 4; reports energy, not operations per "
                                  "image; STBP training unrolls T = 4 steps"),
    "QKFormer HST-10-768": dict(params_m=64.96, gmacs_per_image=None,
                                note="Zhou et al., NeurIPS 2024: 84.22% at 224, T = 4; reports energy (38.91 mJ), "
                                     "not operations per image; STBP training unrolls T = 4 steps"),
}

ROWS = [dict(variant=v, devices=n, fsdp=f, per_device_batch=b)
        for v in ("s", "b") for n in (8, 64) for f in (1, 8) for b in ((32, 16) if (n, f) == (8, 1) else (32,))]
# The experiment's own `runlocal` network (a narrow `s` at 64 px): the whole path in seconds.
QUICK_ROWS = [dict(variant="s", devices=8, fsdp=1, per_device_batch=2, runlocal=True),
              dict(variant="s", devices=8, fsdp=2, per_device_batch=2, runlocal=True)]

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def _shape_bytes(text: str) -> int:
  """Bytes of every array shape in an HLO result type: `f32[1024,768]{1,0}` or a tuple of them."""
  total = 0
  for dtype, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", text):
    if dtype in _DTYPE_BYTES:
      total += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
  return total


def _group_size(line: str, devices: int) -> int:
  """Participants per group of a collective (`replica_groups={{0,1},{2,3}}` or `[2,4]<=[8]`)."""
  m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", line)
  if m:
    return int(m.group(2))
  m = re.search(r"replica_groups=\{\{([\d,]*)\}", line)
  if m and m.group(1):
    return len(m.group(1).split(","))
  return devices


def collectives(hlo: str, devices: int) -> dict[str, dict[str, float]]:
  """Every collective of a compiled HLO module: `{kind: {"count", "result_bytes", "sent_bytes"}}`.

  `sent_bytes` is what one device sends under ring algorithms for a group of g devices: all-reduce
  2 (g-1)/g S, all-gather and all-to-all (g-1)/g S, reduce-scatter (g-1) S (S: the result, so the
  input is g S), collective-permute S. Asynchronous pairs (`-start`/`-done`) count once.
  """
  out = {k: {"count": 0, "result_bytes": 0, "sent_bytes": 0.0} for k in _COLLECTIVES}
  for line in hlo.splitlines():
    m = re.match(r"\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.+?)\s+(all-reduce|all-gather|reduce-scatter|all-to-all|"
                 r"collective-permute)(-start)?\(", line)
    if not m:
      continue
    result, kind, start = m.group(1), m.group(2), m.group(3)
    size = _shape_bytes(result)
    if start and kind in ("all-gather", "collective-permute"):
      size //= 2  # The start op's result holds the operand and the result: count the result only.
    g = max(1, _group_size(line, devices))
    factor = {"all-reduce": 2 * (g - 1) / g, "all-gather": (g - 1) / g, "all-to-all": (g - 1) / g,
              "reduce-scatter": float(g - 1), "collective-permute": 1.0}[kind]
    out[kind]["count"] += 1
    out[kind]["result_bytes"] += size
    out[kind]["sent_bytes"] += factor * size
  return {k: v for k, v in out.items() if v["count"]}


def _cost(compiled) -> dict[str, float]:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older jax: one dict per partition program.
    cost = cost[0] if cost else {}
  return {"flops": float(cost.get("flops", 0.0)), "bytes_accessed": float(cost.get("bytes accessed", 0.0))}


def depthwise_wgrad_excess(count: dict, param_shapes: dict) -> float:
  """FLOPs per image that XLA's cost analysis adds to the weight gradient of depthwise convolutions.

  That gradient is a convolution with `batch_group_count = C`, which the cost analysis prices as a
  dense one: `2 x MACs x C` instead of `2 x MACs` (measured on one layer: 244x its FLOPs at C = 256,
  the rest is the 'same' padding's border). `count` is `model.count`, `param_shapes` maps parameter
  paths (`stage0/block0/mix_dw/syn/kernel`) to shapes; a depthwise kernel is `[k, k, 1, C]`.
  """
  excess = 0.0
  for layer in count["layers"]:
    shape = param_shapes.get(f"{layer.name}/kernel")
    if layer.kind == "conv" and shape is not None and shape[2] == 1 and shape[3] > 1:
      excess += 2.0 * layer.macs * (shape[3] - 1)
  return excess


def measure_row(row: dict) -> dict:
  """Compiles one row's training step (in this process, whose device count the caller set)."""
  import jax  # pylint: disable=g-import-not-at-top
  import common  # pylint: disable=g-import-not-at-top
  from ge2ms_jax import config_utils  # pylint: disable=g-import-not-at-top
  from ge2ms_jax import model as models  # pylint: disable=g-import-not-at-top

  n, fsdp, pdb = row["devices"], row["fsdp"], row["per_device_batch"]
  if jax.device_count() < n:
    raise SystemExit(f"scale.py: the row needs {n} devices, this process has {jax.device_count()}.")
  batch = pdb * n
  overrides = {"model.conv_impl": "xla", "batch_size": batch, "evals.batch_size": batch}
  spec = f"experiments/imagenet.py:variant={row['variant']},fsdp={fsdp}" + (",runlocal" if row.get("runlocal") else "")
  config = config_utils.load_config(spec, overrides)
  m = config.model
  program = common.train_step(config, jax.devices()[:n])
  mesh, shapes = program["mesh"], program["shapes"]
  with jax.set_mesh(mesh):
    t0 = time.perf_counter()
    lowered = program["step"].lower(program["abstract"], program["inputs"])
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
  mem = compiled.memory_analysis()
  count = models.count(m)
  state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))
  from ge2ms_jax import sharding  # pylint: disable=g-import-not-at-top
  param_shapes = {sharding.path_str(p): x.shape for p, x in jax.tree_util.tree_flatten_with_path(shapes.params)[0]}
  cost = _cost(compiled)
  excess = depthwise_wgrad_excess(count, param_shapes) * batch / n
  return {**row, "image_size": m.image_size, "mesh": dict(mesh.shape), "global_batch": batch,
          "params": count["params"], "macs_per_image": count["macs"],
          "analytic_train_flops_per_image": 6.0 * count["macs"], "state_bytes_global": state_bytes,
          "memory": {k: int(getattr(mem, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp")},
          **cost, "depthwise_wgrad_excess_flops": excess, "flops_corrected": cost["flops"] - excess,
          "collectives": collectives(compiled.as_text(), n),
          "lower_seconds": t1 - t0, "compile_seconds": t2 - t1}


def measure_inference(row: dict) -> dict:
  """The converted SNN of `row["variant"]` at 224 on one device, `row["mode"]` ("fused" | "spike"),
  `row["batch"]` images: compiled memory per device and per image, operations per image."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ge2ms_jax import config_utils, snn  # pylint: disable=g-import-not-at-top
  from ge2ms_jax import model as models  # pylint: disable=g-import-not-at-top
  spec = f"experiments/imagenet.py:variant={row['variant']}" + (",runlocal" if row.get("runlocal") else "")
  config = config_utils.load_config(spec, {"model.conv_impl": "xla"})
  m = config.model
  net = models.build(m, mode=row["mode"])
  images = jax.ShapeDtypeStruct((row["batch"], m.image_size, m.image_size, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: net.init(jax.random.key(0), x), images)
  # What `snn.simulate` runs: the spike mode with its statistics (they carry the
  # multiplication-free check), the fused mode without.
  fn = snn._apply_fn(snn._frozen(m), row["mode"], row["mode"] == "spike")  # noqa: SLF001
  t0 = time.perf_counter()
  compiled = fn.lower(variables, images).compile()
  seconds = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  temp, args = int(mem.temp_size_in_bytes), int(mem.argument_size_in_bytes)
  return {**row, "image_size": m.image_size, "macs_per_image": models.count(m)["macs"],
          "argument_bytes": args, "temp_bytes": temp, "temp_bytes_per_image": temp / row["batch"],
          "compile_seconds": seconds}


INFERENCE_ROWS = [dict(variant=v, mode=mode, batch=8) for v in ("s", "b") for mode in ("fused", "spike")]
QUICK_INFERENCE_ROWS = [dict(variant="s", mode="spike", batch=2, runlocal=True)]


def _run_row(row: dict) -> dict:
  """One row in a fresh process with `row["devices"]` simulated devices (an inference row: one)."""
  env = dict(os.environ)
  devices = row.get("devices", 1)
  env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
  env["JAX_PLATFORMS"] = "cpu"
  flag = "--_inference_row" if "mode" in row else "--_row"
  proc = subprocess.run([sys.executable, __file__, flag, json.dumps(row)], env=env, cwd=ROOT,
                        capture_output=True, text=True, check=False)
  if proc.returncode:
    raise RuntimeError(f"row {row} failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def roofline(rows: list[dict], mfu: float = MFU) -> list[dict]:
  """Per row and chip: peak memory against HBM, the largest per-chip batch, step time and images/s.

  Step time is the larger of compute (per-device model FLOPs, 6 x MACs per image, over peak x `mfu`:
  MFU's own definition) and communication (bytes sent / one-way link bandwidth), which assumes they
  overlap; the bound is the resource that sets it. HBM traffic from XLA's CPU program (bytes
  accessed / bandwidth) is kept as an upper bound only (`hbm_seconds_upper_bound`): that program
  fuses less than an accelerator's, so its bytes overstate what an accelerator moves. The largest
  batch uses the per-example activation memory of the two per-device batches of the 8-device data
  rows.
  """
  per_example = {}
  for v in {r["variant"] for r in rows}:
    pair = sorted((r for r in rows if r["variant"] == v and r["devices"] == 8 and r["fsdp"] == 1),
                  key=lambda r: r["per_device_batch"])
    if len(pair) >= 2:
      a, b = pair[0], pair[-1]
      per_example[v] = (b["memory"]["temp"] - a["memory"]["temp"]) / (b["per_device_batch"] - a["per_device_batch"])
  out = []
  for r in rows:
    peak = r["memory"]["argument"] + r["memory"]["output"] - r["memory"]["alias"] + r["memory"]["temp"]
    sent = sum(c["sent_bytes"] for c in r["collectives"].values())
    for name, hw in HARDWARE.items():
      fits = peak <= HBM_USABLE * hw["hbm_bytes"]
      pe = per_example.get(r["variant"])
      max_batch = None
      if pe and pe > 0:
        fixed = peak - pe * r["per_device_batch"]
        max_batch = max(0, int((HBM_USABLE * hw["hbm_bytes"] - fixed) // pe))
      model_flops = r["analytic_train_flops_per_image"] * r["global_batch"] / r["devices"]
      times = {"compute": model_flops / (hw["bf16_flops"] * mfu), "communication": sent / hw["link_bw"]}
      step_s = max(times.values())
      # XLA's CPU program fuses less than an accelerator's, so its bytes accessed overstate HBM
      # traffic: kept beside the estimate as an upper bound, not used for it.
      hbm_upper_s = r["bytes_accessed"] / hw["hbm_bw"]
      images_s = r["global_batch"] / step_s
      epoch_s = IMAGENET_TRAIN / images_s
      out.append({"variant": r["variant"], "devices": r["devices"], "fsdp": r["fsdp"],
                  "per_device_batch": r["per_device_batch"], "chip": name, "peak_bytes_per_device": peak,
                  "fits": fits, "max_per_device_batch": max_batch, "step_seconds": step_s,
                  "times": times, "bound": max(times, key=times.get), "hbm_seconds_upper_bound": hbm_upper_s,
                  "images_per_second": images_s,
                  "epoch_hours": epoch_s / 3600,
                  "hours_300_epochs_on_64_chips": EPOCHS * IMAGENET_TRAIN / (images_s * 64 / r["devices"]) / 3600,
                  "mfu": mfu})
  return out


def _ratio(row: dict, field: str) -> float:
  """XLA's FLOPs of the whole step over the analytic 6 x MACs x global batch."""
  return row[field] * row["devices"] / (row["analytic_train_flops_per_image"] * row["global_batch"])


def _collective_summary(row: dict) -> str:
  return ", ".join(f"{k} x{v['count']}" for k, v in row["collectives"].items()) or "none"


def main(argv=None) -> dict:
  """Runs the rows (or the quick ones), derives the roofline, saves and prints; returns the result."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="two small rows (the runlocal network, 8 devices)")
  parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/scale.json)")
  parser.add_argument("--inference_only", action="store_true",
                      help="only the converted SNN's inference rows, merged into an existing scale.json")
  parser.add_argument("--_row", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--_inference_row", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args._row:  # pylint: disable=protected-access
    print(json.dumps(measure_row(json.loads(args._row))))  # pylint: disable=protected-access
    return {}
  if args._inference_row:  # pylint: disable=protected-access
    print(json.dumps(measure_inference(json.loads(args._inference_row))))  # pylint: disable=protected-access
    return {}
  import common  # pylint: disable=g-import-not-at-top
  inference = []
  if not args.quick or args.inference_only:
    for row in (QUICK_INFERENCE_ROWS if args.quick else INFERENCE_ROWS):
      inference.append(_run_row(row))
      r = inference[-1]
      print(f"SNN {r['variant']} @{r['image_size']} {r['mode']}: temp {r['temp_bytes_per_image'] / 2**20:.0f} MiB "
            f"per image (batch {r['batch']}), {r['macs_per_image'] / 1e9:.2f} GMACs as an ANN", flush=True)
  if args.inference_only:
    path = Path(args.out) if args.out else common.RESULTS / "scale.json"
    result = json.loads(path.read_text()) if path.exists() else {"machine": common.machine()}
    result["inference"] = inference
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"wrote {path}")
    return result
  rows = []
  for row in (QUICK_ROWS if args.quick else ROWS):
    start = time.perf_counter()
    rows.append(_run_row(row))
    r = rows[-1]
    print(f"{r['variant']} @{r['image_size']} devices {r['devices']} mesh {r['mesh']} batch/device "
          f"{r['per_device_batch']}: args {r['memory']['argument'] / 2**30:.2f} GiB, temp "
          f"{r['memory']['temp'] / 2**30:.2f} GiB, {r['flops'] / 1e12:.2f} TFLOP/device "
          f"(XLA/analytic {_ratio(r, 'flops'):.2f}, without the depthwise weight-gradient excess "
          f"{_ratio(r, 'flops_corrected'):.2f}), "
          f"collectives {_collective_summary(r)}; "
          f"compiled in {r['compile_seconds']:.0f} s ({time.perf_counter() - start:.0f} s in all)", flush=True)
  result = {"machine": common.machine(), "quick": args.quick, "mfu": MFU, "hbm_usable": HBM_USABLE,
            "hardware": HARDWARE, "published": PUBLISHED, "rows": rows, "roofline": roofline(rows),
            "inference": inference}
  path = common.save(result, args.out, "scale_quick.json" if args.quick else "scale.json")
  print(f"wrote {path}")
  return result


if __name__ == "__main__":
  main()
