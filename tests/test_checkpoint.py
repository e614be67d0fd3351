"""Tests for si_jax.checkpoint: round trips, retention, sharded restore, errors, kill mid-save."""

import errno
import glob
import importlib.util
import os
import signal
import subprocess
import sys
import time

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from si_jax import checkpoint as ckpt_lib
from si_jax.checkpoint import CheckpointCorruptError, CheckpointMismatchError, Checkpointer

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CHILD = os.path.join(HERE, "ckpt_child.py")

_spec = importlib.util.spec_from_file_location("ckpt_child", CHILD)
ckpt_child = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ckpt_child)


@flax.struct.dataclass
class Inner:
  codes: jax.Array
  flags: jax.Array


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  opt_state: optax.OptState
  inner: Inner


def make_train_state(scale: float = 1.0) -> TrainState:
  params = {
      "w": jnp.arange(24, dtype=jnp.float32).reshape(6, 4) * scale,
      "emb": (jnp.arange(12, dtype=jnp.float32).reshape(3, 4) / 7 * scale).astype(jnp.bfloat16),
      "half": jnp.full((5,), 0.5 * scale, jnp.float16),
  }
  tx = optax.adamw(1e-3)
  opt_state = tx.init(params)
  # One real update so mu/nu/count are not all zeros.
  grads = jax.tree.map(lambda p: jnp.ones_like(p) * scale, params)
  _, opt_state = tx.update(grads, opt_state, params)
  return TrainState(
      step=jnp.asarray(7, jnp.int32),
      params=params,
      opt_state=opt_state,
      inner=Inner(codes=jnp.array([-3, 0, 5], jnp.int8),
                  flags=jnp.array([True, False, True])),
  )


def assert_trees_equal(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for (path, g), w in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
    assert g.dtype == w.dtype, (jax.tree_util.keystr(path), g.dtype, w.dtype)
    assert g.shape == w.shape, (jax.tree_util.keystr(path), g.shape, w.shape)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=jax.tree_util.keystr(path))


def abstract_of(tree):
  return jax.eval_shape(lambda: tree)


META = {"data_position": 123, "seed": 42, "config": {"rl": {"group_size": 8, "tau_r": 0.5},
        "name": "arith_si"}, "history": [{"step": 1, "reward": 0.25}], "note": None}


# --- round trips ------------------------------------------------------------------------------


def test_round_trip_dataclass_state_and_meta(tmp_path):
  state = make_train_state()
  with Checkpointer(tmp_path / "ckpt") as ckpt:
    assert ckpt.latest_step() is None
    assert ckpt.save(7, state, META)
    assert ckpt.latest_step() == 7
    restored, meta = ckpt.restore(abstract_of(state))
  assert isinstance(restored, TrainState) and isinstance(restored.inner, Inner)
  assert_trees_equal(restored, state)
  assert meta == META
  # Several dtypes made it through as themselves.
  assert restored.params["emb"].dtype == jnp.bfloat16
  assert restored.params["half"].dtype == jnp.float16
  assert restored.inner.codes.dtype == jnp.int8 and restored.inner.flags.dtype == jnp.bool_
  assert isinstance(restored.params["w"], jax.Array)


def test_restore_with_concrete_target_and_numpy_leaves(tmp_path):
  state = {"a": np.arange(5, dtype=np.int64), "b": np.float32(2.5), "c": jnp.ones((2, 2))}
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state, {"tuple": (1, 2)})
    restored, meta = ckpt.restore(state)
  assert isinstance(restored["a"], np.ndarray) and restored["a"].dtype == np.int64
  np.testing.assert_array_equal(restored["a"], state["a"])
  assert float(restored["b"]) == 2.5
  assert isinstance(restored["c"], jax.Array)
  assert meta == {"tuple": [1, 2]}  # JSON: tuples come back as lists


