"""Bad-input fuzzing (hypothesis): config overrides, model inputs (shapes, dtypes), neuron parameters,
attention window plans and dataset folders either work or end in a clear error.

A clear error is a ValueError / TypeError / FileNotFoundError (ConfigError is a ValueError) raised by
this package's own code (the innermost traceback frame is in `ge2ms_jax/`) with a message that says
something; a KeyError, IndexError, ZeroDivisionError, an error from inside JAX/XLA/NumPy/PIL, or a
bare message is a failure. Every case is counted by target and outcome; run with `-s` to see the
counts (`pytest -s -m slow tests/test_reliability_fuzz.py` for the long runs).
"""

from __future__ import annotations

import collections
import io
import math
import os
import pathlib
import random
import string
import tarfile
import traceback

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

import ge2ms_jax
from ge2ms_jax import attention
from ge2ms_jax import config_utils
from ge2ms_jax import data
from ge2ms_jax import model as models
from ge2ms_jax import neurons
from ge2ms_jax import optim
from ge2ms_jax import train

PACKAGE_DIR = os.path.dirname(os.path.abspath(ge2ms_jax.__file__))
CLEAR = (ValueError, TypeError, FileNotFoundError, NotADirectoryError)
COUNTS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
FAST = hypothesis.settings(max_examples=12)
# The slow runs: 250 cases per target (a fifth for folders), the same ones every time; set
# GE2MS_FUZZ_EXAMPLES=N for more and GE2MS_FUZZ_RANDOM=1 for new random cases on every run.
SLOW_EXAMPLES = int(os.environ.get("GE2MS_FUZZ_EXAMPLES", "250"))
_RANDOM = os.environ.get("GE2MS_FUZZ_RANDOM", "") not in ("", "0")
_SLOW_DRAWS = dict(derandomize=not _RANDOM, **({"database": None} if _RANDOM else {}))
SLOW = hypothesis.settings(max_examples=SLOW_EXAMPLES, **_SLOW_DRAWS)


def attempt(target: str, fn, *args, **kwargs):
  """Runs `fn`; records "ok" or the clear error's type; fails on an unexplained exception."""
  try:
    result = fn(*args, **kwargs)
  except CLEAR as e:
    frames = traceback.extract_tb(e.__traceback__)
    where = frames[-1].filename if frames else ""
    assert where.startswith(PACKAGE_DIR), (
        f"{target}: {type(e).__name__} raised outside the package (at {where}), so no one "
        f"explained it: {e}\n" + "".join(traceback.format_exception(e)))
    assert len(str(e)) >= 20, f"{target}: a bare error message: {type(e).__name__}({e!r})"
    COUNTS[target][type(e).__name__] += 1
    return None
  COUNTS[target]["ok"] += 1
  return result


@pytest.fixture(scope="module", autouse=True)
def report_counts():
  yield
  for target, counter in sorted(COUNTS.items()):
    print(f"\nfuzz {target}: {sum(counter.values())} cases: {dict(counter)}")


# ---------------------------------------------------------------------------------------------
# Config overrides (as typed on the command line), then the checks a run starts with
# ---------------------------------------------------------------------------------------------
BASE = config_utils.load_config("experiments/fashion_mnist.py:runlocal")
KEYS = config_utils.all_keys(BASE)


def _typo(key: str, rng: random.Random) -> str:
  i = rng.randrange(len(key))
  return key[:i] + rng.choice(string.ascii_lowercase + "._") + key[i + 1:]


VALUE_TEXTS = st.one_of(
    st.integers(-3, 3000).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["true", "false", "", "none", "None", "()", "[]", "(0,)", "(2, 4, 0)",
                     "(1, 1, 1)", "('conv', 'attn')", "(8, 16)", "(1,)", "[('data', -1)]",
                     "bfloat16", "float16", "int8", "scan", "closed", "skip", "global",
                     "stem=2,8", "attn_q$=4,0", "=", "[", "1e-3", "-1", "0", "nan", "inf",
                     "{'a': 1}", "b'x'", "2**70", "(2, -4, 0)", "('global', 3)"]),
    st.text(max_size=12))


