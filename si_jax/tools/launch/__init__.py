"""si-launch: starts si-train here, on a SLURM GPU allocation or on a Cloud TPU pod slice.

  si-launch local -- --config experiments/configs/arith_si.py:smoke --workdir /tmp/smoke
  si-launch local --processes 2 --devices_per_process 4 -- ARGS   # 2 hosts, simulated on CPU
  si-launch slurm --nodes 2 --gpus_per_node 8 [--sbatch_args "--partition=gpu"] [--follow] \\
      -- --config experiments/configs/gsm8k_grpo.py:/shared/Qwen3-0.6B --workdir /shared/runs/a
  si-launch tpu_pod --tpu my-pod --zone us-east5-a --accelerator_type v5p-16 [--stop] \\
      -- --config experiments/configs/gsm8k_grpo.py:/data/Qwen3-0.6B --workdir gs://bucket/a
  si-launch ... --dry_run     # print the exact commands (a shell script), run none

Everything after `--` is si-train's command line, passed through untouched (quoted once for
each shell it crosses). Every process runs the same si-train with SI_MULTIHOST=1, which makes it
call `jax.distributed.initialize()` (si_jax/multihost.py) with SI_COORDINATOR (host:port),
SI_NUM_PROCESSES and SI_PROCESS_ID where the launcher sets them (local, slurm), else with JAX's
own detection (TPU VMs). The workdir of a multi-host run must be storage every host sees.

local: `--processes 1` (the default) is si-train as it is. With more processes, or
`--devices_per_process`, it is a CPU simulation of a multi-host run: N processes here, each with
SI_MULTIHOST=1, coordinator localhost:PORT (a free port), its index, JAX_PLATFORMS=cpu, gloo
collectives and D fake CPU devices (XLA_FLAGS). Their stdout and stderr are streamed, each to
its own, with a `[p<i>]` prefix; when one fails the others are stopped (their whole process
groups) and si-launch exits with its exit code, naming it.

Preemption: si-train exits with PREEMPTED (75) after every process saved the same step on a
SIGTERM (si_jax/preemption.py). That is no failure: local waits for the other processes (they
are saving that step) and restarts the run up to `--max_restarts` times (default 0: it says to
run the command again, and exits 75); the slurm script requeues its job (`scontrol requeue`;
the job is submitted `--requeue`); tpu_pod says to run the command again.

slurm: one `sbatch` of a generated script (read from stdin; `--dry_run` prints it): `#SBATCH
--nodes=H --ntasks-per-node=1 --gpus-per-node=G`, coordinator = the first host of the
allocation (`scontrol show hostnames`) and a port derived from the job id, SI_PLATFORM=gpu and
XLA_PYTHON_CLIENT_MEM_FRACTION=GPU_MEM_FRACTION (si-plan's), then `srun --kill-on-bad-exit=1`
of one si-train per node with SI_PROCESS_ID=$SLURM_PROCID (each drives all its node's GPUs). The job's log
goes to `<workdir>/slurm-<jobid>.log` (`--log`); `--follow` prints it until the job leaves the
queue. Needs only sbatch / srun / scontrol (squeue and sacct for --follow).

tpu_pod: one gcloud command per step: describe the TPU VM (create it if absent, start it if
STOPPED; an existing one of another type is refused), copy the project to every worker (`git
archive` of the checkout's HEAD, refused with uncommitted changes or untracked files;
`--source none` when it is there already), check the workers' Python (>= PYTHON_FLOOR) and
install it (`pip install -e .` plus `jax[tpu]`), run si-train on every worker (`gcloud ...
ssh --worker=all`, output streamed; `--detach`: in the background, outliving ssh, log and pid
in the remote dir, and the commands to watch and stop it printed), then `--stop` or
`--delete` the TPU if asked (also after a failed run). The host count follows from
--accelerator_type (TPU_FAMILIES). Needs only the Google Cloud CLI and git; run `ssh-add
~/.ssh/google_compute_engine` first (gcloud's advice for commands on several workers).

None of these has run on a real pod or cluster from this repository (no such machine in CI);
the tests check the exact commands and run the local launcher for real.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import IO, Sequence

KINDS = ("local", "slurm", "tpu_pod")
REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# si-train's multi-host environment, read by si_jax/multihost.py (a test keeps them in step).
ENV_ENABLE = "SI_MULTIHOST"
ENV_COORDINATOR = "SI_COORDINATOR"
ENV_NUM_PROCESSES = "SI_NUM_PROCESSES"
ENV_PROCESS_ID = "SI_PROCESS_ID"
ENV_PLATFORM = "SI_PLATFORM"  # the backend si-train must find (multihost.check_platform)
# The fraction of GPU memory JAX preallocates (its default: 0.75). si-plan plans against this
# one (plan.gpu_mem_fraction); the slurm script exports it and si-train sets it when unset.
MEM_FRACTION_ENV = "XLA_PYTHON_CLIENT_MEM_FRACTION"
GPU_MEM_FRACTION = 0.9
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
HEREDOC_END = "SI_LAUNCH_EOF"
TPU_TARBALL = "si-launch-src.tar.gz"  # in the remote home directory
DETACHED_LOG, DETACHED_PID = "si-train.log", "si-train.pid"  # tpu_pod --detach, in remote_dir
# The oldest Python the pinned jax / jaxlib / flax / orbax / transformers install on
# (setup.py's python_requires; a test keeps them in step). TPU VM images may ship an older one.
PYTHON_FLOOR = (3, 11)
POLL_S = 0.05  # local: how often the processes are checked
FOLLOW_POLL_S = 5.0  # slurm --follow: how often squeue and the log are read
KILL_GRACE_S = 10.0  # local: SIGTERM, then SIGKILL after this long
# si-train's exit code after a preemption notice: every process saved the same step, "resume
# me" (si_jax.preemption.EXIT_CODE; a test keeps them in step, this module imports no JAX).
PREEMPTED = 75


class LaunchError(Exception):
  """A mistake on the command line or a refused state: one line on stderr, exit code `code`."""

  def __init__(self, msg: str, code: int = 2):
    super().__init__(msg)
    self.code = code


@dataclasses.dataclass
class Command:
  """One command of a launch: `argv` with `env` added to the environment and `stdin` as its
  input; `note` says what it is for (a comment line in --dry_run)."""
  argv: list[str]
  env: dict[str, str] = dataclasses.field(default_factory=dict)
  stdin: str | None = None
  note: str = ""

  def shell(self) -> str:
    """The command as shell text: `K=V ... argv`, stdin as a quoted here-document."""
    words = [f"{k}={shlex.quote(v)}" for k, v in self.env.items()] + [shlex.join(self.argv)]
    line = " ".join(words)
    if self.stdin is None:
      return line
    body = self.stdin if self.stdin.endswith("\n") else self.stdin + "\n"
    if HEREDOC_END in body.splitlines():
      raise LaunchError(f"the input of {self.argv[0]} contains the line {HEREDOC_END}")
    return f"{line} <<'{HEREDOC_END}'\n{body}{HEREDOC_END}"


def train_program() -> list[str]:
  """si-train as this interpreter runs it (the console script may not be on PATH)."""
  return [sys.executable, "-m", "si_jax.cli.train"]


def _flag_value(args: Sequence[str], flag: str) -> str | None:
  """The value of `--flag X` / `--flag=X` in si-train's arguments (the last one), or None."""
  value = None
  for i, a in enumerate(args):
    if a == flag and i + 1 < len(args):
      value = args[i + 1]
    elif a.startswith(flag + "="):
      value = a[len(flag) + 1:]
  return value


