"""Benchmark: time per image of the QANN, the fused SNN and the spike-mode SNN, side by side.

For the `tiny` (28x28x1) and `s` (32x32x3) variants at T = 4, 8, 16 time steps (binary codes
(2, 4), (2, 8), (2, 16)), on the same batch and the same converted weights: the QANN forward pass
(`build(config, "qann")`), the fused SNN (each layer on the weighted sum of its input spikes) and the
spiking SNN (binary spikes of every step, time folded into the batch), all jitted. The fused SNN is
timed as the fast path for outputs (`stats=False`) and, as a second row, with its exact
synaptic-operation statistics (`stats=True`). Targets: fused within 1.3x of the QANN, spike mode
within 1.5*T x of the QANN.

  python benchmarks/snn.py                 # writes benchmarks/results/snn.json
  python benchmarks/snn.py --quick --out /tmp/snn.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from ge2ms_jax import conversion  # noqa: E402
from ge2ms_jax import model as models  # noqa: E402
from ge2ms_jax import snn  # noqa: E402

TARGET_FUSED = 1.3
TARGET_SPIKE_PER_STEP = 1.5


def _config(variant: str, groups: int):
  cfg = models.default_config(variant)
  if variant == "s":
    cfg.image_size, cfg.in_channels, cfg.num_classes = 32, 3, 100
  cfg.neuron.base, cfg.neuron.groups = 2, groups
  return cfg


def measure(variant: str, groups: int, batch: int, reps: int) -> dict:
  cfg = _config(variant, groups)
  qann = models.build(cfg)
  x = jax.random.uniform(jax.random.key(0), (batch, cfg.image_size, cfg.image_size, cfg.in_channels))
  variables = jax.jit(qann.init)({"params": jax.random.key(1)}, x)
  converted = conversion.convert(variables, cfg, check=False)
  qann_fn = jax.jit(lambda v, x: qann.apply(v, x))
  key = snn._frozen(cfg)  # noqa: SLF001 (the simulator's own jitted programs)
  fused_fn = snn._apply_fn(key, "fused", False)
  fused_stats_fn = snn._apply_fn(key, "fused", True)
  spike_fn = snn._apply_fn(key, "spike", True)
  timing = common.time_interleaved({"qann": lambda: qann_fn(variables, x),
                                    "fused": lambda: fused_fn(converted, x),
                                    "fused_stats": lambda: fused_stats_fn(converted, x),
                                    "spike": lambda: spike_fn(converted, x)}, reps)
  agree = float(jnp.mean(jnp.argmax(qann_fn(variables, x), -1) == jnp.argmax(spike_fn(converted, x)[0], -1)))
  t = groups  # binary code: T = G
  per_image = {k: 1e3 * v["median_s"] / batch for k, v in timing.items()}
  row = {"variant": variant, "T": t, "code": [2, groups], "batch": batch,
         "ms_per_image": per_image,
         "fused_over_qann": per_image["fused"] / per_image["qann"],
         "fused_stats_over_qann": per_image["fused_stats"] / per_image["qann"],
         "spike_over_qann": per_image["spike"] / per_image["qann"],
         "spike_target": TARGET_SPIKE_PER_STEP * t, "prediction_agreement": agree}
  row["fused_meets_target"] = row["fused_over_qann"] <= TARGET_FUSED
  row["spike_meets_target"] = row["spike_over_qann"] <= row["spike_target"]
  return row


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true", help="tiny only, T = 4, small batch")
  p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/snn.json)")
  p.add_argument("--reps", type=int, default=None)
  args = p.parse_args(argv)
  plan = [("tiny", 4, 4)] if args.quick else [(v, t, b) for v, b in (("tiny", 32), ("s", 8)) for t in (4, 8, 16)]
  reps = args.reps or (2 if args.quick else 5)
  rows = [measure(v, t, b, reps) for v, t, b in plan]
  print(f"{'variant':<8} {'T':>3} {'qann ms/img':>12} {'fused':>8} {'+stats':>8} {'spike':>8} "
        f"{'fused/qann':>11} {'+stats/qann':>12} {'spike/qann':>11} {'target':>7}")
  for r in rows:
    m = r["ms_per_image"]
    print(f"{r['variant']:<8} {r['T']:>3} {m['qann']:>12.3f} {m['fused']:>8.3f} {m['fused_stats']:>8.3f} "
          f"{m['spike']:>8.3f} {r['fused_over_qann']:>11.2f} {r['fused_stats_over_qann']:>12.2f} "
          f"{r['spike_over_qann']:>11.2f} {r['spike_target']:>7.1f}")
  result = {"benchmark": "snn", "quick": args.quick, "targets": {"fused_over_qann": TARGET_FUSED,
            "spike_over_qann_per_step": TARGET_SPIKE_PER_STEP}, "rows": rows, "machine": common.machine()}
  path = common.save(result, args.out, "snn.json")
  print(f"wrote {path}")
  return result


if __name__ == "__main__":
  main()
