"""The paper's comparison at toy scale: outcome-only RL (GRPO, GSPO) against supervision
internalization (SI repair, SI reset) and the reset ablations (random, oracle), on the synthetic
arithmetic task, from one shared cold start per seed, with equal RL steps and prompts per step.

  python experiments/reproduce_arith.py                 # full table: 6 methods x 3 seeds
  python experiments/reproduce_arith.py --quick         # 1 seed; GSPO, SI repair, SI reset

Per seed, the cold start is one si-train run of experiments/configs/arith_si.py with
rl.steps=0 (SFT on policy traces, repair pairs - half without the anchor - and reflection
pairs); every method then starts from that run's checkpoint (`model.init_from=<cold start
workdir>`), so differences are the RL methods' alone. Each run is a separate `si-train`
process in its own workdir under --root: an interrupted reproduction resumes where it stopped
(finished runs are skipped, a killed one resumes from its checkpoint).

Outputs (--out, default experiments/results/): arith_table.md (the table), arith_curves.png
(held-out accuracy against RL step and against tokens sampled, mean and min-max band over
seeds), arith_runs.json (the per-run metrics the table and plot were made from).

Calibration (done before looking at SI's numbers, as the issue asks; see README): the task is
the main job's (2-4 chained operations mod 10, operands 0-9), the model the main job's
(Qwen3-shaped, d=128, 2 layers). Its cold start (600 SFT steps, half the policy traces with an
injected mistake) leaves held-out avg@4 around 0.3-0.4: room to learn, and GSPO moves it within
tens of steps without solving the task, so the baseline's final accuracy lands inside the
0.3-0.8 band the issue asks for. RL: 32 prompts x 8 samples per step; --steps (default 40, quick
20) steps for every method; evaluation every --eval_every steps on 128 held-out problems x 4
samples at temperature 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "experiments", "configs", "arith_si.py")

# method -> config overrides (on top of the shared RL settings)
METHODS: dict[str, dict[str, Any]] = {
    "GRPO": {"rl.credit": "outcome", "rl.loss": "grpo"},
    "GSPO": {"rl.credit": "outcome", "rl.loss": "gspo"},
    "SI (repair)": {"rl.credit": "si", "rl.loss": "gspo", "si.correction": "repair"},
    "SI (reset)": {"rl.credit": "si", "rl.loss": "gspo", "si.correction": "reset"},
    "random_reset": {"rl.credit": "si", "rl.loss": "gspo", "si.correction": "random_reset"},
    "oracle_reset": {"rl.credit": "si", "rl.loss": "gspo", "si.correction": "oracle_reset"},
}
QUICK_METHODS = ("GSPO", "SI (repair)", "SI (reset)")
SLUG = {m: m.lower().replace(" (", "_").replace(")", "").replace(" ", "_") for m in METHODS}


def _run(workdir: str, overrides: dict[str, Any], log_every: int) -> float:
  """si-train in a subprocess (skipped when finished); returns its wall seconds."""
  if os.path.exists(os.path.join(workdir, "summary.json")):
    return 0.0
  os.makedirs(workdir, exist_ok=True)
  cmd = [sys.executable, "-m", "si_jax.main", f"--config={CONFIG}", f"--workdir={workdir}",
         f"--config.log.progress_every={log_every}"]
  cmd += [f"--config.{k}={v}" for k, v in overrides.items()]
  t0 = time.time()
  with open(os.path.join(workdir, "train.log"), "a", encoding="utf-8") as log:
    # one persistent compilation cache for every run: the methods compile the same shapes
    env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", ""))
    env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.dirname(workdir),
                                                             "jax_cache"))
    rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
  if rc:
    raise SystemExit(f"reproduce_arith: {workdir} failed (exit {rc}); see {workdir}/train.log")
  return time.time() - t0


def _rows(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _wall(workdir: str) -> float:
  with open(os.path.join(workdir, "summary.json"), encoding="utf-8") as f:
    return float(json.load(f)["wall_s"])


def run_all(args) -> tuple[dict[str, dict[int, list[dict]]], float]:
  """Runs (or skips) every run; returns the metrics and the runs' total si-train wall time."""
  methods = list(QUICK_METHODS if args.quick else args.methods)
  common = {"rl.steps": args.steps, "eval.every": args.eval_every,
            "eval.num_examples": args.eval_examples, "checkpoint.every": args.eval_every}
  out: dict[str, dict[int, list[dict]]] = {m: {} for m in methods}
  wall = 0.0
  for seed in args.seeds:
    cold = os.path.join(args.root, f"cold_start_seed{seed}")
    dt = _run(cold, {"seed": seed, "rl.steps": 0}, 100)
    wall += _wall(cold)
    print(f"cold start seed {seed}: {dt:.0f} s", flush=True)
    for m in methods:
      prefix = f"quick{args.steps}_" if args.quick else ""  # quick runs share the cold start
      wd = os.path.join(args.root, f"{prefix}{SLUG[m]}_seed{seed}")
      over = {"seed": seed, "sft.steps": 0, "model.init_from": cold, **common, **METHODS[m]}
      dt = _run(wd, over, 10)
      print(f"{m} seed {seed}: {dt:.0f} s", flush=True)
      out[m][seed] = _rows(wd)
      wall += _wall(wd)
  return out, wall


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


