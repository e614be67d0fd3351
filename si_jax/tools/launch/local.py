"""si-launch local: si-train as it is, or N processes of it here simulating a multi-host run.

`--processes 1` (the default) is si-train as it is. With more processes, or
`--devices_per_process`, it is a CPU simulation of a multi-host run: N processes here, each with
SI_MULTIHOST=1, coordinator localhost:PORT (a free port), its index, JAX_PLATFORMS=cpu, gloo
collectives and D fake CPU devices (XLA_FLAGS). Their stdout and stderr are streamed, each to
its own, with a `[p<i>]` prefix; when one fails the others are stopped (their whole process
groups) and si-launch exits with its exit code, naming it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO, Sequence

from si_jax.tools.launch.common import ENV_COORDINATOR
from si_jax.tools.launch.common import ENV_ENABLE
from si_jax.tools.launch.common import ENV_NUM_PROCESSES
from si_jax.tools.launch.common import ENV_PROCESS_ID
from si_jax.tools.launch.common import PREEMPTED
from si_jax.tools.launch.common import Command
from si_jax.tools.launch.common import LaunchError
from si_jax.tools.launch.common import exit_code

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
POLL_S = 0.05  # how often the processes are checked
KILL_GRACE_S = 10.0  # SIGTERM, then SIGKILL after this long


def train_program() -> list[str]:
  """si-train as this interpreter runs it (the console script may not be on PATH)."""
  return [sys.executable, "-m", "si_jax.cli.train"]


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
    return exit_code(subprocess.run(c.argv, env={**os.environ, **c.env}).returncode)
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
  rc = exit_code(procs[failed].returncode)
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
