"""The documentation's results tables, rendered from the result files that ship with the repository.

A rendered table sits in `README.md`, `benchmarks/README.md` or `docs/*.md` between two marker
comments, and only what lies between them is rewritten:

    <!-- table:results -->
    | model | data | ... |
    <!-- /table:results -->

The sources: `checkpoints/<model>/report/report.json` for the shipped models,
`benchmarks/results/main_job.json` for what the main job printed, and the benchmarks'
`benchmarks/results/*.json`. A shipped model enters the results and operations tables as one entry of
`MODELS`. `scripts/render_results.py` rewrites the tables in place or, with `--check`, reports the
ones that differ; `tests/test_results_tables.py` fails when one does.

Standard library only: rendering the tables imports neither jax nor the package's other modules.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from pathlib import Path
from typing import Callable

# The documents that may hold tables, relative to the repository root (`docs/*.md` as a pattern).
DOCUMENTS = ("README.md", "benchmarks/README.md", "docs/*.md")
MARKER = re.compile(r"(<!-- table:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table:(?P=name) -->)", re.S)
# The efficiency bound the sparse models are held to (operations per ANN MAC, every operation
# counted) and the accuracy they may give up against their dense model (top-1 points).
OPS_BOUND = 0.30
POINTS_BOUND = 0.5


@dataclasses.dataclass(frozen=True)
class Model:
  """One row of the results table (and, when shipped, of the operations table).

  Attributes:
    name: the checkpoint directory under `checkpoints/` (its `report/report.json` holds the numbers),
      or a name for a run recorded in `report` instead.
    label: the model column, e.g. "`tiny`, sparse".
    data: what it trained on and was measured on.
    command: the command that trains and reports it.
    spike_aware: trained with the spike-aware loss; its operations per MAC are set in bold.
    report: the report's path relative to the root, when it is not the checkpoint's.
  """
  name: str
  label: str
  data: str
  command: str
  spike_aware: bool = False
  report: str | None = None

  @property
  def shipped(self) -> bool:
    return self.report is None

  @property
  def path(self) -> str:
    return self.report or f"checkpoints/{self.name}/report/report.json"


MODELS = (
    Model("main_job", "`tiny`", "embedded subset: 10k train, 5 epochs; 2,500 test images", "./scripts/main.sh",
          spike_aware=True, report="benchmarks/results/main_job.json"),
    Model("fashion_mnist_tiny", "`tiny`", "full Fashion-MNIST: 60k train, 12 epochs; 10,000 test images",
          "python -m ge2ms_jax.main --config experiments/fashion_mnist.py:data=fashion_mnist_full "
          "--config.total_epochs=12 --workdir runs/fashion_mnist_full --mode all"),
    Model("fashion_mnist_tiny_sparse", "`tiny`, sparse",
          "full Fashion-MNIST: the model above fine-tuned 7 epochs for sparsity (75 min); 10,000 test images",
          "python -m ge2ms_jax.main --config experiments/fashion_mnist.py:data=fashion_mnist_full,sparse "
          "--workdir runs/fm_sparse --mode all", spike_aware=True),
    Model("cifar10_tiny", "`tiny`", "CIFAR-10: 45k train, 10 epochs (77 min); the 5,000 held-out images",
          "python -m ge2ms_jax.main --config experiments/cifar10.py:variant=tiny,cpu "
          "--config.data.source=cifar10-train-jpeg.tar.gz --workdir runs/c10_tiny --mode all"),
    Model("cifar10_tiny_sparse", "`tiny`, sparse",
          "CIFAR-10: the model above fine-tuned 7 epochs for sparsity (68 min); the same 5,000 images",
          "python -m ge2ms_jax.main --config experiments/cifar10.py:variant=tiny,cpu,sparse "
          "--config.data.source=cifar10-train-jpeg.tar.gz --workdir runs/c10_sparse --mode all", spike_aware=True),
    Model("cifar10_fast", "`fast`",
          "CIFAR-10, the fast recipe: 45k train, 24 epochs (0.83 PFLOP, 136 min); the 5,000 held-out "
          "images (its validation split)",
          "python -m ge2ms_jax.main --config experiments/cifar10.py:fast "
          "--config.data.source=cifar10-train-jpeg.tar.gz --workdir runs/c10_fast --mode all"),
    Model("cifar10_fast_sparse", "`fast`, sparse",
          "CIFAR-10: the model above fine-tuned 4 epochs for sparsity (0.14 PFLOP, 23 min); the same 5,000 "
          "held-out images",
          "python -m ge2ms_jax.main --config experiments/cifar10.py:fast,sparse "
          "--config.data.source=cifar10-train-jpeg.tar.gz --workdir runs/c10_fast_sparse --mode all",
          spike_aware=True),
)
# (dataset, dense model, its sparse fine-tune): the pairs the efficiency bound is judged on.
SPARSE_PAIRS = (("Fashion-MNIST", "fashion_mnist_tiny", "fashion_mnist_tiny_sparse"),
                ("CIFAR-10", "cifar10_tiny", "cifar10_tiny_sparse"),
                ("CIFAR-10 `fast`", "cifar10_fast", "cifar10_fast_sparse"))


# ---------------------------------------------------------------------------------------------------
# Reading and formatting
# ---------------------------------------------------------------------------------------------------


def _load(root: Path, relative: str) -> dict:
  path = root / relative
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    raise FileNotFoundError(f"{relative}: the result file a table is rendered from is missing under {root}") from None


def _metrics(root: Path, name: str) -> dict:
  model = next((m for m in MODELS if m.name == name), None)
  if model is None:
    raise KeyError(f"{name!r} is not in MODELS; known: {', '.join(m.name for m in MODELS)}")
  return _load(root, model.path)["metrics"]


def _pct(fraction: float) -> str:
  return f"{100 * fraction:.2f}%"


def _bold(text: str, bold: bool = True) -> str:
  return f"**{text}**" if bold else text


def _row(*cells) -> str:
  return "| " + " | ".join(str(c) for c in cells) + " |"


def _header(*names) -> list[str]:
  return [_row(*names), "|" + "---|" * len(names)]


def _gib(n_bytes: float) -> str:
  return f"{n_bytes / 2**30:.2f} GiB"


# ---------------------------------------------------------------------------------------------------
# Shipped models
# ---------------------------------------------------------------------------------------------------


def results_table(root: Path) -> list[str]:
  """The headline table: accuracy, spikes, operations and energy of every model in `MODELS`."""
  lines = _header("model", "data", "command", "QANN top-1", "SNN top-1", "agreement", "T", "spikes / neuron",
                  "ops / MAC", "energy SNN / ANN (mJ / image)")
  for model in MODELS:
    m = _metrics(root, model.name)
    energy = (f"{m['energy_mj_per_image']:.4f} / {m['ann_energy_mj_per_image']:.4f} "
              f"({m['ann_over_snn_energy']:.1f}x)")
    lines.append(_row(model.label, model.data, f"`{model.command}`", _bold(_pct(m["qann_top1"])),
                      _bold(_pct(m["snn_top1"])), _pct(m["agreement"]), m["time_steps"],
                      f"{m['spikes_per_neuron']:.2f}", _bold(f"{m['ops_per_mac']:.3f}", model.spike_aware), energy))
  return lines


def operations_table(root: Path) -> list[str]:
  """Operations per image, both energy presets and latency of the shipped models."""
  lines = _header("model", "SOPs / image", "encoding MACs / image", "scalings / image", "ANN MACs / image",
                  "SOPs / MAC", "**ops / MAC**", "ANN / SNN energy, `fp32_45nm`", "ANN / SNN energy, `int_45nm`",
                  "latency_steps", "steps_per_image")
  for model in MODELS:
    if not model.shipped:
      continue
    m = _metrics(root, model.name)
    images = "test images" if m["eval_data"] == "test" else "held-out images"
    presets = m["energy_presets"]
    lines.append(_row(f"`{model.name}` ({m['num_examples']:,} {images})", f"{m['sops_per_image'] / 1e6:.2f}M",
                      f"{m['encoding_macs_per_image'] / 1e6:.3f}M", f"{m['scalings_per_image'] / 1e3:.1f}k",
                      f"{m['ann_macs_per_image'] / 1e6:.2f}M", f"{m['sop_per_mac']:.3f}",
                      _bold(f"{m['ops_per_mac']:.3f}"), f"{presets['fp32_45nm']['ann_over_snn']:.2f}x",
                      f"{presets['int_45nm']['ann_over_snn']:.2f}x", m["latency_steps"], m["steps_per_image"]))
  return lines


def sparse_goal(root: Path) -> list[dict]:
  """Per dataset of `SPARSE_PAIRS`: the dense and sparse models' numbers and whether the sparse model
  is within `OPS_BOUND` operations per MAC and `POINTS_BOUND` SNN top-1 points of the dense one."""
  goals = []
  for dataset, dense_name, sparse_name in SPARSE_PAIRS:
    dense, sparse = _metrics(root, dense_name), _metrics(root, sparse_name)
    drop = 100 * (dense["snn_top1"] - sparse["snn_top1"])
    goals.append(dict(dataset=dataset, dense=dense, sparse=sparse, drop=drop,
                      within_ops=sparse["ops_per_mac"] <= OPS_BOUND, within_points=drop <= POINTS_BOUND))
  return goals


# ---------------------------------------------------------------------------------------------------
# Spike-aware fine-tuning sweeps (benchmarks/results/sparsity.json)
# ---------------------------------------------------------------------------------------------------


def _sparsity_table(root: Path, dataset: str) -> list[str]:
  """The sweep's rows for `dataset`, as `benchmarks/sparsity.py` measured them (the reference models
  trained outside the sweep are the results table's)."""
  entry = _load(root, "benchmarks/results/sparsity.json")[dataset]
  lines = _header("run", "cost", "tune top-1", "tune SOPs/MAC", "test QANN top-1", "test SNN top-1", "agreement",
                  "**SOPs/MAC**", "spikes / neuron", "ANN/SNN energy `fp32_45nm`", "`int_45nm`", "simulation")
  for r in entry["rows"]:
    test, tune, presets = r["test"], r["tune"], r["test"]["energy_presets"]
    name = (f"**{r['label']}** (chosen)" if r["run"] == entry.get("selected") else
            f"**{r['label']}** (sparse candidate)" if r["run"] == entry.get("candidate") else r["label"])
    cost = f"{r['steps']} steps, {r['minutes']:.0f} min" if r["steps"] else "shipped"
    lines.append(_row(name, cost, _pct(tune["qann_top1"]), f"{tune['sop_per_mac']:.3f}", _pct(test["qann_top1"]),
                      _pct(test["snn_top1"]), _pct(test["agreement"]), f"{test['sop_per_mac']:.3f}",
                      f"{test['spikes_per_neuron']:.3f}", f"{presets['fp32_45nm']['ann_over_snn']:.1f}x",
                      f"{presets['int_45nm']['ann_over_snn']:.1f}x", test["snn_mode"]))
  return lines


