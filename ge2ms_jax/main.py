"""Command line: train, evaluate, convert, measure energy, verify, plan spike codes, export, report, or run it all.

    python -m ge2ms_jax.main --config experiments/fashion_mnist.py:runlocal --workdir /tmp/fm
    python -m ge2ms_jax.main --config experiments/cifar10.py:variant=s --workdir gs://.../c10 \\
        --config.optax.lr=2e-3 --config.model.neuron.groups=2
    python -m ge2ms_jax.main --config ... --workdir DIR --mode evaluate [--checkpoint DIR/checkpoints/1200]

`--config` names a Python file with `get_config(arg)` and, after a colon, its config string.
`--config.key=value` flags override fields; an unknown key or a value of the wrong type is an error
naming the key (and the closest existing keys). Running `train` again on the same `--workdir`
resumes from its newest checkpoint. A run that writes into a workdir (train, all, convert, export)
holds `<workdir>/lock.json`; a second such launch on it stops with one line and exit code 2 while the
first runs on (`--force_unlock` takes over a lock whose holder is known to be dead; a holder that is
gone is detected and taken over without it). For several processes (one per host), pass
`--coordinator_address HOST:PORT --num_processes N --process_id I`, or set `GE2MS_COORDINATOR`,
`GE2MS_NUM_PROCESSES`, `GE2MS_PROCESS_ID` (or `GE2MS_DISTRIBUTED=auto` on Cloud TPU / SLURM).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Callable, Sequence

import ml_collections

from ge2ms_jax import config_utils

ModeFn = Callable[[ml_collections.ConfigDict, str, argparse.Namespace], int]
MODES: dict[str, ModeFn] = {}


def register_mode(name: str) -> Callable[[ModeFn], ModeFn]:
  """Registers `fn(config, workdir, args) -> exit code` as `--mode name`."""
  def wrap(fn: ModeFn) -> ModeFn:
    MODES[name] = fn
    return fn
  return wrap


@register_mode("train")
def _train(config, workdir, args) -> int:
  from ge2ms_jax import train  # pylint: disable=g-import-not-at-top
  if workdir is None:
    raise SystemExit("error: --mode train needs --workdir.")
  result = train.train_and_evaluate(config, workdir)
  return 0 if result.status in ("done", "preempted") else 1


def _load(config, workdir, args):
  """The model to read: `--checkpoint` (an export, a workdir, an Orbax checkpoint or step folder;
  `config.model` becomes the architecture recorded with it) or the workdir's newest checkpoint."""
  from ge2ms_jax import loading  # pylint: disable=g-import-not-at-top
  if workdir is None and args.checkpoint is None:
    raise SystemExit(f"error: --mode {args.mode} needs --workdir (its newest checkpoint) or --checkpoint PATH.")
  if args.checkpoint is not None:
    return loading.load(config, args.checkpoint)
  return loading.load(config, workdir=workdir)


def _export_dir(workdir, args) -> str:
  if args.export_dir:
    return args.export_dir
  if workdir is None:
    raise SystemExit("error: --mode export needs --export_dir or --workdir (it writes <workdir>/export).")
  return os.path.join(workdir, "export")


def _write_export(config, loaded, directory, args):
  from ge2ms_jax import export  # pylint: disable=g-import-not-at-top
  return export.save(directory, loaded.variables, step=loaded.step, model_config=config.model,
                     notes=dict(config=args.config))


@register_mode("export")
def _export(config, workdir, args) -> int:
  """Writes the QANN variables of a checkpoint (no optimizer state) as a small export directory."""
  from ge2ms_jax import export  # pylint: disable=g-import-not-at-top
  loaded = _load(config, workdir, args)
  out = _write_export(config, loaded, _export_dir(workdir, args), args)
  print(f"exported step {loaded.step} to {out} ({(out / export.VARIABLES).stat().st_size / 2**20:.2f} MiB)")
  return 0