def _check_train_args(args: Sequence[str]) -> None:
  """Remote launches are slow to fail: refuse si-train arguments without --config/--workdir."""
  for flag in ("--config", "--workdir"):
    if _flag_value(args, flag) is None:
      raise LaunchError(f"si-train arguments (after --): no {flag}")


def _env_pairs(items: Sequence[str]) -> dict[str, str]:
  """`--env KEY=VALUE` options as a dict, keys checked."""
  out = {}
  for item in items:
    key, eq, value = item.partition("=")
    if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
      raise LaunchError(f"--env {item}: expected KEY=VALUE with KEY a variable name")
    out[key] = value
  return out


# ----------------------------------------------------------------------------- local


def free_port() -> int:
  """A TCP port free on localhost right now."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def local_commands(args: Sequence[str], processes: int = 1, devices_per_process: int = 0,
                   port: int = 0, program: Sequence[str] | None = None,
                   env: dict[str, str] | None = None,
                   environ: dict[str, str] | None = None) -> list[Command]:
  """The processes of a local launch, one Command each (process i at index i).

  One process without devices_per_process: `program ARGS` as it is (plus `env`). Otherwise a
  CPU simulation of a multi-host run: each process gets SI_MULTIHOST=1, SI_COORDINATOR=
  localhost:port (a free port when 0), SI_NUM_PROCESSES, SI_PROCESS_ID, JAX_PLATFORMS=cpu,
  gloo collectives and, with devices_per_process D, XLA_FLAGS with D host devices (the other
  flags of `environ`'s XLA_FLAGS kept).
  """
  if processes < 1:
    raise LaunchError(f"--processes {processes}: must be >= 1")
  if devices_per_process < 0:
    raise LaunchError(f"--devices_per_process {devices_per_process}: must be >= 0")
  if not 0 <= port <= 65535:
    raise LaunchError(f"--port {port}: must be in 0..65535 (0: a free one)")
  argv = list(program or train_program()) + list(args)
  extra = dict(env or {})
  if processes == 1 and not devices_per_process:
    return [Command(argv, extra)]
  environ = os.environ if environ is None else environ
  sim = {"JAX_PLATFORMS": "cpu", "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"}
  if devices_per_process:
    kept = [f for f in environ.get("XLA_FLAGS", "").split()
            if not f.startswith(DEVICE_COUNT_FLAG)]
    sim["XLA_FLAGS"] = " ".join(kept + [f"{DEVICE_COUNT_FLAG}={devices_per_process}"])
  if processes == 1:
    return [Command(argv, {**sim, **extra})]
  coordinator = f"localhost:{port or free_port()}"
  return [Command(argv, {ENV_ENABLE: "1", ENV_COORDINATOR: coordinator,
                         ENV_NUM_PROCESSES: str(processes), ENV_PROCESS_ID: str(i), **sim,
                         **extra}, note=f"process {i}")
          for i in range(processes)]


def _exit_code(rc: int) -> int:
  """A child's return code as a shell reports it (killed by signal s: 128 + s)."""
  return 128 - rc if rc < 0 else rc


def _stop_group(proc: subprocess.Popen, sig: int) -> None:
  try:
    os.killpg(proc.pid, sig)
  except ProcessLookupError:
    pass


def run_local(commands: Sequence[Command], out: IO[str] | None = None,
              err: IO[str] | None = None) -> int:
  """Runs the processes of `local_commands` and waits for them; returns the exit code.

  One process inherits this terminal. Several run in their own process groups, their stdout
  written to `out` and their stderr to `err`, line by line with a `[p<i>] ` prefix; when one
  exits non-zero the others' groups get SIGTERM (SIGKILL after KILL_GRACE_S) and its exit code
  is returned, with a line on stderr naming it. Exit code PREEMPTED is no failure: the others
  are saving the same step, so they are waited for, and PREEMPTED is returned. The two streams
  are read from separate pipes: on one shared pipe a library writing to stderr unbuffered
  (gloo does) can split a line the program prints to stdout.
  """
  if len(commands) == 1:
    c = commands[0]
    return _exit_code(subprocess.run(c.argv, env={**os.environ, **c.env}).returncode)
  out = out or sys.stdout
  err = err or sys.stderr
  lock = threading.Lock()
  procs: list[subprocess.Popen] = []
  pumps: list[threading.Thread] = []

  def pump(i: int, stream: IO[bytes], to: IO[str]) -> None:
    for raw in iter(stream.readline, b""):
      line = raw.decode("utf-8", errors="replace").rstrip("\n")
      with lock:
        to.write(f"[p{i}] {line}\n")
        to.flush()
    stream.close()

  failed = None
  try:
    for i, c in enumerate(commands):
      proc = subprocess.Popen(c.argv, env={**os.environ, **c.env}, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              start_new_session=True)
      procs.append(proc)
      for stream, to in ((proc.stdout, out), (proc.stderr, err)):
        pumps.append(threading.Thread(target=pump, args=(i, stream, to), daemon=True))
        pumps[-1].start()
    while failed is None and any(p.poll() is None for p in procs):
      failed = next((i for i, p in enumerate(procs)
                     if p.poll() not in (None, 0, PREEMPTED)), None)
      time.sleep(POLL_S)
  except KeyboardInterrupt:
    _stop(procs)
    print("\nsi-launch: interrupted; stopped every process", file=sys.stderr, flush=True)
    return 130
  if failed is None:  # all exited; one may have failed after the last look
    failed = next((i for i, p in enumerate(procs) if p.returncode not in (0, PREEMPTED)), None)
    if failed is None and any(p.returncode == PREEMPTED for p in procs):
      for t in pumps:
        t.join(timeout=KILL_GRACE_S)
      return PREEMPTED
  running = [i for i, p in enumerate(procs) if p.poll() is None]
  _stop(procs)
  for t in pumps:
    t.join(timeout=KILL_GRACE_S)
  if failed is None:
    return 0
  rc = _exit_code(procs[failed].returncode)
  stopped = f"; stopped process {', '.join(map(str, running))}" if running else ""
  print(f"si-launch: process {failed} of {len(procs)} exited with code {rc}{stopped}",
        file=sys.stderr, flush=True)
  return rc or 1


def _stop(procs: Sequence[subprocess.Popen]) -> None:
  """SIGTERM to the process group of every running process, SIGKILL to those still there
  after KILL_GRACE_S."""
  live = [p for p in procs if p.poll() is None]
  for p in live:
    _stop_group(p, signal.SIGTERM)
  deadline = time.monotonic() + KILL_GRACE_S
  for p in live:
    try:
      p.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      _stop_group(p, signal.SIGKILL)
      p.wait()


# ----------------------------------------------------------------------------- slurm


def _check_job_name(name: str) -> None:
  if not name or re.search(r"[\s'\"\\$`]", name):
    raise LaunchError(f"--job_name {name!r}: must be non-empty, without spaces, quotes, $ or "
                      f"backslashes (it is an #SBATCH line)")


def slurm_script(args: Sequence[str], nodes: int, gpus_per_node: int = 8,
                 job_name: str = "si-train", port: int = 0, exclusive: bool = True,
                 program: Sequence[str] = ("si-train",),
                 env: dict[str, str] | None = None) -> str:
  """The sbatch script that runs `program ARGS` once per node of a `nodes`-node allocation.

  Process 0's node (the first of `scontrol show hostnames`) is the coordinator, at `port` or,
  when 0, at 20000 + job id mod 20000 (two jobs sharing a node do not collide). Each task sets
  SI_NUM_PROCESSES / SI_PROCESS_ID from its own SLURM_NTASKS / SLURM_PROCID (inside `bash -c`,
  so srun's per-task values are read). `gpus_per_node` 0 leaves GPUs to --sbatch_args.
  """
  if nodes < 1:
    raise LaunchError(f"--nodes {nodes}: must be >= 1")
  if gpus_per_node < 0:
    raise LaunchError(f"--gpus_per_node {gpus_per_node}: must be >= 0 (0: no --gpus-per-node)")
  if not (port == 0 or 1024 <= port <= 65535):
    raise LaunchError(f"--port {port}: must be in 1024..65535 (0: derived from the job id)")
  _check_job_name(job_name)
  directives = [f"--job-name={job_name}", f"--nodes={nodes}", "--ntasks-per-node=1",
                "--requeue"]
  directives += [f"--gpus-per-node={gpus_per_node}"] if gpus_per_node else []
  directives += ["--exclusive"] if exclusive else []
  port_expr = str(port) if port else "$((20000 + SLURM_JOB_ID % 20000))"
  # Each task: si-train with its index. Exit code PREEMPTED becomes 0 (so that
  # --kill-on-bad-exit does not kill the tasks still finishing the same save), and task 0
  # leaves a mark ($0) for the batch shell, which runs on task 0's node, to requeue the job.
  # `trap : TERM` keeps this shell alive on SLURM's SIGTERM (si-train gets it too).
  per_task = (f"trap : TERM; {ENV_NUM_PROCESSES}=$SLURM_NTASKS {ENV_PROCESS_ID}=$SLURM_PROCID "
              f'"$@"; rc=$?; if [ $rc -eq {PREEMPTED} ]; then if [ "$SLURM_PROCID" = 0 ]; '
              f'then touch "$0"; fi; exit 0; fi; exit $rc')
  lines = ["#!/bin/bash",
           "# si-launch slurm: one si-train process per node; the first node coordinates.",
           *[f"#SBATCH {d}" for d in directives],
           "set -euo pipefail",
           'coordinator=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)',
           f"export {ENV_ENABLE}=1",
           f'export {ENV_COORDINATOR}="$coordinator:{port_expr}"',
           *([f"export {ENV_PLATFORM}=gpu"] if gpus_per_node else []),
           f"export {MEM_FRACTION_ENV}={GPU_MEM_FRACTION}  # what si-plan planned against",
           *[f"export {k}={shlex.quote(v)}" for k, v in (env or {}).items()],
           f'echo "si-launch: job $SLURM_JOB_ID, $SLURM_JOB_NUM_NODES nodes '
           f'($SLURM_JOB_NODELIST), coordinator ${ENV_COORDINATOR}"',
           'preempted="${TMPDIR:-/tmp}/si-launch-preempted-$SLURM_JOB_ID"',
           'rm -f "$preempted"',
           "trap 'echo \"si-launch: SIGTERM: si-train saves at its next step boundary\"' TERM",
           "rc=0",
           f'srun --kill-on-bad-exit=1 bash -c {shlex.quote(per_task)} "$preempted" \\',
           "  " + shlex.join(list(program) + list(args)) + " || rc=$?",
           'if [ "$rc" -eq 0 ] && [ -e "$preempted" ]; then',
           '  rm -f "$preempted"',
           f'  echo "si-launch: si-train was preempted and saved a checkpoint (exit code '
           f'{PREEMPTED}); requeueing job $SLURM_JOB_ID"',
           f'  scontrol requeue "$SLURM_JOB_ID" || exit {PREEMPTED}',
           "fi",
           'exit "$rc"']
  return "\n".join(lines) + "\n"


def slurm_log(args: Sequence[str], log: str | None) -> str | None:
  """Where the job's output goes: `log`, else `<workdir>/slurm-%j.log` for a local workdir,
  else None (SLURM's default, slurm-<jobid>.out in the submit directory)."""
  if log:
    return log
  workdir = _flag_value(args, "--workdir")
  if workdir and "://" not in workdir:
    return os.path.join(workdir, "slurm-%j.log")
  return None


def slurm_commands(args: Sequence[str], nodes: int, gpus_per_node: int = 8,
                   job_name: str = "si-train", port: int = 0, exclusive: bool = True,
                   program: Sequence[str] = ("si-train",), env: dict[str, str] | None = None,
                   sbatch_args: Sequence[str] = (), log: str | None = None) -> list[Command]:
  """`mkdir -p` of the log's directory (SLURM does not create it), then `sbatch [--output=LOG]
  SBATCH_ARGS` with the script of `slurm_script` on stdin (command-line options override the
  script's #SBATCH lines)."""
  _check_train_args(args)
  script = slurm_script(args, nodes, gpus_per_node, job_name, port, exclusive, program, env)
  log = slurm_log(args, log)
  out = []
  if log and os.path.dirname(log):
    out.append(Command(["mkdir", "-p", os.path.dirname(log)], note="the log's directory"))
  sbatch = ["sbatch"] + ([f"--output={log}"] if log else []) + list(sbatch_args)
  out.append(Command(sbatch, stdin=script, note=f"{nodes} nodes x 1 task"))
  return out


def _log_path(pattern: str, job: str, job_name: str) -> str:
  """A --output pattern with %j (job id), %x (job name) and %% filled in."""
  bad = re.findall(r"%(?![jx%])\S?", pattern)
  if bad:
    raise LaunchError(f"--follow: cannot follow the log {pattern!r}: only %j and %x are "
                      f"filled in, not {bad[0]}")
  return re.sub(r"%([jx%])", lambda m: {"j": job, "x": job_name, "%": "%"}[m.group(1)], pattern)


def _print_new(path: str, pos: int, out: IO[str]) -> int:
  """Writes what `path` gained since byte `pos` to `out`; returns the new position."""
  try:
    with open(path, "rb") as f:
      f.seek(pos)
      data = f.read()
  except FileNotFoundError:
    return pos
  if data:
    out.write(data.decode("utf-8", errors="replace"))
    out.flush()
  return pos + len(data)


def _job_queued(job: str) -> bool:
  res = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i"], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL)
  return res.returncode == 0 and job in res.stdout.split()


def follow_job(job: str, log: str, out: IO[str] | None = None) -> int:
  """Prints `log` as it grows until job `job` leaves squeue; 0 if sacct says COMPLETED (or
  there is no sacct), else 1."""
  out = out or sys.stdout
  pos = 0
  while _job_queued(job):
    pos = _print_new(log, pos, out)
    time.sleep(FOLLOW_POLL_S)
  _print_new(log, pos, out)
  state = None
  if shutil.which("sacct"):
    res = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job, "-o", "State"],
                         capture_output=True, text=True, stdin=subprocess.DEVNULL)
    state = (res.stdout.split() or [None])[0]
  print(f"si-launch: job {job} left the queue: {state or 'final state unknown (no sacct)'}",
        file=sys.stderr, flush=True)
  return 0 if state in (None, "COMPLETED") else 1


