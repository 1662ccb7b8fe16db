"""Experiment configs: loading `file.py:arg` specs, config-string args, and typed overrides.

An experiment is a Python file with `get_config(arg: str) -> ml_collections.ConfigDict`, named on the
command line as `experiments/cifar10.py:variant=tiny,runlocal`. The part after the colon is a
config string; `parse_arg` turns it into a ConfigDict against the defaults the experiment declares.

Overrides (`--config.optax.lr=1e-3` on the command line, or dicts in a sweep) are applied by
`apply_overrides`: every key must already exist in the config, and every value must fit the type of
the value it replaces. ml_collections does the navigation and the type check (dotted-key access,
`ConfigDict.update_from_flattened_dict` and the type-safe assignment behind it); this module adds
what it lacks: close-match suggestions over the whole config, the command-line text of a value
parsed by the type it replaces, and errors that name the key, the expected type and the value.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import os
import pathlib
from typing import Any, Iterable, Mapping

import ml_collections

ConfigDict = ml_collections.ConfigDict

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class ConfigError(ValueError):
  """A config spec, config string or override that cannot be applied."""


# ---------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------
def flatten(config: ConfigDict | Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Returns `{dotted.key: value}` for every leaf of `config` (nested ConfigDicts are descended)."""
  out = {}
  items = config.items() if hasattr(config, "items") else ()
  for key, value in items:
    name = f"{prefix}{key}"
    if isinstance(value, (ConfigDict, dict)) and len(value):
      out.update(flatten(value, name + "."))
    else:
      out[name] = value
  return out


def all_keys(config: ConfigDict) -> list[str]:
  """Every dotted key of `config`, groups (`model`) and leaves (`model.variant`) alike."""
  keys = {}  # A dict, not a set: groups come before their fields, in the config's order.
  for leaf in flatten(config):
    parts = leaf.split(".")
    for i in range(1, len(parts) + 1):
      keys.setdefault(".".join(parts[:i]))
  return list(keys)


def close_matches(key: str, candidates: Iterable[str], n: int = 5) -> list[str]:
  """The existing keys closest to a misspelt dotted `key` (whole-key and last-part similarity)."""
  # ConfigDict's own "Did you mean" compares one level's keys only, so it cannot point
  # `neuron.groups` at `model.neuron.groups`; hence a search over every dotted key.
  candidates = list(candidates)
  found = difflib.get_close_matches(key, candidates, n=n, cutoff=0.6)
  last = key.rsplit(".", 1)[-1]
  by_last = {c.rsplit(".", 1)[-1]: [] for c in candidates}
  for c in candidates:
    by_last[c.rsplit(".", 1)[-1]].append(c)
  for name in difflib.get_close_matches(last, list(by_last), n=n, cutoff=0.75):
    for c in by_last[name]:
      if c not in found:
        found.append(c)
  return found[:n]


def _unknown_key_error(key: str, config: ConfigDict, what: str = "config key") -> ConfigError:
  matches = close_matches(key, all_keys(config))
  hint = f"close matches: {', '.join(matches)}" if matches else (
      f"top-level keys are: {', '.join(sorted(config.keys()))}")
  return ConfigError(f"unknown {what} {key!r}; {hint}")


def _strip_prefix(key: str) -> str:
  key = key.strip()
  if key.startswith("--"):
    key = key[2:]
  if key.startswith("config."):
    key = key[len("config."):]
  if not key:
    raise ConfigError("empty config key in override.")
  return key


def lookup(config: ConfigDict, key: str) -> Any:
  """Returns `config[a][b][c]` for `key = "a.b.c"`, or raises ConfigError with close matches."""
  key = _strip_prefix(key)
  try:
    return config[key]  # ConfigDict walks a dotted key itself.
  except (KeyError, TypeError):  # TypeError: a part of the path is a value, not a group.
    raise _unknown_key_error(key, config) from None


# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------
def _type_name(value: Any) -> str:
  return "None" if value is None else type(value).__name__


def _wrong_type(key: str, current: Any, value: Any) -> ConfigError:
  if isinstance(current, (ConfigDict, dict)):
    return ConfigError(f"config key {key!r} is a group of settings; cannot replace it with "
                       f"{value!r} of type {_type_name(value)}.")
  return ConfigError(f"config key {key!r} expects a value of type {_type_name(current)} (its "
                     f"current value is {current!r}), got {value!r} of type {_type_name(value)}.")