def test_reopen_same_directory_sees_saved_steps(tmp_path):
  with Checkpointer(tmp_path, save_every=1) as ckpt:
    ckpt.save(3, {"x": jnp.arange(3)}, {"k": 3})
  with Checkpointer(tmp_path) as ckpt:
    assert ckpt.latest_step() == 3
    restored, meta = ckpt.restore({"x": jax.ShapeDtypeStruct((3,), jnp.int32)})
  np.testing.assert_array_equal(restored["x"], [0, 1, 2])
  assert meta == {"k": 3}


def test_async_save_round_trip_and_state_may_be_freed_after_save(tmp_path):
  state = make_train_state(scale=3.0)
  expected = jax.tree.map(np.asarray, state)
  with Checkpointer(tmp_path, async_save=True) as ckpt:
    assert ckpt.save(1, state, META)
    # save() returned: the arrays are in host memory, so the train step may donate them.
    for leaf in jax.tree.leaves(state):
      leaf.delete()
    ckpt.wait()
    assert ckpt.all_steps() == [1]
    restored, meta = ckpt.restore(abstract_of(expected))
  assert_trees_equal(restored, expected)
  assert meta == META


# --- step bookkeeping -------------------------------------------------------------------------


def test_save_every_keep_last_k_and_force(tmp_path):
  with Checkpointer(tmp_path, max_to_keep=3, save_every=2) as ckpt:
    saved = [ckpt.save(s, {"v": jnp.full((2,), s)}, {"s": s}) for s in range(1, 11)]
    assert saved == [s % 2 == 0 for s in range(1, 11)]
    assert ckpt.all_steps() == [6, 8, 10]
    assert ckpt.latest_step() == 10
    assert ckpt.save(11, {"v": jnp.full((2,), 11)}, {"s": 11}, force=True)
    assert ckpt.all_steps() == [8, 10, 11]
    assert not ckpt.save(10, {"v": jnp.full((2,), 10)}, {"s": 10})  # not after the latest
    old, meta = ckpt.restore({"v": jax.ShapeDtypeStruct((2,), jnp.int32)}, step=8)
    np.testing.assert_array_equal(old["v"], [8, 8])
    assert meta == {"s": 8}
    latest, meta = ckpt.restore({"v": jax.ShapeDtypeStruct((2,), jnp.int32)})
    np.testing.assert_array_equal(latest["v"], [11, 11])
    assert meta == {"s": 11}
  assert sorted(n for n in os.listdir(tmp_path) if n[0].isdigit()) == ["10", "11", "8"]


def test_constructor_validates_arguments(tmp_path):
  with pytest.raises(ValueError, match="max_to_keep must be None or an int >= 1, got 0"):
    Checkpointer(tmp_path, max_to_keep=0)
  with pytest.raises(ValueError, match="save_every must be an int >= 1, got 0"):
    Checkpointer(tmp_path, save_every=0)


# --- errors -----------------------------------------------------------------------------------


def test_key_paths_join_fields_dict_keys_and_indices_with_slashes(tmp_path):
  from si_jax import checkpoint as ckpt_lib
  state = make_train_state()
  # Dataclass fields, dict keys, tuple indices and NamedTuple fields (optax's ScaleByAdamState).
  names = list(ckpt_lib._flatten(state))
  assert names == [
      "step", "params/emb", "params/half", "params/w",
      "opt_state/0/count", "opt_state/0/mu/emb", "opt_state/0/mu/half", "opt_state/0/mu/w",
      "opt_state/0/nu/emb", "opt_state/0/nu/half", "opt_state/0/nu/w",
      "inner/codes", "inner/flags"]
  nested = {"a": [1, (2, {"b": 3})], "c": None, "d": ()}
  assert ckpt_lib._flatten(nested) == {"a/0": 1, "a/1/0": 2, "a/1/1/b": 3}
  assert ckpt_lib._flatten(jnp.zeros(2)).keys() == {"<root>"}
  # Orbax's metadata tree of the saved state (plain dicts) gets the same names.
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state, {})
    saved = ckpt._manager.item_metadata(1)["state"]
  assert sorted(ckpt_lib._flatten(saved.tree)) == sorted(names)



