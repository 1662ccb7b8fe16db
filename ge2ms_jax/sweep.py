"""Sweeps: a list of config overrides run one by one (or printed as commands), with a results table.

A sweep file `experiments/sweeps/<name>.py` defines `get_sweep(arg) -> list[dict]` (each dict is one
run's `{config key: value}` overrides), optionally `CONFIG`, the experiment it applies to, and
optionally `EXPERIMENT_ARGS`, the config-string keys passed on to that experiment's own config string
(`("runlocal",)`: `sweep.py:runlocal` runs every run with the experiment's `runlocal` settings):

    CONFIG = "experiments/fashion_mnist.py"
    def get_sweep(arg):
      return sweep.product(
          {"model.neuron.base": [2, 4, 16], "model.neuron.groups": [4, 2, 1]},   # zipped
          {"model.window_sizes": [(2, 4, 0), (2, 2, 4)]})                        # crossed

    python -m ge2ms_jax.sweep --sweep experiments/sweeps/fashion_mnist_codes.py --workdir /tmp/sw
    python -m ge2ms_jax.sweep --sweep ... --workdir gs://b/sw --print_commands   # for a cluster
    python -m ge2ms_jax.sweep --sweep ... --workdir gs://b/sw --collect          # table only

Every run's config is built and checked before anything runs, so a misspelt key fails at once.
Each run trains in `<workdir>/<index>_<name>`; a run with a `result.json` there is not run again, and
an interrupted one resumes from its checkpoint. `results.csv` and `results.md` in the sweep workdir
list every run's overrides, status and final metrics.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import itertools
import json
import logging
import os
import re
import shlex
import sys
import time
import traceback
from typing import Any, Callable, Mapping, Sequence

import ml_collections

from ge2ms_jax import config_utils
from ge2ms_jax import cost

_log = logging.getLogger(__name__)

RESULT_COLUMNS = ("status", "step", "eval_top1", "eval_top1_ema", "eval_loss", "train_loss",
                  "train_accuracy", "seconds")


# ---------------------------------------------------------------------------------------------
# Expansion
# ---------------------------------------------------------------------------------------------
def _strip(key: str) -> str:
  return key[len("config."):] if key.startswith("config.") else key


def product(*axes: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
  """The cross product of `axes`; the keys within one axis are zipped.

  Args:
    *axes: each `{key: [v0, v1, ...]}`; all lists of one axis have the same length.

  Returns:
    One override dict per combination, first axis varying slowest.

  Raises:
    ValueError: for an empty axis or zipped lists of different lengths.
  """
  expanded = []
  for i, axis in enumerate(axes):
    if not axis:
      raise ValueError(f"sweep axis {i} is empty.")
    lengths = {k: len(v) for k, v in axis.items()}
    if len(set(lengths.values())) != 1:
      raise ValueError(f"sweep axis {i} zips keys whose value lists differ in length: {lengths}.")
    n = next(iter(lengths.values()))
    if n == 0:
      raise ValueError(f"sweep axis {i} has no values: {dict(axis)}.")
    expanded.append([{_strip(k): v[j] for k, v in axis.items()} for j in range(n)])
  runs = []
  for combo in itertools.product(*expanded):
    run: dict[str, Any] = {}
    for part in combo:
      clash = set(run) & set(part)
      if clash:
        raise ValueError(f"sweep axes set the same keys more than once: {sorted(clash)}.")
      run.update(part)
    runs.append(run)
  return runs


def _value_name(value: Any) -> str:
  if isinstance(value, (list, tuple)):
    return "-".join(_value_name(v) for v in value)
  return str(value)


def run_name(index: int, overrides: Mapping[str, Any]) -> str:
  """A folder name for a run: `003_base=4_groups=2` (last key parts; safe characters only)."""
  last = [k.rsplit(".", 1)[-1] for k in overrides]
  parts = [f"{short if last.count(short) == 1 else key}={_value_name(v)}"
           for short, (key, v) in zip(last, overrides.items())]
  name = re.sub(r"[^A-Za-z0-9_.=+-]", "", "_".join(parts))
  if len(name) > 120:
    # Cut names keep a digest of all the overrides, so runs that differ only past the cut (or a
    # changed run list) never share a folder.
    digest = hashlib.sha256(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()[:8]
    name = f"{name[:111]}_{digest}"
  return f"{index:03d}_{name}" if name else f"{index:03d}"


def format_value(value: Any) -> str:
  """An override value as `--config.k=VALUE` text that `config_utils.parse_value` reads back."""
  if isinstance(value, str):
    return value
  if isinstance(value, bool):
    return "true" if value else "false"
  return repr(value)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def with_experiment_arg(config_spec: str, items: Sequence[str]) -> str:
  """`config_spec` with config-string `items` appended: `("x.py:data=y", ["runlocal"])` ->
  `"x.py:data=y,runlocal"`."""
  if not items:
    return config_spec
  path, arg = config_utils.split_spec(config_spec)
  return f"{path}:{','.join([a for a in arg.split(',') if a.strip()] + list(items))}"


def load_sweep(spec: str, config: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
  """Loads `path.py[:arg]`: returns (its `get_sweep(arg)` runs, the experiment's config spec).

  The experiment is `config` if given, else the sweep file's `CONFIG` (None if neither). Items of
  the config string whose key the sweep file lists in `EXPERIMENT_ARGS` (e.g. `("runlocal",)`) go
  to the experiment's own config string instead of `get_sweep`, so `runlocal` means exactly what
  it means for the experiment; every other item goes to `get_sweep`, which raises on one it does
  not know (`config_utils.parse_arg`).
  """
  path, arg = config_utils.split_spec(spec)
  module = config_utils.load_module(path, "ge2ms_sweep")
  if not hasattr(module, "get_sweep"):
    raise config_utils.ConfigError(f"sweep file {path!r} has no get_sweep(arg) function.")
  forwarded = tuple(getattr(module, "EXPERIMENT_ARGS", ()))
  own, passed = [], []
  for item in (arg or "").split(","):
    if item.strip():
      (passed if item.partition("=")[0].strip() in forwarded else own).append(item.strip())
  runs = module.get_sweep(",".join(own))
  if not isinstance(runs, list) or not all(isinstance(r, Mapping) for r in runs) or not runs:
    raise config_utils.ConfigError(f"{path}: get_sweep must return a non-empty list of override "
                                   f"dicts, got {type(runs).__name__}.")
  config_spec = config or getattr(module, "CONFIG", None)
  if config_spec:
    config_spec = with_experiment_arg(config_spec, passed)
  return [{_strip(k): v for k, v in r.items()} for r in runs], config_spec


def build_configs(config_spec: str, runs: Sequence[Mapping[str, Any]],
                  common: Mapping[str, Any] | None = None) -> list[ml_collections.ConfigDict]:
  """Each run's config: the experiment, then `common` overrides (CLI), then the run's own.

  Raises:
    ConfigError: naming the run index and the bad key (with close matches) or value.
  """
  configs = []
  for i, run in enumerate(runs):
    try:
      configs.append(config_utils.load_config(config_spec, {**(common or {}), **run}))
    except config_utils.ConfigError as e:
      raise config_utils.ConfigError(f"sweep run {i} ({dict(run)}): {e}") from None
  return configs


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------
# A run's result.json (written by train.train_and_evaluate), or None.
read_result = cost.read_result


def _cell(value: Any) -> str:
  if value is None:
    return ""
  if isinstance(value, float):
    return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.0f}"
  if isinstance(value, (list, tuple)):
    return _value_name(value)
  return str(value)


def write_tables(workdir: str, rows: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
  """Writes `results.csv` and `results.md` (one row per run); returns their paths."""
  keys: list[str] = []
  for row in rows:
    for k in row.get("overrides", {}):
      if k not in keys:
        keys.append(k)
  header = ["run"] + keys + list(RESULT_COLUMNS)
  table = [[row["run"]] + [_cell(row.get("overrides", {}).get(k)) for k in keys]
           + [_cell(row.get(c)) for c in RESULT_COLUMNS] for row in rows]
  os.makedirs(workdir, exist_ok=True)
  csv_path, md_path = os.path.join(workdir, "results.csv"), os.path.join(workdir, "results.md")
  buf = io.StringIO()
  writer = csv.writer(buf)
  writer.writerow(header)
  writer.writerows(table)
  with open(csv_path, "w") as f:
    f.write(buf.getvalue())
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(r) + " |" for r in table]
  with open(md_path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return csv_path, md_path


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------
def commands(config_spec: str, runs: Sequence[Mapping[str, Any]], workdir: str,
             common: Mapping[str, Any] | None = None, python: str = "python") -> list[str]:
  """One `python -m ge2ms_jax.main ...` command line per run (for a cluster scheduler)."""
  out = []
  for i, run in enumerate(runs):
    args = [python, "-m", "ge2ms_jax.main", "--config", config_spec,
            "--workdir", os.path.join(workdir, run_name(i, run))]
    for k, v in {**(common or {}), **run}.items():
      text = v.text if isinstance(v, config_utils.CliValue) else format_value(v)
      args.append(f"--config.{k}={text}")
    out.append(" ".join(shlex.quote(a) for a in args))
  return out


def _default_train(config, workdir) -> dict[str, Any]:
  from ge2ms_jax import train  # pylint: disable=g-import-not-at-top
  train.train_and_evaluate(config, workdir)
  return read_result(workdir) or {}


def run_sweep(config_spec: str, runs: Sequence[Mapping[str, Any]], workdir: str, *,
              common: Mapping[str, Any] | None = None, collect_only: bool = False,
              train_fn: Callable[[ml_collections.ConfigDict, str], Mapping[str, Any]] | None = None
              ) -> list[dict[str, Any]]:
  """Runs every run in turn (skipping finished ones) and writes the results tables.

  Args:
    config_spec: the experiment, `path.py[:arg]`.
    runs: override dicts (from `get_sweep`).
    workdir: the sweep's directory; run `i` uses `<workdir>/<run_name(i, run)>`.
    common: overrides applied to every run before its own (the command line's `--config.*`).
    collect_only: do not train; tabulate what the run folders hold.
    train_fn: `(config, run_dir) -> result dict`; default trains with `train.train_and_evaluate`.

  Returns:
    One row per run: `{"run", "overrides", "status", <result fields>}`. A run that raised gets
    status "failed" and its error; the sweep goes on with the next run.
  """
  configs = build_configs(config_spec, runs, common)
  train_fn = train_fn or _default_train
  rows = []
  for i, (run, config) in enumerate(zip(runs, configs)):
    name = run_name(i, run)
    run_dir = os.path.join(workdir, name)
    result = read_result(run_dir)
    if result is None or result.get("status") != "done":
      if collect_only:
        result = result or {"status": "missing"}
      else:
        _log.info("sweep run %d/%d: %s", i + 1, len(runs), name)
        start = time.time()
        try:
          result = dict(train_fn(config, run_dir))
          result.setdefault("status", "done")
        except Exception as e:  # pylint: disable=broad-except
          _log.error("sweep run %s failed:\n%s", name, traceback.format_exc())
          result = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                    "seconds": time.time() - start}
          os.makedirs(run_dir, exist_ok=True)
          with open(os.path.join(run_dir, "result.json"), "w") as f:
            json.dump(result, f, indent=2)
        result.setdefault("seconds", time.time() - start)
    rows.append({"run": name, "overrides": dict(run), **result})
    write_tables(workdir, rows)
  return rows


def main(argv: Sequence[str] | None = None) -> int:
  """Command line; see the module docstring."""
  parser = argparse.ArgumentParser(prog="python -m ge2ms_jax.sweep",
                                   description="Run a sweep of config overrides.")
  parser.add_argument("--sweep", required=True, help="experiments/sweeps/NAME.py[:ARG]")
  parser.add_argument("--config", default=None,
                      help="experiments/NAME.py[:ARG] (default: the sweep file's CONFIG)")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--print_commands", action="store_true",
                      help="print one training command per run instead of running them")
  parser.add_argument("--collect", action="store_true",
                      help="only write the results tables from the run folders")
  args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  try:
    common = config_utils.parse_override_flags(rest)
    runs, config_spec = load_sweep(args.sweep, args.config)
    if not config_spec:
      parser.error(f"{args.sweep} sets no CONFIG; pass --config experiments/NAME.py[:ARG].")
    if args.print_commands:
      build_configs(config_spec, runs, common)  # Fail on bad keys before printing anything.
      print("\n".join(commands(config_spec, runs, args.workdir, common)))
      return 0
    rows = run_sweep(config_spec, runs, args.workdir, common=common, collect_only=args.collect)
  except config_utils.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(open(os.path.join(args.workdir, "results.md")).read())
  return 0 if all(r["status"] == "done" for r in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