def parse_value(text: str, current: Any, key: str) -> Any:
  """Parses the command-line string `text` as a value for a field whose value is `current`.

  Scalars are parsed by the type of `current`; anything else (a tuple, a list, a field that is
  `None`) is read as a Python literal and left to the config's type-safe assignment to check and
  convert (list <-> tuple), as `apply_overrides` and `parse_arg` do.

  ml_collections.config_flags parses `--config.a.b=value` by field type too, but only while absl
  parses the config flag itself, and its parsers differ from what this command line accepts and
  its tests pin: no `1e3` for an int, no yes/on for a bool, no list or None fields, and its tuple
  parser turns a bare `2` or `abc` into a 1-tuple where a mistyped tuple should be an error.

  Args:
    text: the override as typed, e.g. `"1e-3"`, `"true"`, `"[('data', -1), ('fsdp', 2)]"`.
    current: the value it replaces.
    key: the dotted key, for error messages.

  Returns:
    The parsed value.

  Raises:
    ConfigError: naming the key, the expected type and the text, if `text` does not parse.
  """
  def fail(expected: str) -> ConfigError:
    return ConfigError(f"config key {key!r} expects {expected} (its current value is {current!r}), "
                       f"got {text!r}.")

  if isinstance(current, (ConfigDict, dict)):
    fields = ", ".join(f"{key}.{k}" for k in list(current.keys())[:8])
    raise ConfigError(f"config key {key!r} is a group of settings, not a value; set one of its "
                      f"fields instead (e.g. {fields}).")
  if isinstance(current, bool):
    if text.strip().lower() in _TRUE:
      return True
    if text.strip().lower() in _FALSE:
      return False
    raise fail("a bool (true/false/1/0)")
  if isinstance(current, int):
    try:
      return int(text.replace("_", ""))
    except ValueError:
      try:
        as_float = float(text)
      except ValueError:
        raise fail("an int") from None
      if as_float.is_integer():
        return int(as_float)
      raise fail("an int") from None
  if isinstance(current, float):
    try:
      return float(text)
    except ValueError:
      raise fail("a float") from None
  if isinstance(current, str):
    # Accept a quoted literal as well as bare text.
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
      return text[1:-1]
    return text
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError, TypeError):  # TypeError: an unhashable dict key, say.
    if current is None:
      return text  # A None default takes any bare text as a string.
    raise fail(f"a Python literal of type {_type_name(current)}") from None


def _assign(config: ConfigDict, key: str, current: Any, value: Any) -> None:
  """Sets the existing dotted `key` to `value` through ConfigDict's type-safe assignment."""
  # ConfigDict takes True/False for an int or float field (bool subclasses int); a flag where a
  # number belongs is a mistake, so it is refused here.
  if isinstance(value, bool) and isinstance(current, (int, float)) and not isinstance(current, bool):
    raise _wrong_type(key, current, value)
  try:
    config.update_from_flattened_dict({key: value})
  except TypeError:
    raise _wrong_type(key, current, value) from None
  except (ValueError, KeyError, AttributeError) as e:
    raise ConfigError(f"cannot set config key {key!r} to {value!r}: {e}") from None


# ---------------------------------------------------------------------------------------------
# Overrides
# ---------------------------------------------------------------------------------------------
def apply_overrides(config: ConfigDict, overrides: Mapping[str, Any]) -> ConfigDict:
  """Applies `{dotted.key: value}` overrides to `config` in place and returns it.

  Args:
    config: the experiment config (type-safe, the ConfigDict default: its assignment does the type
      check, converting int -> float and list <-> tuple; `None` replaces or is replaced by anything).
    overrides: keys like `"optax.lr"` or `"config.optax.lr"`; values either strings from the command
      line wrapped in `CliValue` (parsed by the type of the value they replace, see `parse_value`),
      or Python values.

  Returns:
    `config`, modified.

  Raises:
    ConfigError: for an unknown key (naming the closest existing keys) or a value of the wrong type.
  """
  for raw_key, value in overrides.items():
    key = _strip_prefix(raw_key)
    # Looked up first, though update_from_flattened_dict would add a missing leaf to an unlocked
    # config: a misspelt key must fail, and the value it replaces decides how text parses.
    current = lookup(config, key)
    if isinstance(value, CliValue):
      value = parse_value(value.text, current, key)
    _assign(config, key, current, value)
  return config


class CliValue:
  """An override value as typed on the command line, parsed later by the type it replaces."""

  def __init__(self, text: str):
    self.text = text

  def __repr__(self) -> str:
    return f"CliValue({self.text!r})"


