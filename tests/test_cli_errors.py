"""User errors on the command line end in one `error: ...` line and an exit code, not a traceback."""

import pathlib

import numpy as np
import pytest
from PIL import Image

from ge2ms_jax import main

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(capsys, argv):
  code = main.main(argv)
  captured = capsys.readouterr()
  lines = [line for line in captured.err.splitlines() if line.strip() and " WARNING " not in line]
  return code, lines, captured.out


def _one_error(lines, *words):
  assert len(lines) == 1 and lines[0].startswith("error: "), lines
  assert "Traceback" not in lines[0]
  for w in words:
    assert w in lines[0], (w, lines[0])
  return lines[0]


def test_a_corrupt_image_in_eval_data(tmp_path, capsys):
  folder = tmp_path / "images"
  for i, name in enumerate(["airplane", "automobile"]):
    (folder / name).mkdir(parents=True)
    Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(folder / name / "ok.png")
  (folder / "airplane" / "broken.png").write_bytes(b"\x89PNG not really")
  code, lines, out = _run(capsys, [
      "--config", "experiments/cifar10.py", "--mode", "evaluate", "--checkpoint", str(REPO / "checkpoints/cifar10_tiny"),
      "--eval_data", str(folder), "--max_examples", "4", "--config.data.data_dir", str(tmp_path / "tfds")])
  assert code == 2
  _one_error(lines, "corrupt image", "broken.png", "skip_corrupt")
  assert "Downloading" not in out


def test_preparing_a_folder_says_what_it_indexed_not_downloading(tmp_path, capsys, caplog):
  folder = tmp_path / "images"
  for i, name in enumerate(["airplane", "automobile"]):
    (folder / name).mkdir(parents=True)
    for j in range(3):
      Image.fromarray(np.full((32, 32, 3), 40 * i + j, np.uint8)).save(folder / name / f"{j}.png")
  with caplog.at_level("INFO", logger="ge2ms_jax.data.builders"):
    code, lines, out = _run(capsys, [
        "--config", "experiments/cifar10.py", "--mode", "evaluate", "--checkpoint",
        str(REPO / "checkpoints/cifar10_tiny"), "--eval_data", str(folder), "--max_examples", "4",
        "--snn_mode", "fused", "--config.data.data_dir", str(tmp_path / "tfds")])
  assert code == 0, lines
  assert "Downloading" not in out and "Downloading" not in caplog.text
  indexed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("indexed ")]
  assert len(indexed) == 1 and str(folder) in indexed[0] and "6 images" in indexed[0], indexed


def test_a_missing_checkpoint(tmp_path, capsys):
  code, lines, _ = _run(capsys, ["--config", "experiments/fashion_mnist.py", "--mode", "evaluate",
                                 "--checkpoint", str(tmp_path / "nowhere")])
  assert code == 2
  _one_error(lines, str(tmp_path / "nowhere"))


def test_an_invalid_config_value(tmp_path, capsys):
  code, lines, _ = _run(capsys, ["--config", "experiments/fashion_mnist.py:runlocal", "--workdir",
                                 str(tmp_path / "run"), "--config.model.neuron.base=1"])
  assert code == 2
  _one_error(lines, "base")


def test_a_checkpoint_of_another_input_shape(tmp_path, capsys):
  # The Fashion-MNIST export (28x28 grey) evaluated on CIFAR-10 images (32x32 colour).
  folder = tmp_path / "images"
  (folder / "airplane").mkdir(parents=True)
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "airplane" / "a.png")
  code, lines, _ = _run(capsys, [
      "--config", "experiments/cifar10.py", "--mode", "evaluate", "--checkpoint",
      str(REPO / "checkpoints/fashion_mnist_tiny"), "--eval_data", str(folder), "--max_examples", "1",
      "--config.data.data_dir", str(tmp_path / "tfds")])
  assert code == 2
  _one_error(lines)


def test_a_bug_keeps_its_traceback(monkeypatch):
  # An error raised inside a library, not by this package's checks, is not dressed up as user error.
  def broken(config, workdir, args):
    return int("not a number" + object.__name__)  # ValueError raised by int(), outside ge2ms_jax
  monkeypatch.setitem(main.MODES, "plan", broken)
  with pytest.raises(ValueError, match="invalid literal"):
    main.main(["--config", "experiments/fashion_mnist.py:runlocal", "--mode", "plan"])


def test_an_unwritable_workdir_is_a_failed_run(tmp_path, capsys):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  code, lines, _ = _run(capsys, ["--config", "experiments/fashion_mnist.py:runlocal", "--workdir",
                                 str(blocker / "run")])
  assert code == 1
  _one_error(lines, str(blocker / "run"), "cannot be created")


def test_the_traceback_is_logged_at_debug_level(tmp_path, capsys, caplog):
  with caplog.at_level("DEBUG", logger="ge2ms_jax.main"):
    code, lines, _ = _run(capsys, ["--config", "experiments/fashion_mnist.py", "--mode", "evaluate",
                                   "--log_level", "DEBUG", "--checkpoint", str(tmp_path / "nowhere")])
  assert code == 2
  _one_error(lines, str(tmp_path / "nowhere"))
  failed = [r for r in caplog.records if r.name == "ge2ms_jax.main" and r.exc_info]
  assert failed and isinstance(failed[0].exc_info[1], FileNotFoundError)
