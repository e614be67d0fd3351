"""The paper's table: rows (model, method), columns AIME25 / HMMT25 / LiveCodeBench v6 avg@32,
by running si-eval on the latest checkpoint of every run.

  python experiments/paper_table.py --root runs/math_8b --root runs/code_8b --dry_run
  python experiments/paper_table.py --root runs/math_8b --root runs/code_8b --out runs/table

A run is an si-train workdir: `--workdir DIR` (repeatable), or every workdir in a `--root`
(an si-sweep root, or a directory of workdirs; repeatable). Its row is its model (the
basename of `model.init_from`, e.g. Qwen3-8B) and its method (`rl.credit=outcome`: the loss,
GSPO; `si`: SI, with the correction when it is not `repair`); runs of one row (seeds) are
averaged, mean ± std (n). Math runs (`qwen3_math.py`) are evaluated on AIME25 and HMMT25,
code runs (`qwen3_code.py`) on LCB v6 (`--all_benchmarks`: every run on all three). Rows
with both GSPO and SI get a difference row.

Benchmarks (nothing is downloaded; under `--data_root`, default $SI_DATA or `data`):
  AIME25  task aime,          <data_root>/aime/aime25.jsonl (the 30 AIME 2025 I + II problems;
          columns problem, answer)
  HMMT25  task hmmt,          <data_root>/hmmt/hmmt25.jsonl (HMMT February 2025; same columns)
  LCB v6  task livecodebench, <data_root>/livecodebench/v6.jsonl (experiments/
          prepare_paper_data.py: problems from 2025-02-01 on)
Built datasets go to <data_root>/tfds, as in training.

avg@k is the mean over problems of the fraction of k samples that are correct (reward >= the
run's rl.success_threshold): for math the mean reward, for code the fraction of samples that
pass every test (si-eval's own avg@k of a code task is the mean fraction of tests passed).
Defaults are Qwen3's thinking-mode evaluation: k = 32, temperature 0.6, top-p 0.95, top-k 20,
32,768 new tokens.

Each evaluation is one si-eval command (`--dry_run` prints them), writing
`<workdir>/paper_eval/<split>/eval.json`; one whose settings and checkpoint step match is
reused, so the script resumes. By default the commands run in this process (the same code as
the si-eval command line, `si_jax.cli.eval.main`); `--subprocess` runs each as its own si-eval
process. The table goes to `<out>/table.md` and `table.json`.

si-eval samples at least k rows per sampler call (max(1, batch_size // k) problems x k
samples). 32 rows of a 33k-token bfloat16 KV cache of a Qwen3 model (115-262 KB per token)
take 120-280 GB, more than one 80 GiB accelerator holds: `--mesh` (si-eval's, default
-1,1,1: rows over every device) spreads them, e.g. 8 H100s hold 15-35 GB of cache each.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import statistics
import subprocess
import sys
from typing import Any, Sequence

CODE_TASKS = ("livecodebench", "humaneval")
SETTINGS_FILE = "settings.json"
EVAL_DIR = "paper_eval"


@dataclasses.dataclass(frozen=True)
class Benchmark:
  name: str     # column title
  task: str     # si_jax task
  data: str     # directory under --data_root
  split: str    # split file name (without .jsonl)
  domain: str   # "math" | "code": which runs it evaluates


BENCHMARKS = (
    Benchmark("AIME25", "aime", "aime", "aime25", "math"),
    Benchmark("HMMT25", "hmmt", "hmmt", "hmmt25", "math"),
    Benchmark("LCB v6", "livecodebench", "livecodebench", "v6", "code"),
)


class TableError(Exception):
  """A mistake on the command line: one line on stderr, exit code 2."""


# ----------------------------------------------------------------------------- runs


def _is_run(path: str) -> bool:
  return os.path.exists(os.path.join(path, "config.json"))


def find_runs(roots: Sequence[str], workdirs: Sequence[str]) -> list[str]:
  """Workdirs given, plus every workdir of each root (or the root itself if it is one)."""
  out = []
  for w in workdirs:
    if not _is_run(w):
      raise TableError(f"--workdir {w}: not an si-train workdir (no config.json)")
    out.append(w)
  for root in roots:
    if not os.path.isdir(root):
      raise TableError(f"--root {root}: no such directory")
    found = [root] if _is_run(root) else [
        os.path.join(root, n) for n in sorted(os.listdir(root))
        if _is_run(os.path.join(root, n))]
    if not found:
      raise TableError(f"--root {root}: holds no si-train workdir (directories with "
                       f"config.json)")
    out += found
  seen, uniq = set(), []
  for w in out:
    key = os.path.realpath(w)
    if key not in seen:
      seen.add(key)
      uniq.append(w)
  if not uniq:
    raise TableError("no runs: give --root and/or --workdir")
  return uniq


def latest_step(workdir: str) -> int | None:
  d = os.path.join(workdir, "checkpoints")
  steps = [int(n) for n in os.listdir(d) if n.isdigit()] if os.path.isdir(d) else []
  return max(steps) if steps else None


def describe(workdir: str) -> dict[str, Any]:
  """A run's row labels and what the table needs from its config.json."""
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    cfg = json.load(f)
  rl, si, model = cfg["rl"], cfg.get("si", {}), cfg["model"]
  init = model.get("init_from") or ""
  label = os.path.basename(os.path.normpath(init)) if init else f"preset {model.get('preset')}"
  if rl["credit"] == "outcome":
    method = rl["loss"].upper()
  elif rl["credit"] == "si":
    correction = si.get("correction", "repair")
    method = "SI" if correction == "repair" else f"SI ({correction})"
  else:
    method = rl["credit"]
  domain = "code" if cfg["task"]["name"] in CODE_TASKS else "math"
  return dict(workdir=workdir, model=label, method=method, domain=domain,
              threshold=float(rl.get("success_threshold", 1.0)), step=latest_step(workdir))


