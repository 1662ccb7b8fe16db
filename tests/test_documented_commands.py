"""Every command the documentation shows runs: in its quick form here, or it is listed with why not.

The commands are collected from `README.md`, `docs/*.md`, `benchmarks/README.md` (code blocks and
inline code) and the docstrings of every module under `experiments/` and `ge2ms_jax/`: each
`python -m ge2ms_jax...`, `./scripts/...` and `python benchmarks/...` command, continuation lines
joined and trailing comments cut. Each one is either

- a template (it shows placeholders such as `DIR`, `PATH`, `<name>`, `...` or `[--flag]`),
- named in `NOT_RUN_HERE` with the data or hardware it needs that this machine lacks, or
- run in its quick form (`quick_form`): the same command with a temporary workdir and `runlocal`
  and a few steps for training, `--max_examples` for evaluation, `--print_commands` for sweeps (a
  sweep shown with `runlocal` runs in full), `--quick` for benchmarks.

The default run checks that every command is one of the three, and that every quick form parses
and builds its configs; `-m slow` runs every quick form to exit code 0.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMMAND = re.compile(r"(?:[A-Z][A-Z0-9_]*=\S+ )*(?:python -m ge2ms_jax[\w.]*|\./scripts/[\w.]+\.sh|scripts/[\w.]+\.sh|"
                     r"python benchmarks/[\w<>.]+)(?=\s|$|`)")
PLACEHOLDER = re.compile(r"<\w[\w ]*>|\.\.\.|/path/to/|\[[^\]]*\]|\b(?:DIR|PATH|EXPORT_DIR|NAME|FILE|N|ARG)\b|HOST\d*:")

# Commands shown that cannot run on this machine, with what they need.
NOT_RUN_HERE = {
    "python benchmarks/cifar10_ablation.py --sweep_workdir runs/c10_fast_ablation --epochs 2":
        "the finished runs of the CIFAR-10 ablation sweep (the command above it)",
    "./scripts/test.sh": "the test suite itself (CI runs it)",
    "./scripts/test.sh -m slow": "the slow test suite itself, which includes this test",
    "python -m ge2ms_jax.main": "the command line named in a sentence, without arguments",
    "python -m ge2ms_jax.main --config experiments/fashion_mnist.py:data=fashion_mnist_full "
    "--config.total_epochs=12 --workdir runs/fashion_mnist_full --mode all":
        "the full Fashion-MNIST IDX files (apt-get install dataset-fashion-mnist)",
    "python -m ge2ms_jax.main --config experiments/fashion_mnist.py:variant=tiny,data=fashion_mnist_full "
    "--workdir runs/fm --config.total_epochs=12 --config.model.neuron.base=4 --config.model.neuron.groups=2":
        "the full Fashion-MNIST IDX files",
    "python -m ge2ms_jax.main --config experiments/fashion_mnist.py:data=fashion_mnist_full --workdir "
    "runs/fm_sparse --config.init_from=checkpoints/fashion_mnist_tiny --config.sparsity.weight=5 "
    "--config.total_epochs=1 --config.optax.lr=2e-3 --config.schedule.warmup_steps=50 "
    "--config.data.tune_fraction=0.1 --config.data.eval_split=tune": "the full Fashion-MNIST IDX files",
    "python -m ge2ms_jax.main --config experiments/fashion_mnist.py:data=fashion_mnist_full,sparse "
    "--workdir runs/fm_sparse --mode all": "the full Fashion-MNIST IDX files (and about an hour)",
    "python -m ge2ms_jax.main --config experiments/cifar10.py:variant=tiny,cpu,sparse --workdir runs/c10_sparse "
    "--config.data.source=cifar10-train-jpeg.tar.gz --mode all": "the CIFAR-10 training images as a JPEG archive",
    "python -m ge2ms_jax.main --config experiments/fashion_mnist.py --mode evaluate --checkpoint "
    "checkpoints/fashion_mnist_tiny --eval_data /usr/share/datasets/fashion-mnist":
        "the full Fashion-MNIST IDX files",
    "python -m ge2ms_jax.main --config experiments/cifar10.py:variant=tiny,cpu "
    "--config.data.source=cifar10-train-jpeg.tar.gz --workdir runs/c10_tiny --mode all":
        "the CIFAR-10 training images as a JPEG archive",
    "python -m ge2ms_jax.main --config experiments/cifar10.py:variant=tiny,cpu --workdir runs/c10_tiny "
    "--config.data.source=cifar10-train-jpeg.tar.gz --mode all": "the CIFAR-10 training images as a JPEG archive",
    "python -m ge2ms_jax.main --config experiments/cifar10.py:fast "
    "--config.data.source=cifar10-train-jpeg.tar.gz --workdir runs/c10_fast --mode all":
        "the CIFAR-10 training images as a JPEG archive (and two hours)",
    "python -m ge2ms_jax.main --config experiments/cifar10.py:fast,sparse "
    "--config.data.source=cifar10-train-jpeg.tar.gz --workdir runs/c10_fast_sparse --mode all":
        "the CIFAR-10 training images as a JPEG archive",
    "python -m ge2ms_jax.main --config experiments/cifar10.py:fast --mode evaluate --checkpoint checkpoints/cifar10_fast "
    "--workdir runs/c10_fast_tta --config.evals.tta=flip --config.data.source=cifar10-train-jpeg.tar.gz":
        "the CIFAR-10 training images as a JPEG archive (their held-out images)",
    "python -m ge2ms_jax.main --config experiments/cifar10.py:variant=s --workdir runs/c10 "
    "--config.data.source=cifar10-train-jpeg.tar.gz": "the CIFAR-10 training images as a JPEG archive",
    "GE2MS_DISTRIBUTED=auto python -m ge2ms_jax.main --config experiments/imagenet.py:fsdp=8 --workdir "
    "gs://bucket/runs/b224 --config.data.data_dir=gs://bucket/tfds\"":
        "a TPU pod, a gs:// bucket and ImageNet as ArrayRecord",
    "GE2MS_DISTRIBUTED=auto python -m ge2ms_jax.main --config experiments/imagenet.py --workdir "
    "gs://my-bucket/runs/b224 --config.data.data_dir=gs://my-bucket/tfds\"":
        "a TPU pod, a gs:// bucket and ImageNet as ArrayRecord",
    "GE2MS_DISTRIBUTED=auto python -m ge2ms_jax.main --config experiments/imagenet.py:fsdp=8 --workdir "
    "/shared/runs/b224": "a SLURM cluster of 8 GPU nodes and ImageNet as ArrayRecord",
    "python -m ge2ms_jax.main --config experiments/imagenet.py --workdir gs://bucket/ge2ms_b "
    "--config.data.data_dir=gs://bucket/tensorflow_datasets": "a gs:// bucket and ImageNet as ArrayRecord",
    "python -m ge2ms_jax.data.make_embedded": "the full Fashion-MNIST IDX files; rewrites the packaged subset",
    "python benchmarks/sparsity.py --dataset fashion_mnist --sweep_workdir runs/sparsity_fm":
        "the trained runs of the Fashion-MNIST sparsity sweep (its quick form is "
        "tests/test_benchmarks_smoke.py::test_sparsity_benchmark_quick)",
    "python benchmarks/sparsity.py --dataset fashion_mnist --sweep_workdir runs/sparsity_fm "
    "--other_rows_mode fused": "the trained runs of the Fashion-MNIST sparsity sweep",
    "python benchmarks/sparsity.py --dataset cifar10 --sweep_workdir runs/sparsity_c10 "
    "--config.data.source=cifar10-train-jpeg.tar.gz": "the CIFAR-10 sparsity sweep's runs and images",
    "python benchmarks/sparsity.py --dataset cifar10 --sweep_workdir runs/sparsity_c10 "
    "--other_rows_mode fused --config.data.source=cifar10-train-jpeg.tar.gz":
        "the CIFAR-10 sparsity sweep's runs and images",
    "python benchmarks/sparsity.py --dataset fashion_mnist --sweep_workdir runs/sparsity_fm --other_rows_mode fused "
    "--reference checkpoints/fashion_mnist_tiny_sparse": "the trained runs of the Fashion-MNIST sparsity sweep",
    "python -m ge2ms_jax.main --config experiments/cifar10.py:variant=tiny,cpu,sparse "
    "--config.data.source=cifar10-train-jpeg.tar.gz --workdir runs/c10_sparse --mode all":
        "the CIFAR-10 training images as a JPEG archive",
    "python benchmarks/sparsity.py --dataset cifar10 --sweep_workdir runs/sparsity_c10 --other_rows_mode fused "
    "--config.data.source=cifar10-train-jpeg.tar.gz --reference checkpoints/cifar10_tiny_sparse":
        "the CIFAR-10 sparsity sweep's runs and images",
    "python benchmarks/neurons.py": "PyTorch for its reference rows (the --no-torch form runs here)",
    "python -m ge2ms_jax.main --config experiments/fashion_mnist.py:data=fashion_mnist_full "
    "--config.total_epochs=2 --workdir runs/qann_fm_full_2ep --mode train": "the full Fashion-MNIST IDX files",
    "python -m ge2ms_jax.main --config experiments/stbp_fashion_mnist.py:neuron=lif,T=4,data=fashion_mnist_full,"
    "epochs=2 --workdir runs/stbp_lif4_fm_full_2ep --mode train": "the full Fashion-MNIST IDX files",
    "python benchmarks/peers.py": "PyTorch and SpikingJelly, the benchmarks' own environment "
    "(benchmarks/setup_torch_env.sh)",
    "python benchmarks/peers.py --quick --out /tmp/peers.json": "PyTorch and SpikingJelly; "
    "tests/test_peers.py::test_peers_quick_run runs it where they are installed",
    "python benchmarks/peers.py --rows sj_tiny,ge2ms_tiny --no_curve": "PyTorch and SpikingJelly",
}


@dataclasses.dataclass
class Shown:
  command: str
  places: list[str]


def _docstrings(path: pathlib.Path):
  """(line number, docstring) of the module and of every class and function in `path`."""
  tree = ast.parse(path.read_text())
  for node in [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef,
                                                                      ast.AsyncFunctionDef))]:
    doc = ast.get_docstring(node, clean=False)
    if doc:
      yield (node.body[0].lineno if getattr(node, "body", None) else 1), doc


def _commands_in(text: str, first_line: int, where: str, inline_only: bool):
  """Commands in `text`: whole lines (joined over trailing backslashes), or inline code spans."""
  lines = text.split("\n")
  i = 0
  while i < len(lines):
    line, lineno = lines[i], first_line + i
    while line.rstrip().endswith("\\") and i + 1 < len(lines):
      i += 1
      line = line.rstrip()[:-1] + " " + lines[i].strip()
    i += 1
    pieces = re.findall(r"`([^`]+)`", line) if inline_only else [line]
    for piece in pieces:
      m = COMMAND.search(piece)
      if m:
        command = piece[m.start():]
        command = re.split(r"\s+#", command)[0]  # a trailing comment
        yield " ".join(command.split()), f"{where}:{lineno}"


def shown_commands() -> dict[str, Shown]:
  """Every command shown in the documentation, by its text, with where it is shown."""
  found: dict[str, Shown] = {}

  def add(command, place):
    found.setdefault(command, Shown(command, [])).places.append(place)

  docs = [ROOT / "README.md", ROOT / "benchmarks" / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
  for path in docs:
    rel = str(path.relative_to(ROOT))
    fenced, block, start = False, [], 0
    for n, line in enumerate(path.read_text().split("\n"), 1):
      if line.lstrip().startswith("```"):
        if fenced:
          for command, place in _commands_in("\n".join(block), start, rel, inline_only=False):
            add(command, place)
        fenced, block, start = not fenced, [], n + 1
      elif fenced:
        block.append(line)
      else:
        for command, place in _commands_in(line, n, rel, inline_only=True):
          add(command, place)
  for folder in ("experiments", "ge2ms_jax"):
    for path in sorted((ROOT / folder).rglob("*.py")):
      rel = str(path.relative_to(ROOT))
      for lineno, doc in _docstrings(path):
        for command, place in _commands_in(doc, lineno, rel, inline_only=False):
          add(command, place)
  return found


def is_template(command: str) -> bool:
  """Whether the command shows placeholders instead of values."""
  return bool(PLACEHOLDER.search(command))


def _with_runlocal(spec: str) -> str:
  path, _, arg = spec.partition(":")
  items = [a for a in arg.split(",") if a]
  return f"{path}:{','.join(items + ['runlocal'] if 'runlocal' not in items else items)}"


def quick_form(command: str, tmp: pathlib.Path) -> tuple[list[str], dict[str, str], bool]:
  """The command's quick form: (argv, extra environment, whether it is a full run or only a check).

  Raises:
    ValueError: for a command of a kind this test does not know how to shorten.
  """
  words = shlex.split(command)
  env = {}
  while words and re.fullmatch(r"[A-Z][A-Z0-9_]*=\S*", words[0]):
    key, _, value = words.pop(0).partition("=")
    env[key] = value
  if words[0].endswith("scripts/main.sh"):
    # The main job's schedule warms up over half an epoch; two steps need a warm-up that fits them.
    return (["bash", "scripts/main.sh", *words[1:], "--config.total_steps=2", "--config.schedule.warmup_steps=1",
             "--config.evals.every_steps=0", "--max_examples", "16"], {**env, "WORKDIR": str(tmp / "main")}, True)
  if words[:2] == ["python", "-m"] and words[2] == "ge2ms_jax.main":
    args = words[3:]
    out = [sys.executable, "-m", "ge2ms_jax.main"]
    mode, j = "train", 0
    while j < len(args):
      a = args[j]
      if a == "--config":
        out += [a, _with_runlocal(args[j + 1])]
        j += 2
        continue
      if a == "--workdir":
        out += [a, str(tmp / "workdir")]
        j += 2
        continue
      if a == "--mode":
        mode = args[j + 1]
      out.append(a)
      j += 1
    if mode in ("train", "all"):
      out += ["--config.total_steps=2", "--config.evals.every_steps=0", "--config.ckpt.every_steps=0"]
    if mode in ("all", "evaluate", "energy"):
      out += ["--max_examples", "16"]
    return out, env, True
  if words[:3] == ["python", "-m", "ge2ms_jax.sweep"]:
    args = list(words[3:])
    args[args.index("--workdir") + 1] = str(tmp / "sweep")
    spec = args[args.index("--sweep") + 1]
    full = "runlocal" in spec.partition(":")[2].split(",")
    return [sys.executable, "-m", "ge2ms_jax.sweep", *args] + ([] if full else ["--print_commands"]), env, full
  if words[0] == "python" and words[1].startswith("benchmarks/"):
    args = [a for a in words[2:]]
    if "--out" in args:
      k = args.index("--out")
      del args[k:k + 2]
    if "--quick" not in args:
      args.append("--quick")
    return [sys.executable, words[1], *args, "--out", str(tmp / "bench.json")], env, True
  raise ValueError(f"no quick form for {command!r}")


SHOWN = shown_commands()
RUN_HERE = sorted(c for c in SHOWN if not is_template(c) and c not in NOT_RUN_HERE)


def _ids(commands):
  """Test ids that `-k` can select: the command with separators made underscores."""
  return [re.sub(r"[^\w.=-]+", "_", c) for c in commands]


def test_every_documented_command_is_run_or_listed(tmp_path):
  assert len(SHOWN) > 30  # the collector finds the documentation's commands
  assert "./scripts/main.sh" in SHOWN and "./scripts/test.sh" in SHOWN
  unknown = []
  for command in RUN_HERE:
    try:
      quick_form(command, tmp_path)
    except (ValueError, IndexError) as e:
      unknown.append(f"{command}  ({', '.join(SHOWN[command].places)}): {e}")
  assert not unknown, "documented commands neither run nor listed in NOT_RUN_HERE:\n" + "\n".join(unknown)
  # The list holds only commands the documentation shows, so it cannot hide a removed one.
  stale = sorted(set(NOT_RUN_HERE) - set(SHOWN))
  assert not stale, f"NOT_RUN_HERE names commands no document shows: {stale}"


MAIN = [c for c in RUN_HERE if c.startswith(("python -m ge2ms_jax.main", "./scripts/main.sh"))]
# What ./scripts/main.sh runs, its arguments appended (checked against the script's text below).
MAIN_SH = "python -m ge2ms_jax.main --config experiments/fashion_mnist.py --workdir workdirs/fashion_mnist --mode all"


def _as_main(command: str) -> str:
  if command.startswith("./scripts/main.sh"):
    return MAIN_SH + command[len("./scripts/main.sh"):]
  return command
SWEEPS = [c for c in RUN_HERE if c.startswith("python -m ge2ms_jax.sweep")]


@pytest.mark.parametrize("command", MAIN, ids=_ids(MAIN))
def test_documented_main_commands_parse_and_build_their_config(command, tmp_path):
  from ge2ms_jax import config_utils, main
  script = " ".join((ROOT / "scripts" / "main.sh").read_text().replace("\\\n", " ").split())
  assert "python -m ge2ms_jax.main --config experiments/fashion_mnist.py" in script and "--mode all" in script
  command = _as_main(command)
  argv, _, _ = quick_form(command, tmp_path)
  args, overrides = main.parse_args(argv[3:])
  config = config_utils.load_config(args.config, overrides)
  # As shown (without the quick form's changes) it builds too.
  shown_args, shown_overrides = main.parse_args(shlex.split(command)[3:])
  config_utils.load_config(shown_args.config, shown_overrides)
  assert config.total_steps >= 0


@pytest.mark.parametrize("command", SWEEPS, ids=_ids(SWEEPS))
def test_documented_sweeps_build_every_run(command, tmp_path):
  from ge2ms_jax import config_utils, sweep
  words = shlex.split(command)
  spec = words[words.index("--sweep") + 1]
  config = words[words.index("--config") + 1] if "--config" in words else None
  runs, config_spec = sweep.load_sweep(spec, config)
  rest = [w for w in words if w.startswith("--config.")]
  configs = sweep.build_configs(config_spec, runs, config_utils.parse_override_flags(rest))
  assert len(configs) == len(runs) >= 1


@pytest.mark.slow
@pytest.mark.parametrize("command", RUN_HERE, ids=_ids(RUN_HERE))
def test_documented_command_runs_in_its_quick_form(command, tmp_path):
  argv, env, _ = quick_form(command, tmp_path)
  done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=1500,
                        env=dict(os.environ, JAX_PLATFORMS="cpu", **env))
  assert done.returncode == 0, (f"{command}\nran as: {shlex.join(argv)}\n"
                                f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