def test_restore_errors_name_key_path_and_both_values(tmp_path):
  state = make_train_state()
  with Checkpointer(tmp_path) as ckpt:
    with pytest.raises(FileNotFoundError, match="no checkpoint to restore in"):
      ckpt.restore(abstract_of(state))
    ckpt.save(1, state, {})
    with pytest.raises(FileNotFoundError, match=r"step 5 .*available steps: \[1\]"):
      ckpt.restore(abstract_of(state), step=5)

    abstract = abstract_of(state)
    wrong_shape = abstract.replace(
        params={**abstract.params, "w": jax.ShapeDtypeStruct((6, 5), jnp.float32)})
    with pytest.raises(CheckpointMismatchError,
                       match=r"shape mismatch at key path 'params/w': checkpoint has \(6, 4\), "
                             r"restore target has \(6, 5\)"):
      ckpt.restore(wrong_shape)

    wrong_dtype = abstract.replace(
        params={**abstract.params, "w": jax.ShapeDtypeStruct((6, 4), jnp.bfloat16)})
    with pytest.raises(CheckpointMismatchError,
                       match=r"dtype mismatch at key path 'params/w': checkpoint has float32, "
                             r"restore target has bfloat16"):
      ckpt.restore(wrong_dtype)

    extra = abstract.replace(
        params={**abstract.params, "new": jax.ShapeDtypeStruct((2,), jnp.float32)})
    with pytest.raises(CheckpointMismatchError,
                       match=r"target has key path 'params/new' \(shape \(2,\)\) that the "):
      ckpt.restore(extra)

    opt = abstract.opt_state[0]
    wrong_moment = abstract.replace(opt_state=(opt._replace(
        mu={**opt.mu, "w": jax.ShapeDtypeStruct((3, 4), jnp.float32)}),) + abstract.opt_state[1:])
    with pytest.raises(CheckpointMismatchError,
                       match=r"shape mismatch at key path 'opt_state/0/mu/w': checkpoint has "
                             r"\(6, 4\), restore target has \(3, 4\)"):
      ckpt.restore(wrong_moment)

    missing = abstract.replace(params={k: v for k, v in abstract.params.items() if k != "half"})
    with pytest.raises(CheckpointMismatchError, match=r"checkpoint has key path '[^']*half'"):
      ckpt.restore(missing)


def test_meta_must_be_json(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    with pytest.raises(TypeError, match=r"meta\['a'\]\[1\] is a ndarray"):
      ckpt.save(1, {"x": jnp.zeros(2)}, {"a": [1, np.zeros(2)]})
    with pytest.raises(TypeError, match=r"meta\['r'\] is nan"):
      ckpt.save(1, {"x": jnp.zeros(2)}, {"r": float("nan")})
    with pytest.raises(TypeError, match="non-string key 3"):
      ckpt.save(1, {"x": jnp.zeros(2)}, {3: "x"})
    assert ckpt.latest_step() is None


# --- integrity: checksums recorded with every save, verified on every restore -----------------


def _random_state(seed: int) -> dict:
  """Incompressible values, so the embedding gets a data file of its own (not inlined)."""
  rng = np.random.default_rng(seed)
  return {"params": {"emb": jnp.asarray(rng.standard_normal((256, 128)), jnp.float32),
                     "b": jnp.asarray(rng.standard_normal(16), jnp.bfloat16)},
          "step": jnp.asarray(seed, jnp.int32)}


def _largest_data_file(step_dir) -> str:
  """The biggest array data file of a checkpoint (OCDBT: state/ocdbt.process_<i>/d/<id>)."""
  files = glob.glob(os.path.join(step_dir, "state", "ocdbt.process_*", "d", "*"))
  return max(files, key=os.path.getsize)


def _flip_bytes(path, n: int = 64) -> None:
  """What a bad disk or a partial copy leaves: n bytes in the middle of the file inverted."""
  data = bytearray(open(path, "rb").read())
  mid = len(data) // 2
  data[mid:mid + n] = bytes(b ^ 0xFF for b in data[mid:mid + n])
  open(path, "wb").write(data)


def test_flipped_bytes_in_a_data_file_are_found_naming_checkpoint_array_and_file(tmp_path):
  state = _random_state(1)
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state, {"s": 1})
  data_file = _largest_data_file(tmp_path / "1")
  _flip_bytes(data_file)
  with Checkpointer(tmp_path) as ckpt:
    with pytest.raises(CheckpointCorruptError) as e:
      ckpt.restore(abstract_of(state))
  msg = str(e.value)
  rel = os.path.relpath(data_file, tmp_path / "1")
  assert msg.startswith(f"checkpoint {tmp_path}/1 does not verify: array 'params/emb' has "
                        f"checksum "), msg
  assert f"(its data is in {rel})" in msg, msg
  assert (e.value.step, e.value.arrays) == (1, ("params/emb",))


