"""Math answer checking: answer extraction, then math-verify in a pool with hard timeouts.

The path of one completion:
  1. In the trainer process, cheap and linear: read the last `max_chars` characters, extract the
     final answer (`\\boxed{...}`, `#### x`, `Answer: x`); nothing found -> 'no_answer'. An
     answer longer than `max_answer_chars` or with braces nested deeper than `max_depth` ->
     'parse_error' (LaTeX parsing of deep nesting is exponential in practice).
  2. In a `WorkerPool` worker: `math_verify.parse` of gold and answer, then `math_verify.verify`.
     math-verify's own SIGALRM timeouts are disabled there (`parsing_timeout=None`,
     `timeout_seconds=None`): they would swallow a timeout as a plain 'wrong' and their
     `signal.alarm(0)` would cancel the pool's soft timer. The pool's deadline is the hard
     guarantee (a huge power such as 9^{9^{9^9}} hangs in C and gets its worker killed).

Reasons: 'correct', 'wrong_answer', 'no_answer', 'timeout', 'parse_error', 'gold_parse_error',
'crashed'.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Sequence

from si_jax.verify.pool import WorkerPool
from si_jax.verify.types import Verdict

__all__ = ["extract_boxed", "extract_answer", "brace_depth", "MathVerifier"]

_BOXED_COMMANDS = ("\\boxed", "\\fbox")


def _last_command(text: str) -> tuple[int, str] | None:
  """Start of the last `\\boxed` / `\\fbox` not followed by a letter (not `\\boxedx`)."""
  end = len(text)
  while True:
    best = max(((text.rfind(c, 0, end), c) for c in _BOXED_COMMANDS), key=lambda t: t[0])
    if best[0] < 0:
      return None
    after = best[0] + len(best[1])
    if after >= len(text) or not text[after].isalpha():
      return best
    end = best[0] + len(best[1]) - 1  # a longer macro name: look further left


def extract_boxed(text: str) -> str | None:
  """Content of the LAST `\\boxed{...}` or `\\fbox{...}` in text, or None.

  Braces are balanced by one left-to-right scan with a counter (no recursion, linear time);
  escaped braces `\\{ \\}` do not count. If the last box never closes (a truncated generation),
  the result is None: an earlier, abandoned answer is not used. `\\boxed 5` (no braces) gives
  the token after the space.
  """
  if not text:
    return None
  found = _last_command(text)
  if found is None:
    return None
  i = found[0] + len(found[1])
  n = len(text)
  while i < n and text[i] in " \t":
    i += 1
  if i >= n:
    return None
  if text[i] != "{":
    m = re.match(r"[^\s$]+", text[i:i + 1000])  # `\boxed 5`
    return m.group(0) if m else None
  depth, j = 0, i
  while j < n:
    c = text[j]
    if c == "\\":
      j += 2
      continue
    if c == "{":
      depth += 1
    elif c == "}":
      depth -= 1
      if depth == 0:
        return text[i + 1:j]
    j += 1
  return None


_GSM8K_RE = re.compile(r"^[ \t]*####[ \t]*(\S[^\n]*)$", re.MULTILINE)
_ANSWER_RE = re.compile(
    r"(?:final answer|answer)(?: is)?[ \t]*[:：]?[ \t]*(\S[^\n]*)$",
    re.IGNORECASE | re.MULTILINE)


def _clean_line_answer(ans: str) -> str:
  ans = ans.strip()
  if ans.startswith("$") and ans.endswith("$") and len(ans) >= 2:
    ans = ans.strip("$").strip()
  elif ans.startswith("\\(") and ans.endswith("\\)"):
    ans = ans[2:-2].strip()
  return ans.rstrip(".").strip()


def extract_answer(text: str) -> str | None:
  """The final answer of a completion, or None.

  In order: the last `\\boxed{}`/`\\fbox{}` (if there is a box anywhere, it decides, even when
  unbalanced); else the last GSM8K line `#### x`; else the last `Answer: x`,
  `The (final) answer is x` line. Surrounding `$...$` and a final period are removed.
  """
  if not text:
    return None
  if _last_command(text) is not None:
    return extract_boxed(text)
  last = None
  for m in _GSM8K_RE.finditer(text):
    last = m
  if last is None:
    for m in _ANSWER_RE.finditer(text):
      last = m
  if last is None:
    return None
  ans = _clean_line_answer(last.group(1))
  return ans or None


def brace_depth(text: str) -> int:
  """Deepest `{`/`(`/`[` nesting in text (linear, no recursion)."""
  depth = best = 0
  for c in text:
    if c in "{([":
      depth += 1
      best = max(best, depth)
    elif c in "})]":
      depth = max(0, depth - 1)
  return best


_SCI_RE = re.compile(r"^\s*([+-]?\d+(?:\.\d*)?|[+-]?\.\d+)[eE]([+-]?\d+)\s*$")


def _normalize(ans: str) -> str:
  """Rewrites what math-verify's LaTeX parser misreads: `1.5e3` (read as 1.5*e*3)."""
  m = _SCI_RE.match(ans)
  if m:
    return f"{m.group(1)}\\times 10^{{{int(m.group(2))}}}"
  return ans


