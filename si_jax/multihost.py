"""Multi-controller SPMD helpers: one process per host, every process runs the same program.

In a multi-process run (`jax.process_count() > 1`) each process owns the rows of its own
batch shards of every batch-sharded array: whole shards, as many as any other process, where
the mesh puts them (one block per process on CPU and GPU; interleaved on TPU slices above 2
hosts, where the mesh follows the torus; checked by `check_mesh`). So a process

  * samples, verifies and assigns credit to its own rows only (host data stays local),
  * turns its rows into the global array with `to_global` (`jax.make_array_from_process_local_
    data` maps them onto its shards in row order, wherever they are: no process ever holds
    another's rows),
  * reads back only its own rows with `local_rows` (its addressable shards; never a
    `device_get` of a global array),
  * agrees with the others on shapes (row counts, prompt widths) through small host
    all-gathers (`allgather`, `global_max`), since every jitted call is collective.

Process 0 alone writes metrics, config, samples and summaries (`is_primary`); checkpoints go
through Orbax's multi-process path (every process calls save / restore).

With one process every helper is the identity (or a local max), so single-process runs take
exactly the code path they always took.
"""

from __future__ import annotations

import os
import pickle
import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

# Environment of `si-train` under a launcher (si_jax/tools/launch/): SI_MULTIHOST=1 turns on
# jax.distributed; the three others, when set, name the coordinator explicitly (otherwise JAX
# detects it on TPU VMs and under SLURM).
ENV_ENABLE = "SI_MULTIHOST"
ENV_COORDINATOR = "SI_COORDINATOR"
ENV_NUM_PROCESSES = "SI_NUM_PROCESSES"
ENV_PROCESS_ID = "SI_PROCESS_ID"
# The JAX backend the launch asked for ("gpu", "tpu", "cpu"): si-train stops with one line when
# jax runs on another (a CPU-only jaxlib on a GPU node), see `check_platform`.
ENV_PLATFORM = "SI_PLATFORM"
# How to get the accelerator builds of the pinned jax (launch/README.md has the runbooks).
INSTALL_HINT = {
    "gpu": "pip install 'jax[cuda13]=={v}' (CUDA 12 drivers: 'jax[cuda12]=={v}')",
    "tpu": "pip install 'jax[tpu]=={v}'",
    "cpu": "pip install 'jax=={v}' and JAX_PLATFORMS=cpu",
}


def _slurm_step(env) -> bool:
  """Inside an srun step (the variables JAX's own SLURM detection reads)."""
  return all(k in env for k in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS",
                                "SLURM_PROCID", "SLURM_LOCALID"))


