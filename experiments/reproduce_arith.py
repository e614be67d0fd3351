"""The paper's comparison at toy scale, and the study of where process credit beats GSPO.

  python experiments/reproduce_arith.py                         # the ladder, chains, 5 seeds
  python experiments/reproduce_arith.py --study dilution        # GSPO vs SI where failures
                                                                # carry more correct work
  python experiments/reproduce_arith.py --study methods         # GRPO, GSPO, SI repair/reset
  python experiments/reproduce_arith.py --quick                 # 1 seed; GSPO, SI; 20 steps

Studies (every method of a task and seed starts from one shared cold start):
  ladder    on today's chains (2-4 operations): GSPO, SI as it was before the decisive-credit
            work, then one change at a time, cumulatively (LADDER): truncation by continuation,
            both sides of every edit, the balanced signal, internalization that repairs. Each
            row isolates one change against the row above it.
  dilution  GSPO against SI (the ladder's last row, or --best) on tasks where a failure carries
            more correct work: longer chains (`long`, 6-8 operations) and several independent
            chains per problem (`parts2`, `parts4`: reward 1 only when every part is right).
  methods   the first table: GRPO, GSPO, SI repair and the reset variants.

Per seed and task, the cold start is one si-train run of experiments/configs/arith_si.py[:task]
with rl.steps=0 (SFT on policy traces, repair pairs - half without the anchor - and reflection
pairs); every method then starts from that run's checkpoint (`model.init_from=<cold start
workdir>`), so differences are the RL methods' alone. Each run is a separate `si-train` process
in its own workdir under --root: an interrupted study resumes where it stopped (finished runs
are skipped, a killed one resumes from its checkpoint); runs share one persistent compilation
cache under --root.

Outputs (--out, default experiments/results/): arith[_<study>_<task>]_table.md (the table),
_curves.png (held-out accuracy against RL step, against tokens sampled, and the paired
difference to GSPO), _runs.json (the per-run metrics the table and plot were made from, and
each run's wall seconds under "_wall_s"). A study run in parts on checkouts whose run folders
are gone is put together with --merge (an earlier part's _runs.json).
Compared with GSPO per seed (paired): final avg@4, steps to GSPO's final accuracy, tokens
sampled, wall time per RL step with and without compilation (compile/seconds), programs
compiled after the warm-up steps.

Calibration (done before looking at SI's numbers): the task is the main job's (2-4 chained
operations mod 10, operands 0-9), the model the main job's (Qwen3-shaped, d=128, 2 layers). Its
cold start leaves held-out avg@4 around 0.3-0.4: room to learn, and GSPO moves it within tens
of steps without solving the task. RL: 32 prompts x 8 samples per step; --steps (default 40,
quick 20) for every method; evaluation every --eval_every steps on 128 held-out problems x 4
samples at temperature 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from typing import Any

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "experiments", "configs", "arith_si.py")
TASKS = ("chain", "long", "parts2", "parts4")  # arith_si.py variants ("chain": the default)
WARMUP_STEPS = 5  # RL steps that may compile (si_jax/train/trainer.py: WARMUP_STEPS)

# The SI of the first table, before the decisive-credit changes.
SI_BEFORE = {"rl.credit": "si", "rl.loss": "gspo", "si.correction": "repair",
             "si.truncation": "graft", "si.both_sides": False, "si.adv_scale": "fixed",
             "si.gate_norm": "gate", "si.plus": "pg", "si.train_correct_base": False,
             "si.anchor_dropout": 0.0, "si.repair_copy_weight": 1.0}
# The ladder: each row adds its changes to the row above it (GSPO stands apart).
LADDER_STEPS: list[tuple[str, dict[str, Any]]] = [
    ("SI as before", SI_BEFORE),
    ("+ continuation truncation", {"si.truncation": "continue"}),
    ("+ both sides", {"si.both_sides": True}),
    # chosen on one seed, 20 steps (README: the probe): group scale + response norm + correct
    # rollouts' outcome credit, the repair's off-policy tokens as plain PG ("pg"; "is" and
    # "sft" measured no better)
    ("+ balanced signal", {"si.adv_scale": "group", "si.gate_norm": "response",
                           "si.plus": "pg", "si.train_correct_base": True}),
    ("+ internalization", {"si.anchor_dropout": 0.5, "si.repair_copy_weight": 0.2}),
    # cost, not credit: half the repair candidates (does repair success hold?)
    ("+ 2 repair candidates", {"si.repair_samples": 2}),
]


def _cumulative(steps):
  out, acc = {}, {}
  for name, delta in steps:
    acc = {**acc, **delta}
    out[name] = dict(acc)
  return out


GSPO = {"rl.credit": "outcome", "rl.loss": "gspo"}
LADDER: dict[str, dict[str, Any]] = {"GSPO": GSPO, **_cumulative(LADDER_STEPS)}
METHODS: dict[str, dict[str, Any]] = {
    "GRPO": {"rl.credit": "outcome", "rl.loss": "grpo"},
    "GSPO": GSPO,
    "SI (repair)": {"rl.credit": "si", "rl.loss": "gspo", "si.correction": "repair"},
    "SI (reset)": {"rl.credit": "si", "rl.loss": "gspo", "si.correction": "reset"},
    "random_reset": {"rl.credit": "si", "rl.loss": "gspo", "si.correction": "random_reset"},
    "oracle_reset": {"rl.credit": "si", "rl.loss": "gspo", "si.correction": "oracle_reset"},
}
QUICK_METHODS = ("GSPO", "+ internalization")


def _slug(name: str) -> str:
  keep = "".join(ch if ch.isalnum() else "_" for ch in name.lower())
  return "_".join(p for p in keep.split("_") if p)


def _run(workdir: str, task: str, overrides: dict[str, Any], log_every: int) -> float:
  """si-train in a subprocess (skipped when finished); returns its wall seconds."""
  if os.path.exists(os.path.join(workdir, "summary.json")):
    return 0.0
  os.makedirs(workdir, exist_ok=True)
  config = CONFIG + ("" if task == "chain" else f":{task}")
  cmd = [sys.executable, "-m", "si_jax.cli.train", f"--config={config}", f"--workdir={workdir}",
         f"--config.log.progress_every={log_every}",
         f"--compile_cache_dir={os.path.join(os.path.dirname(os.path.dirname(workdir)), 'xla')}"]
  cmd += [f"--config.{k}={v}" for k, v in overrides.items()]
  t0 = time.time()
  with open(os.path.join(workdir, "train.log"), "a", encoding="utf-8") as log:
    rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                         env=dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", "")))
  if rc:
    raise SystemExit(f"reproduce_arith: {workdir} failed (exit {rc}); see {workdir}/train.log")
  return time.time() - t0


def _rows(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _wall(workdir: str) -> float:
  with open(os.path.join(workdir, "summary.json"), encoding="utf-8") as f:
    return float(json.load(f)["wall_s"])


def load_runs(path: str) -> tuple[dict[str, dict[int, list[dict]]], dict[str, float]]:
  """A `_runs.json` this script wrote: ({method: {seed: metrics rows}}, {"<method>|<seed>" or
  "cold|<seed>": si-train wall seconds}, the latter empty for a file written before walls were
  recorded)."""
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise SystemExit(f"reproduce_arith: --merge {path}: {e}") from None
  walls = data.pop("_wall_s", {})
  try:
    runs = {m: {int(sd): rows for sd, rows in r.items()} for m, r in data.items()}
  except (AttributeError, ValueError) as e:
    raise SystemExit(f"reproduce_arith: --merge {path}: not a _runs.json of this script "
                     f"({{method: {{seed: rows}}}}): {e}") from None
  return runs, walls


def run_all(args, task: str, methods: dict[str, dict[str, Any]],
            merged: dict[str, dict[int, list[dict]]] | None = None
            ) -> tuple[dict[str, dict[int, list[dict]]], dict[str, float]]:
  """Runs (or skips) every run of one task; returns the metrics and each run's si-train wall
  seconds ("<method>|<seed>", "cold|<seed>": cold starts too). A (method, seed) in `merged`
  (an earlier part of the study, `--merge`) is taken from there and not run."""
  common = {"rl.steps": args.steps, "eval.every": args.eval_every,
            "eval.num_examples": args.eval_examples, "checkpoint.every": args.eval_every}
  root = os.path.join(args.root, task)
  merged = merged or {}
  out: dict[str, dict[int, list[dict]]] = {m: {} for m in methods}
  walls: dict[str, float] = {}
  for seed in args.seeds:
    cold = os.path.join(root, f"cold_start_seed{seed}")
    todo = {}
    for m, over in methods.items():
      if seed in merged.get(m, {}):
        out[m][seed] = merged[m][seed]
      else:
        todo[m] = over
    if args.report_only:  # what has finished, nothing started
      for m in todo:
        wd = os.path.join(root, f"{_slug(m)}_{args.steps}steps_seed{seed}")
        if os.path.exists(os.path.join(wd, "summary.json")):
          out[m][seed] = _rows(wd)
          walls[f"{m}|{seed}"] = _wall(wd)
          walls[f"cold|{seed}"] = _wall(cold)
      continue
    if not todo:
      continue
    dt = _run(cold, task, {"seed": seed, "rl.steps": 0}, 100)
    walls[f"cold|{seed}"] = _wall(cold)
    print(f"{task}: cold start seed {seed}: {dt:.0f} s", flush=True)
    for m, over in todo.items():
      wd = os.path.join(root, f"{_slug(m)}_{args.steps}steps_seed{seed}")
      dt = _run(wd, task, {"seed": seed, "sft.steps": 0, "model.init_from": cold, **common,
                           **over}, 10)
      print(f"{task}: {m} seed {seed}: {dt:.0f} s", flush=True)
      out[m][seed] = _rows(wd)
      walls[f"{m}|{seed}"] = _wall(wd)
  return out, walls


# ----------------------------------------------------------------------------- analysis


def _curve(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(RL step, cumulative tokens sampled, value) at each evaluation."""
  steps, tokens, vals, total = [], [], [], 0
  for r in rows:
    if r.get("phase") == 1:
      total += r.get("tokens/sampled", 0)
    if key in r:
      steps.append(r["step"])
      tokens.append(total)
      vals.append(r[key])
  return np.asarray(steps), np.asarray(tokens, np.float64), np.asarray(vals, np.float64)


