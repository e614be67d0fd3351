"""What every launcher of si_jax/tools/launch/ shares: si-train's multi-host environment, the
exit code of a preemption, one command of a launch (`Command`) and how a step is run.

Every process runs the same si-train with SI_MULTIHOST=1, which makes it call
`jax.distributed.initialize()` (si_jax/multihost.py) with SI_COORDINATOR (host:port),
SI_NUM_PROCESSES and SI_PROCESS_ID where the launcher sets them (local, slurm), else with JAX's
own detection (TPU VMs). The workdir of a multi-host run must be storage every host sees.

Preemption: si-train exits with PREEMPTED (75) after every process saved the same step on a
SIGTERM (si_jax/preemption.py). That is no failure: local waits for the other processes (they
are saving that step) and restarts the run up to `--max_restarts` times (default 0: it says to
run the command again, and exits 75); the slurm script requeues its job (`scontrol requeue`;
the job is submitted `--requeue`); tpu_pod says to run the command again.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
from typing import Sequence

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
HEREDOC_END = "SI_LAUNCH_EOF"
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


def flag_value(args: Sequence[str], flag: str) -> str | None:
  """The value of `--flag X` / `--flag=X` in si-train's arguments (the last one), or None."""
  value = None
  for i, a in enumerate(args):
    if a == flag and i + 1 < len(args):
      value = args[i + 1]
    elif a.startswith(flag + "="):
      value = a[len(flag) + 1:]
  return value


def check_train_args(args: Sequence[str]) -> None:
  """Remote launches are slow to fail: refuse si-train arguments without --config/--workdir."""
  for flag in ("--config", "--workdir"):
    if flag_value(args, flag) is None:
      raise LaunchError(f"si-train arguments (after --): no {flag}")


def exit_code(rc: int) -> int:
  """A child's return code as a shell reports it (killed by signal s: 128 + s)."""
  return 128 - rc if rc < 0 else rc


def echo(c: Command) -> None:
  """Says on stderr what `c` is for and what runs (a here-document: only its first line)."""
  text = c.shell() if c.stdin is None else f"{c.shell().splitlines()[0]} (script above)"
  print(f"si-launch: {c.note}\nsi-launch: + {text}", file=sys.stderr, flush=True)


def step(c: Command, capture: bool = False) -> subprocess.CompletedProcess:
  """Runs one command (echoed on stderr); a failure stops the launch with its exit code."""
  echo(c)
  try:
    res = subprocess.run(c.argv, env={**os.environ, **c.env}, input=c.stdin, text=True,
                         capture_output=capture,
                         stdin=None if c.stdin is not None else subprocess.DEVNULL)
  except FileNotFoundError:
    raise LaunchError(f"{c.argv[0]}: not found on PATH", code=127) from None
  if res.returncode != 0:
    detail = f": {res.stderr.strip()}" if capture and res.stderr else ""
    raise LaunchError(f"{c.argv[0]} failed (exit code {res.returncode}){detail}",
                      code=exit_code(res.returncode) or 1)
  return res