def _ms(xs, fmt: str = ".3f") -> str:
  """mean ± std (ddof=1) over seeds; NaNs (metric absent) left out; '-' if none."""
  xs = np.asarray([x for x in xs if x == x], np.float64)
  if not xs.size:
    return "-"
  if xs.size == 1:
    return f"{xs[0]:{fmt}}"
  return f"{xs.mean():{fmt}} ± {xs.std(ddof=1):{fmt.lstrip('+')}}"


def _step_seconds(rows: list[dict]) -> float:
  """Mean seconds of an RL step's stages (sample, verify, credit, pack, update; no eval)."""
  return sum(_mean_rl(rows, k) for k in ("time/rollout", "time/verify", "time/credit",
                                         "time/pack", "time/update"))


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
  acc, pk = f"eval/avg@{k}", f"eval/pass@{k}"
  gspo = results.get("GSPO", {})
  gspo_final = {sd: _curve(r, acc)[2][-1] for sd, r in gspo.items()}
  gspo_reach = {sd: _reach(r, acc, gspo_final[sd]) for sd, r in gspo.items()}
  head = [f"| method | avg@{k} before RL | avg@{k} final | final - GSPO (paired) | "
          f"pass@{k} final | steps to GSPO's final (same seed) | steps vs GSPO | "
          "tokens sampled / step | repair success (train) first -> last step | held-out probes "
          "first -> last eval (repair with / no / wrong anchor; reflection) | active-token "
          "ratio first -> last step | localization precision | wall / step vs GSPO |",
          "|" + "---|" * 13]
  lines = []
  for m, runs in results.items():
    rows = list(runs.values())
    seeds = list(runs)
    before = [_curve(r, acc)[2][0] for r in rows]
    final = [_curve(r, acc)[2][-1] for r in rows]
    delta = [final[i] - gspo_final[sd] for i, sd in enumerate(seeds) if sd in gspo_final]
    passk = [_curve(r, pk)[2][-1] for r in rows]
    reach = [_reach(runs[sd], acc, gspo_final[sd]) for sd in seeds if sd in gspo_final]
    n_reach = sum(x == x for x in reach)
    reach_s = (f"{_ms([x for x in reach if x == x], '.0f')} ({n_reach}/{len(reach)} seeds)"
               if n_reach else f"not reached (0/{len(reach)})")
    pairs = [reach[i] / gspo_reach[sd] for i, sd in enumerate(s for s in seeds if s in gspo_reach)
             if reach[i] == reach[i] and gspo_reach[sd] > 0]
    ratio = _ms(pairs, ".2f") + "x" if pairs else "-"
    toks = _ms([_mean_rl(r, "tokens/sampled") for r in rows], ",.0f")
    rs = (f"{_ms([_first(r, 'si/repair_success') for r in rows])} -> "
          f"{_ms([_last(r, 'si/repair_success') for r in rows])}")
    probe = "; ".join(f"{label}: {_probe(rows, key)}" for label, key in (
        ("with", "probe_repair_with_anchor"), ("none", "probe_repair_no_anchor"),
        ("wrong", "probe_repair_wrong_anchor"), ("reflection", "probe_reflection_precision"))
                      if any(f"eval/si/{key}" in x for r in rows for x in r)) or "-"
    atr = (f"{_ms([_first(r, 'si/active_token_ratio') for r in rows])} -> "
           f"{_ms([_last(r, 'si/active_token_ratio') for r in rows])}")
    loc = _ms([_mean_rl(r, "si/localization_precision") for r in rows])
    # per seed, against GSPO's run of the same seed (same machine load), then over seeds
    ratios = [_step_seconds(runs[sd]) / _step_seconds(gspo[sd]) for sd in runs if sd in gspo]
    wall = _ms(ratios, ".2f") + "x" if ratios else "-"
    if "si/repair_success" not in rows[0][-1]:
      rs = atr = loc = "-"
    lines.append(f"| {m} | {_ms(before)} | {_ms(final)} | {_ms(delta, '+.3f')} | {_ms(passk)} | "
                 f"{reach_s} | {ratio} | {toks} | {rs} | {probe} | {atr} | {loc} | {wall} |")
  return "\n".join(head + lines)


