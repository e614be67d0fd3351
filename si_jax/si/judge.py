"""The judge audit gate: the rule gate first, then a second HF model asked one yes/no question
per remaining case, decided by one teacher-forced forward pass (block reason 'judge_no').

Registered as `config.si.audit = "judge"` (`si_jax/si/audit.py` holds the rules, the other
gates and the registry; see its docstring for what a gate is).
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from si_jax import sampling
from si_jax import sharding as shd
from si_jax.models import hf, transformer
from si_jax.si import audit
from si_jax.tokenizer import Tokenizer

__all__ = ["JUDGE_QUESTION", "JudgeGate", "judge_prompt", "yes_no_ids"]


JUDGE_QUESTION = (
    "Does the candidate repair the failed solution with a small change, rather than copying "
    "the reference or only stating an answer? Answer yes or no.")
# Stands for the tokens cut from the middle of a text too long for the judge's context.
TRUNCATION_MARK = "\n[...]\n"
_YES = ("yes", "Yes", " yes", " Yes")
_NO = ("no", "No", " no", " No")


def _block(text: str) -> str:
  return text.strip("\n")


def judge_prompt(problem: str, failed: str, candidate: str, reference: str | None = None) -> str:
  """The judge's user message (the texts are shown as given; see `JudgeGate.prompt_ids`):

      <JUDGE_QUESTION>
      Problem: <problem>
      Failed:
      <failed>
      Reference:          (only with a reference)
      <reference>
      Candidate:
      <candidate>
      Answer yes or no.
  """
  parts = [JUDGE_QUESTION, f"Problem: {problem.strip()}", "Failed:", _block(failed)]
  if reference is not None:
    parts += ["Reference:", _block(reference)]
  parts += ["Candidate:", _block(candidate), "Answer yes or no."]
  return "\n".join(parts)


def yes_no_ids(tokenizer) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(yes ids, no ids): the first token of each variant of the answer words that exists.

  Variants: 'yes', 'Yes', ' yes', ' Yes' (and the same for 'no'). A variant is taken when its
  first token spells the beginning of the word: its text, stripped, is a non-empty prefix of the
  word. A BPE vocab gives 'yes', 'Yes', 'Ġyes', 'ĠYes'; a char vocab gives 'y', 'Y' (its ' yes'
  starts with a bare space, which would start ' no' too); an unknown token is never taken.
  Raises when a word has no variant or a token would count for both words.
  """

  def first_ids(variants):
    out = []
    for v in variants:
      ids = tokenizer.encode(v)
      piece = tokenizer.decode(ids[:1], skip_special=False).strip() if ids else ""
      if piece and v.strip().startswith(piece):
        out.append(int(ids[0]))
    return tuple(dict.fromkeys(out))

  yes, no = first_ids(_YES), first_ids(_NO)
  where = f"tokenizer at {tokenizer.path!r}" if getattr(tokenizer, "path", "") else "tokenizer"
  if not yes or not no:
    raise ValueError(f"JudgeGate: the {where} cannot write "
                     f"{'yes' if not yes else 'no'} (variants {_YES if not yes else _NO})")
  both = set(yes) & set(no)
  if both:
    raise ValueError(f"JudgeGate: the {where} starts both 'yes' and 'no' with token ids "
                     f"{sorted(both)}; a first-token yes/no decision is impossible with it")
  return yes, no


