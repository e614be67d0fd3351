"""Synthetic multi-step arithmetic: the task every CPU experiment trains on.

A problem is a start value and a chain of operations (+, -, *), optionally modulo m. The
generator knows every step's true value, so it can inject mistakes, build error -> repair pairs
and tell the true first wrong step of any output.

Language (fixed; all of it is spelled with `si_jax.tokenizer.DEFAULT_WORDS` and digits):

  prompt    Mod 10. Start at 7. Add 5. Multiply by 3. Subtract 4.
            ("Mod m. " only when a modulus is set; operands are written as drawn)
  solution  7+5=2          one line per operation: <value> <op> <operand> = <new value>,
            2*3=6          every value already reduced mod m (the modulus is stated once in the
            6-4=2          prompt, never in the lines), so a tiny model only learns small tables
            Answer: 2      then the final answer line

Solutions come in two styles that differ only in spacing: 'compact' (`7+5=2`, the default) and
'spaced' (`7 + 5 = 2`). Readers accept any spacing. With one style a problem has exactly one
correct trace, so the minimal repair of a failed trace IS every correct sibling (the anchor):
copying the anchor is then a perfect repair. With `styles=("compact", "spaced")` a sibling is
usually spelled otherwise than the failed trace, so an audit gate / edit penalty can tell
"fixed the failed trace" from "copied the anchor" (mixed styles slow SFT down, hence the default).
Without a modulus values are plain integers and may be negative (`3-5=-2`).

Reading a model output: lines are steps (`segment_steps(text, "lines")`: blank lines are
separators), line k (0-based) must be step k, line n (n = number of operations) the answer.
Only the first line that starts with "Answer:" counts; anything after it is ignored.
  - `verify`: reward 1 iff that answer equals the truth (outcome only; the steps are not checked).
  - `first_wrong_step`: the first line index k whose content is not the true step k (wrong
    carried value, operator, operand or result; garbled; missing), n when all n steps are right
    but the answer line is missing, wrong or preceded by an extra line, "none" when all is
    right, "unparseable" when no line reads as a step or an answer.

Splits are disjoint: a problem belongs to 'test' iff a hash of its prompt falls in the first
`test_fraction` of [0, 1), so no test problem is ever a training problem. Example i of a split
is drawn from an RNG seeded by (seed, split, i): random access and reproducible.

With `invertible_steps` (default) multiplications only use operands coprime with the modulus
(nonzero without one), so every step is a bijection and a single mistake always changes the
final answer: outcome reward and process correctness then agree for single-error traces.

Multi-part problems (`ArithConfig(parts=m)`, m >= 2; m = 1 is the language above, unchanged):
m independent chains, each drawn like the single chain (its own start, operations and length),
under one shared modulus; reward 1 only when every part's answer is right. A slip changes one
part, so a failed trace carries the other m - 1 parts' correct work: where outcome credit and
token credit should part ways.

  prompt    Mod 10. Part 1: Start at 7. Add 5. Multiply by 3. Part 2: Start at 3. Multiply by 3.
  solution  Part 1:        per part: a header line, its step lines (as above), its answer line
            7+5=2
            2*3=6
            Answer: 6
            Part 2:
            3*3=9
            Answer: 9

Why this layout and not one final `Answer: 6, 9` line: every line then belongs to exactly one
part, so a mistake and everything it changes (the later steps of its part, its part's answer
line) stay inside that part's lines; lines are still steps, and `first_wrong_step` is the index
of the first wrong line of the whole trace (headers and answer lines included). A shared final
line would mix the parts, and writing it would make a tiny model recall part 1's value from far
back; here every answer line copies the value just above it, as in the single chain. The header
repeats the prompt's `Part k:` so the model can look up the part it starts by matching those
tokens (`Part` is one token of `si_jax.tokenizer.DEFAULT_WORDS`). Readers:
  - `verify`: the first m `Answer:` lines, in order, are the parts' answers (what comes after
    them is ignored); reward 1 iff all m are right ('missing_answer' when fewer than m).
  - `first_wrong_step`: as above over the whole trace: the first line that is not the expected
    header, step or answer line; a header line is wrong when missing or misnumbered.
  - `line_parts`: the part each line of a trace belongs to (by its headers), to tell the
    mistaken part's lines from the others.
  - `inject_error(problem, step)`: `step` is the global line index of an operation line; the
    mistake propagates within its part only, the other parts are written right.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import hashlib
import math
import random
import re
from typing import Any, Mapping, NamedTuple, Sequence

from si_jax.data.steps import Step, segment_steps
from si_jax.data.tasks import Example, Task, register
from si_jax.verify.types import Verdict

__all__ = [
    "OPERATORS", "STYLES", "ERROR_KINDS", "SPLITS", "ArithConfig", "Problem", "MultiPartProblem",
    "ArithDataset", "SFTTrace", "RepairPair", "as_problem", "solve", "inject_error",
    "first_wrong_step", "verify", "line_parts", "part_lines", "operation_lines", "sft_traces",
    "repair_pairs", "segment", "ArithTask",
]

OPERATORS = ("+", "-", "*")
STYLES = ("compact", "spaced")
# result: wrong result; operand: wrong operand copied from the prompt; carry: wrong value carried
# from the previous line; operator: wrong operator; skip: the operation is left out.
ERROR_KINDS = ("result", "operand", "carry", "operator", "skip")
SPLITS = ("train", "test")
STEP_MODE = "lines"

_OP_PHRASES = {"+": "Add {}.", "-": "Subtract {}.", "*": "Multiply by {}."}
_STEP_RE = re.compile(r"(-?[0-9]+)\s*([-+*])\s*(-?[0-9]+)\s*=\s*(-?[0-9]+)")
_ANSWER_PREFIX = "Answer:"
_PART_RE = re.compile(r"Part\s*([0-9]+)\s*:")
_INT_RE = re.compile(r"-?[0-9]+")
_MAX_DIGITS = 4000  # Python refuses int() of > 4300 digits; longer numbers are just wrong.
_MAX_DRAWS = 10_000


def _pair(value, name: str) -> tuple[int, int]:
  if isinstance(value, int) and not isinstance(value, bool):
    value = (value, value)
  try:
    lo, hi = (int(v) for v in value)
  except (TypeError, ValueError):
    raise ValueError(f"ArithConfig.{name} must be an int or a (min, max) pair, got {value!r}")
  if lo > hi:
    raise ValueError(f"ArithConfig.{name} must have min <= max, got {value!r}")
  return lo, hi


@dataclasses.dataclass(frozen=True)
class ArithConfig:
  """Difficulty and size of the arithmetic task.

  num_steps: chain length, an int or an inclusive (min, max) range drawn uniformly.
  operand_range: inclusive (min, max) of the operands (>= 0).
  start_range: inclusive (min, max) of the start value; None = (0, modulus - 1) with a modulus,
    else operand_range.
  operators: the operations used, a subset of '+', '-', '*'.
  modulus: every value is taken mod m (>= 2); None = plain integers.
  invertible_steps: multiply only by operands coprime with the modulus (nonzero without one).
  styles: solution spellings used by generated traces ('compact', 'spaced'). One style makes
    the anchor of every repair pair identical to its repair (the language has one correct
    trace per problem); two make anchor copying visible at some cost in learning speed.
  seed: seeds every split.
  train_size / test_size: number of examples of each split.
  test_fraction: share of the problem space reserved for the test split (by prompt hash).
  parts: m >= 1 independent chains per problem, all answers required (reward 1 only when every
    part is right). Each part draws its own start, operations and length (num_steps is per
    part); the modulus is shared. 1 (default) is the single-chain task, unchanged; m >= 2 writes
    `Part k:` sections (see the module docstring), so prompts and solutions grow about m-fold.

  The defaults (2-4 steps mod 10, operands 0..5, start 0..9, compact) are sized for a CPU run:
  a 2-layer d=128 model trained by SFT on correct traces (batch 32, AdamW 3e-3) reached 41%
  greedy test accuracy after 750 steps and 51% after 1000; with operands 0..9 it was at 21%
  after 1150 steps (the arithmetic tables, not the format, are what takes long to learn).
  """

  num_steps: Any = (2, 4)
  operand_range: Any = (0, 5)
  start_range: Any = None
  operators: Sequence[str] = OPERATORS
  modulus: int | None = 10
  invertible_steps: bool = True
  styles: Sequence[str] = ("compact",)
  seed: int = 0
  train_size: int = 20000
  test_size: int = 500
  test_fraction: float = 0.1
  parts: int = 1

  def __post_init__(self):
    put = functools.partial(object.__setattr__, self)
    put("num_steps", _pair(self.num_steps, "num_steps"))
    put("operand_range", _pair(self.operand_range, "operand_range"))
    if self.start_range is None:
      put("start_range", (0, self.modulus - 1) if isinstance(self.modulus, int) and
          self.modulus >= 2 else self.operand_range)
    else:
      put("start_range", _pair(self.start_range, "start_range"))
    put("operators", tuple(self.operators))
    put("styles", tuple(self.styles))
    errors = []
    if self.num_steps[0] < 1:
      errors.append(f"num_steps must be >= 1, got {self.num_steps}")
    if self.operand_range[0] < 0:
      errors.append(f"operand_range must be >= 0, got {self.operand_range}")
    if self.start_range[0] < 0:
      errors.append(f"start_range must be >= 0, got {self.start_range}")
    if not self.operators or any(op not in OPERATORS for op in self.operators):
      errors.append(f"operators must be a non-empty subset of {OPERATORS}, got {self.operators}")
    if self.modulus is not None and (isinstance(self.modulus, bool) or
                                     not isinstance(self.modulus, int) or self.modulus < 2):
      errors.append(f"modulus must be None or an int >= 2, got {self.modulus!r}")
    if not self.styles or any(s not in STYLES for s in self.styles):
      errors.append(f"styles must be a non-empty subset of {STYLES}, got {self.styles}")
    for name in ("train_size", "test_size"):
      if getattr(self, name) < 0:
        errors.append(f"{name} must be >= 0, got {getattr(self, name)}")
    if not 0.0 < self.test_fraction < 1.0:
      errors.append(f"test_fraction must be in (0, 1), got {self.test_fraction}")
    if isinstance(self.parts, bool) or not isinstance(self.parts, int) or self.parts < 1:
      errors.append(f"parts must be an int >= 1, got {self.parts!r}")
    if not errors and "*" in self.operators and not self.operand_choices("*"):
      errors.append(f"operators include '*' but no operand in {self.operand_range} is "
                    f"{'coprime with ' + str(self.modulus) if self.modulus else 'nonzero'} "
                    f"(invertible_steps=True)")
    if errors:
      raise ValueError("ArithConfig: " + "; ".join(errors))

  def operand_choices(self, op: str) -> tuple[int, ...]:
    """The operands an `op` step may draw."""
    lo, hi = self.operand_range
    choices = range(lo, hi + 1)
    if op == "*" and self.invertible_steps:
      if self.modulus is None:
        return tuple(b for b in choices if b != 0)
      return tuple(b for b in choices if math.gcd(b, self.modulus) == 1)
    return tuple(choices)

  def size(self, split: str) -> int:
    _check_split(split)
    return self.train_size if split == "train" else self.test_size


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"arith: unknown split {split!r}; splits are {SPLITS}")


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


# ----------------------------------------------------------------------------- writing traces


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


# ----------------------------------------------------------------------------- reading outputs


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


# ----------------------------------------------------------------------------- generation


def _bucket(prompt: str) -> float:
  """A fixed pseudo-random number in [0, 1) per problem; < test_fraction means 'test'."""
  digest = hashlib.blake2b(prompt.encode("utf-8"), digest_size=8).digest()
  return int.from_bytes(digest, "big") / 2.0**64


def _draw_chain(config: ArithConfig, rng: random.Random) -> Problem:
  n = rng.randint(*config.num_steps)
  ops = tuple(rng.choice(config.operators) for _ in range(n))
  operands = tuple(rng.choice(config.operand_choices(op)) for op in ops)
  return Problem(rng.randint(*config.start_range), ops, operands, config.modulus)


def _draw_problem(config: ArithConfig, rng: random.Random) -> AnyProblem:
  if config.parts == 1:
    return _draw_chain(config, rng)
  return MultiPartProblem(tuple(_draw_chain(config, rng) for _ in range(config.parts)))


def _draw_in_split(config: ArithConfig, split: str, key: str) -> AnyProblem:
  """Draws problems from the RNG seeded by `key` until one belongs to `split`."""
  rng = random.Random(key)
  for _ in range(_MAX_DRAWS):
    problem = _draw_problem(config, rng)
    if (_bucket(problem.prompt) < config.test_fraction) == (split == "test"):
      return problem
  raise ValueError(f"arith: {_MAX_DRAWS} draws gave no {split!r} problem; the problem space of "
                   f"{config} is too small for test_fraction={config.test_fraction}")


def _example(problem: AnyProblem, example_id: str) -> Example:
  meta = problem.to_meta()
  meta["solution"] = solve(problem)
  return Example(id=example_id, prompt=problem.prompt, answer=problem.answer, meta=meta)


class ArithDataset(collections.abc.Sequence):
  """The examples of one split, generated on access from (config.seed, split, index)."""

  def __init__(self, config: ArithConfig, split: str):
    _check_split(split)
    self.config = config
    self.split = split

  def __len__(self) -> int:
    return self.config.size(self.split)

  def problem(self, index: int) -> AnyProblem:
    n = len(self)
    if not -n <= index < n:
      raise IndexError(f"ArithDataset({self.split!r}): index {index} out of range [0, {n})")
    index %= n
    return _draw_in_split(self.config, self.split, f"arith/{self.config.seed}/{self.split}/{index}")

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    index = int(index)
    problem = self.problem(index)
    return _example(problem, f"arith/{self.split}/{index % len(self)}")


class SFTTrace(NamedTuple):
  """A cold-start trace; first_wrong is the injected error's line (None for a correct trace)."""

  example: Example
  trace: str
  first_wrong: int | None


