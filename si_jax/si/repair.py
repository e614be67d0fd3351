"""Repair: sample repair candidates for failed rollouts, score and audit them, keep the best.

DESIGN 5.2 steps 2-3. For each request (a failed rollout y with an optional correct sibling a),
the repair prompt (`prompts.repair_prompt`: problem, y, a) is rendered with the chat template
and `repair_samples` candidates are sampled from the same params, all requests of a step in one
batched sampler call. A candidate is the span of token ids the sampler produced (stop token
included): those ids are what is aligned and trained on, never a re-tokenization of its text.

Scoring: r(y_bar) = 1 iff the task's verifier gives reward >= threshold on the candidate's
repaired solution (`prompts.parse_repair` of its text) AND, where the task knows the truth of
every step (`Task.trace_correct`), the whole trace is right (a repair that splices the anchor's
values into a wrong trace can still end on the right answer). h = 1 iff the audit gate passes
it. s = h * (r - lambda_edit * d(y, y_bar)), d the normalized token edit distance. The kept
repair of a request is its successful (h = r = 1) candidate with the highest s, i.e. the
smallest edit; a request without one is unrepaired.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from si_jax import sampling
from si_jax.rl import rollout
from si_jax.si import audit as audit_lib
from si_jax.si import prompts
from si_jax.si.select import Request

__all__ = ["Candidates", "repair_prompt_ids", "sample_candidates", "score_candidates",
           "repair_success"]


@dataclasses.dataclass
class Candidates:
  """C = len(requests) * n candidates, request-major (candidate j of request i is i * n + j).

  prompt_ids: per request, the repair prompt's token ids.
  ids / logprobs: per candidate, the sampled ids and their log-probs under the repair prompt.
  finished: [C] bool; texts: decoded candidates.
  Filled by `score_candidates`: reward [C] (r), reasons (gate block reason or None),
  distance [C] (normalized edit distance to the failed rollout), score [C] (s), best [R]
  (index of the kept candidate, -1 = none).
  """

  n: int
  prompt_ids: list[list[int]]
  ids: list[list[int]]
  logprobs: list[np.ndarray]
  finished: np.ndarray
  texts: list[str]
  reward: np.ndarray | None = None
  reasons: list[str | None] | None = None
  distance: np.ndarray | None = None
  score: np.ndarray | None = None
  best: np.ndarray | None = None


def repair_prompt_ids(tokenizer, problem: str, failed: str, anchor: str | None,
                      system: str | None = None, instruction: str | None = None) -> list[int]:
  return tokenizer.prompt_ids(prompts.repair_prompt(problem, failed, anchor, instruction),
                              system)


def sample_candidates(sampler, params, tokenizer, key, sp: sampling.SamplingParams,
                      prompt_ids: Sequence[Sequence[int]], n: int) -> Candidates:
  """n candidates per repair prompt, one batched sampler call."""
  rows = [p for p in prompt_ids for _ in range(n)]
  if not rows and jax.process_count() == 1:  # with several processes sampling is collective
    return Candidates(n=n, prompt_ids=[], ids=[], logprobs=[], finished=np.zeros(0, bool),
                      texts=[])
  ids, lps, finished = rollout.generate(sampler, params, rows, key, sp)
  return Candidates(n=n, prompt_ids=[list(p) for p in prompt_ids], ids=ids, logprobs=lps,
                    finished=finished, texts=[tokenizer.decode(x) for x in ids])


def repair_success(task, examples, texts: Sequence[str], threshold: float) -> np.ndarray:
  """[N] bool: verifier reward >= threshold and the trace not known to be wrong."""
  bodies = [prompts.parse_repair(t) or "" for t in texts]
  verdicts = task.score(list(examples), bodies)
  ok = [v.reward >= threshold and task.trace_correct(ex, b) is not False
        for v, ex, b in zip(verdicts, examples, bodies)]
  return np.asarray(ok, bool)


def score_candidates(cands: Candidates, requests: Sequence[Request], ro: rollout.Rollouts,
                     task, gate, *, threshold: float, lambda_edit: float) -> Candidates:
  """Fills reward, reasons, distance, score and best (see the module docstring)."""
  n = cands.n
  examples = [ro.examples[req.group] for req in requests for _ in range(n)]
  cands.reward = repair_success(task, examples, cands.texts, threshold).astype(np.float32)
  cases = []
  for i, req in enumerate(requests):
    a = req.anchor_row
    for j in range(n):
      c = i * n + j
      cases.append(audit_lib.RepairCase(
          problem=ro.examples[req.group].prompt, failed_ids=ro.response_ids[req.row],
          failed_text=ro.texts[req.row],
          anchor_ids=None if a is None else ro.response_ids[a],
          anchor_text=None if a is None else ro.texts[a], candidate_ids=cands.ids[c],
          candidate_text=cands.texts[c], finished=bool(cands.finished[c])))
  cands.reasons = list(gate(cases)) if cases else []
  cands.distance = np.asarray(
      [audit_lib.edit_distance(ro.response_ids[requests[c // n].row], cands.ids[c])
       for c in range(len(cands.ids))], np.float32)
  h = np.asarray([r is None for r in cands.reasons], np.float32)
  cands.score = h * (cands.reward - lambda_edit * cands.distance)
  ok = (h * cands.reward).reshape(len(requests), n) > 0
  s = np.where(ok, cands.score.reshape(len(requests), n), -np.inf)
  cands.best = np.where(ok.any(axis=1), np.argmax(s, axis=1) + np.arange(len(requests)) * n, -1)
  return cands