def _slurm_tasks_on_node(env) -> int:
  """Tasks of this srun step on this node: SLURM_STEP_TASKS_PER_NODE ('8', '1(x16)' or
  '2(x3),1', indexed by SLURM_NODEID), else SLURM_NTASKS_PER_NODE, else NTASKS / nodes."""
  text = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
  if text:
    counts = []
    for part in text.split(","):
      m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
      if not m:
        counts = []
        break
      counts += [int(m.group(1))] * int(m.group(2) or 1)
    node = int(env.get("SLURM_NODEID", 0) or 0)
    if counts and node < len(counts):
      return counts[node]
  if env.get("SLURM_NTASKS_PER_NODE", "").isdigit():
    return int(env["SLURM_NTASKS_PER_NODE"])
  nodes = env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_JOB_NUM_NODES") or "1"
  return max(1, int(env["SLURM_NTASKS"]) // max(1, int(nodes)))


def _node_gpus(env) -> int | None:
  """GPUs this process may use on its node: the entries of CUDA_VISIBLE_DEVICES (SLURM sets it
  for the GPUs it allocated), else SLURM_GPUS_ON_NODE; None when neither says."""
  cvd = env.get("CUDA_VISIBLE_DEVICES")
  if cvd is not None and cvd.strip() not in ("", "-1", "NoDevFiles"):
    return len([d for d in cvd.split(",") if d.strip()])
  on_node = env.get("SLURM_GPUS_ON_NODE", "")
  return int(on_node) if on_node.isdigit() and int(on_node) > 0 else None


def distributed_kwargs(environ=None) -> dict[str, Any]:
  """The arguments of `jax.distributed.initialize` for this environment (SI_MULTIHOST=1).

  SI_COORDINATOR, SI_NUM_PROCESSES and SI_PROCESS_ID are passed when set (all three or none);
  then JAX's cluster detection is off (`cluster_detection_method='deactivate'`), since under
  SLURM or Open MPI it would make every process see one GPU (`[SLURM_LOCALID]`), and si-launch
  starts one process per node that drives all of the node's GPUs. Without them JAX detects
  the cluster (TPU VMs, SLURM); under an srun step with one task per node every GPU of the
  node is passed as `local_device_ids`. With several tasks on a node (one per GPU) each task
  gets its own GPU, `[SLURM_LOCALID]`, as JAX would give it.
  """
  env = os.environ if environ is None else environ
  names = (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)
  given = [n for n in names if env.get(n)]
  if given and len(given) != len(names):
    missing = [n for n in names if n not in given]
    raise ValueError(f"{ENV_ENABLE}=1 with {', '.join(given)} set but not {', '.join(missing)}: "
                     f"set all three, or none to let JAX detect the cluster")
  kwargs: dict[str, Any] = {}
  if given:
    try:
      kwargs = dict(coordinator_address=env[ENV_COORDINATOR],
                    num_processes=int(env[ENV_NUM_PROCESSES]),
                    process_id=int(env[ENV_PROCESS_ID]),
                    cluster_detection_method="deactivate")
    except ValueError:
      raise ValueError(f"{ENV_NUM_PROCESSES}={env[ENV_NUM_PROCESSES]!r} and {ENV_PROCESS_ID}="
                       f"{env[ENV_PROCESS_ID]!r} must be integers") from None
  if _slurm_step(env):
    if _slurm_tasks_on_node(env) > 1:
      kwargs["local_device_ids"] = [int(env["SLURM_LOCALID"])]
    elif not given and (gpus := _node_gpus(env)):
      kwargs["local_device_ids"] = list(range(gpus))
  return kwargs


def initialize_from_env(environ=None) -> bool:
  """Calls `jax.distributed.initialize(**distributed_kwargs())` when SI_MULTIHOST=1, then
  `check_platform`. Returns whether it initialized. On CPU the cross-process collectives use
  gloo."""
  env = os.environ if environ is None else environ
  started = False
  if env.get(ENV_ENABLE) == "1":
    kwargs = distributed_kwargs(env)
    # cross-process collectives of the CPU backend (simulated hosts; no effect on GPU / TPU)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    started = True
  check_platform(env)
  return started


def expected_platform(environ=None) -> str | None:
  """The backend this process must run on: SI_PLATFORM (si-launch sets it), else "gpu" for a
  multi-host process in a SLURM job that holds GPUs (SLURM_GPUS_ON_NODE / CUDA_VISIBLE_DEVICES)
  unless JAX_PLATFORMS names the platforms; None: no expectation."""
  env = os.environ if environ is None else environ
  if env.get(ENV_PLATFORM):
    return env[ENV_PLATFORM]
  if (env.get(ENV_ENABLE) == "1" and "SLURM_JOB_ID" in env and not env.get("JAX_PLATFORMS")
      and _node_gpus(env)):
    return "gpu"
  return None


def check_platform(environ=None, backend: str | None = None) -> None:
  """Stops a process whose JAX backend is not the one its launch asked for (`expected_platform`),
  e.g. a CPU-only jaxlib on a GPU node, which would otherwise train on the host CPU, with a
  line naming what to install. `backend`: the backend to check (default jax's)."""
  env = os.environ if environ is None else environ
  want = expected_platform(env)
  if want is None:
    return
  have = backend or jax.default_backend()
  if have == want:
    return
  import jaxlib  # pylint: disable=import-outside-toplevel
  hint = INSTALL_HINT.get(want, "the {v} build for it").format(v=jax.__version__)
  source = (f"{ENV_PLATFORM}={want}" if env.get(ENV_PLATFORM) else
            "a SLURM job with GPUs (CUDA_VISIBLE_DEVICES / SLURM_GPUS_ON_NODE)")
  raise ValueError(
      f"{source}: the launch asked for {want} devices but jax {jax.__version__} runs on "
      f"{have} (jaxlib {jaxlib.__version__} found no {want} backend): install the {want} "
      f"build of JAX on every host, {hint}; or set {ENV_PLATFORM}={have} to run on {have} "
      f"(launch/README.md)")


def process_count() -> int:
  return jax.process_count()


def is_primary() -> bool:
  """True on the process that writes files (process 0)."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """A barrier across processes (no-op with one)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def allgather(x) -> np.ndarray:
  """[process_count, *x.shape]: every process's `x` (same shape and dtype everywhere)."""
  x = np.asarray(x)
  if jax.process_count() == 1:
    return x[None]
  return np.asarray(multihost_utils.process_allgather(x, tiled=False))


def global_max(x: int) -> int:
  """The largest of the processes' ints."""
  return int(allgather(np.int64(x)).max()) if jax.process_count() > 1 else int(x)


def all_true(flag: bool) -> bool:
  """True iff `flag` is True on every process (for loop conditions around collective calls)."""
  return bool(allgather(np.bool_(flag)).all()) if jax.process_count() > 1 else bool(flag)


def any_true(flag: bool) -> bool:
  """True iff `flag` is True on some process (for guards around collective calls)."""
  return bool(allgather(np.bool_(flag)).any()) if jax.process_count() > 1 else bool(flag)


def gather_size(n: int) -> int:
  """The padded length of a variable-length all-gather: the next power of two >= n (>= 1),
  so that gathers of growing lengths compile a few programs (process_allgather compiles one
  per shape), not one per new maximum."""
  return 1 << max(0, int(n) - 1).bit_length()


def allgather_rows(x: np.ndarray) -> np.ndarray:
  """The concatenation over processes (in process order) of each process's rows [n_p, ...];
  n_p may differ between processes."""
  x = np.asarray(x)
  if jax.process_count() == 1:
    return x
  n = allgather(np.int64(x.shape[0]))
  top = gather_size(int(n.max()))
  padded = np.zeros((top,) + x.shape[1:], x.dtype)
  padded[:x.shape[0]] = x
  parts = allgather(padded)
  return np.concatenate([parts[p, :int(n[p])] for p in range(len(n))])


def local_slice(n: int) -> slice:
  """This process's contiguous share of n items (the first n % P processes take one more)."""
  P, p = jax.process_count(), jax.process_index()
  base, extra = divmod(n, P)
  start = p * base + min(p, extra)
  return slice(start, start + base + (p < extra))


def batch_owners(mesh: Mesh) -> np.ndarray:
  """[data * fsdp]: the process whose devices hold each batch shard (the row blocks of a
  batch-sharded array, in row order). An error when a shard's devices (its tensor group) are
  on several processes: each would feed its own rows to one shard."""
  groups = mesh.devices.reshape(-1, mesh.shape["tensor"])
  owners = []
  for i, g in enumerate(groups):
    procs = sorted({d.process_index for d in g})
    if len(procs) > 1:
      raise ValueError(
          f"config.mesh {dict(mesh.shape)}: batch shard {i} is held by devices of processes "
          f"{procs} (tensor={mesh.shape['tensor']} spans hosts); keep mesh.tensor within a "
          f"host's devices")
    owners.append(procs[0])
  return np.asarray(owners)


def check_mesh(mesh: Mesh) -> None:
  """Every process must own whole batch shards, as many as any other: the batch axes (data x
  fsdp) a multiple of the process count, each shard's devices on one process. Where they sit
  does not matter: on TPU slices above 2 hosts the topology order interleaves the processes'
  shards (v5p-32: shards of processes 0, 1, 2, 3, 0, 1, ...), and `to_global` / `local_rows`
  place and read a process's rows wherever its shards are."""
  procs = {d.process_index for d in mesh.devices.flat}
  P = max(len(procs), jax.process_count())
  if P == 1:
    return
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if shards % P:
    raise ValueError(
        f"config.mesh: data x fsdp = {mesh.shape['data']} x {mesh.shape['fsdp']} = {shards} "
        f"batch shards cannot be split over {P} processes; each process samples its own rows, "
        f"so data x fsdp must be a multiple of the process count")
  counts = np.bincount(batch_owners(mesh), minlength=P)
  if (counts != shards // P).any():
    raise ValueError(
        f"config.mesh {dict(mesh.shape)}: processes own {counts.tolist()} of the {shards} "
        f"batch shards; each must own {shards // P}")


def process_rows(sharding: NamedSharding, n: int) -> slice:
  """The rows [start, stop) of an [n, ...] array with `sharding` held by this process's
  devices; an error if they are not contiguous."""
  idx = sharding.addressable_devices_indices_map((n,))
  spans = sorted({(s[0].start or 0, n if s[0].stop is None else s[0].stop)
                  for s in idx.values()})
  start, stop = spans[0]
  for a, b in spans[1:]:
    if a != stop and (a, b) != (start, stop):
      raise ValueError(f"rows of process {jax.process_index()} are not contiguous: {spans}")
    stop = max(stop, b)
  return slice(start, stop)


def local_row_ids(sharding: NamedSharding, n: int) -> np.ndarray:
  """int32: the global row of each of this process's rows of an [n, ...] array with
  `sharding`, in the order `to_global` takes and `local_rows` returns them (its shards in row
  order, wherever they sit). With one process: arange(n)."""
  if jax.process_count() == 1:
    return np.arange(n, dtype=np.int32)
  spans = {}
  for index in sharding.addressable_devices_indices_map((n,)).values():
    start = index[0].start or 0
    spans[start] = n if index[0].stop is None else index[0].stop
  return np.concatenate([np.arange(a, spans[a], dtype=np.int32) for a in sorted(spans)])


def to_global(x: np.ndarray, sharding: NamedSharding):
  """This process's rows [n_local, ...] -> the global [n_local * process_count, ...] array.
  With one process: `x` itself (jit places it by its in_shardings)."""
  if jax.process_count() == 1:
    return x
  x = np.asarray(x)
  shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
  return jax.make_array_from_process_local_data(sharding, x, shape)


def global_from_host(x: np.ndarray, sharding: NamedSharding):
  """A host array that every process holds in full (same values) -> a global array."""
  if jax.process_count() == 1:
    return x
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])