# ----------------------------------------------------------------------------- tpu_pod


@dataclasses.dataclass(frozen=True)
class TpuFamily:
  """What the number of an accelerator type `<family>-<n>` counts and how many VMs it is.

  A slice of n `unit`s is one VM when n is in `single_host`, else n / per_host VMs (each a
  JAX process). `runtime` is the default `--version` (TPU software image) for create.
  """
  unit: str
  per_host: int
  single_host: tuple[int, ...]
  runtime: str


# cloud.google.com/tpu/docs/{v4,v5p,v6e}: v2-v5p count TensorCores (8 per VM: v5p-16 is 2 VMs,
# v5p-128 16); v6e counts chips, 1/4/8 on one VM, multi-host slices on 4-chip VMs (v6e-16: 4).
# v5e (v5litepod) is taken to be laid out like v6e (1, 4 or 8 chips a VM; GKE's multi-host v5e
# machine type has 4 chips); not checked on a real slice.
TPU_FAMILIES = {
    "v2": TpuFamily("cores", 8, (8,), "tpu-ubuntu2204-base"),
    "v3": TpuFamily("cores", 8, (8,), "tpu-ubuntu2204-base"),
    "v4": TpuFamily("cores", 8, (8,), "tpu-ubuntu2204-base"),
    "v5p": TpuFamily("cores", 8, (8,), "v2-alpha-tpuv5"),
    "v5litepod": TpuFamily("chips", 4, (1, 4, 8), "v2-alpha-tpuv5-lite"),
    "v6e": TpuFamily("chips", 4, (1, 4, 8), "v2-alpha-tpuv6e"),
}


