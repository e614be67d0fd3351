"""Training data with injected mistakes: cold-start SFT traces, error -> repair pairs and
held-out failures for probing a repair mode, all on generated problems."""

from __future__ import annotations

import dataclasses
import random
from typing import NamedTuple, Sequence

from si_jax.data.arith.config import ArithConfig
from si_jax.data.arith.dataset import ArithDataset, _draw_in_split, _example
from si_jax.data.arith.mistakes import ERROR_KINDS, inject_error
from si_jax.data.arith.problems import AnyProblem, as_problem, operation_lines
from si_jax.data.arith.render import solve
from si_jax.data.tasks import Example


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
