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
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

__all__ = ["Checkpointer", "CheckpointMismatchError"]

_STATE = "state"
_META = "meta"


class CheckpointMismatchError(ValueError):
  """The restore target does not match what the checkpoint holds (structure, shape or dtype)."""


def _path_str(path) -> str:
  """A jax key path as `params/layers/0/w` (dict keys, attribute names, sequence indices)."""
  return jax.tree_util.keystr(path, simple=True, separator="/") or "<root>"


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
      may be donated/overwritten as soon as `save` returns.
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = 3,
               save_every: int = 1, async_save: bool = False):
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
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=ocm.AnySavePolicy([
            ocm.FixedIntervalPolicy(save_every),
            ocm.PreemptionCheckpointingPolicy(),
        ]),
        preservation_policy=ocm.LatestN(n=max_to_keep),
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,
        create=True,
    )
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    registry.add(_STATE, ocp.args.StandardSave, ocp.StandardCheckpointHandler)
    registry.add(_STATE, ocp.args.StandardRestore, ocp.StandardCheckpointHandler)
    registry.add(_META, ocp.args.JsonSave, ocp.JsonCheckpointHandler)
    registry.add(_META, ocp.args.JsonRestore, ocp.JsonCheckpointHandler)
    self._manager = ocp.CheckpointManager(directory, options=options, handler_registry=registry)

  @property
  def directory(self) -> str:
    return self._directory

  def all_steps(self) -> list[int]:
    """Steps of the complete checkpoints on disk, ascending."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None if there is none."""
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
    """
    step = int(step)
    if not isinstance(meta, Mapping):
      raise TypeError(
          f"Checkpointer.save(step={step}): meta must be a dict, got {type(meta).__name__}")
    if (problem := _json_problem(meta)) is not None:
      raise TypeError(f"Checkpointer.save(step={step}): meta is not JSON-able: {problem}")
    return self._manager.save(
        step,
        args=ocp.args.Composite(**{
            _STATE: ocp.args.StandardSave(state),
            # Round-trip through json so the saved object is plain dicts/lists (no tuples/Mappings).
            _META: ocp.args.JsonSave(json.loads(json.dumps(dict(meta)))),
        }),
        force=force)

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
    """Restores checkpoint `step` (default: latest) into the structure of `abstract_state`.

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
    """
    self._manager.wait_until_finished()
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
    self._check_matches(target, step)
    restored = self._manager.restore(step, args=ocp.args.Composite(**{
        _STATE: ocp.args.StandardRestore(target),
        _META: ocp.args.JsonRestore(),
    }))
    return restored[_STATE], restored[_META]

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
    """Blocks until an async save has been committed (no-op when saving synchronously)."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases Orbax's threads. Idempotent."""
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