def cifar10_ablation_table(root: Path) -> list[str]:
  """The fast recipe with each ingredient removed in turn (`benchmarks/results/cifar10_ablation.json`)."""
  entry = _load(root, "benchmarks/results/cifar10_ablation.json")
  lines = _header("run", "overrides", "held-out top-1", "vs whole recipe", "training", "wall time")
  for r in entry["rows"]:
    # A pipe inside a cell would end it, also within backticks.
    overrides = ", ".join(f"`{k}={v}`".replace("|", "\\|") for k, v in r["overrides"].items()) or "none"
    if r["status"] != "done":
      lines.append(_row(f"`{r['name']}`", overrides, "not run", "", "", ""))
      continue
    points = "" if r["name"] == entry["rows"][0]["name"] else f"{r['points']:+.2f} points"
    lines.append(_row(f"`{r['name']}`", overrides, _pct(r["top1"]), points,
                      f"{r['train_pflops']:.3f} PFLOP, {r['steps']} steps", f"{r['seconds'] / 60:.1f} min"))
  return lines


# ---------------------------------------------------------------------------------------------------
# Benchmarks
# ---------------------------------------------------------------------------------------------------

PEER_LABELS = {
    "spikformer": "SpikingJelly `spikformer_cifar10`",
    "qkformer": "SpikingJelly `QKFormer`, depths (1, 1, 2), dim 384",
    "sj_tiny": "`tiny` in SpikingJelly (LIF, surrogate gradients through T = 4)",
    "ge2ms_tiny": "`tiny` in ge2ms_jax (QANN training; SNN of code (2, 4))",
    "sj_s": "`s` in SpikingJelly (LIF, surrogate gradients through T = 4)",
    "ge2ms_s": "`s` in ge2ms_jax (QANN training; SNN of code (2, 4))",
}


