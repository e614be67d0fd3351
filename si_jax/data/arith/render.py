"""Writing correct arithmetic traces (`solve`) and their lines, in a style.

Solutions come in two styles that differ only in spacing: 'compact' (`7+5=2`, the default) and
'spaced' (`7 + 5 = 2`). Readers accept any spacing. With one style a problem has exactly one
correct trace, so the minimal repair of a failed trace IS every correct sibling (the anchor):
copying the anchor is then a perfect repair. With `styles=("compact", "spaced")` a sibling is
usually spelled otherwise than the failed trace, so an audit gate / edit penalty can tell
"fixed the failed trace" from "copied the anchor" (mixed styles slow SFT down, hence the default).
Without a modulus values are plain integers and may be negative (`3-5=-2`).
"""

from __future__ import annotations

from si_jax.data.arith.config import STYLES
from si_jax.data.arith.problems import AnyProblem, MultiPartProblem, Problem, _parts, as_problem
from si_jax.data.tasks import Example

_ANSWER_PREFIX = "Answer:"


def _step_line(a: int, op: str, b: int, c: int, style: str) -> str:
  if style == "compact":
    return f"{a}{op}{b}={c}"
  if style == "spaced":
    return f"{a} {op} {b} = {c}"
  raise ValueError(f"arith: unknown style {style!r}; styles are {STYLES}")


def _answer_line(value: int) -> str:
  return f"{_ANSWER_PREFIX} {value}"


def _part_line(part: int) -> str:
  """The header of 0-based part `part`: `Part 1:` for the first."""
  return f"Part {part + 1}:"


def _true_lines(problem: Problem, style: str) -> list[str]:
  v = problem.values
  return [_step_line(v[k], op, b, v[k + 1], style)
          for k, (op, b) in enumerate(zip(problem.ops, problem.operands))]


def _part_solution(problem: AnyProblem, i: int, style: str) -> list[str]:
  """The correct lines of part i: its header (multi-part only), steps and answer line."""
  part = _parts(problem)[i]
  header = [_part_line(i)] if isinstance(problem, MultiPartProblem) else []
  return header + _true_lines(part, style) + [_answer_line(part.answer)]


def solve(problem: "AnyProblem | Example", style: str = "compact") -> str:
  """The correct trace: one line per operation, then `Answer: <value>` (per part, after its
  `Part k:` header, for a multi-part problem)."""
  problem = as_problem(problem)
  return "\n".join(line for i in range(len(_parts(problem)))
                   for line in _part_solution(problem, i, style))