def test_a_truncated_data_file_is_a_checkpoint_that_cannot_be_read(tmp_path):
  state = _random_state(1)
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state, {"s": 1})
  data_file = _largest_data_file(tmp_path / "1")
  data = open(data_file, "rb").read()
  open(data_file, "wb").write(data[:len(data) // 2])  # a partial copy
  with Checkpointer(tmp_path) as ckpt:
    with pytest.raises(CheckpointCorruptError,
                       match=rf"^checkpoint {tmp_path}/1 cannot be read: .*params\.emb"):
      ckpt.restore(abstract_of(state))


def test_an_edited_meta_item_does_not_verify(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, _random_state(1), {"data_cursor": 128})
  meta_file = tmp_path / "1" / "meta" / "metadata"
  meta_file.write_text(meta_file.read_text().replace("128", "129"))
  with Checkpointer(tmp_path) as ckpt:
    with pytest.raises(CheckpointCorruptError, match=r"does not verify: its meta item "):
      ckpt.restore(abstract_of(_random_state(1)))


def test_restore_latest_good_falls_back_past_a_corrupt_checkpoint_and_sets_it_aside(tmp_path):
  with Checkpointer(tmp_path, max_to_keep=3) as ckpt:
    for s in (1, 2, 3):
      ckpt.save(s, _random_state(s), {"s": s})
  _flip_bytes(_largest_data_file(tmp_path / "3"))
  target = abstract_of(_random_state(0))
  with Checkpointer(tmp_path, max_to_keep=3) as ckpt:
    # refuse: the error, and nothing moved
    with pytest.raises(CheckpointCorruptError, match="/3 does not verify"):
      ckpt.restore_latest_good(target, fall_back=False)
    assert ckpt.all_steps() == [1, 2, 3]
    assert os.path.isdir(tmp_path / "3") and not os.path.exists(tmp_path / "3.corrupt")
    # fall back: step 2, the bad step 3 kept beside it for a look, and Orbax forgets it
    state, meta, step, skipped = ckpt.restore_latest_good(target)
    assert step == 2 and meta == {"s": 2}
    assert_trees_equal(state, _random_state(2))
    assert [e.step for e in skipped] == [3] and skipped[0].arrays == ("params/emb",)
    assert skipped[0].moved_to == os.path.join(tmp_path, "3.corrupt")
    assert ckpt.all_steps() == [1, 2] and os.path.isdir(tmp_path / "3.corrupt")
    # the resumed run saves step 3 again
    assert ckpt.save(3, _random_state(3), {"s": 3})
    assert_trees_equal(ckpt.restore(target)[0], _random_state(3))
  assert sorted(os.listdir(tmp_path)) == ["1", "2", "3", "3.corrupt"]


def test_restore_latest_good_when_nothing_verifies_or_nothing_is_there(tmp_path):
  target = abstract_of(_random_state(0))
  with Checkpointer(tmp_path) as ckpt:
    assert ckpt.restore_latest_good(target) is None
    ckpt.save(1, _random_state(1), {"s": 1})
  _flip_bytes(_largest_data_file(tmp_path / "1"))
  with Checkpointer(tmp_path) as ckpt:
    with pytest.raises(CheckpointCorruptError,
                       match=r"no checkpoint in .* verifies \(moved aside: 1\.corrupt\)"):
      ckpt.restore_latest_good(target)


def test_checkpoints_without_checksums_restore_unverified_with_a_warning(tmp_path, caplog):
  """Workdirs written before checksums were recorded still resume."""
  state = _random_state(1)
  with Checkpointer(tmp_path, checksums=False) as ckpt:
    ckpt.save(1, state, {"s": 1})
  assert not os.path.exists(tmp_path / "1" / "integrity")
  with Checkpointer(tmp_path) as ckpt:
    restored, _ = ckpt.restore(abstract_of(state))
  assert_trees_equal(restored, state)
  assert "has no checksums" in caplog.text


# --- a full disk -----------------------------------------------------------------------------


def _full_disk_for(monkeypatch, step: int) -> None:
  """Orbax's writes into checkpoint `step`'s temporary folder go to /dev/full: the kernel
  answers ENOSPC, as a full filesystem did in a tmpfs probe (at this very call)."""
  from orbax.checkpoint._src.path import async_path
  real = async_path.write_text

  async def write_text(path, text, **kwargs):
    if f"/{step}.orbax-checkpoint-tmp" in os.fspath(path):
      with open("/dev/full", "w", encoding="utf-8") as f:
        f.write(text)
    return await real(path, text, **kwargs)

  monkeypatch.setattr(async_path, "write_text", write_text)


@pytest.mark.parametrize("async_save", [False, True])
def test_a_full_disk_is_one_error_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch,
                                                                    capfd, async_save):
  with Checkpointer(tmp_path, async_save=async_save) as ckpt:
    ckpt.save(1, _random_state(1), {"s": 1})
    ckpt.wait()
    used = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(tmp_path / "1")
               for f in fs)
    capfd.readouterr()
    _full_disk_for(monkeypatch, 2)
    with pytest.raises(ckpt_lib.NoSpaceError) as e:
      ckpt.save(2, _random_state(2), {"s": 2})
      ckpt.wait()  # async: the commit, and so the error, comes here
    assert str(e.value) == (f"no space left on device while saving checkpoint 2 to {tmp_path} "
                            f"(needed about {used / 1e6:.1f} MB)")
    assert e.value.errno == errno.ENOSPC and e.value.step == 2
    assert sorted(os.listdir(tmp_path)) == ["1"]  # no 2.orbax-checkpoint-tmp left behind
    assert ckpt.all_steps() == [1]
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and "No space left" not in out + err, out + err
    monkeypatch.undo()  # room made: the previous checkpoint restores, the same step saves
    state, meta = ckpt.restore(abstract_of(_random_state(0)))
    assert_trees_equal(state, _random_state(1))
    assert meta == {"s": 1}
    assert ckpt.save(2, _random_state(2), {"s": 2})
    ckpt.wait()
    assert_trees_equal(ckpt.restore(abstract_of(_random_state(0)))[0], _random_state(2))