@dataclasses.dataclass(frozen=True)
class RepairPair:
  """An error -> repair training pair (DESIGN 5.2 step 8).

  failed: a trace with one mistake at line first_wrong (0-based) that propagates (within its
    part: the other parts of a multi-part problem are right).
  anchor: a correct solution (in another style than failed where the config has two).
  repaired: the minimal repair of failed: the same lines before first_wrong, right from there
    (what the repair mode should answer; `si_jax.si.prompts.repair_prompt` renders its prompt).
  """

  example: Example
  failed: str
  anchor: str
  repaired: str
  first_wrong: int
  kind: str


def _step_weights(step_dist, lines: Sequence[int]) -> list[float]:
  """The weight of each operation line (global line indices `lines`, ascending)."""
  n = len(lines)
  if isinstance(step_dist, str):
    if step_dist == "uniform":
      return [1.0] * n
    if step_dist == "early":
      return [float(n - k) for k in range(n)]
    if step_dist == "late":
      return [float(k + 1) for k in range(n)]
    raise ValueError(f"arith: step_dist must be 'uniform', 'early', 'late' or a list of "
                     f"weights per line, got {step_dist!r}")
  given = [float(w) for w in step_dist]
  weights = [given[line] if line < len(given) else 0.0 for line in lines]
  if any(w < 0 for w in weights) or not any(weights):
    raise ValueError(f"arith: step_dist weights must be >= 0 with a positive one at an "
                     f"operation line {list(lines)}, got {list(step_dist)}")
  return weights