def _first(rows: list[dict], key: str) -> float:
  vals = [r[key] for r in rows if r.get("phase") == 1 and key in r]
  return float(vals[0]) if vals else float("nan")


def _last(rows: list[dict], key: str) -> float:
  vals = [r[key] for r in rows if r.get("phase") == 1 and key in r]
  return float(vals[-1]) if vals else float("nan")


def _mean_rl(rows: list[dict], key: str) -> float:
  vals = [r[key] for r in rows if r.get("phase") == 1 and key in r]
  return float(np.mean(vals)) if vals else float("nan")


def _ms(xs, fmt: str = ".3f", stderr: bool = False) -> str:
  """mean ± std (ddof=1; with `stderr` the standard error of the mean) over seeds; NaNs
  (metric absent) left out; '-' if none."""
  xs = np.asarray([x for x in xs if x == x], np.float64)
  if not xs.size:
    return "-"
  if xs.size == 1:
    return f"{xs[0]:{fmt}}" + (" (1 seed)" if stderr else "")
  spread = xs.std(ddof=1) / (np.sqrt(xs.size) if stderr else 1.0)
  return f"{xs.mean():{fmt}} ± {spread:{fmt.lstrip('+')}}"


def _step_seconds(rows: list[dict], compile_too: bool = True) -> float:
  """Mean seconds of an RL step's stages (sample, verify, credit, pack, update; no eval), with
  or without the seconds those stages spent making programs (compile/seconds, eval's left
  out)."""
  total = sum(_mean_rl(rows, k) for k in ("time/rollout", "time/verify", "time/credit",
                                          "time/pack", "time/update"))
  if compile_too:
    return total
  rl = [r for r in rows if r.get("phase") == 1]
  compiling = [r.get("compile/seconds", 0.0) * (1.0 - _eval_share(r)) for r in rl]
  return total - (float(np.mean(compiling)) if compiling else 0.0)