def tpu_family(accelerator_type: str) -> tuple[TpuFamily, int]:
  """(family, size) of an accelerator type: `v5p-16` -> (TPU_FAMILIES['v5p'], 16)."""
  m = re.fullmatch(r"([a-z0-9]+)-(\d+)", accelerator_type)
  if not m or m.group(1) not in TPU_FAMILIES:
    raise LaunchError(f"--accelerator_type {accelerator_type!r}: unknown; expected "
                      f"<family>-<size> with family one of {list(TPU_FAMILIES)} (v5p-16, "
                      f"v5litepod-16, v6e-32, ...)")
  return TPU_FAMILIES[m.group(1)], int(m.group(2))


def tpu_hosts(accelerator_type: str) -> int:
  """The number of TPU VMs (= JAX processes) of a slice: v5p-16 -> 2, v5p-128 -> 16,
  v5litepod-8 -> 1, v6e-16 -> 4."""
  fam, n = tpu_family(accelerator_type)
  if n in fam.single_host:
    return 1
  if n > max(fam.single_host) and n % fam.per_host == 0:
    return n // fam.per_host
  sizes = ", ".join(map(str, fam.single_host))
  raise LaunchError(f"--accelerator_type {accelerator_type}: {n} {fam.unit} is not a slice "
                    f"size ({sizes}, or a multiple of {fam.per_host} above)")


