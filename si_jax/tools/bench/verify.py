"""Throughput of the verifiers: answers/s of MathVerifier, programs/s of the code sandbox.

  python -m si_jax.tools.bench.verify [--n 200] [--workers 2] [--timeout_s 2] [--programs 20]

Start-up (fork server, math_verify import) is excluded: the pools are warmed up first, as in
training, where they live for the whole run.
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Sequence

from si_jax.verify.math import MathVerifier
from si_jax.verify.sandbox import CodeVerifier, Limits, TestCase, run_program

# (completion, gold) makers per category; i varies the numbers so that caches do not help.
_MATH_CATEGORIES = {
    "easy_equal": lambda i: (f"so the total is \\boxed{{{i + 2}}}", f"{i + 2}"),
    "equivalent": lambda i: random.Random(i).choice([
        (f"\\boxed{{\\frac{{{i + 1}}}{{2}}}}", f"{(i + 1) / 2}"),
        (f"\\boxed{{{i + 1}\\sqrt{{8}}}}", f"{2 * (i + 1)}\\sqrt{{2}}"),
        (f"\\boxed{{\\{{{i}, {i + 1}\\}}}}", f"\\{{{i + 1}, {i}\\}}"),
        (f"\\boxed{{{i}\\text{{ cm}}}}", f"{i}"),
        (f"\\boxed{{[{i}, {i + 3})}}", f"[{i},{i + 3})"),
    ]),
    "wrong": lambda i: (f"\\boxed{{\\frac{{{i + 1}}}{{3}}}}", f"{i + 7}"),
    "no_answer": lambda i: (f"I think it is about {i} but I am not sure.", f"{i}"),
    "pathological": lambda i: (random.Random(i).choice([
        "\\boxed{9^{9^{9^9}}}", "\\boxed{10^{10^{10}}}", "\\boxed{1000000!}",
        "\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}"]), "1"),
}
# Share of each category in the mixed list.
_MIX = {"easy_equal": 0.4, "equivalent": 0.25, "wrong": 0.2, "no_answer": 0.1,
        "pathological": 0.05}


def _math_rows(n: int, workers: int, timeout_s: float) -> list[tuple[str, int, float, str]]:
  rows = []
  with MathVerifier(num_workers=workers, timeout_s=timeout_s) as verifier:
    verifier.pool.wait_ready()
    verifier.score(["\\boxed{1}"] * workers, ["1"] * workers)  # first-call imports in workers
    for name, make in _MATH_CATEGORIES.items():
      k = max(workers, n // 10) if name != "pathological" else workers * 2
      pairs = [make(i) for i in range(k)]
      t = time.perf_counter()
      verdicts = verifier.score([p[0] for p in pairs], [p[1] for p in pairs])
      dt = time.perf_counter() - t
      reasons = sorted({v.reason for v in verdicts})
      rows.append((f"math/{name}", k, dt, ",".join(reasons)))
    mixed = []
    for name, share in _MIX.items():
      mixed += [_MATH_CATEGORIES[name](1000 + i) for i in range(max(1, round(n * share)))]
    random.Random(0).shuffle(mixed)
    t = time.perf_counter()
    verdicts = verifier.score([p[0] for p in mixed], [p[1] for p in mixed])
    dt = time.perf_counter() - t
    counts: dict[str, int] = {}
    for v in verdicts:
      counts[v.reason] = counts.get(v.reason, 0) + 1
    rows.append(("math/mixed", len(mixed), dt,
                 ",".join(f"{k}={c}" for k, c in sorted(counts.items()))))
  return rows


_PROGRAMS = {
    "ok": "print(sum(map(int, input().split())))",
    "wrong": "print(0)",
    "loop": "while True: pass",
}


def _code_rows(n: int, workers: int) -> list[tuple[str, int, float, str]]:
  limits = Limits(cpu_s=1.0, wall_s=1.0, memory_mb=256)
  rows = []
  t = time.perf_counter()
  res = run_program(_PROGRAMS["ok"], "1 2", limits)
  rows.append(("code/single_run_latency", 1, time.perf_counter() - t, res.status))
  tests = [TestCase("1 2", "3")]
  with CodeVerifier(limits, max_concurrency=workers) as verifier:
    for name in ("ok", "wrong"):
      t = time.perf_counter()
      verdicts = verifier.score([_PROGRAMS[name]] * n, [tests] * n)
      rows.append((f"code/{name}", n, time.perf_counter() - t,
                   ",".join(sorted({v.reason for v in verdicts}))))
    k = workers
    t = time.perf_counter()
    verdicts = verifier.score([_PROGRAMS["loop"]] * k, [tests] * k)
    rows.append(("code/infinite_loop", k, time.perf_counter() - t,
                 ",".join(sorted({v.reason for v in verdicts}))))
  return rows


def _print_table(rows: Sequence[tuple[str, int, float, str]]) -> None:
  print(f"{'workload':<26} {'n':>5} {'seconds':>8} {'items/s':>8}  verdicts")
  for name, n, dt, note in rows:
    print(f"{name:<26} {n:>5} {dt:>8.2f} {n / dt:>8.1f}  {note}")


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=200, help="math answers in the mixed list")
  parser.add_argument("--workers", type=int, default=2, help="math pool / sandbox concurrency")
  parser.add_argument("--timeout_s", type=float, default=2.0, help="math timeout per answer")
  parser.add_argument("--programs", type=int, default=20, help="programs per code workload")
  args = parser.parse_args(argv)
  rows = _math_rows(args.n, args.workers, args.timeout_s)
  rows += _code_rows(args.programs, args.workers)
  _print_table(rows)


if __name__ == "__main__":
  main()
