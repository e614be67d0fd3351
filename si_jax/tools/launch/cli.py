"""si-launch: starts si-train here, on a SLURM GPU allocation or on a Cloud TPU pod slice.

  si-launch local -- --config experiments/configs/arith_si.py:smoke --workdir /tmp/smoke
  si-launch local --processes 2 --devices_per_process 4 -- ARGS   # 2 hosts, simulated on CPU
  si-launch slurm --nodes 2 --gpus_per_node 8 [--sbatch_args "--partition=gpu"] [--follow] \\
      -- --config experiments/configs/gsm8k_grpo.py:/shared/Qwen3-0.6B --workdir /shared/runs/a
  si-launch tpu_pod --tpu my-pod --zone us-east5-a --accelerator_type v5p-16 [--stop] \\
      -- --config experiments/configs/gsm8k_grpo.py:/data/Qwen3-0.6B --workdir gs://bucket/a
  si-launch ... --dry_run     # print the exact commands (a shell script), run none

Everything after `--` is si-train's command line, passed through untouched (quoted once for
each shell it crosses). This module parses the command line, builds the commands of one
launcher (local.py, slurm.py, tpu_pod.py), then prints them (--dry_run) or runs them.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from typing import NoReturn, Sequence

from si_jax.cli.console import console
from si_jax.tools.launch.common import PREEMPTED
from si_jax.tools.launch.common import Command
from si_jax.tools.launch.common import LaunchError
from si_jax.tools.launch.local import local_commands
from si_jax.tools.launch.local import run_local
from si_jax.tools.launch.slurm import log_path
from si_jax.tools.launch.slurm import run_slurm
from si_jax.tools.launch.slurm import slurm_commands
from si_jax.tools.launch.tpu_pod import REPO_DIR
from si_jax.tools.launch.tpu_pod import TpuPlan
from si_jax.tools.launch.tpu_pod import run_tpu_pod
from si_jax.tools.launch.tpu_pod import tpu_plan

KINDS = ("local", "slurm", "tpu_pod")


class _Parser(argparse.ArgumentParser):
  """argparse whose mistakes are LaunchErrors (one line naming the flag, exit code 2)."""

  def error(self, message: str):
    raise LaunchError(f"{self.prog}: {message}")


def _parser() -> argparse.ArgumentParser:
  p = _Parser(prog="si-launch", description=__doc__.split("\n\n")[0], allow_abbrev=False,
              formatter_class=argparse.RawDescriptionHelpFormatter,
              epilog="si-train's arguments follow `--`. See the module docstrings of "
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


def _env_pairs(items: Sequence[str]) -> dict[str, str]:
  """`--env KEY=VALUE` options as a dict, keys checked."""
  out = {}
  for item in items:
    key, eq, value = item.partition("=")
    if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
      raise LaunchError(f"--env {item}: expected KEY=VALUE with KEY a variable name")
    out[key] = value
  return out


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
      log_path(args.log, "0", args.job_name)  # refuses patterns it cannot fill in
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
      return run_slurm(commands, train, args.job_name, args.log or None, args.follow)
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


def run() -> NoReturn:
  """Console-script entry point (`si-launch`)."""
  console(main, "si-launch")
