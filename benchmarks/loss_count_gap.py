"""How far the spike-aware loss's operation count is from the converted network's, on training batches.

The spike-aware loss (`config.sparsity`) counts synaptic operations in the same forward pass that
computes the cross-entropy, so its BatchNorm normalises with the batch's statistics (training
mode). The converted network folds the running statistics instead. For each shipped sparse model
this script takes training batches with the training augmentation and measures, on the same images:

* `train_mode`: the loss's estimate, SOPs/MAC of the QANN with batch statistics (what is penalised);
* `inference_mode`: SOPs/MAC of the QANN with running statistics, the converted network's count;
* `converted`: SOPs/MAC of the converted network itself (`snn.simulate`, fused; equal to the line
  above up to float32 summation);

and their relative gap. Prints a table and writes `benchmarks/results/loss_count_gap.json`.

    python benchmarks/loss_count_gap.py --cifar10 cifar10-train-jpeg.tar.gz
    python benchmarks/loss_count_gap.py --quick    # the embedded Fashion-MNIST subset, 2 batches of 32
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  pylint: disable=g-import-not-at-top

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION_MNIST_IDX = "/usr/share/datasets/fashion-mnist"


def measure(spec: str, export: str, overrides: dict, batches: int, batch_size: int) -> dict:
  """The three counts (SOPs per ANN MAC, averaged over `batches` training batches) of one model."""
  from ge2ms_jax import config_utils, loading, snn, sparsity  # pylint: disable=g-import-not-at-top
  from ge2ms_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from ge2ms_jax import model as models  # pylint: disable=g-import-not-at-top
  config = config_utils.load_config(spec, overrides)
  variables = loading.load(config, os.path.join(ROOT, export)).variables
  from ge2ms_jax import conversion  # pylint: disable=g-import-not-at-top
  converted = conversion.convert(variables, config.model, check=False)
  net = models.build(config.model, "qann")
  macs = models.count(config.model)["macs"]

  @jax.jit
  def qann_counts(v, images):
    _, train_state = net.apply(v, images, train=True, mutable=["batch_stats", "stats"])
    _, eval_state = net.apply(v, images, train=False, mutable=["stats"])
    return (sparsity.total_sops(train_state["stats"]), sparsity.total_sops(eval_state["stats"]))

  it = data_lib.build_iterator(config, split="train", global_batch_size=batch_size, seed=1, train=True)
  rows = []
  try:
    for _, batch in zip(range(batches), it):
      images = jax.numpy.asarray(batch["image"])
      train_sops, eval_sops = (float(x) / len(images) / macs for x in qann_counts(variables, images))
      sim = snn.simulate(converted, images, "fused", config=config.model)
      rows.append((train_sops, eval_sops, sum(r.sops for r in sim.layers) / len(images) / macs))
  finally:
    it.close()
  train_mode, inference_mode, converted_count = (float(np.mean(c)) for c in zip(*rows))
  return {"model": export, "config": spec, "images": batches * batch_size, "train_mode": train_mode,
          "inference_mode": inference_mode, "converted": converted_count,
          "gap_train_over_converted": train_mode / converted_count - 1.0,
          "inference_mode_over_converted": inference_mode / converted_count - 1.0}


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--cifar10", default=None, help="the CIFAR-10 ImageFolder .tar.gz (omit: Fashion-MNIST only)")
  p.add_argument("--fashion_mnist", default=FASHION_MNIST_IDX, help="directory of the Fashion-MNIST IDX files")
  p.add_argument("--batches", type=int, default=8)
  p.add_argument("--batch_size", type=int, default=128)
  p.add_argument("--quick", action="store_true",
                 help="the embedded Fashion-MNIST subset's training images only, 2 batches of 32")
  p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/loss_count_gap.json)")
  args = p.parse_args(argv)
  batches, batch_size = (2, 32) if args.quick else (args.batches, args.batch_size)
  if args.quick:
    plan = [("experiments/fashion_mnist.py", "checkpoints/fashion_mnist_tiny_sparse", {})]
  else:
    plan = [("experiments/fashion_mnist.py:data=fashion_mnist_full", "checkpoints/fashion_mnist_tiny_sparse",
             {"data.source": args.fashion_mnist})]
  if args.cifar10 and not args.quick:
    plan.append(("experiments/cifar10.py:variant=tiny,cpu", "checkpoints/cifar10_tiny_sparse",
                 {"data.source": args.cifar10}))
  rows = [measure(spec, export, overrides, batches, batch_size) for spec, export, overrides in plan]
  print(f"{'model':<40} {'images':>6} {'train-mode':>10} {'inference':>10} {'converted':>10} {'gap':>8}")
  for r in rows:
    print(f"{r['model']:<40} {r['images']:>6} {r['train_mode']:>10.4f} {r['inference_mode']:>10.4f} "
          f"{r['converted']:>10.4f} {100 * r['gap_train_over_converted']:>7.2f}%")
  result = {"machine": common.machine(), "rows": rows}
  if not args.quick or args.out:
    print("saved", common.save(result, args.out, "loss_count_gap.json"))
  return result


if __name__ == "__main__":
  main()