# ---------------------------------------------------------------------------------------------
# Worker side (module-level so that the pool can pickle it by reference).


def _worker_init() -> None:
  # math-verify logs a warning per call when its timeouts are disabled, and at debug level the
  # full input; neither belongs in a training log.
  logging.getLogger("math_verify").setLevel(logging.ERROR)
  import math_verify  # pylint: disable=import-outside-toplevel,unused-import


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str):
  import math_verify  # pylint: disable=import-outside-toplevel
  text = gold if "\\boxed" in gold else f"\\boxed{{{gold}}}"
  return math_verify.parse(
      text,
      extraction_config=[math_verify.LatexExtractionConfig(), math_verify.ExprExtractionConfig()],
      parsing_timeout=None)


def _check(pair: tuple[str, str]) -> str:
  """Reason for (gold, extracted answer); runs in a worker."""
  import math_verify  # pylint: disable=import-outside-toplevel
  gold, answer = pair
  gold_parsed = _parse_gold(gold)
  if not gold_parsed:
    return "gold_parse_error"
  pred = math_verify.parse(
      f"\\boxed{{{_normalize(answer)}}}",
      extraction_config=[math_verify.LatexExtractionConfig(), math_verify.ExprExtractionConfig()],
      parsing_timeout=None)
  if not pred:
    return "parse_error"
  ok = math_verify.verify(gold_parsed, pred, timeout_seconds=None)
  return "correct" if ok else "wrong_answer"


# ---------------------------------------------------------------------------------------------


class MathVerifier:
  """Scores math completions against reference answers.

  Args:
    num_workers: pool processes.
    timeout_s: hard limit per answer (parse + verify).
    max_chars: only the last max_chars characters of a completion are read.
    max_answer_chars: a longer extracted answer is a 'parse_error' (never reaches sympy).
    max_depth: an answer with brackets nested deeper is a 'parse_error'.
    max_tasks_per_worker: worker recycling period.
  """

  def __init__(self, num_workers: int = 2, timeout_s: float = 5.0, max_chars: int = 200_000,
               max_answer_chars: int = 1000, max_depth: int = 16,
               max_tasks_per_worker: int = 500):
    if timeout_s <= 0:
      raise ValueError(f"MathVerifier timeout_s must be > 0, got {timeout_s}")
    if max_chars < 1 or max_answer_chars < 1 or max_depth < 1:
      raise ValueError("MathVerifier max_chars, max_answer_chars and max_depth must be >= 1, got "
                       f"{max_chars}, {max_answer_chars}, {max_depth}")
    self.timeout_s = float(timeout_s)
    self.max_chars = max_chars
    self.max_answer_chars = max_answer_chars
    self.max_depth = max_depth
    self._pool = WorkerPool(num_workers, max_tasks_per_worker=max_tasks_per_worker,
                            initializer=_worker_init, preload=("math_verify",))

  @property
  def pool(self) -> WorkerPool:
    return self._pool

  def prefilter(self, completion: str, answer: str) -> tuple[str, str] | Verdict:
    """The (gold, answer) pair to send to the pool, or the verdict when none is needed."""
    if not isinstance(completion, str) or not completion:
      return Verdict(0.0, "no_answer")
    text = completion[-self.max_chars:]
    extracted = extract_answer(text)
    if extracted is None or not extracted.strip():
      return Verdict(0.0, "no_answer")
    extracted = extracted.strip()
    if len(extracted) > self.max_answer_chars or brace_depth(extracted) > self.max_depth:
      return Verdict(0.0, "parse_error")
    return (str(answer).strip(), extracted)

  def score(self, completions: Sequence[str], answers: Sequence[str]) -> list[Verdict]:
    """Verdict for completions[i] against the reference answers[i]; never raises on model output.

    Answers are raw reference strings (`\\frac{1}{2}`, `5`, `[0, 1)`), optionally boxed.
    """
    if len(completions) != len(answers):
      raise ValueError(f"MathVerifier.score: {len(completions)} completions but "
                       f"{len(answers)} answers")
    verdicts: list[Verdict | None] = [None] * len(completions)
    todo, pairs = [], []
    for i, (c, a) in enumerate(zip(completions, answers)):
      pre = self.prefilter(c, a)
      if isinstance(pre, Verdict):
        verdicts[i] = pre
      else:
        todo.append(i)
        pairs.append(pre)
    if pairs:
      for i, (ok, value) in zip(todo, self._pool.map(_check, pairs, self.timeout_s)):
        if ok:
          reason = value
        elif value in ("timeout", "crashed"):
          reason = value
        else:  # an exception inside math-verify
          reason = "parse_error"
        verdicts[i] = Verdict(1.0 if reason == "correct" else 0.0, reason)
    return verdicts  # type: ignore[return-value]

  def close(self) -> None:
    self._pool.close()

  def __enter__(self) -> "MathVerifier":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
