"""Adaptive truncation: how many of a repair's edits stay active as credit (DESIGN 5.2 step 5).

For each (failed, repaired) pair with n edits (`si_jax.si.align`), K* is chosen on a ladder:

  n <= K                                  -> K* = n   ("all"; nothing to verify)
  the graft of the first K edits verifies -> K* = K
  else n <= 2K                            -> K* = n   ("all"; the repair itself verified)
  the graft of the first 2K verifies      -> K* = 2K
  else                                    -> K* = n   ("all")

so credit goes to the earliest decisive difference. The verifier sees batches: one call with
every pair grafted at K (pairs with n <= K skip it), one with the pairs that failed at K and
have n > 2K, grafted at 2K. A call with nothing to verify is not made.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from si_jax.si.align import Alignment, graft

__all__ = ["TruncationStats", "adaptive_truncation"]

# verify(pairs, grafts): pairs[i] is the index of the pair graft i comes from (so a verifier can
# look up its problem); returns one bool per graft (True = the graft is correct).
Verify = Callable[[list[int], list[list[int]]], Sequence[bool]]


@dataclasses.dataclass(frozen=True)
class TruncationStats:
  """What the ladder did for one batch of pairs.

  Attributes:
    at_k, at_2k, at_all: number of pairs whose K* is K, 2K, all edits.
    kstar: K* of every pair, in input order (for a histogram).
    verify_calls: number of calls of the verifier (0, 1 or 2).
    grafts_verified: number of grafted sequences the verifier was given.
  """
  at_k: int
  at_2k: int
  at_all: int
  kstar: tuple[int, ...]
  verify_calls: int
  grafts_verified: int

  def metrics(self, prefix: str = "si/") -> dict[str, float | int]:
    """Scalar metrics: counts per rung and the mean K* (0.0 for an empty batch)."""
    return {f"{prefix}kstar_at_k": self.at_k, f"{prefix}kstar_at_2k": self.at_2k,
            f"{prefix}kstar_at_all": self.at_all,
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


def adaptive_truncation(failed: Sequence[Sequence[int]], repaired: Sequence[Sequence[int]],
                        alignments: Sequence[Alignment], verify: Verify,
                        k: int) -> tuple[list[int], TruncationStats]:
  """K* for every pair (module docstring), with the verifier called on batched grafts.

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
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"adaptive_truncation: k must be an int >= 1, got {k!r}")
  k = int(k)
  if not len(failed) == len(repaired) == len(alignments):
    raise ValueError(f"adaptive_truncation: {len(failed)} failed, {len(repaired)} repaired and "
                     f"{len(alignments)} alignments; they must be the same pairs")
  num_edits = [a.num_edits for a in alignments]
  kstar = list(num_edits)  # "all" unless a rung verifies

  def rung(rows: list[int], kk: int, name: str) -> list[int]:
    """Verifies rows grafted at kk; sets K* = kk where it verifies; returns the rows that failed."""
    grafts = [graft(failed[i], repaired[i], alignments[i], kk) for i in rows]
    ok = _verify_batch(verify, rows, grafts, f"{name}={kk}")
    for i, good in zip(rows, ok):
      if good:
        kstar[i] = kk
    return [i for i, good in zip(rows, ok) if not good]

  at_k_rows = [i for i, n in enumerate(num_edits) if n > k]
  failed_k = rung(at_k_rows, k, "K")
  at_2k_rows = [i for i in failed_k if num_edits[i] > 2 * k]
  failed_2k = rung(at_2k_rows, 2 * k, "2K")

  at_k = len(at_k_rows) - len(failed_k)
  at_2k = len(at_2k_rows) - len(failed_2k)
  stats = TruncationStats(
      at_k=at_k, at_2k=at_2k, at_all=len(kstar) - at_k - at_2k, kstar=tuple(kstar),
      verify_calls=bool(at_k_rows) + bool(at_2k_rows),
      grafts_verified=len(at_k_rows) + len(at_2k_rows))
  return kstar, stats
