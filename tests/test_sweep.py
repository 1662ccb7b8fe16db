"""Sweep expansion, validation before running, command lines, local runs and results tables."""

import csv
import json
import os

import jax
import pytest

from ge2ms_jax import config_utils
from ge2ms_jax import sweep
from ge2ms_jax import train
from test_train_support import ArrayData, TinyNet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_product_crosses_axes_and_zips_keys_within_one():
  runs = sweep.product({"config.model.neuron.base": [2, 4, 16], "model.neuron.groups": [4, 2, 1]},
                       {"model.window_sizes": [(2, 4, 0), (2, 2, 4)]})
  assert len(runs) == 6
  assert runs[0] == {"model.neuron.base": 2, "model.neuron.groups": 4, "model.window_sizes": (2, 4, 0)}
  assert runs[1]["model.window_sizes"] == (2, 2, 4) and runs[1]["model.neuron.base"] == 2
  assert [(r["model.neuron.base"], r["model.neuron.groups"]) for r in runs[::2]] == [(2, 4), (4, 2), (16, 1)]


@pytest.mark.parametrize("axes,match", [
    (({"a": [1, 2], "b": [1]},), "differ in length"),
    (({},), "axis 0 is empty"),
    (({"a": []},), "has no values"),
    (({"a": [1]}, {"config.a": [2]}), "same keys more than once"),
])
def test_product_errors(axes, match):
  with pytest.raises(ValueError, match=match):
    sweep.product(*axes)


def test_run_names_are_short_unique_and_safe():
  assert sweep.run_name(3, {"model.neuron.base": 4, "model.window_sizes": (2, 4, 0)}) == (
      "003_base=4_window_sizes=2-4-0")
  assert sweep.run_name(0, {"optax.wd": 0.1, "schedule.wd": 0.2}) == "000_optax.wd=0.1_schedule.wd=0.2"
  assert sweep.run_name(1, {"data.source": "/a b/c"}) == "001_source=abc"
  long = {f"model.field_{i}": "x" * 20 for i in range(8)}
  a, b = sweep.run_name(2, {**long, "sparsity.weight": 1.0}), sweep.run_name(2, {**long, "sparsity.weight": 5.0})
  assert a != b and len(a) == len(b) == 4 + 120  # the overrides past the cut still tell runs apart


def test_the_shipped_sweeps_expand_and_validate():
  from ge2ms_jax import model as models
  for name in ("fashion_mnist_codes.py:runlocal", "stbp_time_steps.py"):
    runs, config_spec = sweep.load_sweep(f"experiments/sweeps/{name}")
    configs = sweep.build_configs(config_spec, runs)
    assert len(configs) == len(runs) >= 6
    for config in configs:
      models.validate(config.model)
  runs, _ = sweep.load_sweep("experiments/sweeps/fashion_mnist_codes.py")
  assert {(r["model.neuron.base"], r["model.neuron.groups"]) for r in runs} == {(2, 4), (4, 2), (16, 1)}


def test_runlocal_is_the_experiments_own_and_unknown_sweep_args_are_errors():
  for name, experiment in (("fashion_mnist_codes.py", "experiments/fashion_mnist.py"),
                           ("stbp_time_steps.py", "experiments/stbp_fashion_mnist.py")):
    runs, config_spec = sweep.load_sweep(f"experiments/sweeps/{name}:runlocal")
    assert config_spec == f"{experiment}:runlocal"
    local = config_utils.load_config(f"{experiment}:runlocal")
    for config in sweep.build_configs(config_spec, runs):
      # The experiment's laptop settings, not a second list: schedule, size and steps all shrink.
      for key in ("total_steps", "batch_size", "schedule.warmup_steps", "model.stem_channels",
                  "evals.batch_size"):
        assert config_utils.flatten(config)[key] == config_utils.flatten(local)[key], (name, key)
    with pytest.raises(config_utils.ConfigError, match=r"unknown config-string key 'runlokal'"):
      sweep.load_sweep(f"experiments/sweeps/{name}:runlokal")
  # The experiment given on the command line gets the passed-on item too.
  _, config_spec = sweep.load_sweep("experiments/sweeps/fashion_mnist_codes.py:runlocal",
                                    "experiments/fashion_mnist.py:data=fashion_mnist")
  assert config_spec == "experiments/fashion_mnist.py:data=fashion_mnist,runlocal"


def test_a_misspelt_key_fails_before_anything_runs(tmp_path):
  runs = [{"model.neuron.base": 2}, {"model.neuron.grops": 2}]
  ran = []
  with pytest.raises(config_utils.ConfigError,
                     match=r"sweep run 1 .*unknown config key 'model.neuron.grops'; close matches: "
                           r"model.neuron.groups"):
    sweep.run_sweep("experiments/fashion_mnist.py", runs, str(tmp_path),
                    train_fn=lambda c, d: ran.append(d))
  assert ran == []