def _model_and_trainer_checks(config):
  """What a run checks before it trains, without compiling: model, optimizer, schedule, policy."""
  net = models.build(config.model)
  size, ch = config.model.image_size, config.model.in_channels
  jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, size, size, ch)), train=False))
  total, per_epoch = train.run_length(config, None) if config.total_steps > 0 else (100, 10.0)
  schedule = optim.make_schedule(config, max(1, total // max(1, config.optax.grad_accum_steps)),
                                 per_epoch)
  optim.make_optimizer(config, schedule)
  train.nan_policy(config)


def _plausible(current, rng: random.Random) -> str:
  """A command-line text of the current value's type, near it (often valid, sometimes zero/negative)."""
  if isinstance(current, bool):
    return rng.choice(["true", "false"])
  if isinstance(current, int):
    return str(rng.choice([0, 1, -1, current, 2 * current + 1, current // 2]))
  if isinstance(current, float):
    return repr(rng.choice([0.0, -1.0, current, current * 10, current / 10, 1.0]))
  if isinstance(current, (tuple, list)) and current:
    items = list(current)
    i = rng.randrange(len(items))
    if isinstance(items[i], int) and not isinstance(items[i], bool):
      items[i] = rng.choice([0, 1, items[i] * 2, -1])
    elif rng.random() < 0.5:
      items = items[:-1]
    return repr(type(current)(items))
  return repr(current)


def _override_case(seed, n, value_texts):
  rng = random.Random(seed)
  overrides = {}
  for text in value_texts[:n]:
    key = rng.choice(KEYS)
    if rng.random() < 0.6:
      text = _plausible(config_utils.lookup(BASE, key), rng)
    if rng.random() < 0.15:
      key = _typo(key, rng)
    overrides[("config." if rng.random() < 0.3 else "") + key] = config_utils.CliValue(text)
  config = ml_collections.ConfigDict(BASE.to_dict())
  config = attempt("config overrides: parse", config_utils.apply_overrides, config, overrides)
  if config is not None:
    attempt("config overrides: model+optimizer checks", _model_and_trainer_checks, config)


@hypothesis.given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 3),
                  value_texts=st.lists(VALUE_TEXTS, min_size=3, max_size=3))
@FAST
def test_fuzz_config_overrides(seed, n, value_texts):
  _override_case(seed, n, value_texts)


@pytest.mark.slow
@hypothesis.given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 3),
                  value_texts=st.lists(VALUE_TEXTS, min_size=3, max_size=3))
@SLOW
def test_fuzz_config_overrides_long(seed, n, value_texts):
  _override_case(seed, n, value_texts)


# ---------------------------------------------------------------------------------------------
# Model inputs: image shapes and dtypes
# ---------------------------------------------------------------------------------------------
_NET_CONFIG = BASE.model
_NET = models.build(_NET_CONFIG)
DTYPES = ["float32", "float16", "bfloat16", "float64", "int8", "uint8", "int32", "bool", "complex64"]


def _apply_images(shape, dtype):
  images = jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))
  variables = jax.eval_shape(lambda: _NET.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), train=False))
  out = jax.eval_shape(lambda v, x: _NET.apply(v, x, train=False), variables, images)
  assert out.shape == (shape[0], _NET_CONFIG.num_classes)


SHAPES = st.one_of(
    st.tuples(st.integers(1, 3), st.just(28), st.just(28), st.just(1)),  # valid
    st.tuples(st.integers(0, 3), st.sampled_from([28, 27, 32, 1, 0]), st.sampled_from([28, 29, 0]),
              st.sampled_from([1, 3, 0])),
    st.lists(st.integers(0, 30), min_size=0, max_size=5).map(tuple))


@hypothesis.given(shape=SHAPES, dtype=st.sampled_from(DTYPES))
@FAST
def test_fuzz_model_inputs(shape, dtype):
  attempt("model inputs", _apply_images, shape, dtype)


@pytest.mark.slow
@hypothesis.given(shape=SHAPES, dtype=st.sampled_from(DTYPES))
@SLOW
def test_fuzz_model_inputs_long(shape, dtype):
  attempt("model inputs", _apply_images, shape, dtype)


# ---------------------------------------------------------------------------------------------
# Neuron parameters
# ---------------------------------------------------------------------------------------------
ODD = st.one_of(st.integers(-3, 40), st.floats(-2, 40), st.just(math.nan), st.booleans(), st.none(),
                st.sampled_from(["2", "", (2,), 2.5]))
THETAS = st.one_of(st.floats(-2, 4), st.none(),
                   st.sampled_from([0.0, 1.0, math.nan, math.inf, "1", (1.0, 2.0)]),
                   st.lists(st.floats(-1, 3), min_size=1, max_size=4))


