"""Config strings, typed overrides with close-match errors, and the experiment files."""

import ast
import glob
import json
import os

import ml_collections
import pytest

from ge2ms_jax import config_utils
from ge2ms_jax.config_utils import CliValue, ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.name = "run"
  c.flag = False
  c.mesh = [("data", -1), ("fsdp", 1)]
  c.opt = ml_collections.ConfigDict({"lr": 1e-3, "wd": 0.05, "steps": 10, "kind": None})
  c.model = ml_collections.ConfigDict({"neuron": {"base": 2, "groups": 4}, "window_sizes": (2, 4, 0)})
  return c


def test_parse_arg_types_and_bare_flags():
  arg = config_utils.parse_arg("variant=s,runlocal,T=8,lr=3e-4", variant="tiny", runlocal=False,
                               T=4, lr=1e-3)
  assert (arg.variant, arg.runlocal, arg.T, arg.lr) == ("s", True, 8, 3e-4)
  assert config_utils.parse_arg("", variant="tiny").variant == "tiny"
  assert config_utils.parse_arg(None, T=4).T == 4


def test_parse_arg_unknown_key_names_close_matches():
  with pytest.raises(ConfigError, match=r"unknown config-string key 'varient'.*close matches: variant"):
    config_utils.parse_arg("varient=s", variant="tiny", runlocal=False)
  with pytest.raises(ConfigError, match=r"'T' .*expects an int.*got 'four'"):
    config_utils.parse_arg("T=four", T=4)
  with pytest.raises(ConfigError, match=r"needs a value"):
    config_utils.parse_arg("T", T=4)
  assert config_utils.parse_arg("extra=1", lazy=True).extra == "1"


@pytest.mark.parametrize("key,text,expected", [
    ("seed", "7", 7), ("seed", "1e3", 1000), ("opt.lr", "3e-4", 3e-4), ("opt.lr", "1", 1.0),
    ("flag", "true", True), ("flag", "0", False), ("name", "abc", "abc"), ("name", "'a b'", "a b"),
    ("mesh", "[('data', 4), ('fsdp', 2)]", [("data", 4), ("fsdp", 2)]),
    ("model.window_sizes", "[2, 2]", (2, 2)), ("opt.kind", "sgd", "sgd"), ("opt.kind", "3", 3),
    ("config.opt.steps", "12", 12),
])
def test_cli_overrides_parse_by_the_type_they_replace(key, text, expected):
  c = config_utils.apply_overrides(_config(), {key: CliValue(text)})
  value = config_utils.lookup(c, key)
  assert value == expected and type(value) is type(expected)


def test_python_overrides_are_type_checked():
  c = config_utils.apply_overrides(_config(), {"opt.lr": 2, "model.neuron.groups": 2, "opt.kind": "x"})
  assert c.opt.lr == 2.0 and isinstance(c.opt.lr, float) and c.model.neuron.groups == 2
  with pytest.raises(ConfigError, match=r"'model.neuron.groups' expects a value of type int .* got 2.5"):
    config_utils.apply_overrides(_config(), {"model.neuron.groups": 2.5})
  with pytest.raises(ConfigError, match=r"'flag' expects a value of type bool"):
    config_utils.apply_overrides(_config(), {"flag": 1})
  with pytest.raises(ConfigError, match=r"'seed' expects an int .*got 'x'"):
    config_utils.apply_overrides(_config(), {"seed": CliValue("x")})
  with pytest.raises(ConfigError, match=r"'model.neuron' is a group of settings.*model.neuron.base"):
    config_utils.apply_overrides(_config(), {"model.neuron": CliValue("3")})


@pytest.mark.parametrize("key,match", [
    ("model.neuron.grups", "model.neuron.groups"),
    ("opt.lrr", "opt.lr"),
    ("modle.window_sizes", "model.window_sizes"),
    ("neuron.groups", "model.neuron.groups"),
])
def test_unknown_keys_name_close_matches(key, match):
  with pytest.raises(ConfigError) as info:
    config_utils.apply_overrides(_config(), {key: CliValue("1")})
  message = str(info.value)
  assert f"unknown config key {key!r}" in message and match in message


def test_unknown_key_without_close_match_lists_top_level_keys():
  with pytest.raises(ConfigError, match=r"unknown config key 'zzz'; top-level keys are: flag, mesh"):
    config_utils.apply_overrides(_config(), {"zzz": 1})


def test_parse_override_flags():
  flags = config_utils.parse_override_flags(["--config.opt.lr=1e-3", "--config.seed", "3"])
  assert {k: v.text for k, v in flags.items()} == {"opt.lr": "1e-3", "seed": "3"}
  with pytest.raises(ConfigError, match="unrecognised argument '--lr=3'"):
    config_utils.parse_override_flags(["--lr=3"])
  with pytest.raises(ConfigError, match="has no value"):
    config_utils.parse_override_flags(["--config.seed"])