def _first_batch(config, args, batch_size: int):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ge2ms_jax import data  # pylint: disable=g-import-not-at-top
  it = data.build_iterator(config, split=config.evals.get("split") or config.data.eval_split,
                           global_batch_size=batch_size, train=False, num_epochs=1, eval_data=args.eval_data)
  try:
    return jnp.asarray(next(iter(it))["image"])
  finally:
    getattr(it, "close", lambda: None)()


@register_mode("evaluate")
def _evaluate(config, workdir, args) -> int:
  """QANN and converted SNN on the eval split (or --eval_data); the last line printed is JSON."""
  from ge2ms_jax import evaluation  # pylint: disable=g-import-not-at-top
  loaded = _load(config, workdir, args)
  result = evaluation.evaluate_snn(config, loaded.variables, eval_data=args.eval_data,
                                   max_examples=args.max_examples, mode=args.snn_mode)
  metrics = {"checkpoint_step": loaded.step, **result.metrics}
  if workdir is not None:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, f"evaluate_{loaded.step}.json"), "w") as f:
      json.dump(metrics, f, indent=1)
  print(evaluation.summary_line(metrics))
  return 0


@register_mode("convert")
def _convert(config, workdir, args) -> int:
  """Converts the newest (or --checkpoint) QANN and writes `<workdir>/snn/` (params + model config)."""
  import flax.serialization  # pylint: disable=g-import-not-at-top
  from ge2ms_jax import conversion  # pylint: disable=g-import-not-at-top
  loaded = _load(config, workdir, args)
  converted = conversion.convert(loaded.variables, config.model)
  out = os.path.join(workdir or os.path.dirname(os.path.abspath(args.checkpoint)), "snn")
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "snn_params.msgpack"), "wb") as f:
    f.write(flax.serialization.to_bytes(converted))
  with open(os.path.join(out, "model_config.json"), "w") as f:
    f.write(config.model.to_json(indent=1))
  print(f"converted step {loaded.step}: {len(conversion.neuron_sites(converted))} neuron sites, BatchNorm "
        f"folded; wrote {out}")
  return 0


@register_mode("energy")
def _energy(config, workdir, args) -> int:
  """Per-layer energy of the SNN on the eval split: table, JSON and PNG in `<workdir>/energy/`."""
  from ge2ms_jax import evaluation  # pylint: disable=g-import-not-at-top
  loaded = _load(config, workdir, args)
  result = evaluation.evaluate_snn(config, loaded.variables, eval_data=args.eval_data,
                                   max_examples=args.max_examples or 512, mode=args.snn_mode)
  print(result.energy.format_table())
  if workdir is not None:
    out = os.path.join(workdir, "energy")
    os.makedirs(out, exist_ok=True)
    result.energy.save_json(os.path.join(out, f"energy_{loaded.step}.json"))
    result.energy.plot(os.path.join(out, f"energy_{loaded.step}.png"))
  print(evaluation.summary_line(result.metrics))
  return 0


def _converted_and_batch(config, workdir, args, batch_size: int):
  """The loaded QANN variables, their converted SNN variables, and one eval batch `[B, H, W, C]`."""
  from ge2ms_jax import conversion  # pylint: disable=g-import-not-at-top
  variables = _load(config, workdir, args).variables
  return variables, conversion.convert(variables, config.model), _first_batch(config, args, batch_size)


@register_mode("verify")
def _verify(config, workdir, args) -> int:
  """QANN and SNN side by side on one eval batch: the max difference at every neuron site."""
  from ge2ms_jax import snn  # pylint: disable=g-import-not-at-top
  variables, converted, images = _converted_and_batch(config, workdir, args, args.max_examples or 16)
  rows = snn.verify(variables, converted, images, config=config.model, mode=args.snn_mode)
  print(snn.format_verify(rows))
  return 0