def peers_table(root: Path) -> list[str]:
  """`benchmarks/peers.py`: every row's size, training and inference cost."""
  rows = {r["name"]: r for r in _load(root, "benchmarks/results/peers.json")["rows"]}
  lines = _header("model", "params", "MACs / step", "train ms/img", "train peak RSS", "inference ms/img")
  for name, label in PEER_LABELS.items():
    r = rows[name]
    inference = r["inference_ms_per_image"]
    if isinstance(inference, dict):
      inference = (f"QANN {inference['qann']:.2f}; SNN fused {inference['fused']:.2f}, spike {inference['spike']:.2f} "
                   f"({inference['spike_stats']:.2f} with statistics)")
    else:
      inference = f"{inference:.2f}"
    lines.append(_row(label, f"{r['params'] / 1e6:.2f}M", f"{r['macs_per_step'] / 1e6:.1f}M",
                      f"{r['train_ms_per_image']:.1f}", _gib(r["train_peak_rss_bytes"]), inference))
  return lines


def peers_ratios_table(root: Path) -> list[str]:
  """`benchmarks/peers.py`: SpikingJelly against ge2ms_jax on the same network."""
  results = _load(root, "benchmarks/results/peers.json")
  t = results["targets"]
  lines = _header("same network", f"QANN training speed-up (target ≥ {t['train_speedup_ge']:g}x)",
                  f"training peak memory (≤ {t['train_peak_memory_ratio_le']:g}x)",
                  f"spike mode / SpikingJelly inference (≤ {t['spike_over_sj_inference_le']:g}x)",
                  f"fused speed-up (≥ {t['fused_speedup_ge']:g}x)")
  for variant, r in results["ratios"].items():
    lines.append(_row(f"`{variant}`", f"{r['train_speedup']:.1f}x", f"{r['train_peak_memory_ratio']:.2f}x",
                      f"{r['spike_over_sj_inference']:.2f}x", f"{r['fused_speedup']:.1f}x"))
  return lines