def test_load_config_from_a_file(tmp_path):
  (tmp_path / "exp.py").write_text(
      "import ml_collections\n"
      "from ge2ms_jax import config_utils\n"
      "def get_config(arg):\n"
      "  arg = config_utils.parse_arg(arg, width=8, runlocal=False)\n"
      "  return ml_collections.ConfigDict({'width': arg.width * (1 if not arg.runlocal else 2),\n"
      "                                    'lr': 0.1})\n")
  c = config_utils.load_config(f"{tmp_path}/exp.py:width=4,runlocal", {"lr": CliValue("0.5")})
  assert (c.width, c.lr) == (8, 0.5)
  with pytest.raises(AttributeError):
    c.new_key = 1  # Locked: no accidental new fields.
  with pytest.raises(ConfigError, match="not found"):
    config_utils.load_config("nope/missing.py")
  with pytest.raises(ConfigError, match="must name a Python file"):
    config_utils.load_config("experiments/fashion_mnist")


def test_json_round_trip_and_diff():
  c = _config()
  flat = config_utils.flatten(json.loads(config_utils.to_json(c)))
  assert flat["model.neuron.base"] == 2 and flat["opt.lr"] == 1e-3
  other = dict(flat, **{"opt.lr": 2e-3})
  assert config_utils.diff(flat, other) == {"opt.lr": (1e-3, 2e-3)}


EXPERIMENTS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "experiments", "*.py")))


@pytest.mark.parametrize("path", EXPERIMENTS)
@pytest.mark.parametrize("arg", ["", "runlocal"])
def test_experiments_load_and_validate(path, arg):
  from ge2ms_jax import data
  from ge2ms_jax import model as models
  from ge2ms_jax.data import sources
  config = config_utils.load_config(f"{path}:{arg}")
  models.validate(config.model)
  sources.data_settings(config.data)   # The input pipeline accepts the data and input sections.
  sources.input_settings(config.input)
  assert config.data.name in data.DATASETS
  assert isinstance(config.pp_train, str) and isinstance(config.pp_eval, str)
  assert config.batch_size > 0 and config.evals.batch_size > 0
  if arg == "runlocal":
    assert 0 < config.total_steps <= 50 and config.batch_size <= 64


def test_the_default_experiments_exist():
  names = {os.path.basename(p) for p in EXPERIMENTS}
  assert {"fashion_mnist.py", "cifar10.py", "cifar100.py", "imagenet.py",
          "stbp_fashion_mnist.py", "stbp_cifar10.py"} <= names


def test_stbp_experiments_set_neurons_and_time_steps():
  c = config_utils.load_config("experiments/stbp_fashion_mnist.py:neuron=if,T=8")
  assert (c.model.neuron_kind, c.model.time_steps) == ("if", 8)
  q = config_utils.load_config("experiments/fashion_mnist.py")
  assert q.model.neuron_kind == "expg"
  with pytest.raises(ConfigError, match="'if' or 'lif'"):
    config_utils.load_config("experiments/stbp_cifar10.py:neuron=expg")


# Config strings of every recipe the README or a sweep uses, beside each experiment's default.
RECIPES = [f"{p}:" for p in EXPERIMENTS] + [
    "experiments/fashion_mnist.py:spike_aware", "experiments/fashion_mnist.py:data=fashion_mnist_full,sparse",
    "experiments/cifar10.py:variant=tiny,cpu", "experiments/cifar10.py:variant=tiny,cpu,sparse",
    "experiments/cifar10.py:fast", "experiments/cifar10.py:fast,epochs=4", "experiments/cifar100.py:runlocal",
    "experiments/stbp_cifar10.py:neuron=if,T=2", "experiments/imagenet.py:runlocal"]
_HEAVY = ("jax", "flax", "optax", "orbax", "grain", "tensorflow_datasets", "tensorflow")


def test_building_any_config_imports_no_training_library():
  """Reading `--config` (and each sweep's run list) costs a fresh interpreter no jax/flax/tfds import."""
  import subprocess
  import sys
  sweeps = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "experiments", "sweeps", "*.py")))
  script = (
      "import sys\n"
      "from ge2ms_jax import config_utils\n"
      f"for spec in {RECIPES!r}:\n"
      "  config_utils.load_config(spec)\n"
      f"for path in {sweeps!r}:\n"
      "  config_utils.load_module(path).get_sweep(None)\n"
      f"heavy = set({_HEAVY!r})\n"
      "print(sorted(set(m.split('.')[0] for m in sys.modules) & heavy))\n")
  out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_no_experiment_loads_another_by_path():
  for path in EXPERIMENTS + sorted(glob.glob(os.path.join(ROOT, "experiments", "sweeps", "*.py"))):
    text = open(os.path.join(ROOT, path)).read()
    assert "load_module" not in text and "__file__" not in text, path
    # From the syntax tree, so a docstring line that starts with "from" is not read as an import.
    imports = set()
    for node in ast.walk(ast.parse(text)):
      if isinstance(node, ast.ImportFrom):
        imports |= {f"{node.module}.{a.name}" for a in node.names}
      elif isinstance(node, ast.Import):
        imports |= {a.name for a in node.names}
    # The config package, and the sweep files' run-list helpers (ge2ms_jax/sweep.py imports no jax).
    allowed = {"ge2ms_jax.configs.common", "ge2ms_jax.configs.cifar", "ge2ms_jax.configs.fashion_mnist",
               "ge2ms_jax.sweep", "ml_collections"}
    assert imports <= allowed, (path, imports - allowed)
