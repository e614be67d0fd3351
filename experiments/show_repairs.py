"""Show what SI trains on: kept repairs beside their failures, credit marked, at chosen steps.

  python experiments/show_repairs.py --workdir runs/arith_si [--step S ...] [--n 10]
      [--html report.html]

For each chosen checkpoint step S of a run (--step may be repeated or take a list: `--step 10
--step 20`, `--step 10 20`, `--step 10,20`; default: the latest checkpoint), loads the
checkpoint and re-runs RL step S's sampling and credit stage exactly as the run did (its config,
its PRNG keys for step S, its prompts from the data cursor saved with the checkpoint). The
credit's `Credit.details` says, per kept repair, what was credited.

Without --html it prints per step the credit metrics and per kept repair (up to --n) a summary
line, the failed rollout and the repair with the credited tokens in [brackets] (g_minus on the
failure, g_plus on the repair, after adaptive truncation), the candidates' audit verdicts and
the continuation that verified the truncation rung. With --html it writes one self-contained
page instead (`si_jax/si/report.py`): every token coloured by its advantage, the true first
wrong step banded, the metrics next to the values the run logged for the step. Nothing is
trained; nothing in the workdir is written.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def parse_steps(values) -> list[int] | None:
  """--step's values (lists of 'S' or 'S,T' strings) -> the steps, in order, once each."""
  if not values:
    return None
  out = []
  for group in values:
    for v in group:
      for s in str(v).split(","):
        if s.strip():
          try:
            out.append(int(s))
          except ValueError:
            raise SystemExit(f"--step takes checkpoint steps (integers), got {s!r}") from None
  return list(dict.fromkeys(out))


def choose_steps(available: list[int], wanted: list[int] | None, sft_steps: int,
                 workdir: str) -> list[int]:
  """The steps to re-run: `wanted` (each must be an RL checkpoint), else the latest."""
  rl = [s for s in available if s >= sft_steps]
  if not rl:
    raise SystemExit(f"{workdir} has no RL checkpoint (checkpoints: {available or 'none'}; RL "
                     f"starts at step {sft_steps})")
  if wanted is None:
    return [rl[-1]]
  for s in wanted:
    if s not in available:
      raise SystemExit(f"{workdir} has no checkpoint at step {s}; its checkpoints: {available}")
    if s < sft_steps:
      raise SystemExit(f"step {s} is an SFT checkpoint: RL starts at step {sft_steps} (its RL "
                       f"checkpoints: {rl})")
  return wanted


def rerun(run, step: int):
  """RL step `step` of the run again from its checkpoint: (scored, credit)."""
  from si_jax.train import trainer
  run.state, run.meta = run.ckpt.restore(trainer.ts.abstract_state(run.state), step)
  stream = trainer.PromptStream(run.task.examples(run.config.task.train_split),
                                run.config.seed, run.meta["data_cursor"])
  scored = run.sample_and_score(step, stream)
  return scored, run.credit_fn(run.credit_context(step), scored)


def logged_row(rows: list[dict], step: int) -> dict | None:
  """The run's metrics row of RL step `step` (written at step + 1; the last one if a resumed
  run wrote it twice), or None."""
  found = [r for r in rows if r.get("step") == step + 1 and r.get("phase") == 1]
  return found[-1] if found else None


def settings(config) -> list[tuple[str, object]]:
  """The config fields that decide what the credit does, for the report's header."""
  names = ["task.name", "model.preset", "rl.loss", "rl.group_size", "si.repair_samples",
           "si.audit", "si.truncation", "si.truncation_k", "si.truncation_samples",
           "si.truncation_pass", "si.both_sides", "si.plus", "si.adv_minus", "si.adv_plus",
           "si.adv_scale", "seed"]
  out = []
  for name in names:
    v = config
    for part in name.split("."):
      v = v.get(part) if hasattr(v, "get") else None
    if v is not None:
      out.append((name, v))
  return out


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--step", action="append", nargs="+", default=None,
                  help="checkpoint steps (repeat, or a list: 10 20 / 10,20; default: latest)")
  ap.add_argument("--n", type=int, default=10, help="kept repairs to show per step")
  ap.add_argument("--html", default=None, help="write the report as one HTML page here")
  ap.add_argument("--compile_cache_dir", default=None,
                  help="persistent compilation cache (default: si-train's; 'off': none)")
  args = ap.parse_args(argv)
  if args.n < 1:
    raise SystemExit(f"--n must be >= 1, got {args.n}")
  wanted = parse_steps(args.step)
  from si_jax import compilation
  from si_jax import metrics as metrics_lib
  from si_jax.train import workdir as workdir_lib
  from si_jax.train import trainer
  from si_jax.si import report

  compilation.enable_cache(args.compile_cache_dir or compilation.default_cache_dir())
  config = workdir_lib.read_config(args.workdir)
  if config.rl.credit != "si" or config.si.correction != "repair":
    raise SystemExit(f"{args.workdir} trains with rl.credit={config.rl.credit!r}, "
                     f"si.correction={config.si.correction!r}: only SI by repair has repairs "
                     f"to show")
  run = trainer.Run(config, args.workdir)
  try:
    steps = choose_steps(run.ckpt.all_steps(), wanted, run.sft_steps, args.workdir)
    logged = metrics_lib.read_metrics(args.workdir)
    reports = []
    for step in steps:
      scored, credit = rerun(run, step)
      metrics = dict(credit.metrics, accuracy=float(np.mean(scored.success)))
      reports.append(report.StepReport(step=step, metrics=metrics, details=credit.details,
                                       logged=logged_row(logged, step)))
  finally:
    run.close()
  truncation = config.si.truncation
  if args.html is None:
    print(report.render_text(reports, run.tokenizer, run.task.step_mode, args.n, truncation))
    return 0
  page = report.render_html(reports, run.tokenizer, run.task.step_mode, args.n,
                            title=f"SI credit: {os.path.abspath(args.workdir)}",
                            settings=settings(config), truncation=truncation)
  with open(args.html, "w", encoding="utf-8") as f:
    f.write(page)
  for r in reports:
    print(report.header_line(r))
  print(f"wrote {args.html}: {len(reports)} step(s), "
        f"{sum(min(len(r.details), args.n) for r in reports)} kept repair(s) shown")
  return 0


if __name__ == "__main__":
  sys.exit(main())
