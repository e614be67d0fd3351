"""Device mesh from config and logical-axis rules -> PartitionSpecs.

Mesh axes are `data`, `fsdp`, `tensor` (any may be 1). Arrays name their dimensions with
logical axes ('batch', 'embed', 'heads', ...); `DEFAULT_RULES` maps each logical axis to mesh
axes. A dimension whose size the mapped mesh axes do not divide stays replicated (so a tiny
model with 2 KV heads still runs on tensor=4), and a mesh axis is used at most once per array.
Every jit in si_jax gets its shardings from here explicitly; nothing reads an implicit mesh.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from si_jax.models import constraints
from si_jax.models import transformer
from si_jax.models.config import ModelConfig

MESH_AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")

# logical axis -> mesh axes (a name, a tuple of names, or None = replicated)
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("layers", None),
    ("norm", None),
    ("seq", None),
    ("head_dim", None),
    ("cache_seq", None),
)


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh. One size may be -1: it takes the remaining devices.

  Devices are placed by `device_grid`: `jax.make_mesh`'s order along the physical topology
  (ICI rings on TPU, device ids on GPU; on CPU it is the order given), with the fall-backs
  it describes. `devices` (default `jax.devices()`) may hold more devices than the mesh needs:
  the first ones are used.

  Axes are `AxisType.Auto` (what `jax.sharding.Mesh` gives by default): jit follows the
  in/out shardings we pass and GSPMD propagates the rest. `jax.make_mesh` alone would make them
  `Explicit` (sharding-in-types), which changes how every jit in si_jax behaves.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} "
                     f"tensor={tensor}")
  if -1 in sizes:
    known = math.prod(s for s in sizes if s != -1)
    if len(devices) % known:
      raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} cannot fill {len(devices)} devices")
    sizes[sizes.index(-1)] = len(devices) // known
  for name, s in zip(MESH_AXES, sizes):
    if s < 1:
      raise ValueError(f"mesh.{name} must be >= 1 (or -1), got {s}")
  n = math.prod(sizes)
  if n > len(devices):
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {n} devices, "
                     f"only {len(devices)} available")
  grid = device_grid(tuple(sizes), devices[:n])
  return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def device_grid(sizes: tuple[int, int, int], devices: Sequence[Any]) -> np.ndarray:
  """The [data, fsdp, tensor] array of `devices` a mesh of `sizes` uses.

  `jax.make_mesh`'s order (the physical topology: ICI rings on TPU, device ids on GPU), where
  it can lay the sizes out on the topology without splitting a physical axis; else
  `mesh_utils.create_device_mesh` allowed to split one (jax.make_mesh refuses e.g. (8, 8, 1)
  on a v5p-128's 4x4x4 chips, which JAX only allows itself on v5e).

  With several processes, each `tensor` group (the devices that hold the same batch rows)
  must belong to one process: it does in the topology order except where a tensor group is
  laid across hosts (v5e-256 with tensor=4 puts 4 chips in a row over two 2x2 hosts). Then
  the devices are placed host by host instead: each process's devices, in the topology order
  of its own chips, make whole tensor groups, and the processes follow one another along the
  batch axes. Batch shards of one process need not be contiguous (multihost.check_mesh).
  """
  try:
    grid = jax.make_mesh(sizes, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                         devices=devices).devices
  except (NotImplementedError, ValueError):
    grid = mesh_utils.create_device_mesh(sizes, devices, allow_split_physical_axes=True)
  if _tensor_groups_within_processes(grid):
    return grid
  try:
    return _host_major_grid(sizes, devices)
  except ValueError:  # tensor does not divide a host's devices: check_mesh names the mesh
    return grid


def _tensor_groups_within_processes(grid: np.ndarray) -> bool:
  groups = grid.reshape(-1, grid.shape[-1])
  return all(len({d.process_index for d in g}) == 1 for g in groups)


def _host_major_grid(sizes: tuple[int, int, int], devices: Sequence[Any]) -> np.ndarray:
  """Devices host by host: each process's own (in its chips' topology order) as whole tensor
  groups, the processes in index order along the batch axes."""
  tensor = sizes[-1]
  by_process: dict[int, list] = {}
  for d in devices:
    by_process.setdefault(d.process_index, []).append(d)
  rows = []
  for p in sorted(by_process):
    local = by_process[p]
    if len(local) % tensor:
      raise ValueError(f"mesh.tensor={tensor} does not divide the {len(local)} devices of "
                       f"process {p}: a tensor group must stay within one host")
    try:
      local_grid = mesh_utils.create_device_mesh((len(local) // tensor, tensor), local,
                                                 allow_split_physical_axes=True)
    except (NotImplementedError, ValueError, AssertionError):
      local_grid = np.asarray(local).reshape(-1, tensor)
    rows.append(local_grid)
  return np.concatenate(rows).reshape(sizes)


def mesh_from_config(mesh_cfg) -> Mesh:
  """From a config with fields data, fsdp, tensor (ml_collections or dict)."""
  get = mesh_cfg.get if hasattr(mesh_cfg, "get") else lambda k, d: getattr(mesh_cfg, k, d)
  return make_mesh(int(get("data", 1)), int(get("fsdp", 1)), int(get("tensor", 1)))


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules=DEFAULT_RULES) -> P:
  """PartitionSpec for an array of `shape` whose dims carry logical names `axes`."""
  if len(axes) != len(shape):
    raise ValueError(f"logical axes {tuple(axes)} do not match shape {tuple(shape)}")
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for name, dim in zip(axes, shape):
    if name is not None and name not in table:
      raise ValueError(f"logical axis {name!r} has no sharding rule; known: {sorted(table)}")
    target = table.get(name) if name is not None else None
    if target is None:
      spec.append(None)
      continue
    target = (target,) if isinstance(target, str) else tuple(target)
    chosen = []
    for ax in target:
      size = mesh.shape[ax]
      if ax in used or size == 1:
        continue
      if dim % (math.prod(mesh.shape[a] for a in chosen) * size):
        continue
      chosen.append(ax)
    used.update(chosen)
    spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
  return P(*spec)


def named(mesh: Mesh, axes, shape, rules=DEFAULT_RULES) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(axes, shape, mesh, rules))


def param_shardings(cfg: ModelConfig, mesh: Mesh, rules=DEFAULT_RULES):
  """Pytree of NamedSharding matching `transformer.init_params(cfg, ...)`."""
  shapes = transformer.param_shapes(cfg)
  axes = transformer.param_axes(cfg)
  return jax.tree.map(lambda a, s: named(mesh, a, s, rules), axes, shapes,
                      is_leaf=lambda x: isinstance(x, tuple))


def batch_sharding(mesh: Mesh, shape: Sequence[int], rules=DEFAULT_RULES) -> NamedSharding:
  """Leading dim over the batch axes, the rest replicated."""
  return named(mesh, ("batch",) + (None,) * (len(shape) - 1), shape, rules)


def on_mesh(fn, mesh: Mesh):
  """`fn` traced with `mesh` as the model's activation mesh (`models/constraints.py`): jit
  wrappers pass their functions through this so activations stay split over the batch axes."""
  @functools.wraps(fn)
  def traced(*args, **kwargs):
    with constraints.activation_mesh(mesh):
      return fn(*args, **kwargs)
  return traced


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_divisor(mesh: Mesh) -> int:
  """Number of batch shards: a global batch should be a multiple of this."""
  return mesh.shape["data"] * mesh.shape["fsdp"]


def init_sharded_params(cfg: ModelConfig, mesh: Mesh, key: jax.Array, rules=DEFAULT_RULES):
  """Random params created directly in their shardings (no replicated full copy)."""
  shardings = param_shardings(cfg, mesh, rules)
  init = jax.jit(transformer.init_params, static_argnums=0, out_shardings=shardings)
  return init(cfg, key)