def _eval_share(row: dict) -> float:
  """The share of a step's compiles made by its evaluation (not part of the step's stages)."""
  n = row.get("compile/compiles", 0)
  return row.get("compile/compiles_eval", 0) / n if n else 0.0


def _late_compiles(rows: list[dict]) -> int:
  """Programs compiled by RL steps after the warm-up (evaluations included)."""
  first = min((r["step"] for r in rows if r.get("phase") == 1), default=0)
  return int(sum(r.get("compile/compiles", 0) for r in rows
                 if r.get("phase") == 1 and r["step"] - first + 1 > WARMUP_STEPS))


def _ratio_at_k(rows: list[dict]) -> float:
  """Share of the kept repairs whose K* is the first rung, over the run."""
  kept = sum(r.get("si/kept", 0) for r in rows if r.get("phase") == 1)
  at_k = sum(r.get("si/kstar_at_k", 0) for r in rows if r.get("phase") == 1)
  return at_k / kept if kept else float("nan")


def _probe(rows: list[list[dict]], key: str) -> str:
  """'start -> end' of a held-out probe metric over seeds."""
  curves = [_curve(r, f"eval/si/{key}")[2] for r in rows]
  curves = [c for c in curves if len(c)]
  if not curves:
    return "-"
  return f"{_ms([c[0] for c in curves])} -> {_ms([c[-1] for c in curves])}"


