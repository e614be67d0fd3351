"""Rollout groups: prompts -> G sampled responses each (`sample`) -> verdicts (`score`) ->
packed training rows (`pack_rows`).

Everything stays in token ids: a response is the sampler's ids up to and including its stop
token, and its training row is `prompt ids (left-padded) + response ids (right-padded)`, so the
log-prob of every response token is the one the sampler reported (no re-tokenization).
`pack_rows` is shared by RL, SFT and the repair mode of SI.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from si_jax import metrics as metrics_lib
from si_jax import sampling
from si_jax.data.tasks import Example, Task
from si_jax.verify.types import Verdict


@dataclasses.dataclass
class Rollouts:
  """P prompts x G responses, flattened row-major (row i = prompt i // G).

  prompt_ids: P lists of ids; response_ids / logprobs: P*G lists / float32 arrays (stop token
  included when finished); texts: decoded responses; verdicts; rewards [P, G] float32;
  finished [P*G] bool.
  """

  examples: list[Example]
  group_size: int
  prompt_ids: list[list[int]]
  response_ids: list[list[int]]
  logprobs: list[np.ndarray]
  texts: list[str]
  verdicts: list[Verdict]
  rewards: np.ndarray
  finished: np.ndarray
  timing: dict = dataclasses.field(default_factory=dict)  # seconds: 'sample', 'verify'

  @property
  def lengths(self) -> np.ndarray:
    return np.asarray([len(r) for r in self.response_ids], np.int32)

  def row_prompt_ids(self) -> list[list[int]]:
    return [self.prompt_ids[i // self.group_size] for i in range(len(self.response_ids))]

  def row_examples(self) -> list[Example]:
    return [self.examples[i // self.group_size] for i in range(len(self.response_ids))]

  def select(self, keep: np.ndarray) -> "Rollouts":
    """The groups where keep [P] is True."""
    G = self.group_size
    idx = [p for p in range(len(self.examples)) if keep[p]]
    rows = [p * G + g for p in idx for g in range(G)]
    return Rollouts(
        examples=[self.examples[p] for p in idx], group_size=G,
        prompt_ids=[self.prompt_ids[p] for p in idx],
        response_ids=[self.response_ids[r] for r in rows],
        logprobs=[self.logprobs[r] for r in rows], texts=[self.texts[r] for r in rows],
        verdicts=[self.verdicts[r] for r in rows], rewards=self.rewards[idx],
        finished=self.finished[rows])

  @staticmethod
  def concat(parts: Sequence["Rollouts"]) -> "Rollouts":
    G = parts[0].group_size
    cat = lambda name: [x for p in parts for x in getattr(p, name)]
    return Rollouts(
        examples=cat("examples"), group_size=G, prompt_ids=cat("prompt_ids"),
        response_ids=cat("response_ids"), logprobs=cat("logprobs"), texts=cat("texts"),
        verdicts=cat("verdicts"),
        rewards=np.concatenate([p.rewards for p in parts]).reshape(-1, G),
        finished=np.concatenate([p.finished for p in parts]),
        timing={k: sum(p.timing.get(k, 0.0) for p in parts) for k in ("sample", "verify")})


def encode_prompts(tokenizer, task: Task, examples: Sequence[Example]) -> list[list[int]]:
  return tokenizer.encode_batch([tokenizer.prompt_text(ex.prompt, task.system_prompt)
                                 for ex in examples])


def generate(sampler: sampling.Sampler, params, prompts: Sequence[Sequence[int]],
             key: jax.Array, sp: sampling.SamplingParams, *, width: int = 0, rows: int = 0
             ) -> tuple[list[list[int]], list[np.ndarray], np.ndarray]:
  """(response ids, their sampler log-probs [len] float32, finished [N] bool) per prompt.
  width, rows: the prompt width and batch rows floors (`Sampler.generate`)."""
  out = sampler.generate(params, prompts, key, sp, width=width, rows=rows)
  lengths = np.asarray(out.lengths)
  ids = [list(map(int, out.tokens[i, :lengths[i]])) for i in range(len(prompts))]
  lps = [np.asarray(out.logprobs[i, :lengths[i]], np.float32) for i in range(len(prompts))]
  return ids, lps, np.asarray(out.finished)


def sample(sampler: sampling.Sampler, params, tokenizer, task: Task,
           examples: Sequence[Example], key: jax.Array, sp: sampling.SamplingParams,
           group_size: int, *, width: int = 0) -> Rollouts:
  """Samples `group_size` responses per example (not yet scored: see `score`). width: the
  prompt width floor (the run's policy prompt width)."""
  timer = metrics_lib.Timer()
  with timer("sample"):
    prompt_ids = encode_prompts(tokenizer, task, examples)
    rows = [p for p in prompt_ids for _ in range(group_size)]
    response_ids, logprobs, finished = generate(sampler, params, rows, key, sp, width=width)
    texts = [tokenizer.decode(r) for r in response_ids]
  return Rollouts(examples=list(examples), group_size=group_size, prompt_ids=prompt_ids,
                  response_ids=response_ids, logprobs=logprobs, texts=texts, verdicts=[],
                  rewards=np.zeros((len(examples), group_size), np.float32), finished=finished,
                  timing=timer.summary())


def score(ro: Rollouts, task: Task) -> Rollouts:
  """Scores every response with the task's verifier: fills verdicts and rewards [P, G]."""
  timer = metrics_lib.Timer()
  with timer("verify"):
    ro.verdicts = task.score(ro.row_examples(), ro.texts)
    ro.rewards = np.asarray([v.reward for v in ro.verdicts], np.float32).reshape(
        -1, ro.group_size)
  ro.timing["verify"] = ro.timing.get("verify", 0.0) + timer.summary()["verify"]
  return ro


def sample_and_score(sampler, params, tokenizer, task, examples, key, sp, group_size, *,
                     width: int = 0) -> Rollouts:
  return score(sample(sampler, params, tokenizer, task, examples, key, sp, group_size,
                      width=width), task)


def pack_rows(prefixes: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], *,
              prefix_len: int, completion_len: int, pad_id: int,
              values: dict[str, Sequence[np.ndarray]] | None = None) -> dict[str, np.ndarray]:
  """Packs (prefix, completion) id lists into training rows of width prefix_len+completion_len.

  Returns tokens [B, W] int32, input_mask [B, W] bool, loss_mask [B, W] float32 (1 on
  completion tokens), and for each entry of `values` (per-row arrays aligned with the
  completion tokens, e.g. old log-probs or token advantages) a [B, W] float32 array placed on
  the completion positions. Too-long rows are errors naming the row.
  """
  B = len(prefixes)
  if len(completions) != B:
    raise ValueError(f"pack_rows: {B} prefixes but {len(completions)} completions")
  W = prefix_len + completion_len
  tokens = np.full((B, W), pad_id, np.int32)
  input_mask = np.zeros((B, W), bool)
  loss_mask = np.zeros((B, W), np.float32)
  out_values = {k: np.zeros((B, W), np.float32) for k in (values or {})}
  for i, (p, c) in enumerate(zip(prefixes, completions)):
    if len(p) > prefix_len:
      raise ValueError(f"pack_rows: row {i} prefix has {len(p)} tokens > prefix_len "
                       f"{prefix_len}")
    if len(c) > completion_len:
      raise ValueError(f"pack_rows: row {i} completion has {len(c)} tokens > completion_len "
                       f"{completion_len}")
    s = prefix_len - len(p)
    tokens[i, s:prefix_len] = p
    tokens[i, prefix_len:prefix_len + len(c)] = c
    input_mask[i, s:prefix_len + len(c)] = True
    loss_mask[i, prefix_len:prefix_len + len(c)] = 1.0
    for k, v in (values or {}).items():
      v = np.asarray(v[i], np.float32)
      if v.shape != (len(c),):
        raise ValueError(f"pack_rows: values[{k!r}] row {i} has shape {v.shape}, expected "
                         f"({len(c)},) like its completion")
      out_values[k][i, prefix_len:prefix_len + len(c)] = v
  return dict(tokens=tokens, input_mask=input_mask, loss_mask=loss_mask, **out_values)
