"""Adaptive truncation: how many of a repair's edits stay active as credit (DESIGN 5.2 step 5).

For each (failed, repaired) pair with n edits (`si_jax.si.align`), K* is chosen on a ladder:

  n <= K                         -> K* = n   ("all"; nothing to check)
  the first K edits pass         -> K* = K
  else n <= 2K                   -> K* = n   ("all"; the repair itself verified)
  the first 2K edits pass        -> K* = 2K
  else                           -> K* = n   ("all")

so credit goes to the earliest decisive difference. Two ways to decide "the first k edits pass":

* `continuation_truncation` (si.truncation = "continue", the default): keep the repair's
  prefix up to the end of its k-th edit and let the *policy* continue from there; the edits
  pass when a fraction `pass_frac` of the `attempt`'s continuations verify. A mistake that
  propagates (every later value depends on the wrong one) is fixed by its first edit alone
  when the policy recomputes the rest, so K* = 1 there.
* `adaptive_truncation` (si.truncation = "graft"): graft the first k edits into the failure
  (`align.graft`: the repair's prefix + the failure's own suffix) and verify that. A mistake
  that propagates never verifies this way (the failure's later values stay wrong): K* = all.

Either function sees batches: one call with every pair at K (pairs with n <= K skip it), one
with the pairs that did not pass at K and have n > 2K, at 2K. The graft verifier is not called
with nothing to verify; the continuation `attempt` is called for every rung (also with no
pairs: sampling is collective across processes, every process must call).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from si_jax.si.align import Alignment, graft

__all__ = ["TruncationStats", "adaptive_truncation", "continuation_truncation", "ladder",
           "prefix_end"]

# verify(pairs, grafts): pairs[i] is the index of the pair graft i comes from (so a verifier can
# look up its problem); returns one bool per graft (True = the graft is correct).
Verify = Callable[[list[int], list[list[int]]], Sequence[bool]]
# attempt(pairs, prefixes, rung): the fraction in [0, 1] of the policy's continuations of each
# prefix (the repair up to the end of an edit) that verify; rung is 0 (K) or 1 (2K).
Attempt = Callable[[list[int], list[list[int]], int], Sequence[float]]


@dataclasses.dataclass(frozen=True)
class TruncationStats:
  """What the ladder did for one batch of pairs.

  Attributes:
    at_k, at_2k, at_all: number of pairs whose K* is K, 2K, all edits.
    kstar: K* of every pair, in input order (for a histogram).
    verify_calls: number of calls of the verifier (0, 1 or 2).
    grafts_verified: number of grafted sequences the verifier was given.
    k: the first rung K.
  """
  at_k: int
  at_2k: int
  at_all: int
  kstar: tuple[int, ...]
  verify_calls: int
  grafts_verified: int
  k: int = 1

  def metrics(self, prefix: str = "si/") -> dict[str, float | int]:
    """Scalar metrics: counts per rung, the share of pairs credited on their first K edits or
    fewer (those at the first rung and those with at most K edits; NaN for an empty batch:
    left out of the log) and the mean K* (0.0 for an empty batch)."""
    n = len(self.kstar)
    first = sum(ks <= self.k for ks in self.kstar)  # credit on the first K edits (or fewer)
    return {f"{prefix}kstar_at_k": self.at_k, f"{prefix}kstar_at_2k": self.at_2k,
            f"{prefix}kstar_at_all": self.at_all,
            f"{prefix}kstar_at_k_share": first / n if n else float("nan"),
            f"{prefix}kstar_mean": float(np.mean(self.kstar)) if self.kstar else 0.0,
            f"{prefix}verify_calls": self.verify_calls}


def _verify_batch(verify: Verify, rows: list[int], grafts: list[list[int]], rung: str
                  ) -> list[bool]:
  """verify(rows, grafts) checked to be one bool per graft; no call for an empty batch."""
  if not grafts:
    return []
  ok = list(verify(rows, grafts))
  if len(ok) != len(grafts):
    raise ValueError(f"adaptive_truncation: verify returned {len(ok)} results for {len(grafts)} "
                     f"grafts at {rung}")
  for i, v in enumerate(ok):
    if not isinstance(v, (bool, np.bool_)):
      raise TypeError(f"adaptive_truncation: verify result {i} at {rung} must be a bool, got "
                      f"{type(v).__name__} {v!r:.40}")
  return [bool(v) for v in ok]


def ladder(num_edits: Sequence[int], passes: Callable[[list[int], int, int], list[bool]],
           k: int, *, call_empty: bool = False) -> tuple[list[int], TruncationStats]:
  """K* of every pair from its edit count and `passes(rows, kk, rung)` (one bool per row: do
  the first kk edits of that pair pass); `call_empty`: call it for a rung with no rows too."""
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"adaptive_truncation: k must be an int >= 1, got {k!r}")
  k = int(k)
  kstar = list(num_edits)  # "all" unless a rung passes

  def rung(rows: list[int], kk: int, index: int) -> list[int]:
    """Sets K* = kk where the rows pass at kk; returns the rows that did not."""
    if not rows and not call_empty:
      return []
    ok = passes(rows, kk, index)
    for i, good in zip(rows, ok):
      if good:
        kstar[i] = kk
    return [i for i, good in zip(rows, ok) if not good]

  at_k_rows = [i for i, n in enumerate(num_edits) if n > k]
  failed_k = rung(at_k_rows, k, 0)
  at_2k_rows = [i for i in failed_k if num_edits[i] > 2 * k]
  failed_2k = rung(at_2k_rows, 2 * k, 1)
  at_k = len(at_k_rows) - len(failed_k)
  at_2k = len(at_2k_rows) - len(failed_2k)
  stats = TruncationStats(
      at_k=at_k, at_2k=at_2k, at_all=len(kstar) - at_k - at_2k, kstar=tuple(kstar),
      verify_calls=bool(at_k_rows) + bool(at_2k_rows),
      grafts_verified=len(at_k_rows) + len(at_2k_rows), k=k)
  return kstar, stats


def _check_pairs(where: str, **seqs) -> None:
  if len({len(x) for x in seqs.values()}) != 1:
    counts = [f"{len(x)} {name}" for name, x in seqs.items()]
    raise ValueError(f"{where}: {', '.join(counts[:-1])} and {counts[-1]}; they must be the "
                     f"same pairs")


def adaptive_truncation(failed: Sequence[Sequence[int]], repaired: Sequence[Sequence[int]],
                        alignments: Sequence[Alignment], verify: Verify,
                        k: int) -> tuple[list[int], TruncationStats]:
  """K* for every pair by grafts (module docstring), the verifier called on batched grafts.

  Args:
    failed: R failed token-id sequences.
    repaired: their R repairs.
    alignments: `align(failed[i], repaired[i])` for every i.
    verify: (pair indices, grafted token-id lists) -> one bool per graft (True = correct).
    k: the first truncation K, >= 1.

  Returns:
    kstar: R ints, the number of active edits per pair.
    stats: `TruncationStats`.
  """
  _check_pairs("adaptive_truncation", failed=failed, repaired=repaired, alignments=alignments)

  def passes(rows: list[int], kk: int, index: int) -> list[bool]:
    grafts = [graft(failed[i], repaired[i], alignments[i], kk) for i in rows]
    return _verify_batch(verify, rows, grafts, f"{('K', '2K')[index]}={kk}")

  return ladder([a.num_edits for a in alignments], passes, k)


def prefix_end(alignment: Alignment, k: int) -> int:
  """Where the repair's prefix that holds its first k edits ends: the end of edit k on the
  repair's side, or, for an edit that only deletes failure tokens (empty on the repair's
  side), just past the repair's token at that point (the token `both_sides` credits), so the
  prefix always carries the edit's decision. A prefix that held none of it (a deletion at the
  very start would give an empty one) would pass whenever the policy solves the problem from
  scratch."""
  start, end = int(alignment.b_start[k - 1]), int(alignment.b_end[k - 1])
  return end if end > start else min(start + 1, alignment.len_b)


def continuation_truncation(repaired: Sequence[Sequence[int]],
                            alignments: Sequence[Alignment], attempt: Attempt, k: int,
                            pass_frac: float) -> tuple[list[int], TruncationStats]:
  """K* for every pair by the policy's continuations (module docstring).

  Args:
    repaired: R repairs (token ids).
    alignments: `align(failed[i], repaired[i])` for every i.
    attempt: (pair indices, prefixes, rung) -> per prefix the fraction of its continuations
      that verify; called once per rung, with no pairs too (collective sampling).
    k: the first truncation K, >= 1.
    pass_frac: the edits pass when at least this fraction of the continuations verify (a
      value in (0, 1]; 1e-9 = any one of them).

  Returns:
    kstar: R ints, the number of active edits per pair.
    stats: `TruncationStats` (grafts_verified counts the prefixes tried).
  """
  _check_pairs("continuation_truncation", repaired=repaired, alignments=alignments)
  if not 0.0 < pass_frac <= 1.0:
    raise ValueError(f"continuation_truncation: pass_frac must be in (0, 1], got {pass_frac}")

  def passes(rows: list[int], kk: int, index: int) -> list[bool]:
    prefixes = [list(repaired[i][:prefix_end(alignments[i], kk)]) for i in rows]
    frac = list(attempt(rows, prefixes, index))
    if len(frac) != len(rows):
      raise ValueError(f"continuation_truncation: attempt returned {len(frac)} results for "
                       f"{len(rows)} prefixes at {('K', '2K')[index]}={kk}")
    return [f > 0 and f + 1e-9 >= pass_frac for f in frac]

  return ladder([a.num_edits for a in alignments], passes, k, call_empty=True)
