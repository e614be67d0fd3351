"""Checkpoints of a training run: one Orbax CheckpointManager per workdir.

A checkpoint at step `s` holds two items:
  state: any pytree of arrays (in practice the TrainState: params, opt_state, step), written
    with Orbax's StandardCheckpointHandler (OCDBT + tensorstore, sharded arrays written by the
    hosts that own them);
  meta: a JSON object with everything else exact resume needs (data-iterator position, RNG seed,
    resolved config, metrics history, ...).

Atomicity (verified for orbax-checkpoint 0.12.8 on local filesystems, see
tests/test_checkpoint.py::test_sigkill_mid_save_keeps_previous_checkpoint): a save writes every
item into `<dir>/<step>.orbax-checkpoint-tmp/`, writes `commit_success.txt` there, then renames
the folder to `<dir>/<step>/` (one atomic rename). Step discovery ignores names with the tmp
suffix, so a process killed at any moment of a save leaves the previous step as the latest one
and a tmp folder behind. `Checkpointer` asks Orbax to remove such leftovers when it opens the
directory (`cleanup_tmp_directories=True`), before the first save, so the same step can be saved
again. On `gs://` Orbax uses the commit-file protocol instead; the contract is the same.

Old checkpoints beyond `max_to_keep` are deleted in place (rmtree) after a save commits; a kill
during that deletion can leave an older, partial step folder, never a partial latest one.

Integrity: a third item, `integrity`, holds a checksum of every array's bytes
(`si_jax/checksum.py`: computed on the devices that hold the shards, summed over devices and
processes, independent of the sharding) and a sha256 of `meta`. The array checksums run while
Orbax writes and the item is written before the commit, so a committed checkpoint always has
them. Every restore recomputes them from what it read; a mismatch, or a checkpoint Orbax cannot
read at all, is a `CheckpointCorruptError` naming the checkpoint, the array (key path) and the
data file(s) that hold it. `restore_latest_good` falls back to the newest checkpoint that
verifies, moving the bad ones aside (`<step>.corrupt`, kept for inspection; Orbax no longer
sees them, so the run can save that step again). Checkpoints written before this item existed
restore unverified, with a warning. (Why not Orbax's own: orbax-checkpoint 0.12.8 has no
option that checksums chunk data. Its zarr3 layout puts a crc32c on each shard's index only, and
StandardCheckpointHandler writes zarr2; 64 flipped bytes in a data file restored without an
error under both.)

A save that runs out of disk space raises `NoSpaceError` (one line: the step, the directory, the
space it needed) after removing its partial `<step>.orbax-checkpoint-tmp*` folder; the
checkpoints already on disk are untouched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import gc
import json
import logging
import math
import os
import sys
import time
import warnings
from typing import Any, Callable, Mapping

from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

from si_jax import checksum as checksum_lib
from si_jax import multihost

__all__ = ["Checkpointer", "CheckpointMismatchError", "CheckpointCorruptError", "NoSpaceError"]

_STATE = "state"
_META = "meta"
_INTEGRITY = "integrity"
CORRUPT_SUFFIX = ".corrupt"
TMP_MARK = ".orbax-checkpoint-tmp"


class CheckpointMismatchError(ValueError):
  """The restore target does not match what the checkpoint holds (structure, shape or dtype)."""


class CheckpointCorruptError(ValueError):
  """A checkpoint whose bytes are not what was saved (checksum mismatch) or that cannot be read.

  `step` and `path` name the checkpoint; `arrays` the key paths that differ (empty when it
  could not be read at all)."""

  def __init__(self, msg: str, step: int, path: str, arrays: tuple[str, ...] = ()):
    super().__init__(msg)
    self.step, self.path, self.arrays = step, path, arrays
    self.moved_to: str | None = None  # where restore_latest_good put it


class NoSpaceError(OSError):
  """The disk filled up during a save; the partial checkpoint has been removed."""

  def __init__(self, step: int, directory: str, needed_bytes: int):
    self.step, self.directory, self.needed_bytes = step, directory, needed_bytes
    super().__init__(errno.ENOSPC, f"no space left on device while saving checkpoint {step} to "
                                   f"{directory} (needed about {_mb(needed_bytes)} MB)")

  def __str__(self) -> str:
    return self.strerror


def _mb(n: int) -> str:
  return f"{n / 1e6:.1f}" if n >= 1e5 else f"{n / 1e6:.2f}"


def is_no_space(e: BaseException) -> bool:
  """Whether `e` (or an exception it was raised from) is a full disk: OSError ENOSPC, or
  tensorstore's `RESOURCE_EXHAUSTED ... No space left on device [os_error_code='28']`."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    text = str(e)
    if "No space left on device" in text or "os_error_code='28'" in text:
      return True
    e = e.__cause__ or e.__context__
  return False


