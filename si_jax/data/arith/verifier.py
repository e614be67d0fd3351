"""Reading arithmetic model outputs: the verifier (outcome reward) and the true first wrong step.

Reading a model output: lines are steps (`segment_steps(text, "lines")`: blank lines are
separators), line k (0-based) must be step k, line n (n = number of operations) the answer.
Only the first line that starts with "Answer:" counts; anything after it is ignored.
  - `verify`: reward 1 iff that answer equals the truth (outcome only; the steps are not checked).
  - `first_wrong_step`: the first line index k whose content is not the true step k (wrong
    carried value, operator, operand or result; garbled; missing), n when all n steps are right
    but the answer line is missing, wrong or preceded by an extra line, "none" when all is
    right, "unparseable" when no line reads as a step or an answer.

Multi-part problems (headers `Part k:`, see `si_jax.data.arith`). Readers:
  - `verify`: the first m `Answer:` lines, in order, are the parts' answers (what comes after
    them is ignored); reward 1 iff all m are right ('missing_answer' when fewer than m).
  - `first_wrong_step`: as above over the whole trace: the first line that is not the expected
    header, step or answer line; a header line is wrong when missing or misnumbered.
  - `line_parts`: the part each line of a trace belongs to (by its headers), to tell the
    mistaken part's lines from the others.
"""

from __future__ import annotations

import re

from si_jax.data.arith.problems import AnyProblem, MultiPartProblem, Problem, _parts, as_problem
from si_jax.data.arith.render import _ANSWER_PREFIX
from si_jax.data.steps import Step, segment_steps
from si_jax.data.tasks import Example
from si_jax.verify.types import Verdict

STEP_MODE = "lines"

_STEP_RE = re.compile(r"(-?[0-9]+)\s*([-+*])\s*(-?[0-9]+)\s*=\s*(-?[0-9]+)")
_PART_RE = re.compile(r"Part\s*([0-9]+)\s*:")
_INT_RE = re.compile(r"-?[0-9]+")
_MAX_DIGITS = 4000  # Python refuses int() of > 4300 digits; longer numbers are just wrong.


def _to_int(s: str) -> int | None:
  return int(s) if len(s) <= _MAX_DIGITS else None


def _read_line(line: str) -> tuple:
  """('step', a, op, b, c) | ('answer', value or None) | ('part', 0-based part or None) |
  ('other',) for a stripped line."""
  if line.startswith(_ANSWER_PREFIX):
    rest = line[len(_ANSWER_PREFIX):].strip()
    return ("answer", _to_int(rest) if _INT_RE.fullmatch(rest) else None)
  m = _STEP_RE.fullmatch(line)
  if m:
    a, op, b, c = m.groups()
    return ("step", _to_int(a), op, _to_int(b), _to_int(c))
  m = _PART_RE.fullmatch(line)
  if m:
    k = _to_int(m.group(1))
    return ("part", k - 1 if k is not None else None)
  return ("other",)


def _expected_lines(problem: AnyProblem) -> list[tuple]:
  """What `_read_line` gives for each line of the correct trace."""
  out = []
  for i, part in enumerate(_parts(problem)):
    if isinstance(problem, MultiPartProblem):
      out.append(("part", i))
    v = part.values
    out += [("step", v[k], op, b, v[k + 1])
            for k, (op, b) in enumerate(zip(part.ops, part.operands))]
    out.append(("answer", part.answer))
  return out


def segment(text: str) -> list[Step]:
  """The steps of an arithmetic trace: one per non-blank line (the answer line included)."""
  return segment_steps(text, STEP_MODE)


def first_wrong_step(problem: "AnyProblem | Example", text: str) -> int | str:
  """Index of the first wrong line of `text` (see the module docstring), "none" or "unparseable".

  Indices refer to `segment(text)`; over the whole trace for a multi-part problem. Never raises
  on model output.
  """
  problem = as_problem(problem)
  if not isinstance(text, str):
    return "unparseable"
  # Lines after the last expected line (the last answer line) are never looked at.
  lines = [_read_line(s.text.strip()) for s in segment(text)]
  readable = ("step", "answer", "part") if isinstance(problem, MultiPartProblem) else (
      "step", "answer")  # a single chain's language has no headers
  if all(line[0] not in readable for line in lines):
    return "unparseable"
  for k, want in enumerate(_expected_lines(problem)):
    if k >= len(lines) or lines[k] != want:
      return k
  return "none"


def _stated_answers(text: str, m: int) -> list[int | None]:
  """The values of the first m `Answer:` lines of `text` (None where unreadable)."""
  out = []
  for line in text.split("\n"):
    line = line.strip()
    if line.startswith(_ANSWER_PREFIX):
      out.append(_read_line(line)[1])
      if len(out) == m:
        break
  return out


def verify(problem: "AnyProblem | Example", text: str) -> Verdict:
  """Reward 1 iff the first `Answer:` line states the true final value (outcome only); for m
  parts, iff the first m `Answer:` lines state the m parts' values in order ('missing_answer'
  when there are fewer)."""
  problem = as_problem(problem)
  if not isinstance(text, str):
    return Verdict(0.0, "no_answer")
  want = tuple(part.answer for part in _parts(problem))
  got = _stated_answers(text, len(want))
  if not got:
    return Verdict(0.0, "no_answer")
  if len(got) < len(want):
    return Verdict(0.0, "missing_answer")
  return Verdict(1.0, "correct") if tuple(got) == want else Verdict(0.0, "wrong_answer")


def line_parts(problem: "AnyProblem | Example", text: str) -> list[int | None]:
  """The 0-based part each line of `text` (each step of `segment(text)`) belongs to.

  A single chain has one part: every line is part 0. For a multi-part problem a line belongs
  to the part of the last `Part k:` header at or above it; None before any header or under a
  header that names no part of the problem. Never raises on model output.
  """
  problem = as_problem(problem)
  if not isinstance(text, str):
    return []
  steps = segment(text)
  if isinstance(problem, Problem):
    return [0] * len(steps)
  out, current = [], None
  for s in steps:
    line = _read_line(s.text.strip())
    if line[0] == "part":
      current = line[1] if line[1] is not None and 0 <= line[1] < len(problem.parts) else None
    out.append(current)
  return out