# ----------------------------------------------------------------------------- evaluation


def settings(args, bench: Benchmark, step: int | None) -> dict[str, Any]:
  """What an evaluation's result depends on (its sidecar in the output directory)."""
  return dict(task=bench.task, split=bench.split, k=args.k, temperature=args.temperature,
              top_p=args.top_p, top_k=args.top_k, max_new_tokens=args.max_new_tokens,
              num_examples=args.num_examples, step=step)


def out_dir(workdir: str, bench: Benchmark) -> str:
  return os.path.join(workdir, EVAL_DIR, bench.split)


def eval_command(run: dict[str, Any], bench: Benchmark, args) -> list[str]:
  """The si-eval command line of one (run, benchmark)."""
  kwargs: dict[str, Any] = dict(manual_dir=os.path.join(args.data_root, bench.data),
                                data_dir=os.path.join(args.data_root, "tfds"))
  if bench.domain == "math":
    kwargs["num_workers"] = args.workers
  else:
    kwargs.update(tests="all", verifier_options=dict(max_concurrency=args.workers))
  cmd = ["si-eval", "--workdir", run["workdir"], "--task", bench.task,
         "--task_kwargs", json.dumps(kwargs), "--split", bench.split, "--k", str(args.k),
         "--temperature", str(args.temperature), "--top_p", str(args.top_p),
         "--top_k", str(args.top_k), f"--mesh={args.mesh}",
         "--max_new_tokens", str(args.max_new_tokens), "--batch_size", str(args.batch_size),
         "--out", out_dir(run["workdir"], bench)]
  if args.num_examples:
    cmd += ["--num_examples", str(args.num_examples)]
  if run["step"] is not None:
    cmd += ["--step", str(run["step"])]
  return cmd


