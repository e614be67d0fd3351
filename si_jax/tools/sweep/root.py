"""The layout of a sweep's root: `<root>/sweep.json` (config, axes, runs; a different sweep on
the same root is refused, naming what differs), one workdir per run named from its grid values
(`rl.loss=gspo,seed=1`), and `summary.json` / `summary.md` with one row per setting of the
non-seed axes, each metric as `mean ± std (n)` over seeds (std with ddof=1; report.py writes
them). A run's workdir with `summary.json` is finished; one with checkpoints but no summary is
resumed (si-train resumes a workdir by itself).
"""

from __future__ import annotations

import json
import os
from typing import Any

from si_jax.tools.sweep.spec import RunSpec, Sweep, SweepError
from si_jax.tools.sweep.values import jsonable

SWEEP_FILE = "sweep.json"
SUMMARY_FILE = "summary.json"  # a run's (written by si-train) and the root's (written here)
TABLE_FILE = "summary.md"
RUN_LOG = "train.log"
SLURM_JOB_FILE = "slurm_job"  # in a workdir: the id of the job si-sweep submitted for it


def check_root(root: str, sweep: Sweep, runs: list[RunSpec]) -> dict[str, Any]:
  """sweep.json's content for this sweep; refuses a root that holds a different sweep."""
  record = dict(sweep.record(), runs=[dict(name=r.name, values=r.values) for r in runs])
  record = jsonable(record)
  path = os.path.join(root, SWEEP_FILE)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      old = json.load(f)
    diff = [f"{k}: {json.dumps(old.get(k))} -> {json.dumps(record[k])}"
            for k in ("config", "grid", "set", "seed_axis") if old.get(k) != record[k]]
    if diff:
      raise SweepError(f"--root {root} holds a different sweep ({path}): {'; '.join(diff)}; "
                       f"use a new --root")
  return record


def run_state(workdir: str) -> tuple[str, int | None]:
  """('finished', None) | ('resume', latest checkpoint step) | ('new', None)."""
  if os.path.exists(os.path.join(workdir, SUMMARY_FILE)):
    return "finished", None
  ckpt = os.path.join(workdir, "checkpoints")
  steps = [int(n) for n in os.listdir(ckpt) if n.isdigit()] if os.path.isdir(ckpt) else []
  return ("resume", max(steps)) if steps else ("new", None)
