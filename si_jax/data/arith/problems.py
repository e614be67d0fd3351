"""Arithmetic problems: a chain of operations (Problem) or m of them (MultiPartProblem).

A problem is a start value and a chain of operations (+, -, *), optionally modulo m; it knows
every step's true value. Also the layout of a problem's correct trace: which lines belong to
which part (`part_lines`) and which lines are operations (`operation_lines`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

from si_jax.data.arith.config import OPERATORS
from si_jax.data.tasks import Example

_OP_PHRASES = {"+": "Add {}.", "-": "Subtract {}.", "*": "Multiply by {}."}


def _apply(op: str, a: int, b: int, modulus: int | None) -> int:
  if op == "+":
    c = a + b
  elif op == "-":
    c = a - b
  elif op == "*":
    c = a * b
  else:
    raise ValueError(f"arith: unknown operator {op!r}; operators are {OPERATORS}")
  return c % modulus if modulus else c


@dataclasses.dataclass(frozen=True)
class Problem:
  """A start value and a chain of operations. values[k] is the value before operation k."""

  start: int
  ops: tuple[str, ...]
  operands: tuple[int, ...]
  modulus: int | None = None

  def __post_init__(self):
    object.__setattr__(self, "ops", tuple(self.ops))
    object.__setattr__(self, "operands", tuple(int(b) for b in self.operands))
    if len(self.ops) != len(self.operands) or not self.ops:
      raise ValueError(f"Problem: need as many ops as operands (>= 1), got ops={self.ops} "
                       f"operands={self.operands}")
    bad = [op for op in self.ops if op not in OPERATORS]
    if bad:
      raise ValueError(f"Problem: unknown operators {bad}; operators are {OPERATORS}")

  @property
  def num_steps(self) -> int:
    return len(self.ops)

  @functools.cached_property
  def values(self) -> tuple[int, ...]:
    """[num_steps + 1] true values: values[0] = start, values[k + 1] = values[k] op_k b_k."""
    vals = [self.start % self.modulus if self.modulus else self.start]
    for op, b in zip(self.ops, self.operands):
      vals.append(_apply(op, vals[-1], b, self.modulus))
    return tuple(vals)

  @property
  def answer(self) -> int:
    return self.values[-1]

  @property
  def prompt(self) -> str:
    return " ".join(_mod_phrase(self.modulus) + [self.chain_text])

  @property
  def chain_text(self) -> str:
    """The chain in words, without the modulus: `Start at 7. Add 5. Multiply by 3.`"""
    return " ".join([f"Start at {self.values[0]}."] +
                    [_OP_PHRASES[op].format(b) for op, b in zip(self.ops, self.operands)])

  def to_meta(self) -> dict[str, Any]:
    return {"start": self.values[0], "ops": self.ops, "operands": self.operands,
            "modulus": self.modulus, "values": self.values, "num_steps": self.num_steps}

  @classmethod
  def from_meta(cls, meta: Mapping[str, Any]) -> "Problem":
    try:
      return cls(int(meta["start"]), tuple(meta["ops"]), tuple(meta["operands"]),
                 meta.get("modulus"))
    except KeyError as e:
      raise ValueError(f"arith: example meta lacks key {e.args[0]!r}; it holds {sorted(meta)}")


def _mod_phrase(modulus: int | None) -> list[str]:
  return [f"Mod {modulus}."] if modulus else []


@dataclasses.dataclass(frozen=True)
class MultiPartProblem:
  """m >= 2 independent chains under one modulus; every part's answer is required.

  parts[i] is part i + 1 of the prompt (`Part 1: ...`); each is a Problem with the shared
  modulus. A one-part problem is a plain Problem (the single-chain language has no headers).
  """

  parts: tuple[Problem, ...]

  def __post_init__(self):
    object.__setattr__(self, "parts", tuple(self.parts))
    if len(self.parts) < 2 or not all(isinstance(p, Problem) for p in self.parts):
      raise ValueError(f"MultiPartProblem: need >= 2 Problems (one part is a Problem), got "
                       f"{self.parts!r}")
    moduli = {p.modulus for p in self.parts}
    if len(moduli) != 1:
      raise ValueError(f"MultiPartProblem: the parts must share one modulus, got {moduli}")

  @property
  def modulus(self) -> int | None:
    return self.parts[0].modulus

  @property
  def num_steps(self) -> int:
    """Operations over all parts."""
    return sum(p.num_steps for p in self.parts)

  @property
  def answer(self) -> tuple[int, ...]:
    """Every part's answer, in order."""
    return tuple(p.answer for p in self.parts)

  @property
  def prompt(self) -> str:
    return " ".join(_mod_phrase(self.modulus) +
                    [f"Part {i + 1}: {p.chain_text}" for i, p in enumerate(self.parts)])

  def to_meta(self) -> dict[str, Any]:
    return {"parts": tuple(p.to_meta() for p in self.parts), "modulus": self.modulus,
            "num_steps": self.num_steps}

  @classmethod
  def from_meta(cls, meta: Mapping[str, Any]) -> "MultiPartProblem":
    return cls(tuple(Problem.from_meta(part) for part in meta["parts"]))


AnyProblem = Problem | MultiPartProblem


def as_problem(problem: "AnyProblem | Example") -> AnyProblem:
  """A (multi-part) problem, or the one an arith Example's meta describes."""
  if isinstance(problem, (Problem, MultiPartProblem)):
    return problem
  if isinstance(problem, Example):
    if "parts" in problem.meta:
      return MultiPartProblem.from_meta(problem.meta)
    return Problem.from_meta(problem.meta)
  raise TypeError(f"arith: expected a Problem or an arith Example, got {type(problem).__name__}")


def _parts(problem: AnyProblem) -> tuple[Problem, ...]:
  return problem.parts if isinstance(problem, MultiPartProblem) else (problem,)


def part_lines(problem: "AnyProblem | Example") -> list[range]:
  """The global line indices of each part in the correct trace (header, steps, answer line).

  A single chain is one part holding every line: [range(0, num_steps + 1)].
  """
  problem = as_problem(problem)
  if isinstance(problem, Problem):
    return [range(problem.num_steps + 1)]
  out, start = [], 0
  for part in problem.parts:
    out.append(range(start, start + part.num_steps + 2))
    start += part.num_steps + 2
  return out


def operation_lines(problem: "AnyProblem | Example") -> list[tuple[int, int, int]]:
  """(global line, part, step within the part) of every operation line of the correct trace:
  the lines a mistake can be injected at."""
  problem = as_problem(problem)
  first = 0 if isinstance(problem, Problem) else 1  # the line after the part's header
  return [(lines[first + k], i, k) for i, (part, lines)
          in enumerate(zip(_parts(problem), part_lines(problem))) for k in range(part.num_steps)]
