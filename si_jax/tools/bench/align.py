"""The alignment row of si-bench: pairs/s of the SI alignment stage versus bare rapidfuzz.

Pairs (`make_pairs`, seeded): a failed sequence of uniform random ids from a 32k vocabulary and
a repair made from it by a handful (3..10) of contiguous edit regions, each a substitution,
insertion or deletion of 1..30 tokens (mean distance ~100 on 2,000 tokens, as in PERF_NOTES).

Rows, each timed on the same list[int] pairs, interleaved per repeat (so a neighbour's load
hits all rows alike), median of `repeats` after `warmup` rounds:

  bare editops          `Levenshtein.editops(a, b)` for every pair, no hint: the reference.
  bare editops, hint    the same with the `score_hint` the stage uses.
  stage                 `align_many` + `edit_arrays` + the jitted `token_credit` on both sides
                        (failed and repaired rows of width offset + longest sequence, all edits
                        active), blocking until the [R, W] gates and advantages are ready.

Ratios are pairs/s over the bare (no hint) row's; the stage's target is >= 0.8x of it
(`TARGET`), and the ratio to the same-arguments call is reported beside it.
"""

from __future__ import annotations

import statistics
from typing import Any

import jax
import numpy as np
from rapidfuzz.distance import Levenshtein

from si_jax import sharding
from si_jax import tables
from si_jax.si import align as align_lib
from si_jax.si import token_credit
from si_jax.tools.bench import common

__all__ = ["TARGET", "make_pairs", "run", "markdown_table"]

TARGET = 0.8  # stage pairs/s >= TARGET x bare editops pairs/s (the requirement)
COLUMNS = ("workload", "shape", "call", "pairs/s", "vs bare", "vs same args", "target")
PROMPT_WIDTH = 256  # offset of the response in the packed rows of the stage


def make_pairs(num_pairs: int, length: int, *, vocab: int = 32_000, seed: int = 0,
               regions: tuple[int, int] = (3, 10),
               max_span: int = 30) -> list[tuple[list[int], list[int]]]:
  """`num_pairs` (failed, repaired) id lists, failed of `length` ids (module docstring).

  Each repair applies `regions[0]..regions[1]` edit regions at distinct positions, each a
  substitution, insertion or deletion of 1..max_span tokens, right to left so positions hold.
  """
  if num_pairs < 1 or length < 1 or max_span < 1 or not 1 <= regions[0] <= regions[1]:
    raise ValueError(f"make_pairs: need num_pairs, length, max_span >= 1 and "
                     f"1 <= regions[0] <= regions[1], got {num_pairs}, {length}, {max_span}, "
                     f"{regions}")
  rng = np.random.default_rng(seed)
  pairs = []
  for _ in range(num_pairs):
    failed = rng.integers(0, vocab, length).tolist()
    repaired = list(failed)
    n = min(int(rng.integers(regions[0], regions[1] + 1)), length)
    for pos in sorted(rng.choice(length, n, replace=False).tolist(), reverse=True):
      span = int(rng.integers(1, max_span + 1))
      new = rng.integers(0, vocab, span).tolist()
      kind = int(rng.integers(3))
      if kind == 0:
        repaired[pos:pos + span] = new  # substitution (shorter at the very end)
      elif kind == 1:
        repaired[pos:pos] = new  # insertion
      else:
        del repaired[pos:pos + span]  # deletion
    pairs.append((failed, repaired))
  return pairs


def _stage(pairs, credit_fn, score_hint: int | None) -> tuple[jax.Array, ...]:
  """align + edit arrays + token credit on both sides, all edits active; blocks on the result."""
  alignments = align_lib.align_many(pairs, score_hint=score_hint)
  kstar = np.asarray([a.num_edits for a in alignments], np.int32)
  offset = np.full(len(pairs), PROMPT_WIDTH, np.int32)
  longest = max(max(a.len_a, a.len_b) for a in alignments)
  width = PROMPT_WIDTH + longest
  out = []
  for side, value in (("failed", -1.0), ("repaired", 1.0)):
    start, end = token_credit.edit_arrays(alignments, side)
    out += credit_fn(start, end, kstar, offset, np.full(len(pairs), value, np.float32),
                     width=width)
  return jax.block_until_ready(tuple(out))


def run(num_pairs: int = 1000, length: int = 2000, *, repeats: int = 3, warmup: int = 1,
        seed: int = 0, score_hint: int | None = align_lib.DEFAULT_SCORE_HINT) -> list[dict]:
  """Times the three calls (module docstring); returns one dict per row."""
  pairs = make_pairs(num_pairs, length, seed=seed)
  credit_fn = token_credit.make_credit_fn(sharding.make_mesh(devices=jax.devices()[:1]))
  calls = {
      "bare editops": lambda: [Levenshtein.editops(a, b) for a, b in pairs],
      f"bare editops, score_hint={score_hint}":
          lambda: [Levenshtein.editops(a, b, score_hint=score_hint) for a, b in pairs],
      "stage: align + edit arrays + token_credit": lambda: _stage(pairs, credit_fn, score_hint),
  }
  times = common.time_rounds(calls, repeats, warmup)
  distance = float(np.mean([Levenshtein.distance(a, b) for a, b in pairs]))
  shape = f"{num_pairs} pairs x {length} tokens, mean distance {distance:.0f}"
  rate = {name: num_pairs / statistics.median(t) for name, t in times.items()}
  bare, same = list(rate.values())[:2]
  rows = []
  for j, (name, r) in enumerate(rate.items()):
    rows.append(dict(workload="align", shape=shape, call=name, pairs_s=r, ratio=r / bare,
                     ratio_same_args=r / same if j == 2 else None,
                     target=TARGET if j == 2 else None, times=times[name],
                     mean_distance=distance))
  return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
  """The rows as a markdown table with `COLUMNS`."""
  cells = []
  for r in rows:
    target = "-" if r["target"] is None else (
        f">= {r['target']:g}x " + ("met" if r["ratio"] >= r["target"] else "MISSED"))
    same = "-" if r["ratio_same_args"] is None else f"{r['ratio_same_args']:.2f}x"
    cells.append([r["workload"], r["shape"], r["call"], f"{r['pairs_s']:,.0f}",
                  f"{r['ratio']:.2f}x", same, target])
  return tables.markdown_table(COLUMNS, cells)