def test_no_space_is_read_from_oserrors_and_from_tensorstore_messages():
  # tensorstore's error for a data write on a full tmpfs (recorded from a probe, paths cut)
  ts_error = ValueError(
      'RESOURCE_EXHAUSTED: Error writing "opt_state.1.0.count/0" in OCDBT database at local '
      'file "/w/checkpoints/4.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/ocdbt.process_0/"'
      ': Failed writing: "/w/checkpoints/4.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/ocdbt'
      '.process_0/d/866c4db36c74ec923c6dbb4d0df52f08": Failed to write 95513 bytes to file 21: '
      "No space left on device [os_error_code='28']")
  assert ckpt_lib.is_no_space(ts_error)
  assert ckpt_lib.is_no_space(OSError(errno.ENOSPC, "No space left on device"))
  try:
    try:
      raise ts_error
    except ValueError as inner:
      raise RuntimeError("a save failed") from inner
  except RuntimeError as outer:
    assert ckpt_lib.is_no_space(outer)  # found through the chain
  assert not ckpt_lib.is_no_space(OSError(errno.EACCES, "Permission denied"))
  assert not ckpt_lib.is_no_space(ValueError("RESOURCE_EXHAUSTED: out of memory"))


# --- sharded restore on 8 simulated CPU devices ----------------------------------------------


