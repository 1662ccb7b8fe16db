"""The command line end to end: the real network on the packaged Fashion-MNIST subset."""

import json

import pytest

from ge2ms_jax import main
from ge2ms_jax import metrics

ARGS = ["--config", "experiments/fashion_mnist.py:runlocal", "--config.total_steps=2",
        "--config.evals.batch_size=512", "--config.log_every_steps=1"]


@pytest.mark.slow  # About a minute on 2 CPU cores, most of it compiling the real network.
def test_train_then_evaluate_a_named_checkpoint(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  assert main.main(ARGS + ["--workdir", workdir]) == 0
  result = json.loads((tmp_path / "run" / "result.json").read_text())
  assert result["status"] == "done" and result["step"] == 2
  assert result["eval_num_examples"] == 2500  # The whole test split, padding masked out.
  rows = metrics.read_jsonl(tmp_path / "run" / "metrics.jsonl")
  assert [r["step"] for r in rows if "train/loss" in r] == [1, 2]
  saved = json.loads((tmp_path / "run" / "config.json").read_text())
  assert saved["total_steps"] == 2 and saved["model"]["variant"] == "tiny"

  capsys.readouterr()
  assert main.main(ARGS + ["--workdir", workdir, "--mode", "evaluate", "--snn_mode", "fused",
                           "--checkpoint", f"{workdir}/checkpoints/2"]) == 0
  out = capsys.readouterr().out
  evaluated = json.loads(out.strip().splitlines()[-1])
  assert evaluated == json.loads((tmp_path / "run" / "evaluate_2.json").read_text())
  assert evaluated["checkpoint_step"] == 2 and evaluated["num_examples"] == 2500
  assert evaluated["qann_top1"] == pytest.approx(result["eval_top1"], abs=1e-6)


def test_cli_errors_name_the_key_and_close_matches(tmp_path, capsys):
  code = main.main(["--config", "experiments/fashion_mnist.py", "--workdir", str(tmp_path),
                    "--config.optax.lrr=1e-3"])
  err = capsys.readouterr().err
  assert code == 2 and "unknown config key 'optax.lrr'; close matches: optax.lr" in err
  code = main.main(["--config", "experiments/fashion_mnist.py", "--workdir", str(tmp_path),
                    "--config.total_steps=ten"])
  assert code == 2 and "'total_steps' expects an int" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    main.main(["--config", "experiments/fashion_mnist.py", "--workdir", str(tmp_path), "--lr=3"])
  assert "unrecognised argument '--lr=3'" in capsys.readouterr().err


def test_batch_size_not_divisible_is_reported(tmp_path, capsys):
  assert main.main(["--config", "experiments/fashion_mnist.py:runlocal", "--workdir", str(tmp_path),
                    "--config.batch_size=12"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith("error: batch_size=12 is not divisible by the data-parallel size 8")
