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
tokens (`Part` is one token of `si_jax.tokenizer.DEFAULT_WORDS`).

Modules: `config` (ArithConfig), `problems` (Problem, MultiPartProblem, their line layout),
`render` (correct traces, styles), `verifier` (reading outputs: reward, first wrong step),
`mistakes` (inject_error), `dataset` (generation, splits), `traces` (SFT traces, repair pairs,
probe failures), `task` (the registered 'arith' task).
"""

from si_jax.data.arith.config import OPERATORS, SPLITS, STYLES, ArithConfig
from si_jax.data.arith.dataset import ArithDataset, _example
from si_jax.data.arith.mistakes import ERROR_KINDS, inject_error
from si_jax.data.arith.problems import (MultiPartProblem, Problem, as_problem, operation_lines,
                                        part_lines)
from si_jax.data.arith.render import solve
from si_jax.data.arith.task import ArithTask, options
from si_jax.data.arith.traces import (RepairPair, SFTTrace, probe_failures, repair_pairs,
                                      sft_traces)
from si_jax.data.arith.verifier import first_wrong_step, line_parts, segment, verify

__all__ = [
    "OPERATORS", "STYLES", "ERROR_KINDS", "SPLITS", "ArithConfig", "Problem", "MultiPartProblem",
    "ArithDataset", "SFTTrace", "RepairPair", "as_problem", "solve", "inject_error",
    "first_wrong_step", "verify", "line_parts", "part_lines", "operation_lines", "sft_traces",
    "repair_pairs", "segment", "ArithTask",
]
