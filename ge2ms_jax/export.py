"""Exported models: the QANN variables of one checkpoint, small enough to ship and to mail around.

A training checkpoint holds the whole train state (optimizer moments, EMA, input positions): three to
four times the model. An export keeps only what evaluation and conversion need:

    <directory>/variables.msgpack   {"params": ..., "batch_stats": ...} (EMA parameters when the run kept them)
    <directory>/export.json         step, model config, SHA-256 and size of variables.msgpack, notes

Every mode that reads `--checkpoint` (evaluate, convert, energy, verify, plan) accepts an export
directory as well as an Orbax checkpoint. Loading checks the digest (a truncated or altered file is an
error naming it) and that every array has the shape the configured model expects (an export of a
different model variant is an error naming the first mismatching array).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from typing import Any, Mapping

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

VARIABLES = "variables.msgpack"
META = "export.json"


class ExportError(ValueError):
  """An export directory that is incomplete, altered, or does not fit the configured model."""


@dataclasses.dataclass
class LoadedExport:
  """The contents of an export directory, checked (`loading.load` gives the model's users a
  `loading.Loaded`, whatever the path).

  Attributes:
    variables: QANN `{"params", "batch_stats"}` as numpy arrays.
    step: the training step the export was taken at.
    meta: the contents of `export.json`.
  """
  variables: dict
  step: int
  meta: dict


def is_export(path: str | os.PathLike) -> bool:
  """True when `path` is an export directory (it holds `export.json`)."""
  return (pathlib.Path(path) / META).is_file()


def _digest(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def save(directory: str | os.PathLike, variables: Mapping[str, Any], *, step: int,
         model_config: ml_collections.ConfigDict, notes: Mapping[str, Any] | None = None) -> pathlib.Path:
  """Writes `variables` (QANN `{"params", "batch_stats"}`) as an export directory.

  The two files are written under temporary names and renamed, the manifest last, so a killed export
  never looks complete.

  Returns:
    The directory.
  """
  out = pathlib.Path(directory)
  out.mkdir(parents=True, exist_ok=True)
  data = flax.serialization.msgpack_serialize(jax.tree.map(np.asarray, jax.device_get(dict(variables))))
  meta = dict(format="ge2ms_jax.export/1", step=int(step), file=VARIABLES, bytes=len(data),
              sha256=_digest(data), model=json.loads(model_config.to_json()), notes=dict(notes or {}))
  for name, payload in ((VARIABLES, data), (META, json.dumps(meta, indent=1).encode())):
    tmp = out / (name + ".tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, out / name)
  return out


def _expected_shapes(model_config: ml_collections.ConfigDict) -> dict:
  from ge2ms_jax import model as models  # pylint: disable=g-import-not-at-top
  net = models.build(model_config, "qann")
  x = jax.ShapeDtypeStruct((1, model_config.image_size, model_config.image_size,
                            model_config.in_channels), jnp.float32)
  return jax.eval_shape(lambda x: net.init(jax.random.key(0), x, train=False), x)


def load(directory: str | os.PathLike, model_config: ml_collections.ConfigDict) -> LoadedExport:
  """Reads an export directory and checks it against `model_config`.

  Raises:
    ExportError: a missing or altered file, or arrays that do not fit the configured model.
  """
  path = pathlib.Path(directory)
  try:
    meta = json.loads((path / META).read_text())
    data = (path / meta.get("file", VARIABLES)).read_bytes()
  except FileNotFoundError as e:
    raise ExportError(f"export {path} is incomplete: {e.filename} is missing.") from e
  except json.JSONDecodeError as e:
    raise ExportError(f"export {path}: {META} is not valid JSON ({e}).") from e
  if len(data) != meta.get("bytes") or _digest(data) != meta.get("sha256"):
    raise ExportError(f"export {path}: {VARIABLES} does not match its digest in {META} ({len(data)} "
                      f"bytes, expected {meta.get('bytes')}); the file is truncated or altered.")
  variables = flax.serialization.msgpack_restore(data)
  expected = _expected_shapes(model_config)
  got = jax.tree_util.tree_flatten_with_path(variables)[0]
  want = jax.tree_util.tree_flatten_with_path(expected)[0]
  got_map = {jax.tree_util.keystr(k): np.shape(v) for k, v in got}
  for key, spec in ((jax.tree_util.keystr(k), v) for k, v in want):
    if key not in got_map:
      raise ExportError(f"export {path} has no array {key}: it was exported from a different model "
                        f"(its model config: variant {meta.get('model', {}).get('variant')!r}).")
    if tuple(got_map[key]) != tuple(spec.shape):
      raise ExportError(f"export {path}: {key} has shape {tuple(got_map[key])}, the configured model "
                        f"expects {tuple(spec.shape)}; use the config the export was made with "
                        f"(model config in {META}).")
  if len(got_map) != len(want):
    extra = sorted(set(got_map) - {jax.tree_util.keystr(k) for k, _ in want})
    raise ExportError(f"export {path} holds arrays the configured model lacks: {extra[:3]}.")
  return LoadedExport(variables=variables, step=int(meta["step"]), meta=meta)
