"""si-sweep: runs a grid of si-train config overrides and tabulates the results over seeds.

  si-sweep --config experiments/configs/arith_si.py:smoke --root runs/sweep1 \\
      --grid rl.loss=grpo,gspo --grid seed=0,1,2 [--set rl.steps=10 ...]
  si-sweep --sweep experiments/sweeps/arith_losses.py --root runs/sweep2
  si-sweep ... --launcher slurm --hosts 2 --dry_run      # print one command per run
  si-sweep --root runs/sweep1 --summarize                 # only collect and print the table

The command line: a sweep from `--config` / `--sweep` / `--grid` / `--set` (spec.py), checked
before anything runs (check.py), its runs started (execute.py, through launcher.py) and the table
written (report.py). A mistake in the sweep is one line on stderr, exit code 2 (`SI_TRACEBACK=1`
raises it instead); a failed run makes the exit code 1.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import NoReturn, Sequence

from si_jax import tables
from si_jax.cli.console import console
from si_jax.tools.sweep.check import validate
from si_jax.tools.sweep.execute import execute
from si_jax.tools.sweep.launcher import LAUNCHERS, Launcher, run_job_name, train_args
from si_jax.tools.sweep.report import summarize
from si_jax.tools.sweep.root import SWEEP_FILE, check_root
from si_jax.tools.sweep.spec import SweepError, make_sweep


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="si-sweep", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", help="experiment config file[:arg], as si-train takes it")
  p.add_argument("--sweep", help="sweep file (experiments/sweeps/*.py) with get_sweep()")
  p.add_argument("--root", required=True, help="directory of the sweep's runs")
  p.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2,...",
                 help="an axis (repeatable); runs = the product of the axes")
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="a field fixed for every run (repeatable)")
  p.add_argument("--seed_axis", default=None, help="axis averaged over (default: seed)")
  p.add_argument("--name", default=None, help="sweep name (default: the sweep file's)")
  p.add_argument("--launcher", default="local", choices=LAUNCHERS)
  p.add_argument("--hosts", type=int, default=1, help="slurm: nodes per run (sbatch --nodes)")
  p.add_argument("--tpu", default="", help="tpu_pod: TPU VM name")
  p.add_argument("--zone", default="", help="tpu_pod: its zone")
  p.add_argument("--sbatch_args", default="", help="slurm: more sbatch options, one string")
  p.add_argument("--launch_args", default="",
                 help="slurm, tpu_pod: more si-launch options, one string "
                      "(--accelerator_type=v5p-16 --source=none)")
  p.add_argument("--dry_run", action="store_true", help="print one command per run, run none")
  p.add_argument("--summarize", action="store_true",
                 help="only collect the finished runs of --root and write the table")
  p.add_argument("--metric", action="append", default=[],
                 help="extra column (repeatable): a dotted path into summary.json "
                      "(eval_after.avg@4) or last.<metric> (last metrics.jsonl row)")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  """si-sweep; returns the exit code (2 for a mistake in the sweep, 1 if a run failed)."""
  try:
    return _main(_parser().parse_args(argv))
  except SweepError as e:
    if os.environ.get("SI_TRACEBACK") == "1":
      raise
    print(f"si-sweep: error: {e}", file=sys.stderr, flush=True)
    return 2


def _main(args: argparse.Namespace) -> int:
  if args.summarize:
    extra = [f for f in ("config", "sweep", "grid", "set", "dry_run") if getattr(args, f)]
    if extra:
      raise SweepError(f"--summarize reads {args.root}/{SWEEP_FILE}; it takes no --{extra[0]}")
    print(summarize(args.root, args.metric), end="", flush=True)
    return 0
  sweep = make_sweep(args.config, args.sweep, args.grid, args.set, args.seed_axis, args.name)
  launcher = Launcher(args.launcher, args.hosts, args.tpu, args.zone, args.sbatch_args,
                      args.launch_args)
  launcher.check()
  runs = validate(sweep)
  if args.dry_run:
    for run in runs:
      cmd = launcher.command(train_args(sweep, run, args.root), run_job_name(sweep, run),
                             display=True)
      print(shlex.join(cmd), flush=True)
    return 0
  if "://" in args.root:
    raise SweepError(f"--root {args.root}: si-sweep reads run state with plain file access; "
                     f"a remote root is for --dry_run only")
  record = check_root(args.root, sweep, runs)
  os.makedirs(args.root, exist_ok=True)
  tables.write_json(os.path.join(args.root, SWEEP_FILE), record)
  print(f"si-sweep: {len(runs)} runs under {args.root} ({args.launcher})", flush=True)
  failed = execute(sweep, runs, args.root, launcher)
  if args.launcher == "slurm":
    print(f"collect the results when the jobs finish: si-sweep --root "
          f"{shlex.quote(args.root)} --summarize", flush=True)
  else:
    print("\n" + summarize(args.root, args.metric), end="", flush=True)
  if failed:
    print(f"si-sweep: {failed} of {len(runs)} runs failed", file=sys.stderr, flush=True)
  return 1 if failed else 0


def run() -> NoReturn:
  """Console-script entry point (`si-sweep`); quiet under `si-sweep ... --dry_run | head`."""
  console(main, "si-sweep", interrupted="interrupted; the same command resumes the sweep")
