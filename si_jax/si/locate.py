"""Locating a step of a failed rollout (the reset corrections, DESIGN 5.3), and token <-> step
positions (localization metrics).

  reset:        the model, in reflection mode (`prompts.reflection_prompt`: told only that the
                answer is wrong, shown the steps numbered), answers `\\boxed{k}` (1-based),
                parsed robustly (`prompts.parse_reflection`; no box or k out of range: no reset).
  random_reset: k uniform over the failed rollout's steps (RRPO).
  oracle_reset: k = the true first wrong step + 1, where the task knows it (synthetic tasks);
                the upper bound of localization.

The prefix is the failed rollout's token ids before step k (steps as `segment_steps` cuts the
decoded text with the task's step mode; the token boundary is found by decoding prefixes, so
the ids are the sampled ones, never re-tokenized). M continuations are sampled from
`policy prompt + prefix` with the remaining token budget; their suffix-only advantages are
group-relative within the M continuations of one reset (`reset.py`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from si_jax.data.steps import segment_steps
from si_jax.si import prompts

__all__ = ["CORRECTIONS", "char_to_token", "token_to_char", "step_of_char", "locate",
           "reflection_prompt_ids"]

CORRECTIONS = ("reset", "random_reset", "oracle_reset")


def token_to_char(tokenizer, ids: Sequence[int], j: int) -> int:
  """Character offset in decode(ids) where token j starts (= len(decode(ids[:j])))."""
  return len(tokenizer.decode(list(ids[:j])))


def char_to_token(tokenizer, ids: Sequence[int], pos: int) -> int:
  """The number of leading tokens whose text ends at or before character `pos` of
  decode(ids): the largest j with len(decode(ids[:j])) <= pos (binary search)."""
  lo, hi = 0, len(ids)
  while lo < hi:
    mid = (lo + hi + 1) // 2
    if token_to_char(tokenizer, ids, mid) <= pos:
      lo = mid
    else:
      hi = mid - 1
  return lo


def step_of_char(steps, pos: int) -> int:
  """Index of the step holding character `pos` (the last step for pos at the very end)."""
  for i, s in enumerate(steps):
    if s.start <= pos < s.end:
      return i
  return len(steps) - 1


def reflection_prompt_ids(tokenizer, problem: str, failed_text: str, step_mode: str,
                          system: str | None = None) -> list[int]:
  return tokenizer.prompt_ids(prompts.reflection_prompt(problem, failed_text, step_mode), system)


def locate(correction: str, texts: Sequence[str], *, step_mode: str,
           reflections: Sequence[str] | None = None, truth: Sequence[int | None] | None = None,
           rng: np.random.Generator | None = None) -> list[int | None]:
  """The 1-based step k to reset to for each failed text, or None (no reset).

  reset: parsed from `reflections`; random_reset: uniform with `rng`; oracle_reset: truth + 1
  (0-based first wrong steps, None when unknown).
  """
  out = []
  for i, text in enumerate(texts):
    n = len(segment_steps(text, step_mode))
    if n == 0:
      out.append(None)
    elif correction == "reset":
      out.append(prompts.parse_reflection(reflections[i], num_steps=n))
    elif correction == "random_reset":
      out.append(int(rng.integers(1, n + 1)))
    elif correction == "oracle_reset":
      t = truth[i]
      out.append(None if t is None or t >= n else int(t) + 1)
    else:
      raise ValueError(f"locate: correction must be one of {CORRECTIONS}, got {correction!r}")
  return out


def prefix_ids(tokenizer, ids: Sequence[int], text: str, k: int, step_mode: str) -> list[int]:
  """The failed rollout's ids before (1-based) step k."""
  steps = segment_steps(text, step_mode)
  return list(ids[:char_to_token(tokenizer, ids, steps[k - 1].start)])
