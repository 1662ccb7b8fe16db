"""Device mesh, parameter sharding rules, batch sharding and multi-process start-up.

The mesh has two axes: `data` (pure data parallelism: parameters replicated) and `fsdp` (data
parallelism with parameters, gradients and optimizer state sharded across it). Batches are split over
both, `P(("data", "fsdp"))`. Parameters get their sharding from regex rules in the config:

    config.mesh = [("data", -1), ("fsdp", 1)]          # -1: all remaining devices
    config.sharding_rules = [
        (r".*/kernel$", "fsdp"),                        # shard the largest divisible dim on fsdp
        (r".*", "replicate"),
    ]

A rule's spec is `"replicate"`, `"fsdp"`, or an explicit partition spec as a tuple of axis names /
None per dimension (`("fsdp", None)`). Rules are matched with `re.search` against a leaf's path
(`params/stage1/block0/conv/kernel`, `opt_state/0/mu/stage1/.../kernel`), first match wins, and a leaf
matched by none is replicated. Scalars are always replicated.
"""

from __future__ import annotations

import logging
import math
import os
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")
REPLICATE = "replicate"
FSDP = "fsdp"

_log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Multi-process start-up
# ---------------------------------------------------------------------------------------------
def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, local_device_ids: Sequence[int] | None = None,
                           **kwargs: Any) -> bool:
  """Starts JAX's multi-process runtime when this is one process of several; otherwise does nothing.

  Call it before any other JAX call. With no arguments it reads `GE2MS_COORDINATOR`,
  `GE2MS_NUM_PROCESSES` and `GE2MS_PROCESS_ID` from the environment, and otherwise leaves detection
  to `jax.distributed.initialize()` on clusters JAX recognises (Cloud TPU, SLURM, Open MPI) when
  `GE2MS_DISTRIBUTED=auto` is set. On CPU it selects the gloo collectives so that processes on one or
  several machines can all-reduce.

  Returns:
    True if the distributed runtime was started by this call.
  """
  env = os.environ
  coordinator_address = coordinator_address or env.get("GE2MS_COORDINATOR")
  if num_processes is None and env.get("GE2MS_NUM_PROCESSES"):
    num_processes = int(env["GE2MS_NUM_PROCESSES"])
  if process_id is None and env.get("GE2MS_PROCESS_ID"):
    process_id = int(env["GE2MS_PROCESS_ID"])
  auto = env.get("GE2MS_DISTRIBUTED", "").lower() == "auto"
  if coordinator_address is None and not auto:
    return False
  if coordinator_address is not None and (num_processes is None or process_id is None):
    raise ValueError(f"initialize_distributed: coordinator_address={coordinator_address!r} also needs "
                     f"num_processes (got {num_processes}) and process_id (got {process_id}).")
  if jax.distributed.is_initialized():
    return False
  # Only the CPU backend reads this; it lets CPU processes all-reduce with each other.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id, local_device_ids=local_device_ids, **kwargs)
  _log.info("distributed runtime started: process %d of %d, %d local / %d global devices",
            jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


# ---------------------------------------------------------------------------------------------
# Mesh
# ---------------------------------------------------------------------------------------------
def mesh_shape(mesh_config: Sequence[Sequence[Any]], num_devices: int) -> dict[str, int]:
  """Resolves `[("data", -1), ("fsdp", 2)]` into `{"data": n/2, "fsdp": 2}` for `num_devices`.

  Both `data` and `fsdp` are always present (size 1 if not named). At most one size may be -1.

  Raises:
    ValueError: for an unknown or repeated axis, more than one -1, or sizes whose product is not the
      number of devices (naming both numbers).
  """
  shape: dict[str, int] = {}
  for entry in mesh_config:
    if len(entry) != 2:
      raise ValueError(f"config.mesh entries must be (axis_name, size) pairs, got {entry!r}.")
    name, size = entry
    if name not in BATCH_AXES:
      raise ValueError(f"config.mesh: unknown axis {name!r}; the axes are {BATCH_AXES}.")
    if name in shape:
      raise ValueError(f"config.mesh: axis {name!r} is named twice in {list(mesh_config)!r}.")
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or (size < 1 and size != -1):
      raise ValueError(f"config.mesh: axis {name!r} has size {size!r}; use a positive int or -1 "
                       "(all remaining devices).")
    shape[name] = int(size)
  for name in BATCH_AXES:
    shape.setdefault(name, 1)
  wild = [n for n, s in shape.items() if s == -1]
  if len(wild) > 1:
    raise ValueError(f"config.mesh: only one axis may have size -1, got {wild}.")
  fixed = math.prod(s for s in shape.values() if s != -1)
  if wild:
    if num_devices % fixed:
      raise ValueError(f"config.mesh: the fixed axis sizes multiply to {fixed}, which does not divide "
                       f"the {num_devices} devices, so axis {wild[0]!r} cannot take the rest.")
    shape[wild[0]] = num_devices // fixed
  elif fixed != num_devices:
    raise ValueError(f"config.mesh: axis sizes {shape} multiply to {fixed}, but there are "
                     f"{num_devices} devices; make them match or use -1 for one axis.")
  return {name: shape[name] for name in BATCH_AXES}


def make_mesh(mesh_config: Sequence[Sequence[Any]] = (("data", -1),),
              devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """Builds the `("data", "fsdp")` mesh over `devices` (default: all devices of all processes).

  Args:
    mesh_config: `(axis, size)` pairs, see `mesh_shape`.
    devices: the devices to use; a subset gives e.g. a 1-device run inside an 8-device process.

  Returns:
    A `jax.sharding.Mesh` with Auto axis types (the compiler places intermediate values).
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_config, len(devices))
  axis_types = (jax.sharding.AxisType.Auto,) * len(BATCH_AXES)
  if len(devices) == jax.device_count():
    return jax.make_mesh(tuple(shape.values()), BATCH_AXES, axis_types=axis_types, devices=devices)
  # A strict subset of the devices (tests, debugging): lay them out in the given order.
  array = np.asarray(devices, dtype=object).reshape(tuple(shape.values()))
  return jax.sharding.Mesh(array, BATCH_AXES, axis_types=axis_types)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Sharding of a batch: leading dim split over `data` × `fsdp`, the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  """A fully replicated sharding on `mesh`."""
  return NamedSharding(mesh, P())


def batch_parallelism(mesh: jax.sharding.Mesh) -> int:
  """Number of batch shards: `data` × `fsdp`."""
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_batch_size(batch_size: int, mesh: jax.sharding.Mesh, name: str = "input.batch_size") -> int:
  """Returns the per-process batch size, or raises if `batch_size` cannot be split evenly.

  Raises:
    ValueError: naming `batch_size` and the data-parallel size (data × fsdp devices), or the process
      count, when it does not divide.
  """
  shards = batch_parallelism(mesh)
  if batch_size <= 0 or batch_size % shards:
    raise ValueError(f"{name}={batch_size} is not divisible by the data-parallel size {shards} "
                     f"(mesh data={mesh.shape['data']} × fsdp={mesh.shape['fsdp']}); use a multiple "
                     f"of {shards}, e.g. {max(shards, (batch_size // shards) * shards or shards)}.")
  processes = jax.process_count()
  if batch_size % processes:
    raise ValueError(f"{name}={batch_size} is not divisible by the {processes} processes.")
  return batch_size // processes


def host_to_global(tree: Any, sharding: NamedSharding) -> Any:
  """Assembles process-local numpy batches (leading dim = per-process batch) into global arrays."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


# ---------------------------------------------------------------------------------------------
# Parameter sharding rules
# ---------------------------------------------------------------------------------------------
def path_str(path: Sequence[Any]) -> str:
  """A pytree key path as `a/b/0/c` (dict keys, attribute names and sequence indices)."""
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      parts.append(k.name)
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    elif isinstance(k, jax.tree_util.FlattenedIndexKey):
      parts.append(str(k.key))
    else:
      parts.append(str(k))
  return "/".join(parts)


def check_rules(rules: Sequence[Sequence[Any]]) -> list[tuple[re.Pattern, Any]]:
  """Compiles `[(regex, spec), ...]`, raising ValueError for a bad regex or spec."""
  compiled = []
  for i, rule in enumerate(rules):
    if len(rule) != 2:
      raise ValueError(f"config.sharding_rules[{i}] must be a (regex, spec) pair, got {rule!r}.")
    pattern, spec = rule
    try:
      regex = re.compile(pattern)
    except re.error as e:
      raise ValueError(f"config.sharding_rules[{i}]: bad regex {pattern!r}: {e}.") from None
    if isinstance(spec, str):
      if spec not in (REPLICATE, FSDP):
        raise ValueError(f"config.sharding_rules[{i}]: spec {spec!r} must be {REPLICATE!r}, {FSDP!r}, "
                         "or a tuple of axis names / None per dimension.")
    elif isinstance(spec, (tuple, list)):
      for axis in spec:
        names = axis if isinstance(axis, (tuple, list)) else (axis,)
        for name in names:
          if name is not None and name not in BATCH_AXES:
            raise ValueError(f"config.sharding_rules[{i}]: unknown mesh axis {name!r} in {spec!r}; "
                             f"axes are {BATCH_AXES}.")
    else:
      raise ValueError(f"config.sharding_rules[{i}]: spec {spec!r} must be a string or a tuple.")
    compiled.append((regex, spec))
  return compiled


def _fsdp_spec(shape: Sequence[int], mesh: jax.sharding.Mesh) -> P:
  size = mesh.shape["fsdp"]
  if size == 1:
    return P()
  # Largest dimension divisible by the axis size; ties go to the last one (output features).
  best = None
  for dim in range(len(shape)):
    if shape[dim] % size == 0 and (best is None or shape[dim] >= shape[best]):
      best = dim
  if best is None:
    return P()
  spec = [None] * len(shape)
  spec[best] = "fsdp"
  return P(*spec)


def _explicit_spec(spec: Sequence[Any], shape: Sequence[int], mesh: jax.sharding.Mesh, path: str) -> P:
  if len(spec) > len(shape):
    raise ValueError(f"sharding rule spec {tuple(spec)} has {len(spec)} entries, but {path!r} has only "
                     f"{len(shape)} dimensions (shape {tuple(shape)}).")
  for dim, axis in enumerate(spec):
    if axis is None:
      continue
    names = axis if isinstance(axis, (tuple, list)) else (axis,)
    n = math.prod(mesh.shape[a] for a in names)
    if shape[dim] % n:
      raise ValueError(f"sharding rule spec {tuple(spec)} splits dim {dim} of {path!r} (shape "
                       f"{tuple(shape)}) over {names} of size {n}, which does not divide {shape[dim]}.")
  return P(*[tuple(a) if isinstance(a, list) else a for a in spec])


def infer_shardings(tree: Any, mesh: jax.sharding.Mesh, rules: Sequence[Sequence[Any]]) -> Any:
  """A NamedSharding for every leaf of `tree` (arrays or ShapeDtypeStructs), from regex rules.

  Args:
    tree: any pytree whose leaves have `.shape`.
    mesh: the mesh.
    rules: `[(regex, spec), ...]`, see the module docstring.

  Returns:
    A pytree of `NamedSharding` with the structure of `tree`.

  Raises:
    ValueError: for a malformed rule, or an explicit spec that does not fit the leaf it matches.
  """
  compiled = check_rules(rules)

  def one(path, leaf):
    shape = tuple(np.shape(leaf))
    name = path_str(path)
    if not shape:
      return NamedSharding(mesh, P())
    for regex, spec in compiled:
      if regex.search(name):
        if spec == REPLICATE:
          return NamedSharding(mesh, P())
        if spec == FSDP:
          return NamedSharding(mesh, _fsdp_spec(shape, mesh))
        return NamedSharding(mesh, _explicit_spec(spec, shape, mesh, name))
    return NamedSharding(mesh, P())

  return jax.tree_util.tree_map_with_path(one, tree)


def abstract(tree: Any, shardings: Any | None = None) -> Any:
  """`jax.ShapeDtypeStruct`s of `tree`'s leaves, carrying `shardings` (a matching tree) if given."""
  if shardings is None:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)), tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s),
                      tree, shardings)


def describe(tree: Any, shardings: Any) -> list[str]:
  """One line per leaf: path, shape, dtype, partition spec (for the training log)."""
  lines = []
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  for (path, leaf), sharding in zip(leaves, jax.tree.leaves(shardings)):
    lines.append(f"{path_str(path)}: {tuple(np.shape(leaf))} {jnp.result_type(leaf)} {sharding.spec}")
  return lines