def _neuron_case(fn_name, base, groups, theta, shape, method):
  x = jnp.linspace(-2.0, 5.0, max(1, math.prod(shape))).reshape(shape)
  theta_arr = jnp.asarray(theta, jnp.float32) if isinstance(theta, list) else theta
  if fn_name == "expg_if":
    return neurons.expg_if(x, theta_arr, base, groups, method=method)
  if fn_name == "expg_quantize":
    return neurons.expg_quantize(x, theta_arr, base, groups)
  if fn_name == "spike_weights":
    return neurons.spike_weights(theta_arr, base, groups)
  if fn_name == "digit_counts":
    return neurons.digit_counts(x, theta_arr, base, groups)
  if fn_name == "if_neuron":
    return neurons.if_neuron(x, threshold=theta_arr, reset=method)
  return neurons.lif_neuron(x, tau=base, threshold=theta_arr, reset=method)


VALID_METHOD = {"expg_if": ["scan", "steps", "closed"], "if_neuron": ["soft", "hard"],
                "lif_neuron": ["soft", "hard"]}


@st.composite
def _neuron_args(draw):
  """Valid arguments for the chosen function, then (mostly) one of them replaced by an odd value."""
  fn_name = draw(st.sampled_from(["expg_if", "expg_quantize", "spike_weights", "digit_counts",
                                  "if_neuron", "lif_neuron"]))
  args = dict(fn_name=fn_name, base=draw(st.integers(2, 4)), groups=draw(st.integers(1, 4)),
              theta=draw(st.one_of(st.floats(0.1, 4), st.lists(st.floats(0.1, 3), min_size=1,
                                                                max_size=1))),
              shape=draw(st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple)),
              method=draw(st.sampled_from(VALID_METHOD.get(fn_name, ["scan"]))))
  broken = draw(st.sampled_from([None, "base", "groups", "theta", "method", "theta"]))
  if broken in ("base", "groups"):
    args[broken] = draw(ODD)
  elif broken == "theta":
    args["theta"] = draw(THETAS)
  elif broken == "method":
    args["method"] = draw(st.sampled_from(["scan", "steps", "closed", "soft", "hard", "bogus", ""]))
  return args


NEURON_ARGS = dict(args=_neuron_args())


@hypothesis.given(**NEURON_ARGS)
@FAST
def test_fuzz_neuron_parameters(args):
  attempt("neurons", _neuron_case, **args)


@pytest.mark.slow
@hypothesis.given(**NEURON_ARGS)
@SLOW
def test_fuzz_neuron_parameters_long(args):
  attempt("neurons", _neuron_case, **args)


# ---------------------------------------------------------------------------------------------
# Attention windows
# ---------------------------------------------------------------------------------------------
WINDOW = st.one_of(st.integers(-2, 20), st.none(), st.sampled_from(["global", "GLOBAL", "big", 2.0, True]))


def _window_case(grid, head_dim, windows, heads, shift, order):
  plans = attention.plan_windows(grid, head_dim, windows, heads, shift, order)
  if all(isinstance(v, int) and v > 0 for v in grid) and head_dim > 0:
    h, w = grid
    n = sum(p.heads for p in plans)
    q = jax.ShapeDtypeStruct((2, h * w, n, head_dim), jnp.float32)
    out = jax.eval_shape(
        lambda q, k, v: attention.gw_ssa(q, k, v, grid, windows, heads, shift, order=order), q, q, q)
    assert out.shape == q.shape
  return plans


@st.composite
def _window_args(draw):
  """A valid grouping for a grid, then (mostly) one argument replaced by an odd value."""
  grid = (draw(st.integers(1, 9)), draw(st.integers(1, 9)))
  n = draw(st.integers(1, 3))
  args = dict(grid=grid, head_dim=draw(st.integers(1, 9)),
              windows=draw(st.lists(st.one_of(st.integers(1, max(grid)), st.just(0)), min_size=n,
                                    max_size=n)),
              heads=draw(st.lists(st.integers(1, 3), min_size=n, max_size=n)),
              shift=draw(st.integers(0, 4)), order=draw(st.sampled_from(["auto", "qk_first", "kv_first"])))
  broken = draw(st.sampled_from([None, "grid", "head_dim", "windows", "heads", "shift", "order"]))
  odd = dict(grid=st.tuples(st.integers(-1, 9), st.integers(-1, 9)), head_dim=st.integers(-1, 9),
             windows=st.lists(WINDOW, min_size=0, max_size=4),
             heads=st.lists(st.integers(-1, 3), max_size=4),
             shift=st.one_of(st.integers(-2, 8), st.lists(st.integers(0, 4), max_size=4),
                             st.sampled_from([1.5, "2"])),
             order=st.sampled_from(["auto", "qk_first", "kv_first", "fast"]))
  if broken:
    args[broken] = draw(odd[broken])
  return args