@register_mode("plan")
def _plan(config, workdir, args) -> int:
  """Chooses per-site (base, groups) at fixed levels from measured spikes; prints the override."""
  from ge2ms_jax import planning  # pylint: disable=g-import-not-at-top
  _, converted, images = _converted_and_batch(config, workdir, args, args.max_examples or 64)
  plan = planning.plan_codes(config.model, converted, images, max_steps=args.max_steps)
  print(f"energy before {plan.before.snn_mj:.6f} mJ/image, after {plan.after.snn_mj:.6f} mJ/image "
        f"({plan.after.model.label}; SOPs {plan.before.sops:.4g} -> {plan.after.sops:.4g}, spikes/neuron "
        f"{plan.before.spikes_per_neuron:.4f} -> {plan.after.spikes_per_neuron:.4f}; {plan.after.snn_check})")
  print(f"--config.model.neuron_overrides='{plan.overrides}'")
  return 0


@register_mode("report")
def _report(config, workdir, args) -> int:
  """Writes `<workdir>/report/` for the newest (or --checkpoint) model without training: what the
  main job writes after its training, e.g. to refresh an export's report with the current accounting."""
  from ge2ms_jax import report  # pylint: disable=g-import-not-at-top
  if workdir is None:
    raise SystemExit("error: --mode report needs --workdir (it writes <workdir>/report/).")
  loaded = _load(config, workdir, args)
  summary = report.write_report(config, workdir, loaded, max_examples=args.max_examples, mode=args.snn_mode,
                                checkpoint=args.checkpoint)
  print(report.format_summary(summary))
  return 0


@register_mode("all")
def _all(config, workdir, args) -> int:
  """The main job: train (or resume), convert, simulate the SNN, evaluate, and write the report."""
  import jax  # pylint: disable=g-import-not-at-top
  from ge2ms_jax import loading, report, train  # pylint: disable=g-import-not-at-top
  if workdir is None:
    raise SystemExit("error: --mode all needs --workdir.")
  result = train.train_and_evaluate(config, workdir)
  if result.status != "done":
    print(f"training stopped ({result.status}) at step {result.step}; run the same command to resume.")
    return 1
  if jax.process_index() != 0:
    return 0
  loaded = loading.load(config, workdir=workdir)
  exported = _write_export(config, loaded, os.path.join(workdir, "export"), args)
  summary = report.write_report(config, workdir, loaded, max_examples=args.max_examples, mode=args.snn_mode)
  print(report.format_summary(summary))
  print(f"export                {exported}  (QANN variables only; --checkpoint accepts it)")
  return 0


def _writes_workdir(args: argparse.Namespace) -> bool:
  """Whether the mode writes checkpoints, an export, a conversion or a report into `--workdir` (and so
  holds its lock). evaluate/energy/verify/plan only read checkpoints and write their own result
  files, so they run beside a training run on the same workdir."""
  if args.workdir is None:
    return False
  if args.mode == "export":
    return args.export_dir is None
  return args.mode in ("train", "all", "convert", "report")


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, dict]:
  """Splits argv into the known flags and the `--config.key=value` overrides."""
  parser = argparse.ArgumentParser(
      prog="python -m ge2ms_jax.main", description=__doc__.split("\n\n")[0],
      epilog="Override config fields with --config.KEY=VALUE (e.g. --config.optax.lr=1e-3).")
  parser.add_argument("--config", required=True, help="experiments/NAME.py[:ARG]")
  parser.add_argument("--workdir", default=None,
                      help="checkpoints, metrics and reports go here (needed to train; the other "
                           "modes can read --checkpoint instead)")
  parser.add_argument("--mode", default="train", choices=sorted(MODES))
  parser.add_argument("--checkpoint", default=None,
                      help="evaluate/convert/energy/verify/plan/export: a checkpoint dir, step folder "
                           "or export directory (default: the workdir's newest checkpoint)")
  parser.add_argument("--export_dir", default=None,
                      help="export: where to write (default <workdir>/export)")
  parser.add_argument("--eval_data", default=None,
                      help="evaluate/energy/verify on this dataset instead of the eval split: an "
                           "ImageFolder directory or .tar.gz, or a directory of Fashion-MNIST IDX files")
  parser.add_argument("--max_examples", type=int, default=None,
                      help="evaluate/energy: stop after this many examples; verify/plan: batch size")
  parser.add_argument("--snn_mode", default="spike", choices=("spike", "fused"),
                      help="the SNN simulation: spike = simulated spike by spike, multiplication-free "
                           "checked (default); fused = weighted spike sums, faster, not simulated spike "
                           "by spike, not checked")
  parser.add_argument("--max_steps", type=int, default=None,
                      help="plan: the most time steps a neuron site may use")
  parser.add_argument("--force_unlock", action="store_true",
                      help="take over the workdir's lock even though its holder looks alive (only "
                           "when that run is known to be dead)")
  parser.add_argument("--coordinator_address", default=None)
  parser.add_argument("--num_processes", type=int, default=None)
  parser.add_argument("--process_id", type=int, default=None)
  parser.add_argument("--log_level", default="INFO")
  args, rest = parser.parse_known_args(argv)
  try:
    overrides = config_utils.parse_override_flags(rest)
  except config_utils.ConfigError as e:
    parser.error(str(e))
  return args, overrides