def python_check(python: str) -> str:
  """Shell text that stops a worker whose `python` is older than PYTHON_FLOOR (or missing),
  with one line naming the worker, its version and the way out, exit code 2."""
  py = _remote(python)
  floor = ".".join(map(str, PYTHON_FLOOR))
  return (f"{{ {py} -c 'import sys; sys.exit(sys.version_info < {PYTHON_FLOOR})' 2>/dev/null "
          f"|| {{ echo \"si-launch: error: worker $(hostname): $({py} --version 2>&1 | head -1) "
          f"is not Python >= {floor}, which si_jax needs (jax, jaxlib, orbax): make a "
          f"virtualenv of one on every worker (sudo apt-get install -y python{floor}-venv && "
          f"python{floor} -m venv ~/si-venv) and pass --python ~/si-venv/bin/python\" >&2; "
          f"exit 2; }}; }}")


def _remote(path: str) -> str:
  """A remote path for the remote shell: quoted, but a leading `~/` still expands."""
  if path == "~" or path.startswith("~/"):
    rest = path[2:]
    return "~/" + shlex.quote(rest) if rest else "~"
  return shlex.quote(path)


@dataclasses.dataclass
class TpuPlan:
  """The gcloud (and git) commands of a TPU pod launch, in order; see `tpu_plan`."""
  tpu: str
  accelerator_type: str
  hosts: int
  describe: Command
  create: Command
  start: Command
  clean_check: Command | None  # git status: refused when it lists changes
  copy: list[Command]  # git archive, scp to every worker
  install: Command | None
  run: Command
  after: Command | None  # stop / delete
  notes: list[str]
  log_dir: str = ""
  tarball: str = ""  # the local copy of HEAD, removed once it is on the workers
  # --detach: how to watch and stop the run that outlives this command
  follow: list[Command] = dataclasses.field(default_factory=list)

  def script(self) -> str:
    """The plan as a commented shell script (--dry_run)."""
    lines = [f"# si-launch tpu_pod: {self.tpu}, {self.accelerator_type} = {self.hosts} "
             f"host{'s' if self.hosts > 1 else ''} (one si-train process each)"]
    lines += [f"# note: {n}" for n in self.notes]
    lines += [f"# {self.describe.note}", self.describe.shell()]
    lines += [f"# {self.create.note}", self.create.shell()]
    lines += [f"# {self.start.note}", self.start.shell()]
    if self.clean_check:
      lines += [f"# {self.clean_check.note}", self.clean_check.shell()]
    for c in self.copy + [c for c in (self.install, self.run, self.after) if c]:
      lines += [f"# {c.note}", c.shell()]
    for c in self.follow:
      lines += [f"# then: {c.note}", f"#   {c.shell()}"]
    return "\n".join(lines) + "\n"