def _draw_error(problem: AnyProblem, rng: random.Random, step_dist, kinds: Sequence[str],
                style: str) -> tuple[str, int, str] | None:
  """(trace, line, kind) of one injected mistake, or None if the problem admits none."""
  lines = [line for line, _, _ in operation_lines(problem)]
  weights = _step_weights(step_dist, lines)
  steps = [k for k, w in zip(lines, weights) if w > 0]
  first = rng.choices(lines, weights=weights)[0]
  order = [first] + rng.sample([k for k in steps if k != first], len(steps) - 1)
  for step in order:
    for kind in rng.sample(list(kinds), len(kinds)):
      try:
        return inject_error(problem, step, rng, kind=kind, style=style), step, kind
      except ValueError:
        continue
  return None


def _check_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
  kinds = tuple(kinds)
  if not kinds or any(k not in ERROR_KINDS for k in kinds):
    raise ValueError(f"arith: kinds must be a non-empty subset of {ERROR_KINDS}, got {kinds}")
  return kinds


def sft_traces(config: ArithConfig, n: int, error_rate: float, seed: int = 0,
               step_dist="uniform", kinds: Sequence[str] = ERROR_KINDS) -> list[SFTTrace]:
  """n cold-start traces on training-split problems; round(error_rate * n) carry one mistake.

  Args:
    step_dist: where mistakes go among the n operation lines (of all parts): 'uniform',
      'early' (weight n - k for the k-th), 'late' (weight k + 1), or a list of weights per line
      index (the index `first_wrong` takes; other lines than operations cannot hold one).
    kinds: the error kinds drawn from (uniformly).
  Each trace's style is drawn from config.styles. Deterministic in (config, n, error_rate,
  seed, step_dist, kinds).
  """
  if not 0.0 <= error_rate <= 1.0:
    raise ValueError(f"sft_traces: error_rate must be in [0, 1], got {error_rate}")
  kinds = _check_kinds(kinds)
  rng = random.Random(f"arith-sft/{config.seed}/{seed}")
  wrong = set(rng.sample(range(n), round(error_rate * n)))
  out, draw = [], 0
  for i in range(n):
    while True:
      problem = _draw_in_split(config, "train", f"arith/{config.seed}/sft{seed}/{draw}")
      draw += 1
      style = rng.choice(config.styles)
      example = _example(problem, f"arith/sft{seed}/{i}")
      if i not in wrong:
        out.append(SFTTrace(example, solve(problem, style), None))
        break
      err = _draw_error(problem, rng, step_dist, kinds, style)
      if err is not None:
        out.append(SFTTrace(example, err[0], err[1]))
        break
  return out


