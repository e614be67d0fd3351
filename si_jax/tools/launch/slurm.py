"""si-launch slurm: one sbatch job running one si-train process per node of a GPU allocation.

One `sbatch` of a generated script (read from stdin; `--dry_run` prints it): `#SBATCH
--nodes=H --ntasks-per-node=1 --gpus-per-node=G`, coordinator = the first host of the
allocation (`scontrol show hostnames`) and a port derived from the job id, SI_PLATFORM=gpu and
XLA_PYTHON_CLIENT_MEM_FRACTION=GPU_MEM_FRACTION (si-plan's), then `srun --kill-on-bad-exit=1`
of one si-train per node with SI_PROCESS_ID=$SLURM_PROCID (each drives all its node's GPUs).
The job's log goes to `<workdir>/slurm-<jobid>.log` (`--log`); `--follow` prints it until the
job leaves the queue. Needs only sbatch / srun / scontrol (squeue and sacct for --follow).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from typing import IO, Sequence

from si_jax.tools.launch.common import ENV_COORDINATOR
from si_jax.tools.launch.common import ENV_ENABLE
from si_jax.tools.launch.common import ENV_NUM_PROCESSES
from si_jax.tools.launch.common import ENV_PLATFORM
from si_jax.tools.launch.common import ENV_PROCESS_ID
from si_jax.tools.launch.common import GPU_MEM_FRACTION
from si_jax.tools.launch.common import MEM_FRACTION_ENV
from si_jax.tools.launch.common import PREEMPTED
from si_jax.tools.launch.common import Command
from si_jax.tools.launch.common import LaunchError
from si_jax.tools.launch.common import check_train_args
from si_jax.tools.launch.common import flag_value
from si_jax.tools.launch.common import step

FOLLOW_POLL_S = 5.0  # --follow: how often squeue and the log are read


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
  workdir = flag_value(args, "--workdir")
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
  check_train_args(args)
  script = slurm_script(args, nodes, gpus_per_node, job_name, port, exclusive, program, env)
  log = slurm_log(args, log)
  out = []
  if log and os.path.dirname(log):
    out.append(Command(["mkdir", "-p", os.path.dirname(log)], note="the log's directory"))
  sbatch = ["sbatch"] + ([f"--output={log}"] if log else []) + list(sbatch_args)
  out.append(Command(sbatch, stdin=script, note=f"{nodes} nodes x 1 task"))
  return out


def log_path(pattern: str, job: str, job_name: str) -> str:
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


def run_slurm(commands: Sequence[Command], args: Sequence[str], job_name: str = "si-train",
              log: str | None = None, follow: bool = False) -> int:
  """Runs the commands of `slurm_commands`: mkdir, sbatch (its output on stdout, as sbatch
  prints it), then with `follow` the job's log until it leaves the queue (`follow_job`'s exit
  code; else 0). `args` (si-train's), `job_name` and `log` are those the commands were built
  with: they say where the log is."""
  if follow and not shutil.which("squeue"):
    raise LaunchError("--follow: squeue not found on PATH")
  for c in commands[:-1]:
    step(c)
  res = step(commands[-1], capture=True)
  print(res.stdout, end="", flush=True)
  if not follow:
    return 0
  m = re.search(r"Submitted batch job (\d+)", res.stdout)
  if not m:
    raise LaunchError(f"--follow: no job id in sbatch's output {res.stdout.strip()!r}", 1)
  job = m.group(1)
  path = log_path(slurm_log(args, log) or "slurm-%j.out", job, job_name)
  print(f"si-launch: following {path} (Ctrl-C stops following, not the job)", file=sys.stderr,
        flush=True)
  return follow_job(job, path)