def peers_curve_table(root: Path) -> list[str]:
  """`benchmarks/peers.py`: top-1 along the same training budget in both libraries."""
  lines = _header("library", "steps (batch 64)", "training minutes", "top-1 along the run (minutes: %)", "final top-1")
  for c in _load(root, "benchmarks/results/peers.json")["curves"]:
    points = ", ".join(f"{p['minutes']:.1f}: {100 * p['test_top1']:.2f}" for p in c["points"])
    lines.append(_row(f"{c['library']}: {c['model']}, evaluated as {c['evaluated_as']}", c["steps"],
                      f"{c['train_minutes']:.1f}", points, _bold(_pct(c["final_test_top1"]))))
  return lines


def snn_table(root: Path) -> list[str]:
  """`benchmarks/snn.py`: the simulation's time per image against the QANN's."""
  lines = _header("variant", "T", "fused / QANN", "fused with stats / QANN", "spike / QANN (target)")
  for r in _load(root, "benchmarks/results/snn.json")["rows"]:
    lines.append(_row(r["variant"], r["T"], f"{r['fused_over_qann']:.2f}", f"{r['fused_stats_over_qann']:.2f}",
                      f"{r['spike_over_qann']:.1f} ({r['spike_target']:g})"))
  return lines


def _neurons_rows(root: Path) -> list[tuple[str, str, str]]:
  n = _load(root, "benchmarks/results/neurons.json")
  sj, targets = n["ratios"]["spikingjelly_over_fastest_expg_same_T"], n["targets"]
  return [("neurons.py", f"SpikingJelly IFNode / ExpG-IF (closed form), same `T = {n['config']['T']}` spikes: "
           f"{sj['hard']:.1f}x (hard reset), {sj['soft']:.1f}x (soft)",
           f"≥ {targets['spikingjelly_over_fastest_expg_min']:g}x"),
          ("neurons.py", "ExpG-IF closed form / elementwise floor (one compare per output): "
           f"{n['ratios']['closed_over_floor']:.2f}x", f"≤ {targets['closed_over_floor_max']:g}x")]