def repair_pairs(config: ArithConfig, n: int, seed: int = 0, step_dist="uniform",
                 kinds: Sequence[str] = ERROR_KINDS) -> list[RepairPair]:
  """n error -> repair pairs on training-split problems (see RepairPair)."""
  kinds = _check_kinds(kinds)
  rng = random.Random(f"arith-repair/{config.seed}/{seed}")
  out, draw = [], 0
  while len(out) < n:
    problem = _draw_in_split(config, "train", f"arith/{config.seed}/repair{seed}/{draw}")
    draw += 1
    style = rng.choice(config.styles)
    err = _draw_error(problem, rng, step_dist, kinds, style)
    if err is None:
      continue
    failed, step, kind = err
    others = [s for s in config.styles if s != style]
    anchor = solve(problem, rng.choice(others) if others else style)
    repaired = solve(problem, style)
    out.append(RepairPair(
        example=_example(problem, f"arith/repair{seed}/{len(out)}"), failed=failed,
        anchor=anchor, repaired=repaired, first_wrong=step, kind=kind))
  return out


def probe_failures(config: ArithConfig, n: int, seed: int = 0, split: str = "test",
                   kinds: Sequence[str] = ERROR_KINDS) -> list[dict]:
  """n held-out failures for probing a repair mode: for a problem of `split`, a trace with one
  injected mistake ('failed'), a correct trace in the same style ('anchor') and a second
  failed trace with a mistake at another step or of another kind ('wrong_anchor')."""
  kinds = _check_kinds(kinds)
  rng = random.Random(f"arith-probe/{config.seed}/{seed}/{split}")
  data = ArithDataset(config, split)
  out = []
  for i in range(len(data)):
    if len(out) == n:
      break
    example = data[i]
    problem = as_problem(example)
    style = rng.choice(config.styles)
    first = _draw_error(problem, rng, "uniform", kinds, style)
    second = _draw_error(problem, rng, "uniform", kinds, style)
    if first is None or second is None or first[0] == second[0]:
      continue
    out.append(dict(example=example, failed=first[0], first_wrong=first[1],
                    anchor=solve(problem, style), wrong_anchor=second[0]))
  return out


