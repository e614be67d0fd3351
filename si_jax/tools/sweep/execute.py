"""Runs a sweep's unfinished runs. With `--launcher local` (the default) they go one after
another as `python -m si_jax.cli.train` (= si-train) subprocesses, output appended to
`<workdir>/train.log`. A run with `summary.json` is finished and skipped; one with checkpoints but
no summary is resumed; a failed run is reported and the sweep goes on (exit code 1 at the end).
`--launcher slurm` submits one job per unfinished run whose earlier job (`<workdir>/slurm_job`) is
no longer in `squeue` (collect with `--summarize` once they are done); `--launcher tpu_pod` runs
each on a TPU pod slice, one after another. Run state is read with plain file access, so roots
other than local paths (`gs://...`) are for `--dry_run` only. Runs with the same shapes recompile
the same programs; `export JAX_COMPILATION_CACHE_DIR=...` lets them share compilations.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time

from si_jax.tools.sweep.launcher import Launcher, run_job_name, train_args
from si_jax.tools.sweep.root import RUN_LOG, SLURM_JOB_FILE, SUMMARY_FILE, run_state
from si_jax.tools.sweep.spec import RunSpec, Sweep


def _short_result(workdir: str) -> str:
  try:
    with open(os.path.join(workdir, SUMMARY_FILE), encoding="utf-8") as f:
      after = json.load(f).get("eval_after") or {}
  except (OSError, ValueError):
    return ""
  key = next((k for k in after if k.startswith("avg@")), None)
  return f", held-out {key} {after[key]:.3f}" if key else ""


def _active_job(workdir: str) -> str | None:
  """The SLURM job id an earlier si-sweep submitted for `workdir`, if it is still queued or
  running (`squeue` lists it; without squeue it is taken as active)."""
  path = os.path.join(workdir, SLURM_JOB_FILE)
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    job = f.read().strip()
  try:
    res = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i"], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL)
  except FileNotFoundError:
    return job
  return job if res.stdout.split() else None


def _submit(cmd: list[str], workdir: str, head: str) -> bool:
  """sbatch one run unless its earlier job is still active; records the job id in the workdir.
  False if sbatch failed."""
  job = _active_job(workdir)
  if job:
    print(f"{head} job {job} is still queued or running, not submitted again (delete "
          f"{os.path.join(workdir, SLURM_JOB_FILE)} to resubmit)", flush=True)
    return True
  res = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
  out = (res.stdout.strip() or res.stderr.strip()).replace("\n", " ")
  if res.returncode != 0:
    print(f"{head} FAILED to submit (exit code {res.returncode}): {out}", flush=True)
    return False
  m = re.search(r"(\d+)\s*$", res.stdout.strip())
  if m:
    with open(os.path.join(workdir, SLURM_JOB_FILE), "w", encoding="utf-8") as f:
      f.write(m.group(1) + "\n")
  print(f"{head} submitted: {out}", flush=True)
  return True


def execute(sweep: Sweep, runs: list[RunSpec], root: str, launcher: Launcher) -> int:
  """Starts every unfinished run, one after another, one progress line each. Returns the
  number of failed runs."""
  failed = 0
  for i, run in enumerate(runs, start=1):
    workdir = os.path.join(root, run.name)
    state, step = run_state(workdir)
    head = f"[{i}/{len(runs)}] {run.name}:"
    if state == "finished":
      print(f"{head} finished, skipped", flush=True)
      continue
    cmd = launcher.command(train_args(sweep, run, root), run_job_name(sweep, run))
    os.makedirs(workdir, exist_ok=True)
    if launcher.kind == "slurm":
      failed += not _submit(cmd, workdir, head)
      continue
    what = f"resuming from step {step}" if state == "resume" else "running"
    t0 = time.perf_counter()
    log_path = os.path.join(workdir, RUN_LOG)
    print(f"{head} {what} ...", end="", flush=True)
    with open(log_path, "a", encoding="utf-8") as log:
      log.write(f"=== si-sweep {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(cmd)}\n")
      log.flush()
      rc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=log,
                          stderr=subprocess.STDOUT).returncode
    dt = time.perf_counter() - t0
    if rc == 0 and run_state(workdir)[0] == "finished":
      print(f" done in {dt:.0f} s{_short_result(workdir)}", flush=True)
    else:
      failed += 1
      print(f" FAILED (exit code {rc}) after {dt:.0f} s; see {log_path}", flush=True)
  return failed