def _sharded_round_trip(directory: str) -> None:
  """Saves a state sharded one way, restores it onto other NamedShardings (and one device);
  the checksums recorded on one sharding verify on the others. Needs 8 devices."""
  assert jax.device_count() >= 8, jax.devices()
  devices = np.array(jax.devices()[:8])
  mesh = jax.sharding.Mesh(devices.reshape(2, 4), ("data", "fsdp"))
  named = lambda *spec: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))

  w = jnp.arange(8 * 16, dtype=jnp.float32).reshape(8, 16)
  b = jnp.arange(16, dtype=jnp.bfloat16)
  state = {"params": {"w": jax.device_put(w, named("fsdp", None)),
                      "b": jax.device_put(b, named())},
           "step": jnp.asarray(4, jnp.int32)}
  with Checkpointer(directory) as ckpt:
    ckpt.save(4, state, {"seed": 0})
    # Restore onto a different sharding than the one saved.
    sds = jax.ShapeDtypeStruct
    target = {"params": {"w": sds((8, 16), jnp.float32, sharding=named("data", "fsdp")),
                         "b": sds((16,), jnp.bfloat16, sharding=named("fsdp"))},
              "step": sds((), jnp.int32, sharding=named())}
    restored, meta = ckpt.restore(target)
  assert meta == {"seed": 0}
  for got, tgt, want in zip(jax.tree.leaves(restored), jax.tree.leaves(target),
                            jax.tree.leaves({"params": {"w": w, "b": b}, "step": 4})):
    assert got.sharding == tgt.sharding, (got.sharding, tgt.sharding)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  rw = restored["params"]["w"]
  assert len(rw.addressable_shards) == 8
  assert {s.data.shape for s in rw.addressable_shards} == {(4, 4)}
  with Checkpointer(directory) as ckpt:  # onto one device: verified all the same
    one = jax.tree.map(lambda t: jax.ShapeDtypeStruct(t.shape, t.dtype), target)
    restored, _ = ckpt.restore(one)
  np.testing.assert_array_equal(np.asarray(restored["params"]["w"]), np.asarray(w))
  print("SHARDED_OK")


def test_restore_onto_named_sharding_on_8_cpu_devices(tmp_path):
  if jax.device_count() >= 8:
    _sharded_round_trip(str(tmp_path))
    return
  # jax is already initialized with fewer devices in this process: run in a fresh one.
  env = dict(os.environ)
  flag = "--xla_force_host_platform_device_count=8"
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flag).strip()
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), "sharded", str(tmp_path)],
                        env=env, capture_output=True, text=True, timeout=600)  # hang guard
  assert proc.returncode == 0 and "SHARDED_OK" in proc.stdout, proc.stdout + proc.stderr[-4000:]


# --- SIGKILL in the middle of a save ----------------------------------------------------------


def _wait_for(predicate, proc, timeout_s, what, poll_s):
  deadline = time.monotonic() + timeout_s
  while not predicate():
    if proc.poll() is not None:
      out = proc.stdout.read() if proc.stdout else ""
      raise AssertionError(f"child exited ({proc.returncode}) before {what}:\n{out[-4000:]}")
    if time.monotonic() > deadline:
      proc.kill()
      raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
    time.sleep(poll_s)


