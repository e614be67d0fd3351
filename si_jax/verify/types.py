"""The result type every verifier returns."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Verdict:
  """A verifier's judgement of one completion.

  reward: in [0, 1] (1 = correct; code tasks give the fraction of tests passed).
  reason: a short machine-readable tag ('correct', 'wrong_answer', 'no_answer', 'timeout',
    'unparseable', 'runtime_error', ...), counted in metrics.
  """

  reward: float
  reason: str

  def __post_init__(self):
    if not 0.0 <= self.reward <= 1.0:
      raise ValueError(f"Verdict.reward must be in [0, 1], got {self.reward}")