def tpu_plan(args: Sequence[str], tpu: str, zone: str, accelerator_type: str,
             version: str = "", project: str = "", create_args: Sequence[str] = (),
             source: str = "git", repo: str = REPO_DIR, remote_dir: str = "~/si_jax",
             python: str = "python3", pip: Sequence[str] = ("jax[tpu]",),
             env: dict[str, str] | None = None, log_dir: str = "", after: str = "",
             tarball: str | None = None, detach: bool = False) -> TpuPlan:
  """Every command of a TPU pod launch (see the module docstring); runs nothing.

  Args:
    args: si-train's arguments.
    tpu, zone, project: the TPU VM, its zone and (optional) project.
    accelerator_type: its type (v5p-16); sets the host count, checked against an existing TPU.
    version: TPU software for create (default: the family's, TPU_FAMILIES).
    create_args: more `gcloud ... create` flags (--spot, --network=...).
    source: 'git' (copy HEAD of `repo` as a tarball) or 'none' (already at remote_dir).
    remote_dir, python, pip: where the project lives on the workers, the interpreter that runs
      it, and what `pip install -e .` also installs.
    env: extra environment of the run. log_dir: per-worker logs (`--output-directory`) instead
      of streaming. after: '', 'stop' or 'delete'.
    detach: start si-train in the background on every worker (`setsid nohup`: it outlives the
      ssh session and this command), its output in `<remote_dir>/si-train.log` and its pid in
      `<remote_dir>/si-train.pid` on each worker; the plan's `follow` commands watch the log
      and stop the run (SIGTERM: every worker saves the step, exit 75, resumable).
  """
  for flag, value in (("--tpu", tpu), ("--zone", zone), ("--accelerator_type",
                                                         accelerator_type)):
    if not value:
      raise LaunchError(f"{flag}: required for tpu_pod")
  if source not in ("git", "none"):
    raise LaunchError(f"--source {source}: must be 'git' or 'none'")
  if after not in ("", "stop", "delete"):
    raise LaunchError(f"after the run: {after!r} must be '', 'stop' or 'delete'")
  if detach and (after or log_dir):
    raise LaunchError(f"--detach: the run outlives this command, so --{after or 'log_dir'} "
                      f"cannot wait for it (its log is <remote_dir>/si-train.log on each "
                      f"worker)")
  _check_train_args(args)
  hosts = tpu_hosts(accelerator_type)
  fam, _ = tpu_family(accelerator_type)
  base = ["gcloud", "compute", "tpus", "tpu-vm"]
  where = [f"--zone={zone}"] + ([f"--project={project}"] if project else [])
  notes = []
  workdir = _flag_value(args, "--workdir") or ""
  if hosts > 1 and not workdir.startswith("gs://"):
    notes.append(f"--workdir {workdir} is not on gs://: every host must see the same workdir")
  describe = Command(base + ["describe", tpu, *where, "--format=value(state,acceleratorType)"],
                     note="1. is it there? absent: create; STOPPED: start; READY: use")
  create = Command(base + ["create", tpu, *where, f"--accelerator-type={accelerator_type}",
                           f"--version={version or fam.runtime}", *create_args],
                   note="1a. if absent")
  start = Command(base + ["start", tpu, *where], note="1b. if STOPPED")
  ssh = base + ["ssh", tpu, *where, "--worker=all"]
  rdir = _remote(remote_dir)
  clean_check, copy, install = None, [], None
  if source == "git":
    tarball = tarball or os.path.join(tempfile.gettempdir(), f"si-launch-{tpu}.tar.gz")
    clean_check = Command(["git", "-C", repo, "status", "--porcelain"],
                          note="2. HEAD is what runs: refused if this lists changes or "
                               "untracked files (--allow_dirty)")
    copy = [Command(["git", "-C", repo, "archive", "--format=tar.gz", f"--output={tarball}",
                     "HEAD"], note="2a. the checkout's HEAD as a tarball"),
            Command(base + ["scp", tarball, f"{tpu}:{TPU_TARBALL}", *where, "--worker=all"],
                    note="2b. to every worker")]
    pip_words = " ".join(shlex.quote(p) for p in pip)
    install = Command(ssh + ["--command", f"{python_check(python)} && mkdir -p {rdir} && "
                                          f"tar -xzf ~/{TPU_TARBALL} -C {rdir} && cd {rdir} && "
                                          f"{_remote(python)} -m pip install -q -e . "
                                          f"{pip_words}".rstrip()],
                      note=f"3. Python >= {'.'.join(map(str, PYTHON_FLOOR))}? then unpack and "
                           f"install on every worker")
  run_env = {ENV_ENABLE: "1", ENV_PLATFORM: "tpu", **(env or {})}
  run_cmd = ((f"{python_check(python)} && " if install is None else "") + f"cd {rdir} && "
             + " ".join(f"{k}={shlex.quote(v)}" for k, v in run_env.items())
             + f" {_remote(python)} -m si_jax.cli.train " + shlex.join(args))
  logs = [f"--output-directory={log_dir}"] if log_dir else []
  where_logs = f"logs in {log_dir}/<worker>.log" if log_dir else "output streamed"
  follow = []
  if detach:
    log, pid = f"{rdir}/{DETACHED_LOG}", f"{rdir}/{DETACHED_PID}"
    head, _, rest = run_cmd.partition(f"cd {rdir} && ")
    run_cmd = (f"{head}cd {rdir} && {{ setsid nohup env {rest} > {DETACHED_LOG} 2>&1 "
               f"< /dev/null & echo $! > {DETACHED_PID}; }} && echo \"si-launch: worker "
               f"$(hostname): si-train started, pid $(cat {DETACHED_PID}), log {log}\"")
    where_logs = f"detached: log {log} on each worker"
    follow = [Command(base + ["ssh", tpu, *where, "--worker=0", "--command",
                              f"tail -n +1 -F {log}"],
                      note="watch worker 0's log (Ctrl-C stops watching, not the run)"),
              Command(ssh + ["--command", f"tail -n 5 {log}"],
                      note="the last lines of every worker's log"),
              Command(ssh + ["--command", f"kill -TERM $(cat {pid})"],
                      note="stop: every worker saves the step and exits 75; run the same "
                           "si-launch command again to resume")]
  run = Command(ssh + logs + ["--command", run_cmd],
                note=f"4. si-train on every worker ({where_logs})")
  after_cmd = None
  if after:
    after_cmd = Command(base + [after, tpu, *where] + (["--quiet"] if after == "delete" else []),
                        note=f"5. {after} the TPU (also after a failed run)")
  return TpuPlan(tpu, accelerator_type, hosts, describe, create, start, clean_check, copy,
                 install, run, after_cmd, notes, log_dir, tarball or "", follow)


def _echo(c: Command) -> None:
  text = c.shell() if c.stdin is None else f"{c.shell().splitlines()[0]} (script above)"
  print(f"si-launch: {c.note}\nsi-launch: + {text}", file=sys.stderr, flush=True)


def _step(c: Command, capture: bool = False) -> subprocess.CompletedProcess:
  """Runs one command (echoed on stderr); a failure stops the launch with its exit code."""
  _echo(c)
  try:
    res = subprocess.run(c.argv, env={**os.environ, **c.env}, input=c.stdin, text=True,
                         capture_output=capture,
                         stdin=None if c.stdin is not None else subprocess.DEVNULL)
  except FileNotFoundError:
    raise LaunchError(f"{c.argv[0]}: not found on PATH", code=127) from None
  if res.returncode != 0:
    detail = f": {res.stderr.strip()}" if capture and res.stderr else ""
    raise LaunchError(f"{c.argv[0]} failed (exit code {res.returncode}){detail}",
                      code=_exit_code(res.returncode) or 1)
  return res