def options() -> dict[str, Any]:
  """ArithConfig's fields and defaults: the task's options (config task.kwargs)."""
  return {f.name: getattr(ArithConfig, f.name, None) if f.default is dataclasses.MISSING
          else f.default for f in dataclasses.fields(ArithConfig)}


# ----------------------------------------------------------------------------- the task


@register("arith", options=options)
class ArithTask(Task):
  """The synthetic arithmetic task: `ArithTask(**ArithConfig fields)` or `ArithTask(config)`."""

  name = "arith"
  system_prompt = None
  step_mode = STEP_MODE  # how segment_steps cuts its responses

  def __init__(self, config: ArithConfig | None = None, **config_kwargs):
    if config is not None and config_kwargs:
      raise ValueError(f"ArithTask: pass a config or its fields, not both; got config and "
                       f"{sorted(config_kwargs)}")
    self.config = config if config is not None else ArithConfig(**config_kwargs)
    self._splits: dict[str, ArithDataset] = {}

  def examples(self, split: str) -> ArithDataset:
    if split not in self._splits:
      self._splits[split] = ArithDataset(self.config, split)
    return self._splits[split]

  def score(self, examples: Sequence[Example], completions: Sequence[str]) -> list[Verdict]:
    if len(examples) != len(completions):
      raise ValueError(f"ArithTask.score: {len(examples)} examples but {len(completions)} "
                       f"completions")
    return [verify(ex, c) for ex, c in zip(examples, completions)]

  def sft_pairs(self, n: int, error_rate: float, seed: int) -> list[tuple[str, str]]:
    return [(t.example.prompt, t.trace)
            for t in sft_traces(self.config, n, error_rate, seed=seed)]

  def answer_key(self, completion: str) -> str | None:
    """Single chain: the Task default (the last `Answer:` line). m parts: the m values that
    `verify` reads, as `6, 9`; None when fewer than m answer lines state a number."""
    m = self.config.parts
    if m == 1:
      return super().answer_key(completion)
    got = _stated_answers(completion, m) if isinstance(completion, str) else []
    if len(got) < m or any(v is None for v in got):
      return None
    return ", ".join(str(v) for v in got)

  def first_wrong_step(self, example: Example, completion: str) -> int | None:
    """The true first wrong step of a completion (oracle reset, localization precision); None
    when it is all right or unparseable."""
    k = first_wrong_step(example, completion)
    return k if isinstance(k, int) else None

  def trace_correct(self, example: Example, completion: str) -> bool:
    """Every line right and the answer line right (a repair that splices an anchor's values
    into a wrong trace can still state the right answer)."""
    return first_wrong_step(example, completion) == "none"

  def probe_failures(self, n: int, seed: int) -> list[dict]:
    return probe_failures(self.config, n, seed)

  def repair_pairs(self, n: int, seed: int) -> list[dict]:
    return [dict(problem=p.example.prompt, failed=p.failed, anchor=p.anchor,
                 repaired=p.repaired, first_wrong=p.first_wrong)
            for p in repair_pairs(self.config, n, seed=seed)]

  def segment(self, text: str) -> list[Step]:
    return segment(text)