@pytest.mark.parametrize("mode", ["write", "commit"])
def test_sigkill_mid_save_keeps_previous_checkpoint(tmp_path, mode):
  ckpt_dir, signal_dir = tmp_path / "ckpt", tmp_path / "signals"
  signal_dir.mkdir()
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  proc = subprocess.Popen([sys.executable, CHILD, str(ckpt_dir), str(signal_dir), mode, "64"],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  # The child cannot finish step 2 (it stops before the final rename), so the kill cannot come
  # too late; the waits' limits only guard against a hang.
  try:
    _wait_for(lambda: (signal_dir / "saving_2").exists(), proc, 300, "the child to start step 2",
              0.01)
    if mode == "write":
      tmp_glob = str(ckpt_dir / "2.orbax-checkpoint-tmp*")
      _wait_for(lambda: glob.glob(tmp_glob), proc, 300, "the step-2 tmp dir", 0.0005)
    else:
      _wait_for(lambda: (signal_dir / "committing").exists(), proc, 300, "the step-2 commit",
                0.01)
    os.kill(proc.pid, signal.SIGKILL)
  finally:
    proc.kill()
    proc.wait(timeout=30)
    proc.stdout.close()
  assert proc.returncode == -signal.SIGKILL
  assert not (signal_dir / "saved_2").exists()
  # Killed mid-save: step 2 is only a tmp dir (in commit mode a complete one, minus the rename).
  names = sorted(os.listdir(ckpt_dir))
  assert "1" in names and "2" not in names, names
  assert any(n.startswith("2.orbax-checkpoint-tmp") for n in names), names
  if mode == "commit":
    assert (ckpt_dir / "2.orbax-checkpoint-tmp" / "commit_success.txt").exists()

  small = ckpt_child.SMALL
  with Checkpointer(ckpt_dir) as ckpt:
    assert ckpt.latest_step() == 1 and ckpt.all_steps() == [1]
    state, meta = ckpt.restore(abstract_of(ckpt_child.make_state(1, small)))
    assert_trees_equal(state, ckpt_child.make_state(1, small))
    assert meta == ckpt_child.make_meta(1)
    # Resume: step 2 can be saved again (Orbax removed the leftover tmp dir first).
    assert ckpt.save(2, ckpt_child.make_state(2, small), ckpt_child.make_meta(2))
    assert sorted(n for n in os.listdir(ckpt_dir) if n[0].isdigit()) == ["1", "2"]
    state, meta = ckpt.restore(abstract_of(ckpt_child.make_state(2, small)))
  assert_trees_equal(state, ckpt_child.make_state(2, small))
  assert meta == ckpt_child.make_meta(2)


if __name__ == "__main__":
  if sys.argv[1:2] == ["sharded"]:
    _sharded_round_trip(sys.argv[2])
  else:
    raise SystemExit(f"usage: {sys.argv[0]} sharded DIR")


def test_a_failed_async_save_waits_for_all_its_writes_before_removing_them(tmp_path):
  """Orbax's save thread stops at the first failed write; the others go on and would recreate
  the partial folder after it is removed. The drain reaches Orbax's futures by private names:
  this fails if a new Orbax renames them (the drain would silently do nothing)."""
  with Checkpointer(tmp_path, async_save=True) as ckpt:
    ckpt.save(1, _random_state(1), {"s": 1})
    futures = ckpt_lib._commit_futures(ckpt._manager)
    assert futures and all(hasattr(f, "result") for f in futures)
    ckpt.wait()
  done = []

  class Slow:  # a write that ends only after the failed one was reported
    def __init__(self, fail):
      self.fail = fail

    def result(self):
      if self.fail:
        raise OSError(errno.ENOSPC, "No space left on device")
      done.append(1)

  class Manager:
    class _checkpointer:  # pylint: disable=invalid-name
      class _async_manager:  # pylint: disable=invalid-name
        _commit_futures = [Slow(True), Slow(False), Slow(False)]

  ckpt_lib._drain_commit_futures(Manager())
  assert done == [1, 1]