def test_commands_round_trip_through_the_cli_parser():
  runs = [{"model.window_sizes": (2, 4, 0), "optax.lr": 1e-3, "model.neuron.per_channel": True,
           "optax.name": "sgd"}]
  (line,) = sweep.commands("experiments/fashion_mnist.py:runlocal", runs, "/runs",
                           common={"seed": config_utils.CliValue("3")})
  assert line.startswith("python -m ge2ms_jax.main --config experiments/fashion_mnist.py:runlocal "
                         "--workdir /runs/000_")
  import shlex
  argv = shlex.split(line)[3:]
  from ge2ms_jax import main
  args, overrides = main.parse_args(argv)
  config = config_utils.load_config(args.config, overrides)
  assert config.model.window_sizes == (2, 4, 0) and config.optax.lr == 1e-3
  assert config.model.neuron.per_channel is True and config.optax.name == "sgd" and config.seed == 3


def _experiment(tmp_path):
  path = tmp_path / "tiny_experiment.py"
  path.write_text("from test_train_support import small_config\n"
                  "def get_config(arg):\n"
                  "  c = small_config(total_steps=2)\n"
                  "  c.mesh = [('data', 1)]\n"
                  "  return c\n")
  return str(path)


def test_run_sweep_trains_skips_finished_runs_and_writes_tables(tmp_path):
  calls = []

  def train_fn(config, run_dir):
    calls.append(run_dir)
    if config.optax.lr > 1.0:
      raise FloatingPointError("diverged")
    train.train_and_evaluate(config, run_dir, net=TinyNet(), data_module=ArrayData(),
                             devices=jax.devices()[:1])
    return sweep.read_result(run_dir)

  runs = sweep.product({"optax.lr": [0.03, 0.01, 10.0]})
  workdir = str(tmp_path / "sweep")
  rows = sweep.run_sweep(_experiment(tmp_path), runs, workdir, train_fn=train_fn)
  assert [r["status"] for r in rows] == ["done", "done", "failed"]
  assert "diverged" in rows[2]["error"]
  assert all(0.0 <= r["eval_top1"] <= 1.0 and r["step"] == 2 for r in rows[:2])
  with open(os.path.join(workdir, "results.csv")) as f:
    table = list(csv.DictReader(f))
  assert [t["optax.lr"] for t in table] == ["0.0300", "0.0100", "10.0000"]
  assert table[0]["status"] == "done" and float(table[0]["eval_top1"]) == pytest.approx(
      rows[0]["eval_top1"], abs=1e-4)
  md = open(os.path.join(workdir, "results.md")).read().splitlines()
  assert md[0].startswith("| run | optax.lr | status | step | eval_top1") and len(md) == 5

  # Again: finished runs are read back, not retrained; the failed one is tried again.
  calls.clear()
  again = sweep.run_sweep(_experiment(tmp_path), runs, workdir, train_fn=train_fn)
  assert calls == [os.path.join(workdir, rows[2]["run"])]
  assert again[0]["eval_top1"] == rows[0]["eval_top1"]
  collected = sweep.run_sweep(_experiment(tmp_path), runs + [{"optax.lr": 0.5}], workdir,
                              collect_only=True)
  assert [r["status"] for r in collected] == ["done", "done", "failed", "missing"]


def test_sweep_cli_prints_commands(capsys, tmp_path):
  code = sweep.main(["--sweep", "experiments/sweeps/fashion_mnist_codes.py", "--workdir",
                     str(tmp_path), "--print_commands", "--config.seed=1"])
  lines = capsys.readouterr().out.strip().splitlines()
  assert code == 0 and len(lines) == 6
  assert all("--config experiments/fashion_mnist.py" in l and "--config.seed=1" in l for l in lines)
  code = sweep.main(["--sweep", "experiments/sweeps/fashion_mnist_codes.py", "--workdir",
                     str(tmp_path), "--print_commands", "--config.sed=1"])
  assert code == 2 and "close matches: seed" in capsys.readouterr().err


def test_a_resumed_run_reports_its_whole_wall_time(tmp_path):
  from test_train_support import small_config
  run_dir = str(tmp_path / "run")
  os.makedirs(run_dir)
  with open(os.path.join(run_dir, "result.json"), "w") as f:  # an earlier, preempted invocation
    json.dump({"status": "preempted", "step": 1, "seconds": 1000.0, "train_seconds": 600.0, "eval_images": 50}, f)
  train.train_and_evaluate(small_config(total_steps=2), run_dir, net=TinyNet(), data_module=ArrayData(),
                           devices=jax.devices()[:1])
  result = sweep.read_result(run_dir)
  assert result["status"] == "done"
  assert 0 < result["seconds_this_invocation"] < 1000
  assert result["seconds"] == pytest.approx(1000.0 + result["seconds_this_invocation"])
  # The time in training steps and the images evaluated are totals over the invocations too.
  assert 600.0 < result["train_seconds"] < 600.0 + result["seconds_this_invocation"]
  assert result["eval_images"] == 50 + result["eval_num_examples"]
  # A finished run's time is not carried into a later one.
  train.train_and_evaluate(small_config(total_steps=2), run_dir, net=TinyNet(), data_module=ArrayData(),
                           devices=jax.devices()[:1])
  assert sweep.read_result(run_dir)["seconds"] < 1000
