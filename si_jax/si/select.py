"""Select: which failed rollouts of a step get corrected, and which correct sibling anchors each.

DESIGN 5.2 step 1-2. A rollout is correct iff its verifier reward >= rl.success_threshold. In
every group that is part of the batch, at most `max_failed` failed rollouts are taken (in a
random order fixed by the step's key). With `require_anchor`, only groups with a correct
rollout are used and each taken failure gets a correct sibling drawn at random as its anchor;
without it, failures of all-failed groups are taken too, with no anchor (the repair mode then
repairs from the problem and the failure alone; the reset variants never use an anchor).
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["Request", "select_failures"]


@dataclasses.dataclass(frozen=True)
class Request:
  """One failed rollout to correct: its flat row (= group * G + member), its group, and the
  flat row of its anchor (None: no anchor)."""

  row: int
  group: int
  anchor_row: int | None


def select_failures(success: np.ndarray, group_mask: np.ndarray, *, max_failed: int,
                    require_anchor: bool, rng: np.random.Generator) -> list[Request]:
  """The step's correction requests (see the module docstring).

  Args:
    success: [P, G] bool, rollout reward >= the success threshold.
    group_mask: [P] bool, groups that are part of the batch.
    max_failed: at most this many requests per group (m_fail), >= 1.
    require_anchor: only groups with a correct rollout; every request gets an anchor.
    rng: numpy Generator (derive it from the step's key for exact resume).

  Returns:
    Requests ordered by group, then by the drawn order.
  """
  success = np.asarray(success, bool)
  if success.ndim != 2:
    raise ValueError(f"select_failures: success must be [P, G], got shape {success.shape}")
  if max_failed < 1:
    raise ValueError(f"select_failures: max_failed must be >= 1, got {max_failed}")
  P, G = success.shape
  out = []
  for p in range(P):
    if not group_mask[p]:
      continue
    correct = np.flatnonzero(success[p])
    failed = np.flatnonzero(~success[p])
    order = rng.permutation(failed)[:max_failed]
    if len(correct) == 0 and require_anchor:
      continue
    for g in order:
      anchor = int(p * G + rng.choice(correct)) if len(correct) else None
      out.append(Request(row=int(p * G + g), group=p, anchor_row=anchor))
  return out