def local_rows(x) -> np.ndarray:
  """This process's rows of a batch-sharded global array, from its addressable shards only.
  With one process: the whole array as numpy."""
  if jax.process_count() == 1 or not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  if x.is_fully_replicated:
    return np.asarray(x.addressable_data(0))
  parts: dict[int, np.ndarray] = {}
  for s in x.addressable_shards:
    parts.setdefault(s.index[0].start or 0, np.asarray(s.data))
  return np.concatenate([parts[k] for k in sorted(parts)])


def tree_local_rows(tree):
  return jax.tree.map(local_rows, tree)


def reduce_metrics(row: dict[str, Any], sum_prefixes: Sequence[str] = ("tokens/",),
                   max_prefixes: Sequence[str] = ("time/",)) -> dict[str, Any]:
  """A log row computed per process -> the run's row: keys starting with `sum_prefixes` are
  summed over processes, `max_prefixes` take the max (wall times), the rest the mean (each
  process holds the same number of groups, so the mean of means is the global mean). Keys
  missing on some process are averaged over the processes that have them."""
  if jax.process_count() == 1:
    return row
  keys = sorted(k for k, v in row.items() if isinstance(v, (int, float, np.number)))
  all_keys = sorted(set().union(*_allgather_keys(keys)) - {""})
  vals = np.array([float(row.get(k, np.nan)) for k in all_keys], np.float64)
  table = allgather(vals)
  out = dict(row)
  for j, k in enumerate(all_keys):
    col = table[:, j]
    col = col[~np.isnan(col)]
    if not col.size:
      continue
    v = (col.sum() if k.startswith(tuple(sum_prefixes)) else
         col.max() if k.startswith(tuple(max_prefixes)) else col.mean())
    out[k] = int(v) if isinstance(row.get(k), (int, np.integer)) and not isinstance(
        row.get(k), bool) and float(v).is_integer() else float(v)
  return out


def allgather_bytes(blob: bytes) -> list[bytes]:
  """Every process's bytes, in process order (lengths may differ)."""
  if jax.process_count() == 1:
    return [blob]
  arr = np.frombuffer(blob, np.uint8)
  n = allgather(np.int64(arr.size))
  padded = np.zeros(gather_size(int(n.max())), np.uint8)
  padded[:arr.size] = arr
  parts = allgather(padded)
  return [bytes(parts[p, :int(n[p])]) for p in range(len(n))]


def allgather_objects(obj: Any) -> list[Any]:
  """Every process's picklable `obj` (small: term descriptions, key lists), in process order."""
  return [pickle.loads(b) for b in allgather_bytes(pickle.dumps(obj))]


def _allgather_keys(keys: list[str]) -> list[list[str]]:
  return allgather_objects(keys)