def parse_override_flags(argv: Iterable[str]) -> dict[str, CliValue]:
  """Parses `--config.a.b=value` / `--config.a.b value` flags into `{"a.b": CliValue("value")}`.

  config_flags reads these only while absl parses a flag defined for an already loaded config;
  here they are collected before the config is loaded (and sweeps pass them on), so this only
  splits them, and `apply_overrides` parses each value once the value it replaces is known.

  Raises:
    ConfigError: for a flag that is not of this form, or one without a value.
  """
  argv = list(argv)
  out = {}
  i = 0
  while i < len(argv):
    flag = argv[i]
    if not flag.startswith("--config."):
      raise ConfigError(f"unrecognised argument {flag!r}; config overrides look like "
                        "--config.key=value (e.g. --config.optax.lr=1e-3).")
    if "=" in flag:
      key, text = flag.split("=", 1)
    elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
      key, text = flag, argv[i + 1]
      i += 1
    else:
      raise ConfigError(f"config override {flag!r} has no value; write {flag}=VALUE.")
    out[_strip_prefix(key)] = CliValue(text)
    i += 1
  return out


# ---------------------------------------------------------------------------------------------
# Config strings and files
# ---------------------------------------------------------------------------------------------
def parse_arg(arg: str | None, *, lazy: bool = False, **spec: Any) -> ConfigDict:
  """Parses a config string `"variant=tiny,runlocal"` against typed defaults.

  Args:
    arg: comma-separated `key=value` items; a bare `key` means `key=True`. Empty or None gives the
      defaults.
    lazy: accept keys not in `spec` (their values stay strings, or True when bare).
    **spec: the known keys with their defaults; a value's type decides how the text is parsed.

  Returns:
    A ConfigDict with every key of `spec` (defaults filled in) plus the parsed items.

  Raises:
    ConfigError: for an unknown key (with close matches) or a value that does not parse.
  """
  out = ConfigDict(dict(spec))
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    key, sep, text = item.partition("=")
    key = key.strip()
    if key not in spec:
      if not lazy:
        matches = difflib.get_close_matches(key, list(spec), n=3, cutoff=0.5)
        hint = f"close matches: {', '.join(matches)}; " if matches else ""
        raise ConfigError(f"unknown config-string key {key!r} in {arg!r}; {hint}known keys: "
                          f"{', '.join(sorted(spec))}.")
      with out.unlocked():
        out[key] = text if sep else True
      continue
    if not sep:
      if isinstance(spec[key], bool):
        out[key] = True
        continue
      raise ConfigError(f"config-string key {key!r} in {arg!r} needs a value: {key}=VALUE.")
    _assign(out, key, spec[key], parse_value(text, spec[key], key))
  return out


def _resolve_path(path: str) -> pathlib.Path:
  candidate = pathlib.Path(path)
  if candidate.exists():
    return candidate
  # Experiments live next to the package in a source checkout; allow paths relative to it.
  repo_root = pathlib.Path(__file__).resolve().parent.parent
  if (repo_root / path).exists():
    return repo_root / path
  raise ConfigError(f"config file {path!r} not found (looked relative to {os.getcwd()!r} and to "
                    f"the project root {str(repo_root)!r}).")


def load_module(path: str, name_prefix: str = "ge2ms_experiment"):
  """Imports the Python file at `path` as a fresh module and returns it."""
  file = _resolve_path(path)
  spec = importlib.util.spec_from_file_location(f"{name_prefix}_{file.stem}", file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def split_spec(spec: str) -> tuple[str, str]:
  """Splits `"experiments/x.py:variant=tiny"` into (`"experiments/x.py"`, `"variant=tiny"`)."""
  path, _, arg = spec.partition(":")
  if not path.endswith(".py"):
    raise ConfigError(f"config spec {spec!r} must name a Python file, like "
                      "experiments/fashion_mnist.py:runlocal.")
  return path, arg


def load_config(spec: str, overrides: Mapping[str, Any] | None = None) -> ConfigDict:
  """Loads `path.py[:arg]` by calling its `get_config(arg)`, then applies `overrides`.

  Returns:
    The config, locked (new keys cannot be added by accident later).
  """
  path, arg = split_spec(spec)
  module = load_module(path)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path!r} has no get_config(arg) function.")
  config = module.get_config(arg)
  if not isinstance(config, ConfigDict):
    raise ConfigError(f"{path}:get_config returned {type(config).__name__}, expected an "
                      "ml_collections.ConfigDict.")
  if overrides:
    apply_overrides(config, overrides)
  config.lock()
  return config


def to_json(config: ConfigDict) -> str:
  """The config as indented JSON (non-JSON values written as their repr)."""
  return json.dumps(json.loads(config.to_json_best_effort()), indent=2, sort_keys=True)


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
  """`{key: (old, new)}` for every dotted key whose value differs between two flat configs."""
  keys = set(old) | set(new)
  return {k: (old.get(k), new.get(k)) for k in sorted(keys) if old.get(k) != new.get(k)}