def plot(results: dict[str, dict[int, list[dict]]], k: int, path: str) -> None:
  import matplotlib
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


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="1 seed; GSPO, SI repair, SI reset")
  ap.add_argument("--seeds", default=None, help="comma-separated (default 0,1,2; quick: 0)")
  ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated method names")
  ap.add_argument("--steps", type=int, default=None, help="RL steps (default 40; quick 20)")
  ap.add_argument("--eval_every", type=int, default=5)
  ap.add_argument("--eval_examples", type=int, default=128)
  ap.add_argument("--root", default=os.path.join(REPO, "runs", "reproduce_arith"))
  ap.add_argument("--out", default=os.path.join(REPO, "experiments", "results"))
  args = ap.parse_args(argv)
  args.seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
  args.methods = [m.strip() for m in args.methods.split(",")]
  unknown = [m for m in args.methods if m not in METHODS]
  if unknown:
    ap.error(f"--methods: unknown {unknown}; known: {list(METHODS)}")
  args.steps = args.steps or (20 if args.quick else 40)
  results, wall = run_all(args)
  os.makedirs(args.out, exist_ok=True)
  name = "arith_quick" if args.quick else "arith"
  md = table(results, 4)
  header = (f"Command: `python experiments/reproduce_arith.py{' --quick' if args.quick else ''}`"
            f"; seeds {args.seeds}; {args.steps} RL steps x 32 prompts x 8 samples; "
            f"{time.strftime('%Y-%m-%d')}; {wall / 60:.0f} min of si-train wall time over "
            f"{sum(map(len, results.values())) + len(args.seeds)} runs (cold starts "
            f"included) on a 2-core CPU.\n\n")
  with open(os.path.join(args.out, f"{name}_table.md"), "w", encoding="utf-8") as f:
    f.write(header + md + "\n")
  with open(os.path.join(args.out, f"{name}_runs.json"), "w", encoding="utf-8") as f:
    json.dump({m: {str(s): rows for s, rows in r.items()} for m, r in results.items()}, f)
  plot(results, 4, os.path.join(args.out, f"{name}_curves.png"))
  print(header + md)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
