"""Multi-controller runs: two si-train processes on one machine (CPU, gloo collectives, 4
simulated devices each) train exactly like one process with 8 devices; the helpers each
process uses to own its rows."""

import dataclasses
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import fault_boot
from si_jax import multihost
from si_jax.train import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "experiments", "configs", "arith_grpo.py")
# The smoke policy never answers right; KL plus a length penalty over the whole budget give
# every group a signal, so the policy moves. One mini-batch: a run's rows then sit on the same
# devices whatever the number of processes (with several, each process splits its own rows).
# 2 SFT steps (a checkpoint at step 2, the hand-over), then the smoke's 4 RL steps: the RL
# warm-up moves the policy from its reference from the third on (steps 5 and 6), and evaluations
# run before RL and at steps 4 and 6.
ARGS = (f"--config={CONFIG}:smoke", "--config.mesh.data=8", "--config.rl.kl_beta=0.5",
        "--config.rl.overlong=True", "--config.rl.overlong_buffer_frac=1.0",
        "--config.rl.minibatches=1", "--config.sft.steps=2")
STEPS = 6


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(devices: int, **extra) -> dict:
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu", **extra)
  return env


def _start(workdir, env, *args):
  return subprocess.Popen([sys.executable, "-m", "si_jax.cli.train", *ARGS, *args,
                           f"--workdir={workdir}"], env=env, cwd=REPO, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _metrics(workdir):
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return [{k: v for k, v in r.items() if not k.startswith(("time/", "compile/"))}
          for r in rows]


def _samples(workdir):
  return {(r["step"], r["id"]): r["completion"]
          for r in map(json.loads, open(os.path.join(workdir, "samples.jsonl")))}


def _launch_two(workdir, *extra, env=None, program=None):
  """si-launch local: 2 processes x 4 CPU devices of si-train (or `program`) on ARGS."""
  return subprocess.Popen(
      [sys.executable, "-m", "si_jax.tools.launch", "local", "--processes", "2",
       "--devices_per_process", "4", *extra, *(["--program", program] if program else []),
       "--", *ARGS, f"--workdir={workdir}"],
      cwd=REPO, env=dict(os.environ, **(env or {})), text=True, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
  """One uninterrupted two-process run on ARGS, started as a user would: si-launch local
  (si_jax/tools/launch/), two simulated hosts. The one-process run and the preempted run below
  are compared against it. Returns its workdir, stdout and stderr."""
  workdir = tmp_path_factory.mktemp("two_processes") / "run"
  p = _launch_two(workdir)
  out, err = p.communicate(timeout=900)
  assert p.returncode == 0, out + err
  return workdir, out, err


def test_two_processes_train_like_one_process_with_the_same_devices(tmp_path, two_processes):
  one = tmp_path / "one"
  p = _start(one, _env(8))
  out, _ = p.communicate(timeout=600)
  assert p.returncode == 0, out

  two, out, err = two_processes  # two simulated hosts (si-launch local)
  out += err
  assert "[p0] held-out avg@4" in out and "[p1] held-out" not in out  # process 0 reports

  # Process 0 alone wrote the run's files: one metrics row per step.
  a, b = _metrics(one), _metrics(two)
  assert [r["step"] for r in b] == [r["step"] for r in a] == list(range(1, STEPS + 1))
  for ra, rb in zip(a, b):
    assert ra.keys() == rb.keys(), (ra["step"], ra.keys() ^ rb.keys())
    for k in ra:
      if isinstance(ra[k], int):  # token counts, verdicts, skips: exactly
        assert ra[k] == rb[k], (ra["step"], k)
      else:  # sums over devices: the collectives may add in another order (gloo vs in-process)
        np.testing.assert_allclose(rb[k], ra[k], rtol=1e-5, atol=1e-6, err_msg=f"{ra['step']} {k}")
  rl = [r for r in a if r["phase"] == 1]
  assert any(r["policy/kl_ref"] > 0 for r in rl)  # the policy moved away from the reference
  # Every evaluation sampled the same completions (process 0 logs its own rows).
  sa, sb = _samples(one), _samples(two)
  assert sb and all(sa[k] == v for k, v in sb.items())

  # The checkpoints (written through Orbax's multi-process path) hold the same params.
  ra, rb = workdir_lib.load_run(str(one)), workdir_lib.load_run(str(two))
  assert ra["step"] == rb["step"] == STEPS
  for x, y in zip(jax.tree.leaves(jax.device_get(ra["params"])),
                  jax.tree.leaves(jax.device_get(rb["params"]))):
    np.testing.assert_allclose(y, x, rtol=0, atol=1e-6)


def test_sigterm_to_one_process_saves_the_same_step_on_both_and_the_restart_is_the_same_run(
    tmp_path, two_processes):
  """Preemption (issue #19): SIGTERM reaches process 1 only, during step 5 (the third of 4 RL
  steps; not a step checkpoint.every saves). Both processes finish the step, save checkpoint 5,
  exit 75; si-launch restarts them (--max_restarts), they resume at step 5 and run step 6, and
  the run ends bitwise equal to the two-process run that was not interrupted (the fixture)."""
  a, b, ready = two_processes[0], tmp_path / "b", tmp_path / "ready"
  boot = shlex.join([sys.executable, "-c", fault_boot.BOOT])
  p = _launch_two(b, "--max_restarts", "1", program=boot,
                  env={"SI_FAULT_PAUSE_STEP": "4", "SI_FAULT_PAUSE_PROCESS": "1",
                       "SI_FAULT_READY": str(ready)})
  while not ready.exists():  # process 1 paused at the start of step 5 (rl_step(4))
    assert p.poll() is None, p.communicate()
    time.sleep(0.05)
  os.kill(int(ready.read_text()), signal.SIGTERM)
  out, err = p.communicate(timeout=900)
  assert p.returncode == 0, out + err
  said = [l for l in err.splitlines() if "preempted" in l]
  assert sorted(said[:2]) == [
      f"[p0] si-train: preempted (a SIGTERM or preemption notice on another process): saved "
      f"checkpoint 5 to {b}/checkpoints; exit code 75 means 'resume me': run the same command "
      f"again",
      f"[p1] si-train: preempted (SIGTERM): saved checkpoint 5 to {b}/checkpoints; exit code 75 "
      f"means 'resume me': run the same command again"], err
  assert said[2:] == ["si-launch: si-train was preempted and saved a checkpoint; restart 1 of 1"]
  assert f"[p0] resumed {b} at step 5/{STEPS}" in out
  ra, rb = _metrics(a), _metrics(b)
  assert ra == rb
  pa, pb = workdir_lib.load_run(str(a)), workdir_lib.load_run(str(b))
  assert pa["step"] == pb["step"] == STEPS
  for x, y in zip(jax.tree.leaves(jax.device_get(pa["params"])),
                  jax.tree.leaves(jax.device_get(pb["params"]))):
    np.testing.assert_array_equal(x, y)


SI_CONFIG = os.path.join(REPO, "experiments", "configs", "arith_si.py")
# si-train with the test-only 'arith_parity' task (tests/test_si_credit.py): a random tiny model
# is right half the time there, so every process has failures, anchors and kept repairs.
_BOOT = ("import sys; sys.path.insert(0, 'tests'); import test_si_credit; "
         "from si_jax.cli.train import run; sys.argv = ['si-train'] + sys.argv[1:]; run()")


def test_si_credit_runs_on_two_processes(tmp_path):
  """SI's own stages on each process's rows: repair sampling is collective (a process may
  bring no request), term widths and row counts are agreed before the update, the probe
  splits its cases. Three terms (policy, repair NLL, repair RL) and a KL reference."""
  w = tmp_path / "si"
  program = shlex.join([sys.executable, "-c", _BOOT])
  q = subprocess.run(
      [sys.executable, "-m", "si_jax.tools.launch", "local", "--processes", "2",
       "--devices_per_process", "4", "--program", program, "--",
       f"--config={SI_CONFIG}:smoke", "--config.task.name=arith_parity",
       "--config.si.audit=none", "--config.si.repair_rl=True", "--config.rl.kl_beta=0.1",
       "--config.mesh.data=8", "--config.rl.steps=2", f"--workdir={w}"],
      cwd=REPO, text=True, capture_output=True, timeout=600)
  out = q.stdout + q.stderr
  assert q.returncode == 0, out
  rows = _metrics(w)
  assert [r["step"] for r in rows] == list(range(1, 9))
  rl = [r for r in rows if r["phase"] == 1]
  assert sum(r["si/kept"] for r in rl) > 0
  for r in rl:
    assert {"policy/loss", "repair/loss", "repair_rl/loss", "policy/kl_ref"} <= r.keys()
    assert all(np.isfinite(v) for v in r.values() if isinstance(v, float))
  assert "eval/si/probe_repair_with_anchor" in rows[-1]
  assert workdir_lib.load_run(str(w))["step"] == 8


def test_a_mesh_that_cannot_split_rows_over_processes_is_refused(tmp_path):
  port = _free_port()
  procs = [_start(tmp_path / "w", _env(4, SI_MULTIHOST="1", SI_COORDINATOR=f"localhost:{port}",
                                       SI_NUM_PROCESSES="2", SI_PROCESS_ID=str(i)),
                  "--config.mesh.data=1", "--config.mesh.tensor=8") for i in range(2)]
  outs = [q.communicate(timeout=300)[0] for q in procs]
  assert [q.returncode for q in procs] == [2, 2], outs
  assert "config.mesh: data x fsdp = 1 x 1 = 1 batch shards cannot be split over 2 processes" \
      in outs[0]


# ----------------------------------------------------------------------------- one process


@pytest.mark.parametrize("env, message", [
    ({"SI_MULTIHOST": "1", "SI_COORDINATOR": "localhost:1"},
     "SI_COORDINATOR set but not SI_NUM_PROCESSES, SI_PROCESS_ID"),
    ({"SI_MULTIHOST": "1", "SI_COORDINATOR": "h:1", "SI_NUM_PROCESSES": "two",
      "SI_PROCESS_ID": "0"}, "SI_NUM_PROCESSES='two'"),
])
def test_bad_multihost_environment_names_the_variable(env, message):
  with pytest.raises(ValueError, match=message):
    multihost.initialize_from_env(env)


# What srun sets in each task of `srun --nodes=2 --ntasks-per-node=1` on 8-GPU nodes (task 1).
SRUN_ONE_TASK_PER_NODE = {
    "SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "gpu-[01-02]", "SLURM_NTASKS": "2",
    "SLURM_PROCID": "1", "SLURM_LOCALID": "0", "SLURM_NODEID": "1",
    "SLURM_STEP_NUM_NODES": "2", "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
    "SLURM_NTASKS_PER_NODE": "1", "SLURM_GPUS_ON_NODE": "8",
    "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}
# The launcher's own variables (si-launch slurm exports them before srun).
SI_LAUNCHED = {"SI_MULTIHOST": "1", "SI_COORDINATOR": "gpu-01:24242", "SI_NUM_PROCESSES": "2",
               "SI_PROCESS_ID": "1"}


def _gpus_jax_would_use(env: dict, monkeypatch) -> list[int]:
  """The local GPU ids a process with `env` gets from jax.distributed.initialize(**kwargs):
  JAX's own cluster detection (`ClusterEnv.auto_detect_unset_distributed_params`, what
  initialize runs unless detection is deactivated) fills in what the kwargs leave unset; no
  local_device_ids means every GPU in CUDA_VISIBLE_DEVICES."""
  from jax._src import clusters
  kwargs = multihost.distributed_kwargs(env)
  ids = kwargs.get("local_device_ids")
  if kwargs.get("cluster_detection_method") != "deactivate" and None in (
      kwargs.get("coordinator_address"), kwargs.get("num_processes"), kwargs.get("process_id"),
      ids):
    for k in [k for k in os.environ if k.startswith(("SLURM_", "OMPI_"))]:
      monkeypatch.delenv(k)
    for k, v in env.items():
      monkeypatch.setenv(k, v)
    ids = clusters.ClusterEnv.auto_detect_unset_distributed_params(
        kwargs.get("coordinator_address"), kwargs.get("num_processes"),
        kwargs.get("process_id"), ids, kwargs.get("cluster_detection_method"), 300)[3]
  return list(ids) if ids else list(range(len(env["CUDA_VISIBLE_DEVICES"].split(","))))


@pytest.mark.parametrize("launched", [True, False], ids=["si-launch slurm", "plain srun"])
def test_one_task_per_slurm_node_sees_every_gpu_of_its_node(launched, monkeypatch):
  """JAX's SLURM detection gives each process [SLURM_LOCALID] = [0] when local_device_ids is
  not passed: 1 GPU of 8 per node under si-launch's one task per node."""
  env = dict(SRUN_ONE_TASK_PER_NODE, **(SI_LAUNCHED if launched else {"SI_MULTIHOST": "1"}))
  assert _gpus_jax_would_use(env, monkeypatch) == list(range(8))
  kwargs = multihost.distributed_kwargs(env)
  if launched:  # the launcher's coordinator and index are the ones passed
    assert (kwargs["coordinator_address"], kwargs["num_processes"], kwargs["process_id"]) == (
        "gpu-01:24242", 2, 1)


def test_one_task_per_gpu_keeps_one_gpu_per_task(monkeypatch):
  env = dict(SRUN_ONE_TASK_PER_NODE, SLURM_NTASKS="16", SLURM_LOCALID="5", SLURM_PROCID="13",
             SLURM_STEP_TASKS_PER_NODE="8(x2)", SLURM_NTASKS_PER_NODE="8", SI_MULTIHOST="1")
  assert _gpus_jax_would_use(env, monkeypatch) == [5]
  assert _gpus_jax_would_use(dict(env, **SI_LAUNCHED), monkeypatch) == [5]


@pytest.mark.parametrize("env, message", [
    ({"SI_PLATFORM": "gpu"},
     "SI_PLATFORM=gpu: the launch asked for gpu devices but jax .* runs on cpu .*found no gpu "
     r"backend\): install the gpu build of JAX on every host, pip install 'jax\[cuda13\]=="),
    ({"SI_PLATFORM": "tpu"}, r"pip install 'jax\[tpu\]=="),
    (dict(SRUN_ONE_TASK_PER_NODE, SI_MULTIHOST="1"),
     "a SLURM job with GPUs .*: the launch asked for gpu devices but jax"),
])
def test_a_backend_other_than_the_launch_asked_for_stops_with_the_install_line(env, message):
  """A CPU-only jaxlib on a GPU node (this test process runs on CPU) is one line naming the
  install, not a run on the host CPU."""
  with pytest.raises(ValueError, match=message):
    multihost.check_platform(env)
  multihost.check_platform({"SI_PLATFORM": "cpu"})  # what it runs on: fine
  multihost.check_platform(dict(env, JAX_PLATFORMS="cpu", SI_PLATFORM=""))  # said so: fine
  multihost.check_platform(env, backend=env.get("SI_PLATFORM", "gpu"))


def test_without_si_multihost_nothing_is_initialized():
  assert multihost.initialize_from_env({}) is False
  assert multihost.initialize_from_env({"SI_MULTIHOST": "0"}) is False


def test_single_process_helpers_are_identities():
  x = np.arange(6).reshape(3, 2)
  assert multihost.to_global(x, None) is x
  np.testing.assert_array_equal(multihost.allgather_rows(x), x)
  np.testing.assert_array_equal(multihost.allgather(x), x[None])
  assert multihost.global_max(3) == 3 and multihost.all_true(True) and multihost.is_primary()
  assert multihost.local_slice(5) == slice(0, 5)
  row = {"reward": 0.5, "tokens/rollout": 7, "time/update": 1.0}
  assert multihost.reduce_metrics(row) is row


# ----------------------------------------------------------------------------- TPU slices


@dataclasses.dataclass(frozen=True)
class MockTpu:
  """What jax.make_mesh reads of a TPU device (jax's mesh_utils: coords, core_on_chip,
  device_kind, platform) and what si_jax reads (process_index)."""
  id: int
  process_index: int
  coords: tuple
  device_kind: str
  core_on_chip: int = 0
  platform: str = "tpu"
  slice_index: int = 0


# name -> (device_kind, chips x, y, z). One JAX device per chip (v5p megacore); every host
# holds a 2x2x1 block of 4 chips (Cloud TPU VMs), hosts numbered x, then y, then z.
SLICES = {"v5p-16": ("TPU v5p", (2, 2, 2)), "v5p-32": ("TPU v5p", (2, 2, 4)),
          "v5p-64": ("TPU v5p", (2, 4, 4)), "v5p-128": ("TPU v5p", (4, 4, 4)),
          "v5litepod-256": ("TPU v5 lite", (16, 16, 1))}


def mock_slice(name: str) -> list[MockTpu]:
  """The devices of a slice in jax.devices() order (process by process)."""
  from si_jax.tools import launch
  kind, (X, Y, Z) = SLICES[name]
  hosts = [(x, y, z) for z in range(Z) for y in range(0, Y, 2) for x in range(0, X, 2)]
  assert len(hosts) == launch.tpu_hosts(name)  # the launcher's host count for the type
  return [MockTpu(4 * p + i, p, (x + dx, y + dy, z), kind)
          for p, (x, y, z) in enumerate(hosts)
          for i, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1)))]


