"""The main job and the conversion-side modes of the command line, end to end on the real network."""

import gzip
import json
import pathlib

import numpy as np
import pytest

from ge2ms_jax import main

REPO = pathlib.Path(__file__).resolve().parents[1]
SPIKE_CHECK = "spike: simulated spike by spike, multiplication-free checked"
FUSED_CHECK = "fused: not simulated spike by spike, not checked"
RUNLOCAL = ["--config", "experiments/fashion_mnist.py:runlocal", "--config.total_steps=3",
            "--config.log_every_steps=1", "--config.evals.every_steps=3", "--config.evals.batch_size=512"]


def _write_idx(directory: pathlib.Path, images: np.ndarray, labels: np.ndarray) -> None:
  """Writes Fashion-MNIST-style gzip IDX files of a test split."""
  directory.mkdir(parents=True)
  n = len(labels)
  header = b"\x00\x00\x08\x03" + n.to_bytes(4, "big") + (28).to_bytes(4, "big") + (28).to_bytes(4, "big")
  with gzip.open(directory / "t10k-images-idx3-ubyte.gz", "wb") as f:
    f.write(header + images.astype(np.uint8).tobytes())
  with gzip.open(directory / "t10k-labels-idx1-ubyte.gz", "wb") as f:
    f.write(b"\x00\x00\x08\x01" + n.to_bytes(4, "big") + labels.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def main_job(tmp_path_factory):
  """Runs `--mode all` once (3 training steps, 96 evaluation images); returns (workdir, stdout)."""
  workdir = tmp_path_factory.mktemp("main_job") / "run"
  import contextlib
  import io
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    # The main job's config string, as scripts/main.sh runs it (with the spike-aware loss).
    args = ["--config", "experiments/fashion_mnist.py:runlocal,spike_aware"] + RUNLOCAL[2:]
    code = main.main(args + ["--workdir", str(workdir), "--mode", "all", "--max_examples", "96"])
  assert code == 0
  return workdir, out.getvalue()


def test_main_job_trains_converts_simulates_and_reports(main_job):
  workdir, stdout = main_job
  for line in ("QANN top-1", "SNN top-1", "prediction agreement", "time steps", "spikes per neuron",
               "energy per image", "checkpoint", "report", "export", "SOPs/MAC", "ops/MAC",
               "PFLOP of training", "GFLOP/s", "latency_steps 52",
               "steps_per_image 4", "fp32_45nm", "int_45nm", SPIKE_CHECK):
    assert line in stdout, line
  assert "multiplication-free checked" not in stdout.replace(SPIKE_CHECK, "")
  report = json.loads((workdir / "report" / "report.json").read_text())
  m = report["metrics"]
  for key in ("qann_top1", "snn_top1", "agreement", "energy_mj_per_image", "ann_energy_mj_per_image",
              "num_examples", "time_steps", "spikes_per_neuron", "firing_rate", "sops_per_image",
              "ann_macs_per_image", "sop_per_mac", "latency_steps", "steps_per_image", "energy_presets"):
    assert key in m, key
  assert m["num_examples"] == 96 and m["time_steps"] == 4 and m["snn_mode"] == "spike"
  assert m["snn_check"] == SPIKE_CHECK and report["energy"]["snn_check"] == SPIKE_CHECK
  # The runlocal model: 13 neuron sites of T = 4 on the longest path (tests/test_latency.py).
  assert (m["latency_steps"], m["steps_per_image"]) == (52, 4) and len(report["latency"]["path"]) == 13
  assert m["sop_per_mac"] == m["sops_per_image"] / m["ann_macs_per_image"]
  assert set(m["energy_presets"]) == {"fp32_45nm", "int_45nm"}
  assert m["energy_presets"]["fp32_45nm"]["snn_mj_per_image"] == m["energy_mj_per_image"]
  assert report["energy"]["energy_presets"] == m["energy_presets"]
  # Float32 conversion: the SNN's predictions are the QANN's (up to rare level-boundary flips).
  assert m["agreement"] >= 0.95 and abs(m["snn_top1"] - m["qann_top1"]) <= 0.05
  assert 0 < m["energy_mj_per_image"] < m["ann_energy_mj_per_image"]
  assert report["step"] == 3 and (workdir / "checkpoints" / "3").is_dir()
  assert report["training"]["status"] == "done" and report["training"]["step"] == 3
  assert report["training"]["seconds"] > 0
  # Its training cost: 3 steps of 32 images at 6 x MACs each, and the rate of the training steps.
  cost = report["training_cost"]
  assert cost["images_seen"] == 96 and cost["train_flops"] == 6.0 * m["ann_macs_per_image"] * 96
  assert cost["train_gflops_per_s"] > 0 and cost["eval_images"] > 0
  # The spike-aware loss was on: its estimate is logged every step.
  logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert any("train/sop_per_mac" in r and "train/sparsity_loss" in r for r in logged)
  ops = m["sops_per_image"] + m["encoding_macs_per_image"] + m["scalings_per_image"]
  assert m["ops_per_mac"] == pytest.approx(ops / m["ann_macs_per_image"], rel=1e-12)
  assert json.loads((workdir / "export" / "export.json").read_text())["step"] == 3
  assert [r["site"] for r in report["verify"]][-1] == "logits"
  assert max(r["mismatch_fraction"] for r in report["verify"][:-1]) < 0.01
  for name in ("training.png", "energy.png", "raster.png", "report.md"):
    assert (workdir / "report" / name).stat().st_size > 500, name
  markdown = (workdir / "report" / "report.md").read_text()
  for text in ("SNN top-1", "SOPs / MAC", "ANN MACs per image", "latency_steps", "steps_per_image", "training cost",
               "fp32_45nm", "int_45nm", SPIKE_CHECK, "simulation: " + SPIKE_CHECK):
    assert text in markdown, text


def test_evaluate_any_checkpoint_on_an_idx_directory(main_job, tmp_path, capsys):
  workdir, _ = main_job
  arrays = np.load(REPO / "ge2ms_jax" / "data" / "embedded" / "fashion_mnist_subset.npz")
  idx = tmp_path / "idx"
  _write_idx(idx, arrays["test_images"][:40], arrays["test_labels"][:40])
  capsys.readouterr()
  # The full-width config on a runlocal (narrow) checkpoint: the model config recorded in the
  # checkpoint's workdir decides the architecture.
  code = main.main(["--config", "experiments/fashion_mnist.py", "--mode", "evaluate",
                    "--checkpoint", str(workdir / "checkpoints" / "3"), "--eval_data", str(idx)])
  assert code == 0
  last = capsys.readouterr().out.strip().splitlines()[-1]
  result = json.loads(last)
  assert result["num_examples"] == 40 and result["checkpoint_step"] == 3
  for key in ("qann_top1", "snn_top1", "agreement", "energy_mj_per_image"):
    assert 0 <= result[key] and (key == "energy_mj_per_image" or result[key] <= 1)


def test_convert_energy_verify_and_plan_modes(main_job, capsys):
  workdir, _ = main_job
  args = ["--config", "experiments/fashion_mnist.py:runlocal", "--workdir", str(workdir)]
  assert main.main(args + ["--mode", "convert"]) == 0
  assert (workdir / "snn" / "snn_params.msgpack").stat().st_size > 0
  assert json.loads((workdir / "snn" / "model_config.json").read_text())["variant"] == "tiny"
  # The fused path counts the same operations without simulating spike by spike; it says so.
  assert main.main(args + ["--mode", "energy", "--max_examples", "32", "--snn_mode", "fused"]) == 0
  out = capsys.readouterr().out
  assert "ANN/SNN" in out and json.loads(out.strip().splitlines()[-1])["num_examples"] == 32
  assert "simulation: " + FUSED_CHECK in out and SPIKE_CHECK not in out
  assert json.loads(out.strip().splitlines()[-1])["snn_check"] == FUSED_CHECK
  assert (workdir / "energy" / "energy_3.json").exists()
  assert main.main(args + ["--mode", "verify", "--max_examples", "4"]) == 0
  out = capsys.readouterr().out
  assert "stem_n" in out and "logits" in out
  assert main.main(args + ["--mode", "plan", "--max_examples", "8", "--max_steps", "4"]) == 0
  assert "--config.model.neuron_overrides='^" in capsys.readouterr().out


def test_modes_without_a_checkpoint_say_what_they_need(capsys):
  with pytest.raises(SystemExit, match="needs --workdir .* or --checkpoint PATH"):
    main.main(["--config", "experiments/fashion_mnist.py:runlocal", "--mode", "evaluate"])
  with pytest.raises(SystemExit, match="--mode train needs --workdir"):
    main.main(["--config", "experiments/fashion_mnist.py:runlocal"])


def test_an_export_evaluates_like_its_checkpoint_and_rejects_damage(main_job, tmp_path, capsys):
  workdir, _ = main_job
  config = ["--config", "experiments/fashion_mnist.py:runlocal"]
  out_dir = tmp_path / "exported"
  assert main.main(config + ["--workdir", str(workdir), "--mode", "export",
                             "--export_dir", str(out_dir)]) == 0
  meta = json.loads((out_dir / "export.json").read_text())
  assert meta["step"] == 3 and meta["model"]["variant"] == "tiny"
  # Without optimizer moments the export is a fraction of the checkpoint.
  ckpt_bytes = sum(f.stat().st_size for f in (workdir / "checkpoints" / "3").rglob("*") if f.is_file())
  assert (out_dir / "variables.msgpack").stat().st_size < ckpt_bytes / 2

  results = []
  for source in (str(workdir / "checkpoints" / "3"), str(out_dir)):
    capsys.readouterr()
    assert main.main(config + ["--mode", "evaluate", "--checkpoint", source, "--max_examples", "64",
                               "--snn_mode", "fused"]) == 0
    results.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    assert results[-1]["snn_check"] == FUSED_CHECK
  # The same arrays give the same numbers (a check of the export, not of the conversion).
  for key in ("qann_top1", "snn_top1", "agreement", "num_examples", "checkpoint_step"):
    assert results[0][key] == results[1][key], key

  from ge2ms_jax import config_utils, export
  cfg = config_utils.load_config("experiments/fashion_mnist.py:runlocal", {})
  data = (out_dir / "variables.msgpack").read_bytes()
  (out_dir / "variables.msgpack").write_bytes(data[:-10])
  with pytest.raises(export.ExportError, match="truncated or altered"):
    export.load(out_dir, cfg.model)
  (out_dir / "variables.msgpack").write_bytes(data)
  wider = config_utils.load_config("experiments/fashion_mnist.py", {})  # the full-width tiny model
  with pytest.raises(export.ExportError, match="expects|has no array"):
    export.load(out_dir, wider.model)


def test_explained_faults_end_in_a_message_and_exit_code(tmp_path, capsys):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  code = main.main(["--config", "experiments/fashion_mnist.py:runlocal", "--workdir",
                    str(blocker / "run")])
  assert code == 1
  err = capsys.readouterr().err
  assert err.startswith("error: ") and str(blocker) in err and "Traceback" not in err


def test_report_mode_writes_an_exports_report_without_training(main_job, tmp_path, capsys):
  workdir, _ = main_job
  config = ["--config", "experiments/fashion_mnist.py:runlocal"]
  exported = tmp_path / "exported"
  assert main.main(config + ["--workdir", str(workdir), "--mode", "export", "--export_dir", str(exported)]) == 0
  # An export with an older report: its training curve has no metrics.jsonl to be redrawn from, so it
  # is kept; every number is measured again.
  (exported / "report").mkdir()
  (exported / "report" / "training.png").write_bytes(b"the training curve of the run")
  (exported / "report" / "report.json").write_text('{"metrics": {}}')
  capsys.readouterr()
  assert main.main(config + ["--workdir", str(exported), "--checkpoint", str(exported), "--mode", "report",
                             "--max_examples", "32"]) == 0
  out = capsys.readouterr().out
  assert "SOPs/MAC" in out and "latency_steps 52" in out and SPIKE_CHECK in out
  report = json.loads((exported / "report" / "report.json").read_text())
  assert report["checkpoint"] == str(exported) and report["step"] == 3
  assert report["metrics"]["num_examples"] == 32 and report["metrics"]["snn_check"] == SPIKE_CHECK
  assert report["metrics"]["sop_per_mac"] == report["metrics"]["sops_per_image"] / report["metrics"]["ann_macs_per_image"]
  assert (exported / "report" / "training.png").read_bytes() == b"the training curve of the run"
  assert "![training](training.png)" in (exported / "report" / "report.md").read_text()
  assert not (exported / "checkpoints").exists() and report["training"] is None  # nothing was trained

  # A model without any training curve gets a report without one (and says so in its file list).
  bare = tmp_path / "bare"
  assert main.main(config + ["--workdir", str(bare), "--checkpoint", str(exported), "--mode", "report",
                             "--max_examples", "16"]) == 0
  report = json.loads((bare / "report" / "report.json").read_text())
  assert "training" not in report["files"] and not (bare / "report" / "training.png").exists()
  assert "![training]" not in (bare / "report" / "report.md").read_text()
  with pytest.raises(SystemExit, match="--mode report needs --workdir"):
    main.main(config + ["--checkpoint", str(exported), "--mode", "report"])