# Errors this package raises for bad input (a config value, a path, data, a checkpoint that does not
# fit): one line and exit code 2, when the package's own check raised them (see `_raised_here`).
USAGE_ERRORS = (ValueError, TypeError, FileNotFoundError, NotADirectoryError, IsADirectoryError)


def _raised_here(exc: BaseException) -> bool:
  """Whether `exc` was raised by this package's own code (its innermost frame is in ge2ms_jax/): a
  message written for the user, not a fault inside a library, which keeps its traceback."""
  tb, last = exc.__traceback__, None
  while tb is not None:
    last, tb = tb, tb.tb_next
  package = os.path.dirname(os.path.abspath(__file__))
  return last is not None and os.path.abspath(last.tb_frame.f_code.co_filename).startswith(package + os.sep)


def _error(e: BaseException, code: int) -> int:
  """Prints `error: <message>` as one line on stderr (the traceback only at DEBUG); returns `code`."""
  logging.getLogger(__name__).debug("failed", exc_info=e)
  print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
  return code


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command line; returns the exit code: 0, 2 for bad input (a config value, a path, data,
  a checkpoint that does not fit, a workdir in use), 1 for a run that failed (non-finite values, a
  corrupt checkpoint, an unwritable workdir). Either error ends in one `error: ...` line on stderr."""
  args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
  from ge2ms_jax import sharding  # pylint: disable=g-import-not-at-top
  sharding.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
  import jax  # pylint: disable=g-import-not-at-top
  level = args.log_level.upper() if jax.process_index() == 0 else "WARNING"
  logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  for noisy in ("absl", "orbax", "jax._src"):
    logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
  try:
    config = config_utils.load_config(args.config, overrides)
  except config_utils.ConfigError as e:
    return _error(e, 2)
  from ge2ms_jax import checkpoint, export, train, workdir_lock  # pylint: disable=g-import-not-at-top
  # Faults the run already explains in full: a message and an exit code, not a traceback. A run that
  # failed (1) and input that does not fit (2).
  failed = (checkpoint.WorkdirError, checkpoint.CheckpointCorruptError, train.NonFiniteError)
  misfit = (checkpoint.CheckpointMismatchError, export.ExportError)
  try:
    if _writes_workdir(args):
      with workdir_lock.hold(args.workdir, config, force=args.force_unlock):
        return MODES[args.mode](config, args.workdir, args)
    return MODES[args.mode](config, args.workdir, args)
  except workdir_lock.WorkdirInUseError as e:
    return _error(e, 2)
  except failed as e:
    return _error(e, 1)
  except misfit as e:
    return _error(e, 2)
  except USAGE_ERRORS as e:
    if not _raised_here(e):
      raise
    return _error(e, 2)


if __name__ == "__main__":
  sys.exit(main())
