"""Benchmark: input pipeline throughput beside the `tiny` model's training-step consumption.

One run, one process, on this machine:

* `pipeline[fashion_mnist]`: the embedded Fashion-MNIST subset with the default training
  augmentation (`random_crop(28, pad=2)|flip_lr|normalize|onehot`);
* `pipeline[cifar10]`: CIFAR-10 from its JPEG ImageFolder archive (`--cifar`, default
  `../shared/data/cifar10-train-jpeg.tar.gz` beside the repository, or `$GE2MS_CIFAR10_TAR`) with
  the default augmentation (`random_crop(32, pad=4)|flip_lr|randaugment(2, 9)|normalize|onehot`
  with label smoothing); without the archive, the same preprocessing on a synthetic 32x32x3
  source, recorded as such;
* `step[tiny 28x28x1]`, `step[tiny 32x32x3]`: a jitted SGD-with-momentum step (forward, softmax
  cross-entropy, backward, update, BatchNorm statistics) of the `tiny` model on a fixed batch;
* `train_loop[...]`: the same step fed by the pipeline, so the two share the CPU as in training.

Pipelines and steps are timed in interleaved rounds (one round of every row, repeated), and the
median images/s over rounds is reported. The ratio pipeline / step must be >= 2 for the pipeline
not to be the bottleneck.

  python benchmarks/input.py                  # writes benchmarks/results/input.json
  python benchmarks/input.py --quick --no-model --out /tmp/input.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "input.json"
DEFAULT_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-train-jpeg.tar.gz"
TARGET_RATIO = 2.0


def _cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def _pipelines(args) -> dict[str, Any]:
  """The data configs of the two pipelines (and where CIFAR-10 came from)."""
  from ge2ms_jax import data
  fm = data.default_config("fashion_mnist")
  fm.data.data_dir = args.data_dir
  cifar_path = args.cifar or os.environ.get("GE2MS_CIFAR10_TAR") or str(DEFAULT_CIFAR)
  cf = data.default_config("cifar10")
  if Path(cifar_path).exists() and not args.quick:
    cf.data.update(source=cifar_path, data_dir=args.data_dir)
    cifar_source = "archive"
  else:
    syn = data.default_config("synthetic")
    syn.data.update(image_shape=(32, 32, 3), num_classes=10, num_train_examples=4096)
    syn.pp_train, syn.pp_eval = cf.pp_train, cf.pp_eval
    cf = syn
    cifar_source = "synthetic 32x32x3 (archive not used)"
  for cfg in (fm, cf):
    cfg.input.num_threads = args.threads
    cfg.input.num_workers = args.workers
  return {"fashion_mnist": fm, "cifar10": cf, "cifar_source": cifar_source}


def _make_step(image_shape, batch: int):
  """A jitted SGD step of `tiny` for `image_shape`; returns (step, state, fixed batch)."""
  import jax
  import jax.numpy as jnp
  import optax
  from ge2ms_jax import model

  cfg = model.default_config("tiny")
  cfg.image_size, cfg.in_channels = image_shape[0], image_shape[2]
  net = model.build(cfg)
  images = jnp.asarray(np.random.default_rng(0).normal(size=(batch,) + tuple(image_shape)),
                       jnp.float32)
  targets = jax.nn.one_hot(jnp.arange(batch) % cfg.num_classes, cfg.num_classes)
  variables = jax.jit(lambda r, x: net.init(r, x, train=False))(jax.random.key(0), images)
  tx = optax.sgd(0.05, momentum=0.9)
  state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))

  @jax.jit
  def step(state, images, targets):
    params, stats, opt = state

    def loss_fn(p):
      logits, upd = net.apply({"params": p, "batch_stats": stats}, images, train=True,
                              mutable=["batch_stats"])
      return optax.softmax_cross_entropy(logits, targets).mean(), upd["batch_stats"]

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return (optax.apply_updates(params, updates), stats, opt), loss

  state, loss = step(state, images, targets)   # compile
  jax.block_until_ready(loss)
  return step, state, (images, targets)


def main(argv=None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="small batches, few rounds")
  parser.add_argument("--no-model", action="store_true", help="pipelines only (no training step)")
  parser.add_argument("--batch", type=int, default=None, help="global batch (default 128; 16 quick)")
  parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (5; 2 quick)")
  parser.add_argument("--batches", type=int, default=None,
                      help="pipeline batches per round (20; 3 quick)")
  parser.add_argument("--steps", type=int, default=2, help="training steps per round")
  parser.add_argument("--threads", type=int, default=2, help="config.input.num_threads")
  parser.add_argument("--workers", type=int, default=0, help="config.input.num_workers")
  parser.add_argument("--cifar", default=None, help="CIFAR-10 ImageFolder archive")
  parser.add_argument("--data-dir", default=None, help="prepared-data folder (default: cache)")
  parser.add_argument("--out", default=str(DEFAULT_OUT))
  args = parser.parse_args(argv)
  batch = args.batch or (16 if args.quick else 128)
  rounds = args.rounds or (2 if args.quick else 5)
  n_batches = args.batches or (3 if args.quick else 20)
  tmp = None
  if args.data_dir is None and args.quick:
    tmp = tempfile.TemporaryDirectory()
    args.data_dir = tmp.name

  import jax
  from ge2ms_jax import data

  setups = _pipelines(args)
  rows: dict[str, dict[str, Any]] = {}
  iters, infos = {}, {}
  for name in ("fashion_mnist", "cifar10"):
    cfg = setups[name]
    t0 = time.perf_counter()
    infos[name] = data.dataset_info(cfg)
    prep = time.perf_counter() - t0
    iters[name] = data.build_iterator(cfg, "train", global_batch_size=batch, seed=0)
    next(iters[name])  # warm-up: threads started, files opened
    rows[f"pipeline[{name}]"] = dict(kind="pipeline", dataset=cfg.data.name, pp=cfg.pp_train,
                                     image_shape=list(infos[name].image_shape),
                                     prepare_or_open_s=round(prep, 3), images_per_s=[])
  steps = {}
  if not args.no_model:
    for name in ("fashion_mnist", "cifar10"):
      shape = infos[name].image_shape
      steps[name] = _make_step(shape, batch)
      label = f"tiny {shape[0]}x{shape[1]}x{shape[2]}"
      rows[f"step[{label}]"] = dict(kind="step", model="tiny", image_shape=list(shape),
                                    images_per_s=[])
      rows[f"train_loop[{name}]"] = dict(kind="train_loop", model="tiny", dataset=name,
                                         images_per_s=[])

  for _ in range(rounds):
    for name, it in iters.items():
      # Batches made ahead while the other rows ran are not counted: steady-state production.
      for _ in range(setups[name].input.prefetch):
        next(it)
      t0 = time.perf_counter()
      for _ in range(n_batches):
        next(it)
      rows[f"pipeline[{name}]"]["images_per_s"].append(n_batches * batch / (time.perf_counter() - t0))
    for name, (step, state, fixed) in steps.items():
      shape = infos[name].image_shape
      label = f"tiny {shape[0]}x{shape[1]}x{shape[2]}"
      t0 = time.perf_counter()
      for _ in range(args.steps):
        state, loss = step(state, *fixed)
      jax.block_until_ready(loss)
      rows[f"step[{label}]"]["images_per_s"].append(args.steps * batch / (time.perf_counter() - t0))
      t0 = time.perf_counter()
      for _ in range(args.steps):
        b = next(iters[name])
        state, loss = step(state, b["image"], b["target"])
      jax.block_until_ready(loss)
      rows[f"train_loop[{name}]"]["images_per_s"].append(
          args.steps * batch / (time.perf_counter() - t0))
      steps[name] = (step, state, fixed)
  for it in iters.values():
    it.close()

  for r in rows.values():
    r["median_images_per_s"] = round(statistics.median(r["images_per_s"]), 1)
    r["images_per_s"] = [round(v, 1) for v in r["images_per_s"]]

  ratios, met = {}, {}
  for name in ("fashion_mnist", "cifar10"):
    pipe = rows[f"pipeline[{name}]"]["median_images_per_s"]
    if steps:
      shape = infos[name].image_shape
      step_rate = rows[f"step[tiny {shape[0]}x{shape[1]}x{shape[2]}]"]["median_images_per_s"]
      loop_rate = rows[f"train_loop[{name}]"]["median_images_per_s"]
      ratios[f"{name}: pipeline / step"] = round(pipe / step_rate, 2)
      ratios[f"{name}: train_loop / step"] = round(loop_rate / step_rate, 3)
      met[name] = pipe / step_rate >= TARGET_RATIO
  result = {
      "benchmark": "input",
      "quick": args.quick,
      "machine": {"cores": _cores(), "cpu": platform.processor() or platform.machine(),
                  "python": sys.version.split()[0], "jax": jax.__version__,
                  "jax_backend": jax.default_backend()},
      "config": {"global_batch_size": batch, "rounds": rounds, "pipeline_batches_per_round":
                 n_batches, "steps_per_round": args.steps, "num_threads": args.threads,
                 "num_workers": args.workers, "cifar10_source": setups["cifar_source"]},
      "rows": [dict(name=k, **v) for k, v in rows.items()],
      "ratios": ratios,
      "targets": {"pipeline_over_step_at_least": TARGET_RATIO,
                  "met": met if steps else None,
                  "note": None if steps else "model step not timed (--no-model)"},
  }
  print(f"{'row':34s} {'median images/s':>16s}")
  for k, v in rows.items():
    print(f"{k:34s} {v['median_images_per_s']:16.1f}")
  for k, v in ratios.items():
    print(f"{k:34s} {v:16.3f}")
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2) + "\n")
  print(f"wrote {out}")
  if tmp is not None:
    tmp.cleanup()
  return result


if __name__ == "__main__":
  main()