def _config_meshes(devices: int):
  """(data, fsdp, tensor) of the paper-scale configs (data=-1, each size's fsdp and tensor;
  experiments/configs/_qwen3.py) and si-plan's fsdp over everything, that fit `devices`."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "_qwen3", os.path.join(REPO, "experiments", "configs", "_qwen3.py"))
  q = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(q)
  shapes = {(1, devices, 1)} | {(devices // (s.fsdp * s.tensor), s.fsdp, s.tensor)
                                for s in q.SCALES.values()
                                if devices % (s.fsdp * s.tensor) == 0}
  return sorted(shapes)


@pytest.mark.parametrize("name", sorted(SLICES))
def test_config_meshes_build_on_tpu_slices_and_each_host_feeds_its_own_batch_shards(name):
  """jax.make_mesh orders a slice's chips by torus position: above 2 hosts the batch shards
  of the processes interleave (v5p-32: 0, 1, 2, 3, 0, 1, ...), (8, 8, 1) on v5p-128's 4x4x4
  chips needs a split axis, and tensor=4 on v5e-256 lays a tensor group over two hosts. Every
  config mesh builds, every batch shard belongs to one host, and each host owns an equal
  share of them (which rows those are is the data path's business: test below)."""
  from si_jax import sharding as shd
  devices = mock_slice(name)
  hosts = len({d.process_index for d in devices})
  seen_interleaved = False
  for data, fsdp, tensor in _config_meshes(len(devices)):
    if (data * fsdp) % hosts:
      continue  # refused at start by check_mesh (fewer batch shards than hosts)
    mesh = shd.make_mesh(data, fsdp, tensor, devices=devices)
    assert mesh.devices.shape == (data, fsdp, tensor)
    assert sorted(d.id for d in mesh.devices.flat) == list(range(len(devices)))
    multihost.check_mesh(mesh)
    owners = multihost.batch_owners(mesh)
    assert np.bincount(owners).tolist() == [data * fsdp // hosts] * hosts
    seen_interleaved |= any(np.diff(owners) < 0)
  assert seen_interleaved == (hosts > 2), name  # the torus order, kept where it is valid


def test_a_tensor_group_across_hosts_is_refused_by_name():
  from si_jax.sharding import AxisType, MESH_AXES, Mesh
  d = mock_slice("v5p-16")  # tensor pairs of a chip of host 0 and one of host 1
  pairs = [[d[0], d[4]], [d[1], d[5]], [d[2], d[6]], [d[3], d[7]]]
  mesh = Mesh(np.asarray([pairs]), MESH_AXES, axis_types=(AxisType.Auto,) * 3)
  with pytest.raises(ValueError, match=r"batch shard 0 is held by devices of processes \[0, 1\] "
                     r"\(tensor=2 spans hosts\); keep mesh.tensor within a host's devices"):
    multihost.check_mesh(mesh)


def _two_processes_run(script) -> subprocess.CompletedProcess:
  """`script` on two processes x 2 CPU devices through si-launch local (exit code 0 asserted)."""
  program = shlex.join([sys.executable, str(script)])
  res = subprocess.run([sys.executable, "-m", "si_jax.tools.launch", "local", "--processes", "2",
                        "--devices_per_process", "2", "--program", program, "--"],
                       cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
                       text=True, timeout=600)
  assert res.returncode == 0, res.stdout + res.stderr
  return res


def test_interleaved_batch_shards_feed_each_process_its_own_rows(tmp_path):
  """Two processes x 2 CPU devices on a mesh whose batch shards alternate between them, as a
  TPU slice's torus order makes them: check_mesh accepts it, and the data path (to_global,
  a jitted program, local_rows: what the sampler, the log-probs and the update use) gives each
  process back its own rows, placed at its shards."""
  (tmp_path / "interleaved.py").write_text("""
from si_jax import multihost, sharding as shd
assert multihost.initialize_from_env()
import jax, numpy as np
from jax.experimental import multihost_utils
d = jax.devices()  # process 0: d[0], d[1]; process 1: d[2], d[3]
mesh = shd.make_mesh(data=4, devices=[d[0], d[2], d[1], d[3]])
multihost.check_mesh(mesh)
p = jax.process_index()
rows = np.arange(4, dtype=np.float32).reshape(2, 2) + 100 * p  # this process's 2 rows
sh = shd.batch_sharding(mesh, (4, 2))
out = jax.jit(lambda x: x * 2, out_shardings=sh)(multihost.to_global(rows, sh))
np.testing.assert_array_equal(multihost.local_rows(out), rows * 2)
whole = multihost_utils.process_allgather(out, tiled=True)
print("rows of", p, "ok; global first column", whole[:, 0].astype(int).tolist(), flush=True)
""")
  res = _two_processes_run(tmp_path / "interleaved.py")
  lines = sorted(l for l in res.stdout.splitlines() if "ok; global" in l)
  # global rows 0..3 sit on d0 (p0), d2 (p1), d1 (p0), d3 (p1)
  assert lines == [f"[p{i}] rows of {i} ok; global first column [0, 200, 4, 204]"
                   for i in range(2)]


def test_compaction_and_cache_growth_on_two_processes_sample_the_rows_one_process_samples(
    tmp_path):
  """Decode compaction and cache growth with several processes: two processes x 2 CPU devices
  on a mesh whose batch shards alternate between them (as on TPU slices). Each process's rows
  (different prompts, different counts: 3 and 1 of 4) decode in segments that move and grow
  only its own rows, and the tokens are those of the unsegmented decode of the same rows (row
  keys: a row's stream is its row of the whole batch, wherever its process's shards sit)."""
  (tmp_path / "compact.py").write_text("""
import sys
sys.path.insert(0, %r)
from si_jax import multihost, sampling, sharding as shd
assert multihost.initialize_from_env()
import jax, numpy as np
import tiny
from si_jax.models.config import preset
cfg = preset("tiny", num_layers=1, max_position_embeddings=96)
params = tiny.params(cfg)
d = jax.devices()
mesh = shd.make_mesh(data=4, devices=[d[0], d[2], d[1], d[3]])
p = jax.process_index()
rng = np.random.default_rng(0)
prompts = [list(rng.integers(40, cfg.vocab_size, n)) for n in (3, 17, 8, 1, 12, 5, 9, 2)]
mine = [prompts[:3], prompts[3:4]][p]
sp = sampling.SamplingParams(max_new_tokens=24, stop_ids=tuple(range(1, 40)), row_keys=True)
key = jax.random.key(7)
full = sampling.Sampler(cfg, mesh, max_len=64)
ref = full.generate(params, mine, key, sp, rows=16)
for kw in (dict(compact=True, compact_every=4), dict(grow_every=8),
           dict(compact=True, compact_every=4, grow_every=8)):
  s = sampling.Sampler(cfg, mesh, max_len=64, **kw)
  out = s.generate(params, mine, key, sp, rows=16)
  np.testing.assert_array_equal(out.tokens, ref.tokens)
  np.testing.assert_array_equal(out.lengths, ref.lengths)
  np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-5)
  print("process", p, kw, "buckets", s.last_buckets, "cache", s.last_cache_lengths, flush=True)
""" % os.path.join(REPO, "tests"))
  res = _two_processes_run(tmp_path / "compact.py")
  said = {}
  for line in res.stdout.splitlines():
    if " buckets " in line:
      said.setdefault(line.split()[0], []).append(line)
  assert sorted(said) == ["[p0]", "[p1]"] and all(len(v) == 3 for v in said.values()), res.stdout
  # the processes agreed on every segment's rows: the same buckets and cache lengths
  assert [l.split(" buckets ")[1] for l in said["[p0]"]] == [
      l.split(" buckets ")[1] for l in said["[p1]"]]
  compacted = said["[p0]"][0].split(" buckets ")[1]
  assert compacted.startswith("[(0, 16), (4, 8)"), compacted  # rows moved: 16 -> 8 -> ...
  # the cache grew by 8 columns at a time (prompt width 32: 40, 48, 56 of 56 = 32 + 24)
  assert said["[p0]"][1].endswith("cache [(0, 40), (8, 48), (16, 56)]"), said["[p0]"][1]


def test_variable_length_gathers_pad_to_a_few_sizes():
  """allgather_bytes / allgather_rows pad to the next power of two: metrics and term lists
  of growing length compile log2 programs, not one per new longest message."""
  assert [multihost.gather_size(n) for n in (0, 1, 2, 3, 4, 5, 1000, 1024, 1025)] == [
      1, 1, 2, 4, 4, 8, 1024, 1024, 2048]
  assert len({multihost.gather_size(n) for n in range(1, 5000)}) == 14


def test_local_rows_reads_only_addressable_shards_in_row_order():
  from si_jax import sharding as shd
  mesh = shd.make_mesh(data=len(jax.devices()))
  x = np.arange(len(jax.devices()) * 2 * 3, dtype=np.float32).reshape(-1, 3)
  arr = jax.device_put(x, shd.batch_sharding(mesh, x.shape))
  np.testing.assert_array_equal(multihost.local_rows(arr), x)
  assert multihost.process_rows(arr.sharding, x.shape[0]) == slice(0, x.shape[0])
  multihost.check_mesh(mesh)  # one process: any mesh


def test_metrics_on_an_object_store_are_rewritten_whole(tmp_path, monkeypatch):
  """gs:// workdirs: an object cannot be appended to, so the log is kept and rewritten (the
  local path here stands in for the remote one: epath reads and writes both)."""
  from si_jax import metrics
  monkeypatch.setattr(metrics, "is_remote", lambda path: True)
  with metrics.MetricsWriter(tmp_path, tensorboard=False, enabled=True) as w:
    for s in (1, 2, 3):
      w.write(s, {"loss": float(s)})
      assert len(metrics.read_metrics(tmp_path)) == s  # visible after every write
  with open(tmp_path / metrics.METRICS_FILE, "a") as f:
    f.write('{"step": 4, "lo')  # killed mid-write
  with metrics.MetricsWriter(tmp_path, tensorboard=False, enabled=True) as w:
    assert w.truncate_after(2) == 1
    w.write(3, {"loss": 30.0})
  assert [(r["step"], r["loss"]) for r in metrics.read_metrics(tmp_path)] == [
      (1, 1.0), (2, 2.0), (3, 30.0)]
  metrics.append_text(tmp_path / "samples.jsonl", "a\n")
  metrics.append_text(tmp_path / "samples.jsonl", "b\n")
  assert open(tmp_path / "samples.jsonl").read() == "a\nb\n"


def test_si_eval_on_a_mesh_samples_what_one_device_samples(tmp_path):
  """si-eval --mesh shards the model over the devices (a big model does not fit one) and
  samples the same completions as on one device."""
  from si_jax.cli import eval as eval_cli
  from si_jax.models import config as model_config
  from si_jax.models import hf, transformer
  from si_jax.tokenizer import Tokenizer, build_char_tokenizer
  tok_dir = build_char_tokenizer(str(tmp_path / "tok"))
  tok = Tokenizer.from_dir(tok_dir)
  cfg = model_config.make_config(
      "qwen3", vocab_size=-(-tok.vocab_size // 8) * 8, hidden_size=32, num_layers=2,
      num_heads=4, num_kv_heads=2, head_dim=8, intermediate_size=64,
      max_position_embeddings=256)
  model_dir = str(tmp_path / "model")
  hf.save_hf(transformer.init_params(cfg, jax.random.key(0)), cfg, model_dir,
             tokenizer_dir=tok_dir, extra_config=dict(eos_token_id=tok.eos_id,
                                                      pad_token_id=tok.pad_id))
  tables = {}
  for mesh in ("1,1,1", "2,2,2", "-1,1,1"):
    out = tmp_path / mesh.replace(",", "_")
    assert eval_cli.main(["--hf_dir", model_dir, "--task", "arith", "--task_kwargs",
                          '{"test_size": 6}', "--k", "2", "--temperature", "1.0",
                          "--max_new_tokens", "16", f"--mesh={mesh}", "--out", str(out)]) == 0
    tables[mesh] = json.load(open(out / "eval.json"))["model"]
  one = tables.pop("1,1,1")
  for res in tables.values():
    assert [r["sample"] for r in res["rows"]] == [r["sample"] for r in one["rows"]]
    assert res["avg@2"] == one["avg@2"] and res["mean_response_tokens"] == one[
        "mean_response_tokens"]
  assert eval_cli.main(["--hf_dir", model_dir, "--task", "arith", "--mesh", "2,2"]) == 2
