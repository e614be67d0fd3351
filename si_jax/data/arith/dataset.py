"""Generating arithmetic problems: the examples of each split (ArithDataset).

Splits are disjoint: a problem belongs to 'test' iff a hash of its prompt falls in the first
`test_fraction` of [0, 1), so no test problem is ever a training problem. Example i of a split
is drawn from an RNG seeded by (seed, split, i): random access and reproducible.
"""

from __future__ import annotations

import collections.abc
import hashlib
import random

from si_jax.data.arith.config import ArithConfig, _check_split
from si_jax.data.arith.problems import AnyProblem, MultiPartProblem, Problem
from si_jax.data.arith.render import solve
from si_jax.data.tasks import Example

_MAX_DRAWS = 10_000


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