_path_str = checksum_lib.key_path


def _flatten(tree) -> dict[str, Any]:
  """{'a/b/0': leaf} for every leaf of `tree`, in jax's leaf order."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {_path_str(path): leaf for path, leaf in leaves}


def _abstract_leaf(x):
  """A restore target leaf: jax.ShapeDtypeStruct with a sharding, or a numpy array.

  jax.Array -> its shape, dtype and sharding; ShapeDtypeStruct -> itself, or with a
  single-device sharding on the first local device when it has none (Orbax would otherwise fall
  back to the sharding recorded at save time, which names devices this process may not have);
  numpy arrays and numpy/Python scalars -> restored as numpy arrays.
  """
  if isinstance(x, jax.ShapeDtypeStruct):
    if x.sharding is None:
      return jax.ShapeDtypeStruct(
          x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
    return x
  if isinstance(x, jax.Array):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
  if isinstance(x, (np.ndarray, np.generic, int, float, bool)):
    return np.asarray(x)
  raise TypeError(
      f"checkpoint restore target leaves must be jax.ShapeDtypeStruct, jax.Array or numpy "
      f"arrays, got {type(x).__name__}: {x!r}")


def _json_problem(obj, path: str = "meta") -> str | None:
  """Where `obj` is not JSON-able (first offending path and type), or None if it is."""
  if obj is None or isinstance(obj, (str, bool, int)):
    return None
  if isinstance(obj, float):
    return None if math.isfinite(obj) else f"{path} is {obj!r} (JSON has no inf/nan)"
  if isinstance(obj, Mapping):
    for k, v in obj.items():
      if not isinstance(k, str):
        return f"{path} has a non-string key {k!r} ({type(k).__name__})"
      if (p := _json_problem(v, f"{path}[{k!r}]")) is not None:
        return p
    return None
  if isinstance(obj, (list, tuple)):
    for i, v in enumerate(obj):
      if (p := _json_problem(v, f"{path}[{i}]")) is not None:
        return p
    return None
  return f"{path} is a {type(obj).__name__} ({obj!r:.80}), not a JSON value"


class _IntegrityHandler(ocp.JsonCheckpointHandler):
  """The `integrity` item: JSON like `meta`, but saved from a function that waits for the
  array checksums, in Orbax's write thread: they are computed while the arrays are written,
  and the item lands in the checkpoint before Orbax commits it."""

  def __init__(self):
    super().__init__(filename="checksums.json")

  async def _save_fn(self, x, directory):
    await super()._save_fn(x() if callable(x) else x, directory)


@ocp.args.register_with_handler(_IntegrityHandler, for_save=True)
@dataclasses.dataclass
class _IntegritySave(ocp.args.CheckpointArgs):
  item: Callable[[], Mapping[str, Any]]


@ocp.args.register_with_handler(_IntegrityHandler, for_restore=True)
@dataclasses.dataclass
class _IntegrityRestore(ocp.args.CheckpointArgs):
  item: None = None


class _DropNoSpaceLogs(logging.Filter):
  """Orbax logs each failed write thread's exception with its traceback before the save
  raises; on a full disk those lines say nothing the one-line error does not."""

  def filter(self, record: logging.LogRecord) -> bool:
    text = record.getMessage()
    if record.exc_info and record.exc_info[1] is not None:
      text += str(record.exc_info[1])
    return not ("No space left on device" in text or "os_error_code='28'" in text)


def _drop_closed_loop_noise(hook):
  """sys.unraisablehook without the 'Event loop is closed' errors of a failed save: writes
  still in flight when Orbax gave up finish later and cannot call back into its closed
  event loop; tensorstore reports each as unraisable."""
  def drop(u):
    if isinstance(u.exc_value, RuntimeError) and str(u.exc_value) == "Event loop is closed":
      return
    hook(u)
  drop.si_jax_quiet = True
  return drop


@contextlib.contextmanager
def _quiet_no_space():
  """Quiet the parts of a failed save that repeat its error: Orbax's and asyncio's logged
  tracebacks, and the stragglers' closed-loop errors. The unraisable-hook filter is installed
  by the first save and stays (stragglers of a failed save report after it has raised; it
  drops nothing else)."""
  if not getattr(sys.unraisablehook, "si_jax_quiet", False):
    sys.unraisablehook = _drop_closed_loop_noise(sys.unraisablehook)
  filt = _DropNoSpaceLogs()
  loggers = [logging.getLogger(), logging.getLogger("absl")]
  for lg in loggers:
    lg.addFilter(filt)
    for h in lg.handlers:
      h.addFilter(filt)
  try:
    yield
  finally:
    for lg in loggers:
      lg.removeFilter(filt)
      for h in lg.handlers:
        h.removeFilter(filt)


# _discard_partial after a failed save: nothing may reappear for SETTLE_CHECKS x SETTLE_S.
SETTLE_CHECKS, SETTLE_S, SETTLE_MAX_S = 5, 0.1, 30.0


def _collect_abandoned_writes() -> None:
  """After a failed save Orbax leaves write coroutines of a closed event loop behind; finalized
  at interpreter exit they print tracebacks ('Event loop is closed', 'Python is likely
  shutting down'). Collect them now, quietly."""
  hook = sys.unraisablehook
  sys.unraisablehook = lambda _: None
  try:
    with warnings.catch_warnings():  # "coroutine ... was never awaited"
      warnings.simplefilter("ignore", RuntimeWarning)
      gc.collect()
  finally:
    sys.unraisablehook = hook


def _commit_futures(manager: Any) -> list:
  """The commit futures of the manager's latest async save ([] when there are none)."""
  checkpointer = getattr(manager, "_checkpointer", None)
  return list(getattr(getattr(checkpointer, "_async_manager", None), "_commit_futures", None)
              or ())


def _drain_commit_futures(manager: Any) -> None:
  """Waits for every write of the failed async save. Orbax's save thread waits on its commit
  futures one after another and gives up at the first error (the full disk), while the others
  (tensorstore writes of other arrays, creating their folders as they go) may still be running:
  a partial folder removed before they end comes back. Reaches Orbax's internals (0.12.8:
  CheckpointManager._checkpointer._async_manager._commit_futures); a no-op where they differ."""
  for f in _commit_futures(manager):
    try:
      f.result()
    except BaseException:  # pylint: disable=broad-except  (each may have failed the same way)
      pass


def _dir_bytes(path: epath.Path) -> int:
  total = 0
  for root, _, files in os.walk(os.fspath(path)):
    for f in files:
      try:
        total += os.path.getsize(os.path.join(root, f))
      except OSError:
        pass
  return total


class Checkpointer:
  """Saves and restores (state, meta) by step in one directory.

  Usage:
    ckpt = Checkpointer(workdir / "checkpoints", save_every=100)
    if ckpt.latest_step() is not None:
      state, meta = ckpt.restore(abstract_state)   # sharded like abstract_state
    ...
    ckpt.save(step, state, {"data_position": i, "seed": seed, "config": cfg.to_dict()})
    ckpt.close()

  Args:
    directory: local path or `gs://...`; created if missing.
    max_to_keep: how many most recent checkpoints stay on disk (None: all).
    save_every: `save(step, ...)` writes only when `step % save_every == 0` (or `force=True`,
      or on a preemption signal on multi-host TPU jobs).
    async_save: if True, `save` returns once the arrays are copied to host memory and writes
      them in a background thread; call `wait()` before reading the checkpoint back. The state
      may be donated/overwritten as soon as `save` returns. The next `save`, `latest_step`,
      `all_steps` and `close` wait for it first, so a failed save (a full disk) is reported
      for its own step and a committed step is never saved twice.
    checksums: record the arrays' checksums with every save (see the module docstring);
      restores verify whatever a checkpoint recorded, whatever this says.
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = 3,
               save_every: int = 1, async_save: bool = False, checksums: bool = True):
    if max_to_keep is not None and (not isinstance(max_to_keep, int) or max_to_keep < 1):
      raise ValueError(
          f"Checkpointer: max_to_keep must be None or an int >= 1, got {max_to_keep!r}")
    if not isinstance(save_every, int) or save_every < 1:
      raise ValueError(f"Checkpointer: save_every must be an int >= 1, got {save_every!r}")
    directory = os.fspath(directory)
    if "://" not in directory:
      directory = os.path.abspath(directory)
    self._directory = directory
    self._save_every = save_every
    self._checksums = checksums
    self._async = async_save
    self._pending: tuple[int, Callable[[], int]] | None = None  # (step, bytes it needs)
    # An async save's write threads log a full disk with tracebacks while training goes on:
    # quiet from the save until `wait` reports it in one line (as a synchronous save does).
    self._quiet_pending = contextlib.ExitStack()
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=ocm.AnySavePolicy([
            ocm.FixedIntervalPolicy(save_every),
            ocm.PreemptionCheckpointingPolicy(),
        ]),
        preservation_policy=ocm.LatestN(n=max_to_keep),
        # Always Orbax's async path (a synchronous save waits for it at once): only there are
        # the writes of a failed save reachable, to wait for before its folder is removed.
        enable_async_checkpointing=True,
        cleanup_tmp_directories=True,
        create=True,
    )
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    registry.add(_STATE, ocp.args.StandardSave, ocp.StandardCheckpointHandler)
    registry.add(_STATE, ocp.args.StandardRestore, ocp.StandardCheckpointHandler)
    registry.add(_META, ocp.args.JsonSave, ocp.JsonCheckpointHandler)
    registry.add(_META, ocp.args.JsonRestore, ocp.JsonCheckpointHandler)
    registry.add(_INTEGRITY, _IntegritySave, _IntegrityHandler)
    registry.add(_INTEGRITY, _IntegrityRestore, _IntegrityHandler)
    self._manager = ocp.CheckpointManager(directory, options=options, handler_registry=registry)

  @property
  def directory(self) -> str:
    return self._directory

  def all_steps(self) -> list[int]:
    """Steps of the complete checkpoints on disk, ascending (after a pending async save)."""
    self.wait()
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None if there is none (after a pending
    async save: the step it writes counts once it is committed)."""
    self.wait()
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: Mapping[str, Any], force: bool = False) -> bool:
    """Saves `state` and `meta` as checkpoint `step` if `save_every` (or `force`) says so.

    Args:
      step: the training step the state is *after* (resume continues at step + 1).
      state: pytree of jax/numpy arrays (a flax.struct dataclass TrainState is fine).
      meta: JSON object (str keys; tuples come back as lists).
      force: save even if `step % save_every != 0`. A step already on disk is never rewritten
        (Orbax raises StepAlreadyExistsError when forced onto one).

    Returns:
      True if a save was started (finished, unless async_save).

    Raises:
      NoSpaceError: the disk filled up; the partial checkpoint is gone, the others untouched.
    """
    step = int(step)
    if not isinstance(meta, Mapping):
      raise TypeError(
          f"Checkpointer.save(step={step}): meta must be a dict, got {type(meta).__name__}")
    if (problem := _json_problem(meta)) is not None:
      raise TypeError(f"Checkpointer.save(step={step}): meta is not JSON-able: {problem}")
    if not force and not self._manager.should_save(step):
      return False
    # An async save still in flight finishes first (Orbax would wait for it too): its failure
    # (a full disk) is reported for its own step, and its partial folder removed.
    self.wait()
    # A failed save of this step may have left its partial folder (a write still in flight when
    # the failure was cleaned up can recreate it); Orbax refuses to save over it.
    self._discard_partial(step, reload=False, settle=False)
    # Round-trip through json so the saved object is plain dicts/lists (no tuples/Mappings).
    meta = json.loads(json.dumps(dict(meta)))
    items = {_STATE: ocp.args.StandardSave(state), _META: ocp.args.JsonSave(meta)}
    if self._checksums:
      arrays = checksum_lib.start_tree_checksums(state)  # runs while the arrays are written
      items[_INTEGRITY] = _IntegritySave(lambda: {
          "algorithm": checksum_lib.ALGORITHM, "arrays": arrays(),
          "meta_sha256": checksum_lib.json_digest(meta)})
    raw = int(sum(getattr(x, "nbytes", 0) or np.asarray(x).nbytes
                  for x in jax.tree.leaves(state)))
    needed = lambda: self._needed_bytes(raw)  # only asked when the disk is full
    self._pending = (step, needed)
    self._quiet_pending.enter_context(_quiet_no_space())
    self._or_no_space(
        lambda: self._manager.save(step, args=ocp.args.Composite(**items), force=True),
        step, needed)
    if not self._async:
      self.wait()  # committed, or its error raised, before a synchronous save returns
    return True

  def _needed_bytes(self, raw: int) -> int:
    """About what a save takes on disk: the latest checkpoint's size (the same state, as
    written), else `raw`, the arrays' bytes before compression."""
    latest = self.latest_step()
    if latest is not None and "://" not in self._directory:
      return _dir_bytes(epath.Path(self._directory) / str(latest))
    return raw

  def _or_no_space(self, fn: Callable[[], Any], step: int, needed: Callable[[], int]) -> Any:
    """fn(), with a full disk turned into NoSpaceError and the partial checkpoint removed."""
    try:
      with _quiet_no_space():
        return fn()
    except Exception as e:  # pylint: disable=broad-except
      if isinstance(e, NoSpaceError) or not is_no_space(e):
        raise
    # Out of the except block, the failed save's frames are free: collect what it left.
    with _quiet_no_space():
      _drain_commit_futures(self._manager)
      _collect_abandoned_writes()
    self._discard_partial(step)
    raise NoSpaceError(step, self._directory, needed())

  def _discard_partial(self, step: int, reload: bool = True, settle: bool = True) -> None:
    """Removes `<step>.orbax-checkpoint-tmp*` (what a failed save leaves); process 0 does.

    settle: after a failed save, writes Orbax issued and abandoned (tensorstore's, which no
    future of Orbax's covers once its event loop is gone) may still be running and recreate
    the folder as it is removed: removal repeats until nothing has come back for SETTLE_CHECKS
    checks SETTLE_S apart (at most SETTLE_MAX_S; only on this failure path)."""
    if multihost.is_primary():
      pattern = f"{step}{TMP_MARK}*"
      deadline, quiet = time.monotonic() + SETTLE_MAX_S, 0
      while True:
        found = list(epath.Path(self._directory).glob(pattern))
        for p in found:
          try:
            p.rmtree(missing_ok=True) if p.is_dir() else p.unlink(missing_ok=True)
          except OSError:  # a write still in flight filled a folder being removed: again
            pass
        quiet = 0 if found else quiet + 1
        if not settle or quiet >= SETTLE_CHECKS or time.monotonic() > deadline:
          break
        time.sleep(SETTLE_S)
    if not reload:
      return
    try:
      self._manager.reload()
    except Exception:  # pylint: disable=broad-except
      pass

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
    """Restores checkpoint `step` (default: latest) into the structure of `abstract_state`
    and verifies it against its recorded checksums.

    Args:
      abstract_state: pytree of the same structure as the saved state, with
        `jax.ShapeDtypeStruct(shape, dtype, sharding=...)` leaves (e.g. `jax.eval_shape` of the
        init function with the train shardings attached) or concrete arrays. Each restored array
        gets the sharding of its target leaf, so a sharded state comes back sharded.
      step: which checkpoint; None for the latest.

    Returns:
      (state, meta): state has abstract_state's tree type; meta is the saved JSON object.

    Raises:
      FileNotFoundError: no such checkpoint.
      CheckpointMismatchError: structure, shape or dtype differ; names the first differing
        key path and both values.
      CheckpointCorruptError: the checkpoint cannot be read, or what was read is not what was
        saved; names the checkpoint, the array(s) and their data file(s).
    """
    self.wait()
    if step is None:
      step = self.latest_step()
      if step is None:
        raise FileNotFoundError(f"no checkpoint to restore in {self._directory}")
    step = int(step)
    steps = self.all_steps()
    if step not in steps:
      raise FileNotFoundError(
          f"no checkpoint for step {step} in {self._directory}; available steps: {steps}")
    target = jax.tree.map(_abstract_leaf, abstract_state)
    where = f"{self._directory}/{step}"
    try:
      self._check_matches(target, step)
    except CheckpointMismatchError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise self._unreadable(step, e) from e
    recorded = (epath.Path(self._directory) / str(step) / _INTEGRITY).exists()
    items = {_STATE: ocp.args.StandardRestore(target), _META: ocp.args.JsonRestore()}
    if recorded:
      items[_INTEGRITY] = _IntegrityRestore()
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except
      raise self._unreadable(step, e) from e
    state, meta = restored[_STATE], restored[_META]
    if recorded:
      self._verify(step, state, meta, restored[_INTEGRITY])
    elif multihost.is_primary():
      logging.warning("checkpoint %s has no checksums (written before si_jax recorded them): "
                      "restored without verifying its bytes", where)
    return state, meta

  def _unreadable(self, step: int, e: BaseException) -> CheckpointCorruptError:
    """The error for a checkpoint Orbax could not read: the root cause's first line (for
    tensorstore, which key of which database, and what was wrong with its bytes)."""
    _collect_abandoned_writes()  # the failed read leaves coroutines behind, too
    root, seen = e, set()
    while (root.__cause__ or root.__context__) is not None and id(root) not in seen:
      seen.add(id(root))
      root = root.__cause__ or root.__context__
    first = (str(root).strip().splitlines() or [type(root).__name__])[0]
    path = f"{self._directory}/{step}"
    return CheckpointCorruptError(f"checkpoint {path} cannot be read: {first[:500]}", step, path)

  def _verify(self, step: int, state: Any, meta: Any, integrity: Mapping[str, Any]) -> None:
    """Raises CheckpointCorruptError unless `state` and `meta` have the recorded checksums.
    Every process reaches the same verdict (the checksums are global)."""
    path = f"{self._directory}/{step}"
    if integrity.get("algorithm") != checksum_lib.ALGORITHM:
      raise CheckpointCorruptError(
          f"checkpoint {path}: its checksums use {integrity.get('algorithm')!r}, which this "
          f"si_jax cannot check (it computes {checksum_lib.ALGORITHM!r})", step, path)
    want = integrity.get("arrays", {})
    got = checksum_lib.tree_checksums(state)
    bad = [k for k, v in got.items() if k in want and want[k] != v]
    if bad:
      k = bad[0]
      files = self._data_files(step, k)
      where = f" (its data is in {', '.join(files)})" if files else ""
      more = (f"; {len(bad) - 1} more array(s) differ: {', '.join(bad[1:4])}"
              f"{', ...' if len(bad) > 4 else ''}") if len(bad) > 1 else ""
      raise CheckpointCorruptError(
          f"checkpoint {path} does not verify: array '{k}' has checksum {got[k]} but the "
          f"checkpoint recorded {want[k]}{where}{more}", step, path, tuple(bad))
    if integrity.get("meta_sha256") not in (None, checksum_lib.json_digest(meta)):
      raise CheckpointCorruptError(
          f"checkpoint {path} does not verify: its meta item ({path}/{_META}/metadata) has "
          f"sha256 {checksum_lib.json_digest(meta)[:16]}..., the checkpoint recorded "
          f"{integrity['meta_sha256'][:16]}...", step, path, (_META,))

  def _data_files(self, step: int, key: str) -> list[str]:
    """The data files (relative to the checkpoint) that hold array `key`, read from the
    state item's OCDBT manifest; [] where that cannot be read."""
    if "://" in self._directory:
      return []
    try:
      import tensorstore as ts  # pylint: disable=g-import-not-at-top
      base = os.path.join(self._directory, str(step), _STATE) + "/"
      kv = ts.KvStore.open({"driver": "file", "path": base}).result()
      manifest = ts.ocdbt.dump(kv).result()
      prefix = key.replace("/", ".").encode() + b"/"
      files: set[str] = set()

      def walk(location: str, depth: int = 0):
        node = ts.ocdbt.dump(kv, location).result()
        for entry in node.get("entries", []):
          k = entry.get("key", b"")
          k = k if isinstance(k, bytes) else str(k).encode()
          for v in entry.values():
            if isinstance(v, str) and v.startswith("btreenode:") and depth < 32:
              walk(v, depth + 1)
          value = entry.get("indirect_value")
          if isinstance(value, str) and k.startswith(prefix):
            _, base_path, rel = value.split(":")[:3]
            files.add(f"{_STATE}/{base_path}{rel}")

      walk(manifest["versions"][-1]["root"]["location"])
      return sorted(files)
    except Exception:  # pylint: disable=broad-except
      return []

  def restore_latest_good(self, abstract_state: Any, fall_back: bool = True
                          ) -> tuple[Any, dict, int, list[CheckpointCorruptError]] | None:
    """The newest checkpoint that verifies: (state, meta, step, the errors of newer ones that
    did not), or None when the directory holds no checkpoint.

    A checkpoint that does not verify is moved aside to `<step>.corrupt` (kept for a look;
    the run may save that step again) and the next older one is tried. With
    `fall_back=False` its CheckpointCorruptError is raised instead and nothing is moved.
    Raises CheckpointCorruptError when no checkpoint verifies.
    """
    skipped: list[CheckpointCorruptError] = []
    for step in reversed(self.all_steps()):
      try:
        state, meta = self.restore(abstract_state, step)
      except CheckpointCorruptError as e:
        if not fall_back:
          raise
        e.moved_to = self._set_aside(step)
        skipped.append(e)
        continue
      return state, meta, step, skipped
    if skipped:
      raise CheckpointCorruptError(
          f"no checkpoint in {self._directory} verifies (moved aside: "
          f"{', '.join(os.path.basename(e.moved_to) for e in skipped)}); the newest: "
          f"{skipped[0]}", skipped[0].step, skipped[0].path, skipped[0].arrays)
    return None

  def _set_aside(self, step: int) -> str:
    """Renames checkpoint `step` to `<step>.corrupt` (or `.corrupt-<n>`); process 0 does."""
    src = epath.Path(self._directory) / str(step)
    dst = src.parent / f"{step}{CORRUPT_SUFFIX}"
    n = 1
    while dst.exists():
      dst, n = src.parent / f"{step}{CORRUPT_SUFFIX}-{n}", n + 1
    multihost.sync(f"set_aside_{step}_read")
    if multihost.is_primary():
      src.rename(dst)
    multihost.sync(f"set_aside_{step}")
    self._manager.reload()
    return os.fspath(dst)

  def _check_matches(self, target: Any, step: int) -> None:
    """Raises CheckpointMismatchError at the first leaf where `target` and the saved tree differ."""
    saved_tree = self._manager.item_metadata(step)[_STATE]
    saved = _flatten(getattr(saved_tree, "tree", saved_tree))
    wanted = _flatten(target)
    where = f"checkpoint {self._directory}/{step}"
    for path, leaf in wanted.items():
      if path not in saved:
        raise CheckpointMismatchError(
            f"{where}: restore target has key path {path!r} (shape {tuple(leaf.shape)}) that the "
            f"checkpoint does not have; checkpoint key paths: {sorted(saved)}")
      have = saved[path]
      if tuple(have.shape) != tuple(leaf.shape):
        raise CheckpointMismatchError(
            f"{where}: shape mismatch at key path {path!r}: checkpoint has {tuple(have.shape)}, "
            f"restore target has {tuple(leaf.shape)}")
      if have.dtype is not None and np.dtype(have.dtype) != np.dtype(leaf.dtype):
        raise CheckpointMismatchError(
            f"{where}: dtype mismatch at key path {path!r}: checkpoint has {np.dtype(have.dtype)}, "
            f"restore target has {np.dtype(leaf.dtype)}")
    extra = [p for p in saved if p not in wanted]
    if extra:
      raise CheckpointMismatchError(
          f"{where}: checkpoint has key path {extra[0]!r} (shape {tuple(saved[extra[0]].shape)}) "
          f"that the restore target does not have ({len(extra)} such paths in all)")

  def wait(self) -> None:
    """Blocks until an async save has been committed (no-op when saving synchronously).
    Raises NoSpaceError if that save ran out of disk space."""
    step, needed = self._pending or (None, None)
    if step is None:
      self._manager.wait_until_finished()
      return
    try:
      self._or_no_space(self._manager.wait_until_finished, step, needed)
    finally:
      self._pending = None
      self._quiet_pending.close()

  def close(self) -> None:
    """Waits for pending saves and releases Orbax's threads. Idempotent."""
    try:
      self.wait()
    finally:
      self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