def _water_fill(lens: Sequence[int], budget: int) -> list[int]:
  """Tokens to keep per text, sum <= budget: short texts stay whole, long ones share the rest
  equally (the longest are cut first)."""
  if sum(lens) <= budget:
    return list(lens)
  keep, left = [0] * len(lens), max(budget, 0)
  order = sorted(range(len(lens)), key=lambda i: lens[i])
  for j, i in enumerate(order):
    keep[i] = min(lens[i], left // (len(lens) - j))
    left -= keep[i]
  return keep


def _cut_middle(text: str, offsets: np.ndarray, keep: int) -> str:
  """`text` with its middle tokens replaced by TRUNCATION_MARK so that `keep` tokens remain
  (the first ceil(keep/2) and the last floor(keep/2)); offsets [T, 2] are the tokens' spans."""
  n = len(offsets)
  if keep >= n:
    return text
  head, tail = keep - keep // 2, keep // 2
  head_end = int(offsets[head - 1][1]) if head else 0
  tail_start = int(offsets[n - tail][0]) if tail else len(text)
  return text[:head_end] + TRUNCATION_MARK + text[tail_start:]


def _yes_no_margin(params, tokens, mask, *, cfg, yes_ids, no_ids):
  """[B] float32 log p(yes) - log p(no) of the next token after the prompts [B, P].

  log p(word) is the logsumexp of the log-probs of the word's first-token ids (the probability
  of answering it in any of its variants). The logits are `transformer.prefill`'s, i.e. the
  first-token distribution the sampler would draw from; its KV cache is unused and dead code
  under jit (measured: the same temp memory as `forward_hidden` alone).
  """
  logits, _ = transformer.prefill(params, tokens, mask, cfg, cache_len=tokens.shape[1])
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  yes = jax.nn.logsumexp(logp[:, jnp.asarray(yes_ids)], axis=-1)
  no = jax.nn.logsumexp(logp[:, jnp.asarray(no_ids)], axis=-1)
  return yes - no


_DEFAULT_RULES = object()  # JudgeGate(rules=...) left out: a fresh audit.RuleGate()


@audit.GATES.register("judge")
class JudgeGate:
  """Audit by a second model: yes/no per case from one teacher-forced forward pass.

  The rules run first (`rules`, default a `audit.RuleGate()`; None = judge everything): a case they
  block keeps their reason and never reaches the judge. Every other case becomes a chat prompt
  (`judge_prompt` through the judge's chat template) and passes iff
  log p(yes) - log p(no) > threshold for the judge's next token (`yes_no_ids` says which tokens).

  Batching: prompts are sorted by length, cut into batches of at most `batch_size` rows
  (rounded up to a power of two with copies of a row, dropped again), left-padded
  (`sampling.pad_prompts`) to a multiple of `bucket` tokens; one compile per (rows, width).

  Long prompts: when a prompt exceeds `max_len` tokens, the middles of the failed, reference and
  candidate texts are cut (equal token budgets, the longest cut first; the cut is marked
  TRUNCATION_MARK), keeping each text's beginning (where a first mistake is) and end (its
  answer). The problem is never cut: a problem too long for the judge is an error.

  Texts shown: the solution of each (after a closed `<think>` block, end markers removed).

  Args:
    model_dir: an HF checkpoint directory (`si_jax.models.hf.load_hf`).
    tokenizer_dir: the judge's tokenizer directory (default: model_dir).
    threshold: pass iff log p(yes) - log p(no) > threshold (+inf blocks all, -inf passes all).
    rules: the gate that runs first, or None.
    max_len: longest prompt in tokens (default and upper bound: the model's
      max_position_embeddings).
    bucket: prompt widths are rounded up to a multiple of this.
    batch_size: most rows per forward pass.
    dtype: param dtype for `load_hf` (default: the checkpoint config's).
    mesh: optional `jax.sharding.Mesh`: params are sharded by `sharding.param_shardings`;
      prompts are replicated. None: the default device.
    template_kwargs: passed to the chat template (e.g. {'enable_thinking': False} for Qwen3,
      so the next token is the answer, not '<think>').
  """

  @classmethod
  def from_config(cls, *, copy_margin: float, step_mode: str, judge_dir: str,
                  judge_threshold: float) -> "JudgeGate":
    return cls(judge_dir, threshold=judge_threshold,
               rules=audit.RuleGate(copy_margin=copy_margin, step_mode=step_mode))

  def __init__(self, model_dir: str, *, tokenizer_dir: str | None = None,
               threshold: float = 0.0, rules: audit.Gate | None = _DEFAULT_RULES,
               max_len: int | None = None, bucket: int = 64, batch_size: int = 16,
               dtype=None, mesh=None, template_kwargs: dict | None = None):
    threshold = float(threshold)
    if math.isnan(threshold):
      raise ValueError("JudgeGate: threshold must not be NaN")
    for name, value in (("bucket", bucket), ("batch_size", batch_size)):
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"JudgeGate: {name} must be an int >= 1, got {value!r}")
    self.threshold = threshold
    self.rules = audit.RuleGate() if rules is _DEFAULT_RULES else rules
    self.bucket, self.batch_size = bucket, batch_size
    self.template_kwargs = dict(template_kwargs or {})
    self.model_dir = model_dir
    self.tokenizer = Tokenizer.from_dir(tokenizer_dir or model_dir)
    shardings = None if mesh is None else (lambda c: shd.param_shardings(c, mesh))
    self.cfg, self.params = hf.load_hf(model_dir, dtype=dtype, shardings=shardings)
    if self.tokenizer.vocab_size > self.cfg.vocab_size:
      raise ValueError(
          f"JudgeGate: the tokenizer at {self.tokenizer.path!r} has {self.tokenizer.vocab_size} "
          f"tokens, more than the vocab_size {self.cfg.vocab_size} of the model at {model_dir!r}")
    limit = self.cfg.max_position_embeddings
    if max_len is not None and not 1 <= max_len <= limit:
      raise ValueError(f"JudgeGate: max_len must be in [1, {limit}] (the model's "
                       f"max_position_embeddings), got {max_len}")
    self.max_len = max_len or limit
    self.yes_ids, self.no_ids = yes_no_ids(self.tokenizer)
    fn = functools.partial(_yes_no_margin, cfg=self.cfg, yes_ids=self.yes_ids,
                           no_ids=self.no_ids)
    if mesh is None:
      self._margin = jax.jit(fn)
    else:
      rep = shd.replicated(mesh)
      self._margin = jax.jit(fn, in_shardings=(shd.param_shardings(self.cfg, mesh), rep, rep),
                             out_shardings=rep)
    self.shapes: set[tuple[int, int]] = set()  # (rows, width) of every batch run so far

  # --------------------------------------------------------------------------- prompts

  def _prompt(self, case: audit.RepairCase, failed: str, reference: str | None, cand: str) -> list[int]:
    text = judge_prompt(case.problem, failed, cand, reference)
    return self.tokenizer.prompt_ids(text, **self.template_kwargs)

  def prompt_ids(self, case: audit.RepairCase, index: int = 0) -> list[int]:
    """The judge's prompt ids for `case`, cut to at most `max_len` tokens (class docstring).

    index: the case's position in its batch, for error messages.
    """
    texts = [_block(audit.solution_body(case.failed_text)),
             None if case.anchor_text is None else _block(audit.solution_body(case.anchor_text)),
             _block(audit.solution_body(case.candidate_text))]
    ids = self._prompt(case, *texts)
    if len(ids) <= self.max_len:
      return ids
    present = [i for i, t in enumerate(texts) if t is not None]
    spans = {i: self.tokenizer.encode_with_offsets(texts[i])[1] for i in present}
    lens = [len(spans[i]) for i in present]
    budget = sum(lens) - (len(ids) - self.max_len)
    while True:
      keep = _water_fill(lens, budget)
      cut = list(texts)
      for i, k in zip(present, keep):
        cut[i] = _cut_middle(texts[i], spans[i], k)
      ids = self._prompt(case, *cut)
      over = len(ids) - self.max_len
      if over <= 0:
        return ids
      if budget <= 0:
        raise ValueError(
            f"JudgeGate: case {index}: the judge prompt needs {len(ids)} tokens even with the "
            f"failed/reference/candidate texts cut to nothing, more than max_len={self.max_len}; "
            f"the problem ({len(case.problem)} chars) is too long for this judge")
      budget = max(budget - over, 0)

  # --------------------------------------------------------------------------- scoring

  def scores(self, cases: Sequence[audit.RepairCase]) -> np.ndarray:
    """[N] float32 log p(yes) - log p(no) of the judge for every case (no rules applied)."""
    if not cases:
      return np.zeros((0,), np.float32)
    prompts = [self.prompt_ids(c, i) for i, c in enumerate(cases)]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = np.zeros((len(prompts),), np.float32)
    for lo in range(0, len(order), self.batch_size):
      idx = order[lo:lo + self.batch_size]
      rows = min(self.batch_size, 1 << (len(idx) - 1).bit_length())
      width = min(-(-len(prompts[idx[-1]]) // self.bucket) * self.bucket, self.max_len)
      batch = [prompts[i] for i in idx] + [prompts[idx[0]]] * (rows - len(idx))
      tokens, mask = sampling.pad_prompts(batch, self.tokenizer.pad_id, length=width)
      self.shapes.add((rows, width))
      out[idx] = np.asarray(jax.device_get(self._margin(self.params, tokens, mask)))[:len(idx)]
    return out

  def __call__(self, cases: Sequence[audit.RepairCase]) -> list[str | None]:
    reasons = list(self.rules(cases)) if self.rules is not None else [None] * len(cases)
    todo = [i for i, r in enumerate(reasons) if r is None]
    if todo:
      margins = self.scores([cases[i] for i in todo])
      for i, m in zip(todo, margins):
        reasons[i] = None if m > self.threshold else "judge_no"
    return reasons

  def __repr__(self):
    return (f"JudgeGate(model_dir={self.model_dir!r}, threshold={self.threshold}, "
            f"rules={self.rules!r}, max_len={self.max_len})")
