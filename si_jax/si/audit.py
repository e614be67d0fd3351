"""The audit gate of supervision internalization: which repair candidates may earn credit.

DESIGN 5.2 step 3 scores a repair candidate y_bar of a failed rollout y as
`s = h * (r(y_bar) - lambda_edit * d(y, y_bar))`; the gate decides h in {0, 1}. It rejects reward
hacking: a candidate that copies the correct sibling (the anchor) instead of fixing y, one that
only states an answer, a malformed or a truncated one.

A gate is any callable `gate(cases: Sequence[RepairCase]) -> list[str | None]`: one entry per
case, None when the case passes, else the block reason, one of `BLOCK_REASONS`. The trainer calls
it once per RL step with every candidate of the step, so implementations batch.

  RuleGate   checks by rule, in this order (the first failing check is the reason):
               truncated      the candidate did not end with a stop token.
               malformed      no repaired solution in it (`prompts.parse_repair` is None: empty,
                              unfinished `<think>` block), or only whitespace and markers.
               answer_only    fewer than `min_steps` steps (default 2: at most one) while the
                              failed trajectory has at least `min_steps` (see `count_steps`).
               copies_anchor  closer to the anchor than to the failed trajectory by more than
                              `copy_margin` in normalized token edit distance.
  JudgeGate  the RuleGate first, then a second HF model asked one yes/no question per
             remaining case, decided by one teacher-forced forward pass (reason 'judge_no';
             `si_jax/si/judge.py`).
  NoGate     passes everything (ablations).

Known limit of `copies_anchor` (RESEARCH_NOTES): on a task with one correct trace per problem
(the synthetic arithmetic task with a single style) the correct repair of an early mistake IS
the anchor, token for token, so no rule on spelling or edit distance can tell repairing from
copying there; this rule then blocks genuine repairs of early mistakes. With two spellings
(`ArithConfig.styles=("compact", "spaced")`) a repair that keeps the failed trace's spelling
stays closer to it and passes. Whether the repair mode repairs or transcribes is shown by the
counterfactual probes (repair with no anchor, with a wrong anchor), not by this gate.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Sequence

from rapidfuzz.distance import Levenshtein

from si_jax import registry
from si_jax.data.steps import MODES, segment_steps
from si_jax.si.prompts import parse_repair

__all__ = [
    "BLOCK_REASONS", "RepairCase", "Gate", "GATES", "RuleGate", "NoGate", "make_gate",
    "gate_from_config", "block_counts", "count_steps", "edit_distance", "solution_body",
]

BLOCK_REASONS = ("truncated", "malformed", "answer_only", "copies_anchor", "judge_no")

# Markers that carry no content: thinking delimiters, chat-turn and end-of-text tokens of the
# families si_jax reads. A candidate made only of these and whitespace is malformed.
_MARKERS = ("<think>", "</think>", "<|im_start|>", "<|im_end|>", "<|endoftext|>",
            "<|eot_id|>", "<|end_of_text|>", "<|pad|>")


@dataclasses.dataclass(frozen=True)
class RepairCase:
  """One repair candidate to audit, with what it repairs.

  problem: the problem text (the policy prompt's content).
  failed_ids / failed_text: the failed rollout y (response token ids and their text).
  anchor_ids / anchor_text: the correct sibling shown in the repair prompt, or both None.
  candidate_ids / candidate_text: the repair-mode output y_bar.
  finished: the candidate ended with a stop token (was not cut by the token budget).
  """

  problem: str
  failed_ids: list[int]
  failed_text: str
  anchor_ids: list[int] | None
  anchor_text: str | None
  candidate_ids: list[int]
  candidate_text: str
  finished: bool

  def __post_init__(self):
    if (self.anchor_ids is None) != (self.anchor_text is None):
      raise ValueError(
          f"RepairCase: anchor_ids and anchor_text must both be given or both be None, got "
          f"anchor_ids={'None' if self.anchor_ids is None else 'a list'}, "
          f"anchor_text={'None' if self.anchor_text is None else 'a string'}")


Gate = Callable[[Sequence[RepairCase]], list]
# The gates by name (`config.si.audit`); the judge registers itself from its own module.
GATES = registry.Registry("audit gate", field="config.si.audit", modules=("si_jax.si.judge",))


# ----------------------------------------------------------------------------- rule gate


def edit_distance(a: Sequence[int], b: Sequence[int]) -> float:
  """Normalized token edit distance in [0, 1]: Levenshtein(a, b) / max(len a, len b); 0 if both
  are empty."""
  return float(Levenshtein.normalized_distance(list(a), list(b)))


def solution_body(text: str) -> str:
  """The solution in a response: after a closed `<think>` block, end markers stripped; the
  stripped text itself when `parse_repair` finds none (e.g. a failed rollout cut mid-thought)."""
  body = parse_repair(text)
  return body if body is not None else (text.strip() if isinstance(text, str) else "")


def _only_markers(text: str) -> bool:
  for marker in _MARKERS:
    text = text.replace(marker, "")
  return not text.strip()


def count_steps(text: str, step_mode: str = "auto") -> int:
  """Steps of the solution in `text`: `segment_steps(body, step_mode)` of its stripped body.

  'auto' resolves per text (a candidate written as lines is cut into lines even when the failed
  trace used paragraphs), so a full solution is never counted as one step for being spelled
  differently. Empty or whitespace-only text has 0 steps.
  """
  body = solution_body(text)
  return len(segment_steps(body, step_mode)) if body.strip() else 0


@GATES.register("rule")
class RuleGate:
  """The rule-based audit gate (see the module docstring for the checks and their order).

  Args:
    copy_margin: in [0, 1]. A candidate with an anchor is 'copies_anchor' iff
      d(cand, anchor) + copy_margin < d(cand, failed), d = `edit_distance` on token ids.
      Default 0.1: only clear copies are blocked. The score already charges
      lambda_edit * d(failed, cand), so a copy that slips through is penalized anyway, while a
      false block zeroes a good repair; and a genuine repair moves toward the anchor on the
      steps it fixes (the fixed step and the values after it coincide with the anchor's), so
      near-ties must pass. 0.1 is above the few-token noise of ~100-token traces (a 3-token
      difference is 0.03) and below the distance of a copy spelled otherwise than the failed
      trace (0.3-0.4 on the arithmetic task's compact vs spaced styles).
    step_mode: how `segment_steps` cuts solutions ('auto', 'lines', 'paragraphs', 'markers').
    min_steps: >= 1. 'answer_only' iff count_steps(candidate) < min_steps <= count_steps(failed).
      Default 2: a candidate of at most one step repairing a multi-step trajectory is a bare
      answer. A one-step failed trajectory has no process to keep, so the rule never fires for
      it; min_steps=1 disables the rule (a non-malformed candidate has at least one step).
  """

  @classmethod
  def from_config(cls, *, copy_margin: float, step_mode: str, **_) -> "RuleGate":
    return cls(copy_margin=copy_margin, step_mode=step_mode)

  def __init__(self, copy_margin: float = 0.1, step_mode: str = "auto", min_steps: int = 2):
    if isinstance(copy_margin, bool) or not isinstance(copy_margin, (int, float)) or not (
        0.0 <= copy_margin <= 1.0):
      raise ValueError(f"RuleGate: copy_margin must be a number in [0, 1], got {copy_margin!r}")
    if step_mode not in MODES:
      raise ValueError(f"RuleGate: step_mode must be one of {MODES}, got {step_mode!r}")
    if isinstance(min_steps, bool) or not isinstance(min_steps, int) or min_steps < 1:
      raise ValueError(f"RuleGate: min_steps must be an int >= 1, got {min_steps!r}")
    self.copy_margin = float(copy_margin)
    self.step_mode = step_mode
    self.min_steps = min_steps

  def check(self, case: RepairCase) -> str | None:
    """The block reason of one case, or None when it passes."""
    if not case.finished:
      return "truncated"
    body = parse_repair(case.candidate_text)
    if body is None or _only_markers(body):
      return "malformed"
    n_failed = count_steps(case.failed_text, self.step_mode)
    if count_steps(body, self.step_mode) < self.min_steps <= n_failed:
      return "answer_only"
    if case.anchor_ids is not None:
      d_anchor = edit_distance(case.candidate_ids, case.anchor_ids)
      d_failed = edit_distance(case.candidate_ids, case.failed_ids)
      if d_anchor + self.copy_margin < d_failed:
        return "copies_anchor"
    return None

  def __call__(self, cases: Sequence[RepairCase]) -> list[str | None]:
    return [self.check(c) for c in cases]

  def __repr__(self):
    return (f"RuleGate(copy_margin={self.copy_margin}, step_mode={self.step_mode!r}, "
            f"min_steps={self.min_steps})")


@GATES.register("none")
class NoGate:
  """Passes every candidate (the no-audit ablation)."""

  @classmethod
  def from_config(cls, **_) -> "NoGate":
    return cls()

  def __call__(self, cases: Sequence[RepairCase]) -> list[str | None]:
    return [None] * len(cases)

  def __repr__(self):
    return "NoGate()"


# ----------------------------------------------------------------------------- registry


def make_gate(name: str, **kwargs) -> Gate:
  """The gate called `name` with its options: 'rule' (RuleGate), 'judge' (JudgeGate, needs
  model_dir=) or 'none' (NoGate, no options). Errors name the gate and the option."""
  cls = GATES.get(name)
  try:
    return cls(**kwargs)
  except TypeError as e:
    raise ValueError(f"make_gate({name!r}): {e}") from None


def gate_from_config(name: str, *, copy_margin: float, step_mode: str, judge_dir: str,
                     judge_threshold: float) -> Gate:
  """The gate `config.si.audit` names, from the config's fields (`si_jax/si/rows.py`)."""
  return GATES.get(name).from_config(copy_margin=copy_margin, step_mode=step_mode,
                                     judge_dir=judge_dir, judge_threshold=judge_threshold)


def block_counts(reasons: Iterable[str | None]) -> dict[str, int]:
  """How many cases each reason blocked: every key of BLOCK_REASONS, 0 if none; None (passed)
  is not counted. An unknown reason is an error naming it."""
  counts = dict.fromkeys(BLOCK_REASONS, 0)
  for i, r in enumerate(reasons):
    if r is None:
      continue
    if r not in counts:
      raise ValueError(f"block_counts: reason {i} is {r!r}, not one of {BLOCK_REASONS}")
    counts[r] += 1
  return counts
