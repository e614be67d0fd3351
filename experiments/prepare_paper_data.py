"""Split the published files of the paper-scale datasets into the splits the configs read.

  python experiments/prepare_paper_data.py deepmath --src DEEPMATH_DIR --out data/deepmath
  python experiments/prepare_paper_data.py livecodebench --src test.jsonl test2.jsonl ... \\
      test6.jsonl --out data/livecodebench

deepmath: the published DeepMath-103K shards (`data/train-*.parquet`, or jsonl) -> `train.jsonl`
and `dev.jsonl` (`--dev` problems, 500 by default, chosen by `--seed`, held out for the
evaluation during training). Only the columns the builder stores are written, without the
three R1 solutions unless `--keep_solutions` (they are most of the bytes and RL does not read
them).

livecodebench: LiveCodeBench release files (code_generation_lite `test.jsonl` ... `test6.jsonl`)
-> `v6.jsonl` (problems with `--test_from` <= contest_date < `--test_to`; default from
2025-02-01, the problems release v6 added), `train.jsonl` (earlier problems) minus `dev.jsonl`
(`--dev` of them, 64 by default). Problems after `--test_to` are dropped. Rows are copied
as they are (compressed private tests stay compressed: the builder decodes them).

Nothing is downloaded. Rows are streamed, so the full DeepMath set needs little memory.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from typing import Any, Iterator, Sequence

import numpy as np

from si_jax.data.builders import records

DEEPMATH_COLUMNS = ("question", "final_answer", "difficulty", "topic")


def source_files(src: Sequence[str]) -> list[str]:
  """The .jsonl / .parquet files of `src` (files, or directories searched recursively), in
  name order within each directory."""
  out = []
  for s in src:
    if os.path.isdir(s):
      for root, _, names in sorted(os.walk(s)):
        out += [os.path.join(root, n) for n in sorted(names) if n.endswith((".jsonl", ".parquet"))]
    elif os.path.exists(s):
      out.append(s)
    else:
      raise FileNotFoundError(f"--src: no such file or directory {s!r}")
  if not out:
    raise FileNotFoundError(f"--src {' '.join(src)}: no .jsonl or .parquet files")
  return out


def rows(files: Sequence[str]) -> Iterator[records.Row]:
  for f in files:
    yield from records.read_rows(f)


def held_out(n: int, k: int, seed: int) -> set[int]:
  """k row indices of n, chosen by seed."""
  if not 0 <= k < n:
    raise ValueError(f"--dev {k}: must be >= 0 and below the {n} rows read")
  return set(np.random.default_rng([seed, 17]).permutation(n)[:k].tolist())


def _json(value: Any) -> Any:
  if isinstance(value, (datetime.date, datetime.datetime)):  # parquet timestamp columns
    return value.isoformat()
  raise TypeError(f"cannot write {type(value).__name__} as JSON")


class Writers:
  """One jsonl file per split under `out`; counts rows."""

  def __init__(self, out: str, splits: Sequence[str]):
    os.makedirs(out, exist_ok=True)
    self.paths = {s: os.path.join(out, f"{s}.jsonl") for s in splits}
    self.files = {s: open(p + ".tmp", "w", encoding="utf-8") for s, p in self.paths.items()}
    self.counts = dict.fromkeys(splits, 0)

  def write(self, split: str, row: dict) -> None:
    self.files[split].write(json.dumps(row, default=_json, ensure_ascii=False) + "\n")
    self.counts[split] += 1

  def close(self) -> None:
    for s, f in self.files.items():
      f.close()
      os.replace(self.paths[s] + ".tmp", self.paths[s])  # complete files only
    for s, p in self.paths.items():
      print(f"{p}: {self.counts[s]} rows")


def deepmath(args) -> None:
  files = source_files(args.src)
  n = sum(records.count_rows(f) for f in files)
  dev = held_out(n, args.dev, args.seed)
  out = Writers(args.out, ("train", "dev"))
  try:
    for i, row in enumerate(rows(files)):
      keep = [c for c in row.data if c in DEEPMATH_COLUMNS
              or (args.keep_solutions and c.startswith("r1_solution_"))]
      out.write("dev" if i in dev else "train", {c: row.data[c] for c in keep})
  finally:
    out.close()


def contest_day(row: records.Row) -> str:
  """YYYY-MM-DD of a row's contest_date; a RecordError names the row if it has none."""
  _, value = row.any("contest_date")
  if isinstance(value, (datetime.date, datetime.datetime)):
    value = value.isoformat()
  if not isinstance(value, str) or len(value) < 10:
    raise row.error(f"expected an ISO date, got {value!r:.40}", "contest_date")
  return value[:10]


def livecodebench(args) -> None:
  files = source_files(args.src)
  days = [contest_day(r) for r in rows(files)]
  is_test = [args.test_from <= d and (not args.test_to or d < args.test_to) for d in days]
  before = [i for i, d in enumerate(days) if d < args.test_from]
  dev_pos = held_out(len(before), args.dev, args.seed)
  dev = {before[j] for j in dev_pos}
  out = Writers(args.out, ("train", "dev", args.test_split))
  try:
    for i, row in enumerate(rows(files)):
      if is_test[i]:
        out.write(args.test_split, dict(row.data))
      elif days[i] < args.test_from:
        out.write("dev" if i in dev else "train", dict(row.data))
  finally:
    out.close()


def main(argv: Sequence[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = ap.add_subparsers(dest="dataset", required=True)
  d = sub.add_parser("deepmath", help="DeepMath-103K -> train / dev")
  d.add_argument("--dev", type=int, default=500)
  d.add_argument("--keep_solutions", action="store_true")
  c = sub.add_parser("livecodebench", help="LiveCodeBench releases -> train / dev / v6")
  c.add_argument("--test_from", default="2025-02-01", help="first contest date of the test split")
  c.add_argument("--test_to", default="", help="contest dates from here on are dropped")
  c.add_argument("--test_split", default="v6", help="name of the test split")
  c.add_argument("--dev", type=int, default=64)
  for p in (d, c):
    p.add_argument("--src", nargs="+", required=True, help="published files or directories")
    p.add_argument("--out", required=True, help="the manual dir the config reads")
    p.add_argument("--seed", type=int, default=0, help="which problems are held out")
  args = ap.parse_args(argv)
  try:
    (deepmath if args.dataset == "deepmath" else livecodebench)(args)
  except (FileNotFoundError, ValueError) as e:  # RecordError is a ValueError
    print(f"prepare_paper_data: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