def _reach(rows: list[dict], key: str, target: float) -> float:
  """RL steps until held-out `key` first reaches `target` (NaN: never)."""
  s, _, v = _curve(rows, key)
  hit = s[(v >= target) & (s > s[0])]
  return float(hit[0] - s[0]) if len(hit) else float("nan")


def table(results: dict[str, dict[int, list[dict]]], k: int) -> str:
  """One row per method; every comparison with GSPO is paired by seed (same cold start)."""
  acc = f"eval/avg@{k}"
  gspo = results.get("GSPO", {})
  gspo_final = {sd: _curve(r, acc)[2][-1] for sd, r in gspo.items()}
  gspo_reach = {sd: _reach(r, acc, gspo_final[sd]) for sd, r in gspo.items()}
  cols = ["method", f"avg@{k} before RL", f"avg@{k} final",
          "final - GSPO (paired, mean ± s.e.)", "steps to GSPO's final (same seed)",
          "steps vs GSPO", "tokens sampled / step", "wall / step vs GSPO (with compiling)",
          "wall / step vs GSPO (without)", "programs compiled after step 5",
          "grad norm (mean)", "repair success (train) first -> last step",
          "held-out probes first -> last eval (repair with / no / wrong anchor)",
          "active-token ratio first -> last step", "K* = K (share of kept repairs)",
          "localization precision"]
  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for m, runs in results.items():
    rows, seeds = list(runs.values()), list(runs)
    before = [_curve(r, acc)[2][0] for r in rows]
    final = [_curve(r, acc)[2][-1] for r in rows]
    delta = [final[i] - gspo_final[sd] for i, sd in enumerate(seeds) if sd in gspo_final]
    reach = [_reach(runs[sd], acc, gspo_final[sd]) for sd in seeds if sd in gspo_final]
    n_reach = sum(x == x for x in reach)
    reach_s = (f"{_ms([x for x in reach if x == x], '.0f')} ({n_reach}/{len(reach)} seeds)"
               if n_reach else f"not reached (0/{len(reach)})")
    pairs = [x / gspo_reach[sd] for x, sd in zip(reach, (s for s in seeds if s in gspo_reach))
             if x == x and gspo_reach[sd] > 0]
    speed = _ms(pairs, ".2f") + "x" if pairs else "-"
    wall = [_step_seconds(runs[sd]) / _step_seconds(gspo[sd]) for sd in seeds if sd in gspo]
    bare = [_step_seconds(runs[sd], False) / _step_seconds(gspo[sd], False)
            for sd in seeds if sd in gspo]
    si = "si/repair_success" in rows[0][-1]
    probe = "; ".join(f"{label}: {_probe(rows, key)}" for label, key in (
        ("with", "probe_repair_with_anchor"), ("none", "probe_repair_no_anchor"),
        ("wrong", "probe_repair_wrong_anchor"))
                      if any(f"eval/si/{key}" in x for r in rows for x in r)) or "-"
    cells = [m, _ms(before), _ms(final), _ms(delta, "+.3f", True) if m != "GSPO" else "0",
             reach_s,
             speed, _ms([_mean_rl(r, "tokens/sampled") for r in rows], ",.0f"),
             (_ms(wall, ".2f") + "x") if wall else "-", (_ms(bare, ".2f") + "x") if bare else "-",
             _ms([_late_compiles(r) for r in rows], ".0f"),
             _ms([_mean_rl(r, "grad_norm") for r in rows], ".2f")]
    if si:
      cells += [f"{_ms([_first(r, 'si/repair_success') for r in rows])} -> "
                f"{_ms([_last(r, 'si/repair_success') for r in rows])}", probe,
                f"{_ms([_first(r, 'si/active_token_ratio') for r in rows])} -> "
                f"{_ms([_last(r, 'si/active_token_ratio') for r in rows])}",
                _ms([_ratio_at_k(r) for r in rows], ".2f"),
                _ms([_mean_rl(r, "si/localization_precision") for r in rows])]
    else:
      cells += ["-"] * 5
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot(results: dict[str, dict[int, list[dict]]], k: int, path: str) -> None:
  try:
    import matplotlib
  except ImportError:  # the table and the runs are written; the figure needs the extra
    print(f"reproduce_arith: no figure ({path}): matplotlib is not installed "
          f"(pip install -e '.[experiments]')", flush=True)
    return
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  acc = f"eval/avg@{k}"
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
  gspo = results.get("GSPO", {})
  for m, runs in results.items():
    curves = [_curve(r, acc) for r in runs.values()]
    n = min(len(c[0]) for c in curves)
    steps = curves[0][0][:n] - curves[0][0][0]
    vals = np.stack([c[2][:n] for c in curves])
    toks = np.stack([c[1][:n] for c in curves]).mean(0)
    for ax, x in ((axes[0], steps), (axes[1], toks)):
      ax.plot(x, vals.mean(0), label=m, marker="o", ms=3)
      if len(curves) > 1:
        ax.fill_between(x, vals.min(0), vals.max(0), alpha=0.12)
    paired = [c[2][:n] - _curve(gspo[sd], acc)[2][:n] for sd, c in zip(runs, curves)
              if sd in gspo]
    if paired:
      d = np.stack(paired)
      axes[2].plot(steps, d.mean(0), label=m, marker="o", ms=3)
      if len(paired) > 1:
        axes[2].fill_between(steps, d.min(0), d.max(0), alpha=0.12)
  axes[0].set_xlabel("RL step")
  axes[1].set_xlabel("tokens sampled (rollouts + repairs / resets)")
  axes[2].set_xlabel("RL step")
  for ax in axes[:2]:
    ax.set_ylabel(f"held-out avg@{k}")
  axes[2].set_ylabel(f"avg@{k} minus GSPO's, same seed")
  axes[2].axhline(0.0, color="k", lw=0.8)
  for ax in axes:
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  n_seeds = max(len(r) for r in results.values())
  fig.suptitle(f"Synthetic arithmetic, tiny Qwen3 (d=128, 2 layers): mean over {n_seeds} "
               f"seed(s), band = min-max")
  fig.tight_layout()
  fig.savefig(path, dpi=120)