def _train_memory_rows(root: Path) -> list[tuple[str, str, str]]:
  t = _load(root, "benchmarks/results/train_memory.json")
  qann = [r for r in t["rows"] if r["kind"] == "qann"]
  stbp = {r["T"]: r for r in t["rows"] if r["kind"] == "stbp"}
  steps = sorted(stbp)
  ratios = t["ratios"]
  return [("train_memory.py", f"QANN compiled training peak, max / min over `T = {steps[0]}…{steps[-1]}`: "
           f"{ratios['qann_compiled_peak_max_over_min']:.2f} "
           f"({max(r['compiled_peak_bytes'] for r in qann) / 2**20:.0f} MiB)",
           f"≤ {t['targets']['qann_compiled_peak_max_over_min_le']:g}"),
          ("train_memory.py", f"STBP training peak `T = {steps[-1]}` / `T = {steps[0]}`: "
           f"{ratios['stbp_compiled_peak_T16_over_T1']:.1f}x ({_gib(stbp[steps[-1]]['compiled_peak_bytes'])})",
           "grows with `T`")]


def _attention_rows(root: Path) -> list[tuple[str, str, str]]:
  a = _load(root, "benchmarks/results/attention.json")
  s = a["summary"]
  tokens = max(r["tokens"] for r in a["rows"])
  return [("attention.py", f"memory growth in tokens `N`: GW-SSA N^{s['gw_ssa']['memory_exponent']:.2f}, global SSA "
           f"N^{s['global_qk_first']['memory_exponent']:.2f}; at N = {tokens}: "
           f"{s['global_over_gw_memory_at_largest']:.0f}x less memory, {s['global_over_gw_time_at_largest']:.1f}x less time",
           "~N¹ vs ~N²")]


def _snn_rows(root: Path) -> list[tuple[str, str, str]]:
  s = _load(root, "benchmarks/results/snn.json")
  rows = s["rows"]
  variants = ", ".join(f"`{v}`" for v in dict.fromkeys(r["variant"] for r in rows))
  steps = ", ".join(str(t) for t in sorted({r["T"] for r in rows}))
  fused = [r["fused_over_qann"] for r in rows]
  tiny = [r for r in rows if r["variant"] == "tiny"]
  return [("snn.py", f"fused SNN / QANN time per image: {min(fused):.2f}–{max(fused):.2f} ({variants}, `T = {steps}`)",
           f"≤ {s['targets']['fused_over_qann']:g}x"),
          ("snn.py", "spike-mode SNN / QANN: " + ", ".join(f"{r['spike_over_qann']:.1f}x" for r in tiny) +
           " at `T = " + ", ".join(str(r["T"]) for r in tiny) + "` (`tiny`)",
           f"≤ {s['targets']['spike_over_qann_per_step']:g}·T")]