def read_result(run: dict[str, Any], bench: Benchmark, args) -> dict[str, Any] | None:
  """The finished evaluation of (run, benchmark) at the current settings and step, or None."""
  d = out_dir(run["workdir"], bench)
  try:
    with open(os.path.join(d, SETTINGS_FILE), encoding="utf-8") as f:
      done = json.load(f)
    with open(os.path.join(d, "eval.json"), encoding="utf-8") as f:
      (res,) = json.load(f).values()
  except (OSError, ValueError):
    return None
  if done != settings(args, bench, run["step"]):
    return None
  k = res["k"]
  solved = [sum(r >= run["threshold"] for r in row["rewards"]) / k for row in res["rows"]]
  if len(solved) != res["num_examples"]:
    raise RuntimeError(f"{d}/eval.json holds {len(solved)} of {res['num_examples']} problems' "
                       f"samples (an evaluation over several processes); avg@{k} of correct "
                       f"samples needs them all")
  return dict(score=sum(solved) / max(len(solved), 1), num_examples=res["num_examples"],
              mean_reward=res[f"avg@{k}"], mean_response_tokens=res["mean_response_tokens"])


def run_eval(cmd: list[str], subprocess_mode: bool) -> str | None:
  """Runs one si-eval command; None on success, else why it failed."""
  if subprocess_mode:
    rc = subprocess.run(cmd, stdin=subprocess.DEVNULL).returncode
    return None if rc == 0 else f"exit code {rc}"
  from si_jax.cli import eval as eval_cli  # in-process: the si-eval command line's own main()
  try:
    rc = eval_cli.main(cmd[1:])
  except SystemExit as e:  # argparse errors
    rc = e.code
  except Exception as e:  # pylint: disable=broad-except
    return f"{type(e).__name__}: {e}"
  return None if rc in (0, None) else f"exit code {rc}"


# ----------------------------------------------------------------------------- the table


def _cell(values: list[float], signed: bool = False) -> str:
  if not values:
    return "-"
  mean = statistics.fmean(values) * 100
  text = f"{mean:+.1f}" if signed else f"{mean:.1f}"
  if len(values) > 1:
    text += f" ± {statistics.stdev(values) * 100:.1f} ({len(values)})"
  return text


def _method_order(method: str) -> tuple[int, str]:
  return (0 if not method.startswith("SI") else 1 if method == "SI" else 2, method)


def build_table(runs: list[dict[str, Any]], results: dict[tuple[str, str], dict],
                benches: Sequence[Benchmark], k: int) -> dict[str, Any]:
  """Rows (model, method) in run order of first appearance, methods baseline first; each cell
  the scores of the row's runs. results: (workdir, benchmark name) -> read_result()."""
  models = list(dict.fromkeys(r["model"] for r in runs))
  rows = []
  for model in models:
    methods = sorted({r["method"] for r in runs if r["model"] == model}, key=_method_order)
    for method in methods:
      members = [r for r in runs if r["model"] == model and r["method"] == method]
      cells = {b.name: [results[(r["workdir"], b.name)]["score"] for r in members
                        if (r["workdir"], b.name) in results] for b in benches}
      rows.append(dict(model=model, method=method, runs=[r["workdir"] for r in members],
                       cells=cells))
  header = ["model", "method", "runs"] + [f"{b.name} avg@{k}" for b in benches]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    lines.append("| " + " | ".join([row["model"], row["method"], str(len(row["runs"]))]
                                   + [_cell(row["cells"][b.name]) for b in benches]) + " |")
    base = next((r for r in rows if r["model"] == row["model"] and r["method"] == "GSPO"), None)
    if row["method"] == "SI" and base is not None:
      diffs = []
      for b in benches:
        si, gspo = row["cells"][b.name], base["cells"][b.name]
        diffs.append(_cell([statistics.fmean(si) - statistics.fmean(gspo)], signed=True)
                     if si and gspo else "-")
      lines.append("| " + " | ".join([row["model"], "SI - GSPO", ""] + diffs) + " |")
  return dict(k=k, benchmarks=[b.name for b in benches], rows=rows, markdown="\n".join(lines))


