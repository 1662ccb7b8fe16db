"""The shipped reference model still loads into the current network and classifies as reported."""

import json
import pathlib

from ge2ms_jax import main

REPO = pathlib.Path(__file__).resolve().parents[1]
REFERENCE = REPO / "checkpoints" / "fashion_mnist_tiny"


def test_shipped_fashion_mnist_model_evaluates(capsys):
  code = main.main(["--config", "experiments/fashion_mnist.py", "--mode", "evaluate", "--checkpoint",
                    str(REFERENCE), "--max_examples", "256", "--snn_mode", "fused"])
  assert code == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result["num_examples"] == 256 and result["checkpoint_step"] == 11250
  # 93.4% on the full test set (report/report.json); 256 images of the embedded test split (drawn
  # from the same test set) leave room for sampling noise, not for a broken model.
  assert result["qann_top1"] >= 0.85
  assert result["agreement"] >= 0.99