def _input_rows(root: Path) -> list[tuple[str, str, str]]:
  i = _load(root, "benchmarks/results/input.json")
  rate = {r["dataset"]: r["median_images_per_s"] for r in i["rows"] if r["kind"] == "pipeline"}
  ratio = i["ratios"]
  return [("input.py", "pipeline images/s over training-step images/s: "
           f"{ratio['fashion_mnist: pipeline / step']:.0f}x (F-MNIST, {rate['fashion_mnist'] / 1e3:.1f}k/s), "
           f"{ratio['cifar10: pipeline / step']:.0f}x (CIFAR-10 with RandAugment, {rate['cifar10'] / 1e3:.1f}k/s)",
           f"≥ {i['targets']['pipeline_over_step_at_least']:g}x")]


def _scale_rows(root: Path) -> list[tuple[str, str, str]]:
  rows = _load(root, "benchmarks/results/scale.json")["rows"]
  big = [r for r in rows if r["variant"] == "b" and r["devices"] == max(q["devices"] for q in rows)]
  data = next(r for r in big if r["fsdp"] == 1)
  fsdp = next(r for r in big if r["fsdp"] > 1)
  flops = data["flops_corrected"] / (data["analytic_train_flops_per_image"] * data["per_device_batch"])
  sent = sum(c["sent_bytes"] for c in data["collectives"].values())
  # 117 GB: what the same mesh gathered before depthwise kernels were replicated (docs/training.md).
  return [("scale.py", f"`b` at {data['image_size']}, compiled for {data['devices']} devices: XLA FLOPs / 6·MACs "
           f"{flops:.2f} (after XLA's depthwise weight-gradient overcount), {sent / 1e9:.1f} GB sent per device and "
           f"step; fsdp {fsdp['fsdp']} with depthwise kernels replicated: 117 GB → "
           f"{fsdp['collectives']['all-gather']['sent_bytes'] / 1e9:.1f} GB gathered", "compiled figures for every mesh")]


def _peers_rows(root: Path) -> list[tuple[str, str, str]]:
  p = _load(root, "benchmarks/results/peers.json")
  r, t = p["ratios"], p["targets"]

  def both(key, spec):
    return " and ".join(format(r[v][key], spec) + "x" for v in ("tiny", "s"))

  curves = {c["library"]: c for c in p["curves"]}
  ours, theirs = curves["ge2ms_jax"], curves["spikingjelly"]
  return [("peers.py", "same network in SpikingJelly (T = 4) / ge2ms_jax, `tiny` and `s`: QANN training "
           f"{both('train_speedup', '.1f')} faster at {both('train_peak_memory_ratio', '.2f')} the training peak memory; "
           f"spike-mode SNN {both('spike_over_sj_inference', '.2f')} its inference time, fused "
           f"{both('fused_speedup', '.1f')} faster",
           f"≥ {t['train_speedup_ge']:g}x, ≤ {t['train_peak_memory_ratio_le']:g}x, "
           f"≤ {t['spike_over_sj_inference_le']:g}x, ≥ {t['fused_speedup_ge']:g}x"),
          ("peers.py", f"{ours['budget_minutes']:.0f} min of {p['machine']['cores']} cores, `tiny` on the Fashion-MNIST "
           f"subset: {_pct(ours['final_test_top1'])} (ge2ms_jax, spike-mode SNN) against "
           f"{_pct(theirs['final_test_top1'])} (SpikingJelly)", "reported")]