WINDOW_ARGS = dict(args=_window_args())


@hypothesis.given(**WINDOW_ARGS)
@FAST
def test_fuzz_window_plans(args):
  attempt("attention windows", _window_case, **args)


@pytest.mark.slow
@hypothesis.given(**WINDOW_ARGS)
@SLOW
def test_fuzz_window_plans_long(args):
  attempt("attention windows", _window_case, **args)


# ---------------------------------------------------------------------------------------------
# Dataset folders
# ---------------------------------------------------------------------------------------------
def _image_bytes(kind, size, rng):
  if kind == "empty":
    return b""
  if kind == "garbage":
    return bytes(rng.randrange(256) for _ in range(40))
  mode = {"rgb": "RGB", "grey": "L", "rgba": "RGBA", "palette": "P"}[kind]
  arr = np.random.default_rng(rng.randrange(2**32)).integers(0, 256, (size[0], size[1], 3), np.uint8)
  img = Image.fromarray(arr).convert(mode)
  out = io.BytesIO()
  img.save(out, "PNG")
  return out.getvalue()


def _make_folder(root: pathlib.Path, seed: int) -> pathlib.Path:
  rng = random.Random(seed)
  src = root / "src"
  bad = rng.random() < 0.6  # Otherwise a valid folder.
  base = src / "wrapper" if rng.random() < 0.3 else src
  splits = rng.choice([[None], [None], ["train", "test"], ["train", "val"], ["train"]]
                      + ([["other"]] if bad else []))
  num_classes = rng.choice([10, 10, 10, 0, 1, 3, 11]) if bad else 10
  for split in splits:
    for c in range(num_classes):
      d = (base / split if split else base) / f"class{c}"
      d.mkdir(parents=True, exist_ok=True)
      for i in range(rng.choice([0, 1, 2, 2, 3] if bad else [2, 3])):
        odd = bad and rng.random() < 0.15
        kind = rng.choice(["grey", "rgba", "palette", "garbage", "empty"]) if odd else "rgb"
        size = rng.choice([(30, 32), (8, 8), (64, 64)]) if odd and rng.random() < 0.3 else (32, 32)
        ext = rng.choice([".png", ".jpg", ".txt", ""]) if odd and rng.random() < 0.3 else ".png"
        (d / f"{i}{ext}").write_bytes(_image_bytes(kind, size, rng))
  src.mkdir(parents=True, exist_ok=True)
  if rng.random() < 0.2:
    archive = root / "src.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
      tar.add(src, arcname="src")
    return archive
  if bad and rng.random() < 0.05:
    return root / "missing"
  return src


def _folder_case(root, seed, skip_corrupt, validation_fraction):
  source = _make_folder(root, seed)
  cfg = data.default_config("cifar10")
  cfg.data.update(source=str(source), data_dir=str(root / "dd"), skip_corrupt=skip_corrupt,
                  validation_fraction=validation_fraction)
  info = data.dataset_info(cfg)
  split = sorted(info.splits)[0]
  it = data.build_iterator(cfg, split, global_batch_size=2, train=False, num_epochs=1,
                           process_index=0, process_count=1)
  batch = next(iter(it))
  assert batch["image"].shape[1:] == (32, 32, 3)


FOLDER_ARGS = dict(seed=st.integers(0, 2**32 - 1), skip_corrupt=st.booleans(),
                   validation_fraction=st.sampled_from([0.0, 0.0, 0.1, 0.5, 1.0, -0.1]))


def _run_folder_case(tmp_path_factory, **kw):
  attempt("dataset folders", _folder_case, tmp_path_factory.mktemp("fuzz_folder"), **kw)


@hypothesis.given(**FOLDER_ARGS)
@hypothesis.settings(max_examples=6)
def test_fuzz_dataset_folders(tmp_path_factory, seed, skip_corrupt, validation_fraction):
  _run_folder_case(tmp_path_factory, seed=seed, skip_corrupt=skip_corrupt,
                   validation_fraction=validation_fraction)


@pytest.mark.slow
@hypothesis.given(**FOLDER_ARGS)
@hypothesis.settings(max_examples=max(1, SLOW_EXAMPLES // 5), **_SLOW_DRAWS)
def test_fuzz_dataset_folders_long(tmp_path_factory, seed, skip_corrupt, validation_fraction):
  _run_folder_case(tmp_path_factory, seed=seed, skip_corrupt=skip_corrupt,
                   validation_fraction=validation_fraction)
