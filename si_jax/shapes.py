"""The shapes of the programs an RL step runs: a small ladder, fixed before the first step.

A jitted program compiles once per input shape, and on a pod one compile of a large model's
sampler or update takes minutes. So every array a step hands to a jitted program (the sampler's
prompts, the packed rows of the log-prob pass and of each loss term's update) takes its shape
from a small set chosen when the run starts:

* **Widths** (prompt columns): `fit(n, floor)` is the run's `floor` for that kind of prompt
  (the policy prompt, the repair prompt, ...) while n fits in it, so a steady run uses one
  width per kind; a longer input takes the next `rung` above it (one more compile, and the
  compile counter says so). Floors are bounds computed from the data and the config when the
  run starts (`Run.prompt_width`, SI's repair-prompt bound).
* **Rows per call**: a loss term's rows are cut into calls of a fixed number of rows (the
  update and log-prob passes loop over them), so a step with more rows makes more calls, not a
  new program. The sampler, whose cost per row falls with the batch, takes its rows from the
  `rung` ladder instead (unit x 1, 2, 3, 4, 6, 8, 12, ...: a few rungs over a run).

`rung(n, unit)`: the smallest unit * b >= n with b in 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (each
rung at most 1.5x the one below), so the waste is under a third and the number of rungs up to
N is about 2 log2(N / unit).
"""

from __future__ import annotations

__all__ = ["QUANTUM", "rung", "fit", "round_up"]

# Prompt widths are multiples of this many tokens.
QUANTUM = 16


def rung(n: int, unit: int = 1) -> int:
  """The smallest `unit * b >= n` with b in 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (n >= 0)."""
  if unit < 1:
    raise ValueError(f"rung: unit must be >= 1, got {unit}")
  units = max(1, -(-int(n) // unit))
  if units == 1:
    return unit
  p = 2
  while True:
    for b in (p, p * 3 // 2):
      if b >= units:
        return unit * b
    p *= 2


def round_up(n: int, multiple: int) -> int:
  """n rounded up to a multiple of `multiple` (at least one multiple)."""
  if multiple < 1:
    raise ValueError(f"round_up: multiple must be >= 1, got {multiple}")
  return -(-max(int(n), 1) // multiple) * multiple


def fit(n: int, floor: int = 0, quantum: int = QUANTUM) -> int:
  """The width for an input of n columns: `floor` (rounded up to the quantum) while n fits,
  else the `rung` of the quantum ladder at or above n (and above the floor)."""
  base = round_up(floor, quantum) if floor > 0 else 0
  if 0 < n <= base:
    return base
  return max(rung(n, quantum), base)