def run_tpu_pod(plan: TpuPlan, allow_dirty: bool = False) -> int:
  """Runs a TpuPlan: brings the TPU up, copies and installs, runs; stop/delete at the end."""
  for n in plan.notes:
    print(f"si-launch: note: {n}", file=sys.stderr, flush=True)
  _echo(plan.describe)
  try:
    res = subprocess.run(plan.describe.argv, capture_output=True, text=True,
                         stdin=subprocess.DEVNULL)
  except FileNotFoundError:
    raise LaunchError("gcloud: not found on PATH (install the Google Cloud CLI)", 127) from None
  if res.returncode != 0:
    if not re.search(r"NOT_FOUND|not found", res.stderr):
      raise LaunchError(f"gcloud describe {plan.tpu} failed (exit code {res.returncode}): "
                        f"{res.stderr.strip()}", code=1)
    _step(plan.create)
  else:
    state, _, kind = res.stdout.strip().partition("\t")
    kind = kind.strip().rsplit("/", 1)[-1]
    if kind and kind != plan.accelerator_type:
      raise LaunchError(f"--accelerator_type {plan.accelerator_type}: TPU {plan.tpu} is a "
                        f"{kind}; use its type or another --tpu name")
    if state == "STOPPED":
      _step(plan.start)
    elif state != "READY":
      raise LaunchError(f"--tpu {plan.tpu}: its state is {state or 'unknown'}, not READY or "
                        f"STOPPED; wait, or delete it", code=1)
  if plan.clean_check:
    changed = _step(plan.clean_check, capture=True).stdout.splitlines()
    if changed and not allow_dirty:
      files = ", ".join(line[3:] for line in changed[:5]) + (", ..." if len(changed) > 5 else "")
      raise LaunchError(f"--source git: {len(changed)} uncommitted change(s) ({files}) would "
                        f"not be copied (HEAD is); commit (or ignore) them or pass "
                        f"--allow_dirty")
  try:
    for c in plan.copy:
      _step(c)
  finally:
    if plan.tarball and os.path.exists(plan.tarball):
      os.remove(plan.tarball)
  if plan.install:
    _step(plan.install)
  if plan.log_dir:
    os.makedirs(plan.log_dir, exist_ok=True)  # gcloud wants it to exist
  _echo(plan.run)
  try:
    rc = _exit_code(subprocess.run(plan.run.argv, stdin=subprocess.DEVNULL).returncode)
  finally:
    if plan.after:
      _echo(plan.after)
      after_rc = subprocess.run(plan.after.argv, stdin=subprocess.DEVNULL).returncode
      if after_rc:
        print(f"si-launch: {shlex.join(plan.after.argv[:6])} failed (exit code {after_rc}): "
              f"the TPU may still be running", file=sys.stderr, flush=True)
  if plan.follow and not rc:
    for c in plan.follow:
      print(f"si-launch: {c.note}:\n  {c.shell()}", file=sys.stderr, flush=True)
  elif rc == PREEMPTED:
    print(f"si-launch: si-train was preempted and saved a checkpoint (exit code {PREEMPTED}); "
          f"run the same command again to resume", file=sys.stderr, flush=True)
  elif rc:
    print(f"si-launch: si-train failed on at least one worker (exit code {rc})",
          file=sys.stderr, flush=True)
  return rc


# ----------------------------------------------------------------------------- the CLI


class _Parser(argparse.ArgumentParser):
  """argparse whose mistakes are LaunchErrors (one line naming the flag, exit code 2)."""

  def error(self, message: str):
    raise LaunchError(f"{self.prog}: {message}")


def _parser() -> argparse.ArgumentParser:
  p = _Parser(prog="si-launch", description=__doc__.split("\n\n")[0], allow_abbrev=False,
              formatter_class=argparse.RawDescriptionHelpFormatter,
              epilog="si-train's arguments follow `--`. See the module docstring of "
                     "si_jax/tools/launch/ and launch/README.md.")
  sub = p.add_subparsers(dest="kind", required=True, metavar="{local,slurm,tpu_pod}")
  parsers = {}
  for kind, text in (("local", "N si-train processes on this machine"),
                     ("slurm", "one sbatch job, one si-train process per node"),
                     ("tpu_pod", "si-train on every worker of a Cloud TPU VM slice")):
    s = sub.add_parser(kind, help=text, description=text, allow_abbrev=False)
    s.add_argument("--dry_run", action="store_true", help="print the exact commands, run none")
    s.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment of every si-train process (repeatable)")
    parsers[kind] = s
  s = parsers["local"]
  s.add_argument("--processes", type=int, default=1, help="processes (simulated hosts)")
  s.add_argument("--devices_per_process", type=int, default=0,
                 help="fake CPU devices per process (XLA_FLAGS); 0: leave XLA_FLAGS alone")
  s.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
  s.add_argument("--program", default="",
                 help="what to run instead of si-train (a command line, split like a shell)")
  s.add_argument("--max_restarts", type=int, default=0,
                 help=f"run si-train again (resuming) when it exits {PREEMPTED}, preempted, "
                      f"up to this many times")
  s = parsers["slurm"]
  s.add_argument("--nodes", type=int, required=True, help="hosts (sbatch --nodes)")
  s.add_argument("--gpus_per_node", type=int, default=8, help="0: no --gpus-per-node line")
  s.add_argument("--job_name", default="si-train")
  s.add_argument("--port", type=int, default=0,
                 help="coordinator port (0: 20000 + job id mod 20000)")
  s.add_argument("--sbatch_args", default="",
                 help="more sbatch options, one string (--partition=gpu --time=4:00:00)")
  s.add_argument("--log", default="",
                 help="sbatch --output (default <workdir>/slurm-%%j.log)")
  s.add_argument("--no_exclusive", action="store_true", help="omit #SBATCH --exclusive")
  s.add_argument("--program", default="si-train", help="what srun starts on every node")
  s.add_argument("--follow", action="store_true",
                 help="print the job's log until it leaves the queue (needs squeue)")
  s = parsers["tpu_pod"]
  s.add_argument("--tpu", default="", help="TPU VM name")
  s.add_argument("--zone", default="")
  s.add_argument("--accelerator_type", default="", help="v5p-16, v5litepod-16, v6e-32, ...")
  s.add_argument("--version", default="", help="TPU software for create (default by family)")
  s.add_argument("--project", default="")
  s.add_argument("--create_args", default="", help="more gcloud create flags, one string")
  s.add_argument("--source", default="git", choices=("git", "none"),
                 help="git: copy HEAD of --repo to every worker; none: it is there already")
  s.add_argument("--repo", default=REPO_DIR, help="the checkout to copy")
  s.add_argument("--allow_dirty", action="store_true",
                 help="copy HEAD even when the checkout has uncommitted changes")
  s.add_argument("--remote_dir", default="~/si_jax", help="the project on every worker")
  s.add_argument("--python", default="python3", help="the interpreter on the workers")
  s.add_argument("--pip", default="jax[tpu]",
                 help="installed with `pip install -e .`, one string ('' for nothing)")
  s.add_argument("--log_dir", default="",
                 help="write each worker's output to <log_dir>/<worker>.log instead")
  s.add_argument("--detach", action="store_true",
                 help="start si-train in the background on every worker (it outlives ssh "
                      "and si-launch; log in <remote_dir>/si-train.log) and print how to "
                      "watch and stop it")
  after = s.add_mutually_exclusive_group()
  after.add_argument("--stop", action="store_true", help="stop the TPU after the run")
  after.add_argument("--delete", action="store_true", help="delete the TPU after the run")
  return p


