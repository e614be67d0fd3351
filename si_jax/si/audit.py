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
             remaining case, decided by one teacher-forced forward pass (reason 'judge_no').
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
import functools
import math
from typing import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from rapidfuzz.distance import Levenshtein

from si_jax import sampling
from si_jax import sharding as shd
from si_jax.data.steps import MODES, segment_steps
from si_jax.models import hf, transformer
from si_jax.si.prompts import parse_repair
from si_jax.tokenizer import Tokenizer

__all__ = [
    "BLOCK_REASONS", "RepairCase", "Gate", "GATES", "RuleGate", "JudgeGate", "NoGate",
    "make_gate", "block_counts", "count_steps", "edit_distance", "judge_prompt",
    "yes_no_ids", "JUDGE_QUESTION", "TRUNCATION_MARK",
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


# ----------------------------------------------------------------------------- rule gate


def edit_distance(a: Sequence[int], b: Sequence[int]) -> float:
  """Normalized token edit distance in [0, 1]: Levenshtein(a, b) / max(len a, len b); 0 if both
  are empty."""
  return float(Levenshtein.normalized_distance(list(a), list(b)))


def _solution_body(text: str) -> str:
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
  body = _solution_body(text)
  return len(segment_steps(body, step_mode)) if body.strip() else 0


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


class NoGate:
  """Passes every candidate (the no-audit ablation)."""

  def __call__(self, cases: Sequence[RepairCase]) -> list[str | None]:
    return [None] * len(cases)

  def __repr__(self):
    return "NoGate()"


# ----------------------------------------------------------------------------- judge gate

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


_DEFAULT_RULES = object()  # JudgeGate(rules=...) left out: a fresh RuleGate()


class JudgeGate:
  """Audit by a second model: yes/no per case from one teacher-forced forward pass.

  The rules run first (`rules`, default a `RuleGate()`; None = judge everything): a case they
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

  def __init__(self, model_dir: str, *, tokenizer_dir: str | None = None,
               threshold: float = 0.0, rules: Gate | None = _DEFAULT_RULES,
               max_len: int | None = None, bucket: int = 64, batch_size: int = 16,
               dtype=None, mesh=None, template_kwargs: dict | None = None):
    threshold = float(threshold)
    if math.isnan(threshold):
      raise ValueError("JudgeGate: threshold must not be NaN")
    for name, value in (("bucket", bucket), ("batch_size", batch_size)):
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"JudgeGate: {name} must be an int >= 1, got {value!r}")
    self.threshold = threshold
    self.rules = RuleGate() if rules is _DEFAULT_RULES else rules
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

  def _prompt(self, case: RepairCase, failed: str, reference: str | None, cand: str) -> list[int]:
    text = judge_prompt(case.problem, failed, cand, reference)
    return self.tokenizer.prompt_ids(text, **self.template_kwargs)

  def prompt_ids(self, case: RepairCase, index: int = 0) -> list[int]:
    """The judge's prompt ids for `case`, cut to at most `max_len` tokens (class docstring).

    index: the case's position in its batch, for error messages.
    """
    texts = [_block(_solution_body(case.failed_text)),
             None if case.anchor_text is None else _block(_solution_body(case.anchor_text)),
             _block(_solution_body(case.candidate_text))]
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

  def scores(self, cases: Sequence[RepairCase]) -> np.ndarray:
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

  def __call__(self, cases: Sequence[RepairCase]) -> list[str | None]:
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


# ----------------------------------------------------------------------------- registry

GATES = ("rule", "judge", "none")


def make_gate(name: str, **kwargs) -> Gate:
  """The gate called `name`: 'rule' (RuleGate(**kwargs)), 'judge' (JudgeGate(**kwargs), needs
  model_dir=) or 'none' (NoGate, no options)."""
  if name == "rule":
    return RuleGate(**kwargs)
  if name == "judge":
    if not kwargs.get("model_dir"):
      raise ValueError("make_gate('judge') needs model_dir=<the judge's HF checkpoint directory>")
    return JudgeGate(**kwargs)
  if name == "none":
    if kwargs:
      raise ValueError(f"make_gate('none') takes no options, got {sorted(kwargs)}")
    return NoGate()
  raise ValueError(f"make_gate: unknown gate {name!r}; the gates are {GATES}")


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
