"""Injecting one mistake into an arithmetic trace (`inject_error`).

The generator knows every step's true value, so it can inject mistakes, build error -> repair
pairs and tell the true first wrong step of any output. For a multi-part problem
`inject_error(problem, step)` takes as `step` the global line index of an operation line; the
mistake propagates within its part only, the other parts are written right.
"""

from __future__ import annotations

import random

from si_jax.data.arith.config import OPERATORS
from si_jax.data.arith.problems import (MultiPartProblem, Problem, _apply, _parts, as_problem,
                                        operation_lines)
from si_jax.data.arith.render import (_answer_line, _part_line, _part_solution, _step_line,
                                      _true_lines)
from si_jax.data.arith.verifier import first_wrong_step
from si_jax.data.tasks import Example

# result: wrong result; operand: wrong operand copied from the prompt; carry: wrong value carried
# from the previous line; operator: wrong operator; skip: the operation is left out.
ERROR_KINDS = ("result", "operand", "carry", "operator", "skip")


def _continue(problem: Problem, k: int, value: int, style: str) -> tuple[list[str], int]:
  """Lines for operations k.. computed correctly from `value`, and the final value."""
  lines = []
  for op, b in zip(problem.ops[k:], problem.operands[k:]):
    c = _apply(op, value, b, problem.modulus)
    lines.append(_step_line(value, op, b, c, style))
    value = c
  return lines, value


def _near(x: int, modulus: int | None, spread: int = 10) -> list[int]:
  """Plausible wrong values for x: every other residue mod m, else x +- 1..spread."""
  if modulus:
    return [y for y in range(modulus) if y != x % modulus]
  return [x + d for d in range(-spread, spread + 1) if d]


def _wrong_step_candidates(problem: Problem, k: int, kind: str) -> list[tuple[tuple | None, int]]:
  """((a, op, b, c) of a wrong line for step k, or None to leave step k out; carried value)."""
  m = problem.modulus
  a, op, b, c = problem.values[k], problem.ops[k], problem.operands[k], problem.values[k + 1]
  out: list[tuple[tuple | None, int]] = []
  if kind == "result":
    out = [((a, op, b, c2), c2) for c2 in _near(c, m)]
  elif kind == "operand":
    bs = range(max(0, b - 5), b + 6)
    out = [((a, op, b2, _apply(op, a, b2, m)), _apply(op, a, b2, m)) for b2 in bs if b2 != b]
  elif kind == "carry":
    out = [((a2, op, b, _apply(op, a2, b, m)), _apply(op, a2, b, m)) for a2 in _near(a, m, 9)]
  elif kind == "operator":
    out = [((a, op2, b, _apply(op2, a, b, m)), _apply(op2, a, b, m))
           for op2 in OPERATORS if op2 != op]
  elif kind == "skip":
    out = [(None, a)]
  else:
    raise ValueError(f"inject_error: unknown kind {kind!r}; kinds are {ERROR_KINDS}")
  return out


def inject_error(problem: "AnyProblem | Example", step: int, rng: int | random.Random = 0,
                 kind: str = "result", style: str = "compact") -> str:
  """A trace with one mistake at line `step` (0-based) that propagates to a wrong answer.

  Lines before `step` are right; line `step` has the mistake (see ERROR_KINDS); the later steps
  of its part compute correctly from the wrong value, so that part's answer is wrong. For a
  single chain `step` is the operation's index; for a multi-part problem it is the global line
  index of an operation line (see `operation_lines`), and every other part is written right.
  The mistake is drawn with `rng` (a seed or a Random) among those that change the part's
  answer and make `first_wrong_step` return `step`.

  Raises:
    ValueError: step not an operation line, unknown kind, or no such mistake exists (e.g.
      leaving out an "Add 0." step, or a later "Multiply by 0." erasing every earlier mistake).
  """
  problem = as_problem(problem)
  where = {line: (i, k) for line, i, k in operation_lines(problem)}
  if isinstance(problem, Problem) and not 0 <= step < problem.num_steps:
    raise ValueError(f"inject_error: step must be in [0, {problem.num_steps}) for "
                     f"{problem.prompt!r}, got {step}")
  if step not in where:
    raise ValueError(f"inject_error: step must be the line of an operation, one of "
                     f"{sorted(where)}, for {problem.prompt!r}, got {step}")
  rng = rng if isinstance(rng, random.Random) else random.Random(f"arith-inject/{rng}")
  i, k = where[step]
  part, num_parts = _parts(problem)[i], len(_parts(problem))
  before = [line for j in range(i) for line in _part_solution(problem, j, style)]
  after = [line for j in range(i + 1, num_parts) for line in _part_solution(problem, j, style)]
  header = [_part_line(i)] if isinstance(problem, MultiPartProblem) else []
  prefix = before + header + _true_lines(part, style)[:k]
  texts = []
  for wrong, carried in _wrong_step_candidates(part, k, kind):
    line = [] if wrong is None else [_step_line(*wrong, style)]
    rest, final = _continue(part, k + 1, carried, style)
    if final == part.answer:
      continue
    text = "\n".join(prefix + line + rest + [_answer_line(final)] + after)
    if first_wrong_step(problem, text) == step:
      texts.append(text)
  if not texts:
    raise ValueError(f"inject_error: no {kind!r} mistake at step {step} of {problem.prompt!r} "
                     f"changes the final answer")
  return rng.choice(texts)