# ----------------------------------------------------------------------------- the CLI


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="paper_table", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--root", action="append", default=[], help="directory of workdirs")
  p.add_argument("--workdir", action="append", default=[], help="one run")
  p.add_argument("--out", default="runs/paper_table", help="where table.md / .json go")
  p.add_argument("--data_root", default=os.environ.get("SI_DATA", "data"))
  p.add_argument("--benchmarks", default=",".join(b.name for b in BENCHMARKS),
                 help="comma-separated columns")
  p.add_argument("--all_benchmarks", action="store_true",
                 help="evaluate every run on every benchmark, math and code")
  p.add_argument("--k", type=int, default=32)
  p.add_argument("--temperature", type=float, default=0.6)
  p.add_argument("--top_p", type=float, default=0.95)
  p.add_argument("--top_k", type=int, default=20)
  p.add_argument("--mesh", default="-1,1,1", help="si-eval --mesh: DATA,FSDP,TENSOR")
  p.add_argument("--max_new_tokens", type=int, default=32768)
  p.add_argument("--batch_size", type=int, default=64, help="si-eval --batch_size")
  p.add_argument("--num_examples", type=int, default=0, help="0 = the whole benchmark")
  p.add_argument("--workers", type=int, default=8, help="verifier processes / sandboxes")
  p.add_argument("--subprocess", action="store_true", help="one si-eval process per eval")
  p.add_argument("--dry_run", action="store_true", help="print the si-eval commands only")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:
    names = [n.strip() for n in args.benchmarks.split(",") if n.strip()]
    known = {b.name: b for b in BENCHMARKS}
    for n in names:
      if n not in known:
        raise TableError(f"--benchmarks: unknown benchmark {n!r}; known: {list(known)}")
    benches = [known[n] for n in names]
    if args.k < 1 or (args.k > 1 and args.temperature <= 0):
      raise TableError(f"--k {args.k} --temperature {args.temperature}: k >= 1, and k > 1 "
                       f"needs temperature > 0")
    runs = [describe(w) for w in find_runs(args.root, args.workdir)]
  except TableError as e:
    print(f"paper_table: error: {e}", file=sys.stderr)
    return 2
  todo = [(r, b) for r in runs for b in benches if args.all_benchmarks or b.domain == r["domain"]]
  failed = 0
  results: dict[tuple[str, str], dict] = {}
  for i, (run, bench) in enumerate(todo, start=1):
    cmd = eval_command(run, bench, args)
    if args.dry_run:
      note = "" if run["step"] is not None else "  # no checkpoint yet"
      print(shlex.join(cmd) + note, flush=True)
      continue
    head = f"[{i}/{len(todo)}] {run['model']} {run['method']} {bench.name} ({run['workdir']}):"
    if run["step"] is None:
      print(f"{head} no checkpoint, skipped", flush=True)
      continue
    res = read_result(run, bench, args)
    if res is None:
      print(f"{head} evaluating ...", flush=True)
      why = run_eval(cmd, args.subprocess)
      if why is None:
        with open(os.path.join(out_dir(run["workdir"], bench), SETTINGS_FILE), "w",
                  encoding="utf-8") as f:
          json.dump(settings(args, bench, run["step"]), f, indent=1)
        res = read_result(run, bench, args)
      if res is None:
        failed += 1
        print(f"{head} FAILED: {why or 'no result written'}", flush=True)
        continue
    else:
      print(f"{head} done before, reused", flush=True)
    results[(run["workdir"], bench.name)] = res
  if args.dry_run:
    return 0
  table = build_table(runs, results, benches, args.k)
  table["settings"] = {k: getattr(args, k) for k in ("k", "temperature", "top_p", "top_k",
                                                     "max_new_tokens", "num_examples")}
  table["results"] = [dict(workdir=w, benchmark=b, **r) for (w, b), r in results.items()]
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "table.json"), "w", encoding="utf-8") as f:
    json.dump(table, f, indent=1)
  with open(os.path.join(args.out, "table.md"), "w", encoding="utf-8") as f:
    f.write(f"avg@{args.k} (%): the mean over problems of the fraction of {args.k} samples that "
            f"are correct; temperature {args.temperature}, top-p {args.top_p}, "
            f"top-k {args.top_k}, "
            f"{args.max_new_tokens} new tokens\n\n" + table["markdown"] + "\n")
  print("\n" + table["markdown"], flush=True)
  print(f"wrote {os.path.join(args.out, 'table.md')} and table.json", flush=True)
  if failed:
    print(f"paper_table: {failed} of {len(todo)} evaluations failed", file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