def _sparsity_rows(root: Path) -> list[tuple[str, str, str]]:
  goals = sparse_goal(root)
  measured = "spike-aware fine-tuning (the shipped sparse models' reports): " + "; ".join(
      f"{g['dataset']} ops/MAC {g['dense']['ops_per_mac']:.3f} → {g['sparse']['ops_per_mac']:.3f} at "
      f"{_pct(g['sparse']['snn_top1'])} against {_pct(g['dense']['snn_top1'])}" for g in goals)

  def verdict(g):
    if g["within_ops"] and g["within_points"]:
      return f"{g['dataset']} met"
    misses = ([] if g["within_ops"] else [f"{g['sparse']['ops_per_mac']:.3f} ops/MAC"]) + (
        [] if g["within_points"] else [f"{g['drop']:.2f} points"])
    return f"{g['dataset']} not ({', '.join(misses)})"

  return [("sparsity.py", measured,
           f"≤ {OPS_BOUND:.2f} ops/MAC within {POINTS_BOUND:g} points: " + "; ".join(verdict(g) for g in goals))]


def benchmarks_table(root: Path) -> list[str]:
  """One line per committed benchmark result: what it measured against its target."""
  lines = _header("benchmark", "measured", "target")
  for rows in (_neurons_rows, _train_memory_rows, _attention_rows, _snn_rows, _input_rows, _scale_rows,
               _peers_rows, _sparsity_rows):
    for script, measured, target in rows(root):
      lines.append(_row(f"`{script}`", measured, target))
  return lines


# ---------------------------------------------------------------------------------------------------
# Documents
# ---------------------------------------------------------------------------------------------------

TABLES: dict[str, Callable[[Path], list[str]]] = {
    "results": results_table,
    "operations": operations_table,
    "sparsity-fashion_mnist": lambda root: _sparsity_table(root, "fashion_mnist"),
    "sparsity-cifar10": lambda root: _sparsity_table(root, "cifar10"),
    "benchmarks": benchmarks_table,
    "snn": snn_table,
    "peers": peers_table,
    "peers-ratios": peers_ratios_table,
    "peers-curve": peers_curve_table,
    "cifar10-ablation": cifar10_ablation_table,
}


def render(name: str, root: Path) -> str:
  """The text between the markers of table `name`, one line per table row."""
  if name not in TABLES:
    raise KeyError(f"no table named {name!r}; the tables are: {', '.join(TABLES)}")
  return "\n".join(TABLES[name](Path(root))) + "\n"


def documents(root: Path) -> list[Path]:
  """The documents of `DOCUMENTS` that exist under `root`."""
  root = Path(root)
  found = []
  for pattern in DOCUMENTS:
    found += sorted(root.glob(pattern))
  return found


def tables_in(text: str) -> list[str]:
  """The names of the marked tables in `text`, in order."""
  return [m.group("name") for m in MARKER.finditer(text)]


def rewrite(text: str, root: Path) -> str:
  """`text` with every marked table replaced by its rendering from the result files under `root`."""
  return MARKER.sub(lambda m: m.group(1) + render(m.group("name"), root) + m.group(4), text)


def differences(root: Path, paths: list[Path] | None = None) -> list[str]:
  """One message per marked table that differs from its rendering: the document, the table's name
  and a unified diff (committed lines `-`, rendered lines `+`). Empty when every table is current."""
  root = Path(root)
  messages = []
  for path in paths if paths is not None else documents(root):
    text = path.read_text()
    where = path.relative_to(root) if path.is_relative_to(root) else path
    for m in MARKER.finditer(text):
      rendered = render(m.group("name"), root)
      if m.group("body") != rendered:
        line = text.count("\n", 0, m.start()) + 1
        diff = difflib.unified_diff(m.group("body").splitlines(), rendered.splitlines(), "committed",
                                    "rendered from the result files", lineterm="", n=0)
        messages.append(f"{where}:{line}: table {m.group('name')!r} differs from the result files\n" +
                        "\n".join(diff))
  return messages


def update(root: Path) -> list[Path]:
  """Rewrites every marked table of the documents under `root`; returns the documents changed."""
  changed = []
  for path in documents(root):
    text = path.read_text()
    new = rewrite(text, root)
    if new != text:
      path.write_text(new)
      changed.append(path)
  return changed