STUDIES = ("ladder", "dilution", "methods")


def _seeds(results: dict[str, dict[int, list[dict]]], asked: list[int]) -> str:
  """The seeds of the table: the ones asked, or each row's own when they differ."""
  per = {m: sorted(r) for m, r in results.items()}
  if all(s == sorted(asked) for s in per.values()):
    return str(asked)
  return "; ".join(f"{m}: {s}" for m, s in per.items())


def _wall_note(results: dict[str, dict[int, list[dict]]], walls: dict[str, float],
               merge: str | None) -> str:
  """'N min of si-train wall time over M runs (cold starts included)', saying how many of the
  table's runs have no recorded wall time (merged from a file written before walls were)."""
  runs = [f"{m}|{sd}" for m, r in results.items() for sd in r]
  runs += [f"cold|{sd}" for sd in sorted(set().union(*results.values()))]
  known = [k for k in runs if k in walls]
  note = (f"{sum(walls[k] for k in known) / 60:.0f} min of si-train wall time over "
          f"{len(known)} runs (cold starts included)")
  note += " on a 2-core CPU"
  if len(known) < len(runs):
    note += (f"; {len(runs) - len(known)} more runs merged from {merge}, whose wall time the "
             f"table written with that file gives")
  return note


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--study", default="ladder", choices=STUDIES)
  ap.add_argument("--quick", action="store_true", help="1 seed; GSPO and SI; 20 steps")
  ap.add_argument("--tasks", default=None,
                  help=f"comma-separated of {TASKS} (ladder, methods: chain; dilution: "
                       "long,parts2,parts4)")
  ap.add_argument("--seeds", default=None,
                  help="comma-separated (ladder: 0-4; dilution, methods: 0,1,2; quick: 0)")
  ap.add_argument("--methods", default=None,
                  help="comma-separated method names of the study (default: all of them)")
  ap.add_argument("--best", default="+ internalization",
                  help="the SI row of the ladder that the dilution study runs against GSPO")
  ap.add_argument("--steps", type=int, default=None, help="RL steps (default 40; quick 20)")
  ap.add_argument("--report_only", action="store_true",
                  help="write the table from the runs that have finished; start none (a study "
                       "run in parts; each row says its seeds)")
  ap.add_argument("--merge", default=None,
                  help="a _runs.json of an earlier part of the study (another checkout or "
                       "machine, its run folders gone): its runs are taken as they are for "
                       "the seeds it holds, and not run or looked for under --root")
  ap.add_argument("--eval_every", type=int, default=5)
  ap.add_argument("--eval_examples", type=int, default=128)
  ap.add_argument("--root", default=os.path.join(REPO, "runs", "reproduce_arith"))
  ap.add_argument("--out", default=os.path.join(REPO, "experiments", "results"))
  args = ap.parse_args(argv)
  if args.best not in LADDER:
    ap.error(f"--best: unknown {args.best!r}; the ladder's rows: {list(LADDER)}")
  study = {"ladder": LADDER, "methods": METHODS,
           "dilution": {"GSPO": GSPO, args.best: LADDER[args.best]}}[args.study]
  if args.quick:
    study = {m: LADDER[m] for m in QUICK_METHODS}
  names = [m.strip() for m in args.methods.split(",")] if args.methods else list(study)
  unknown = [m for m in names if m not in study]
  if unknown:
    ap.error(f"--methods: unknown {unknown}; this study's: {list(study)}")
  tasks = (args.tasks or ("long,parts2,parts4" if args.study == "dilution" else "chain"))
  tasks = [t.strip() for t in tasks.split(",")]
  if any(t not in TASKS for t in tasks):
    ap.error(f"--tasks: {tasks}; known: {TASKS}")
  default_seeds = "0" if args.quick else "0,1,2,3,4" if args.study == "ladder" else "0,1,2"
  args.seeds = [int(s) for s in (args.seeds or default_seeds).split(",")]
  args.steps = args.steps or (20 if args.quick else 40)
  if args.merge and len(tasks) > 1:
    ap.error("--merge takes the runs of one task: name it with --tasks")
  merged, merged_walls = load_runs(args.merge) if args.merge else ({}, {})
  os.makedirs(args.out, exist_ok=True)
  for task in tasks:
    results, walls = run_all(args, task, {m: study[m] for m in names}, merged)
    results = {m: r for m, r in results.items() if r}  # report_only: rows with no finished run
    walls.update({k: v for k, v in merged_walls.items() if k not in walls})
    name = ("arith_quick" if args.quick else "arith" if (args.study, task) == ("ladder", "chain")
            else f"arith_{args.study}_{task}")
    md = table(results, 4)
    command = shlex.join(argv or sys.argv[1:])
    header = (f"Command: `python experiments/reproduce_arith.py {command}`"
              f"; task {task}; seeds {_seeds(results, args.seeds)}; {args.steps} RL steps x 32 "
              f"prompts x 8 samples; {time.strftime('%Y-%m-%d')}; "
              f"{_wall_note(results, walls, args.merge)}.\n\n")
    with open(os.path.join(args.out, f"{name}_table.md"), "w", encoding="utf-8") as f:
      f.write(header + md + "\n")
    used = {f"{m}|{sd}" for m, r in results.items() for sd in r}
    used |= {f"cold|{sd}" for r in results.values() for sd in r}
    with open(os.path.join(args.out, f"{name}_runs.json"), "w", encoding="utf-8") as f:
      json.dump({**{m: {str(s): rows for s, rows in r.items()} for m, r in results.items()},
                 "_wall_s": {k: v for k, v in walls.items() if k in used}}, f)
    plot(results, 4, os.path.join(args.out, f"{name}_curves.png"))
    print(header + md, flush=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