def _split_argv(argv: Sequence[str]) -> tuple[list[str], list[str] | None]:
  """si-launch's own arguments and si-train's (after the first `--`; None without one)."""
  argv = list(argv)
  if "--" not in argv:
    return argv, None
  i = argv.index("--")
  return argv[:i], argv[i + 1:]


def _split(text: str, flag: str) -> list[str]:
  try:
    return shlex.split(text)
  except ValueError as e:
    raise LaunchError(f"{flag} {text!r}: {e}") from None


def plan(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str], object]:
  """Parses a si-launch command line and builds its commands, running nothing.

  Returns (options, si-train arguments, commands): a list of Command for local and slurm, a
  TpuPlan for tpu_pod. Raises LaunchError naming the culprit.
  """
  head, train = _split_argv(argv)
  args, unknown = _parser().parse_known_args(head)
  if train is None:
    raise LaunchError(f"no si-train arguments: give them after `--` (si-launch {args.kind} "
                      f"[options] -- --config FILE --workdir DIR)")
  if unknown:
    raise LaunchError(f"si-launch {args.kind}: unrecognized arguments: {shlex.join(unknown)}")
  env = _env_pairs(args.env)
  if args.kind == "local":
    program = _split(args.program, "--program") if args.program else None
    return args, train, local_commands(train, args.processes, args.devices_per_process,
                                       args.port, program, env)
  if args.kind == "slurm":
    if args.follow and args.log:
      _log_path(args.log, "0", args.job_name)  # refuses patterns it cannot fill in
    return args, train, slurm_commands(
        train, args.nodes, args.gpus_per_node, args.job_name, args.port,
        not args.no_exclusive, _split(args.program, "--program"), env,
        _split(args.sbatch_args, "--sbatch_args"), args.log or None)
  return args, train, tpu_plan(
      train, args.tpu, args.zone, args.accelerator_type, args.version, args.project,
      _split(args.create_args, "--create_args"), args.source, args.repo, args.remote_dir,
      args.python, _split(args.pip, "--pip"), env, args.log_dir,
      "stop" if args.stop else "delete" if args.delete else "", detach=args.detach)


def main(argv: Sequence[str] | None = None) -> int:
  """si-launch; returns the exit code (2 for a mistake on the command line)."""
  argv = sys.argv[1:] if argv is None else list(argv)
  try:
    args, train, commands = plan(argv)
    if args.dry_run:
      if isinstance(commands, TpuPlan):
        print(commands.script(), end="", flush=True)
      else:
        for c in commands:
          print(c.shell(), flush=True)
      return 0
    if args.kind == "local":
      return _run_local_restarting(argv, args, commands)
    if args.kind == "slurm":
      return _submit_slurm(args, train, commands)
    return run_tpu_pod(commands, args.allow_dirty)
  except LaunchError as e:
    if os.environ.get("SI_TRACEBACK") == "1":
      raise
    print(f"si-launch: error: {e}", file=sys.stderr, flush=True)
    return e.code


def _run_local_restarting(argv: Sequence[str], args: argparse.Namespace,
                          commands: list[Command]) -> int:
  """run_local, again (a fresh coordinator port) while si-train exits PREEMPTED and restarts
  are left (--max_restarts)."""
  if args.max_restarts < 0:
    raise LaunchError(f"--max_restarts {args.max_restarts}: must be >= 0")
  rc = run_local(commands)
  for restart in range(1, args.max_restarts + 1):
    if rc != PREEMPTED:
      break
    print(f"si-launch: si-train was preempted and saved a checkpoint; restart {restart} of "
          f"{args.max_restarts}", file=sys.stderr, flush=True)
    rc = run_local(plan(argv)[2])
  if rc == PREEMPTED:
    print(f"si-launch: si-train was preempted and saved a checkpoint (exit code {PREEMPTED}); "
          f"run the same command again to resume", file=sys.stderr, flush=True)
  return rc


def _submit_slurm(args: argparse.Namespace, train: list[str], commands: list[Command]) -> int:
  """mkdir, sbatch (its output on stdout, as sbatch prints it), then --follow."""
  if args.follow and not shutil.which("squeue"):
    raise LaunchError("--follow: squeue not found on PATH")
  for c in commands[:-1]:
    _step(c)
  res = _step(commands[-1], capture=True)
  print(res.stdout, end="", flush=True)
  if not args.follow:
    return 0
  m = re.search(r"Submitted batch job (\d+)", res.stdout)
  if not m:
    raise LaunchError(f"--follow: no job id in sbatch's output {res.stdout.strip()!r}", 1)
  job = m.group(1)
  log = _log_path(slurm_log(train, args.log or None) or "slurm-%j.out", job, args.job_name)
  print(f"si-launch: following {log} (Ctrl-C stops following, not the job)", file=sys.stderr,
        flush=True)
  return follow_job(job, log)


def run() -> None:
  """Console-script entry point (`si-launch`)."""
  try:
    code = main()
  except KeyboardInterrupt:
    print("\nsi-launch: interrupted", file=sys.stderr)
    code = 130
  sys.exit(code)


if __name__ == "__main__":
  run()
