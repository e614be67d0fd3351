"""The second and third prompt formats of the same model: repair mode and reflection.

Repair mode (DESIGN 5.2) shows a problem, a failed solution and, when one exists, a correct
sibling; the model answers with the repaired solution and nothing else:

    Repair the failed solution: fix its first wrong step, keep the steps before it.
    Problem: <problem>
    Failed:
    <failed solution>
    Reference:
    <correct sibling>

Reflection (DESIGN 5.3, the reset variant) is told only that the final answer is wrong and
answers with the 1-based index of the first wrong step as `\\boxed{k}`. The solution is shown
with its steps numbered `[k]` as `segment_steps` cuts them, so k is an index into those steps:

    The final answer is wrong. Which step is the first wrong one? Reply \\boxed{k}.
    Problem: <problem>
    Solution:
    [1] <step 1>
    [2] <step 2>

Both are compact on purpose: on the synthetic task a tiny model with a short context reads them
(a 4-step arithmetic repair prompt is well under 200 tokens with `build_char_tokenizer`).
Parsers never raise on model output.
"""

from __future__ import annotations

import re

from si_jax.data.steps import segment_steps

__all__ = [
    "REPAIR_INSTRUCTION", "REFLECTION_INSTRUCTION", "repair_prompt", "repair_prompt_ids", "parse_repair",
    "reflection_prompt", "reflection_target", "parse_reflection",
]

REPAIR_INSTRUCTION = (
    "Repair the failed solution: fix its first wrong step, keep the steps before it.")
REFLECTION_INSTRUCTION = (
    "The final answer is wrong. Which step is the first wrong one? Reply \\boxed{k}.")

_END_MARKERS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>")
_BOXED_RE = re.compile(r"\\boxed\{\s*([0-9]{1,9})\s*\}")


def _block(text: str) -> str:
  return text.strip("\n")


def repair_prompt(problem_text: str, failed: str, anchor: str | None = None,
                  instruction: str | None = None) -> str:
  """The repair-mode user message for a failed solution and (optionally) a correct sibling.
  instruction: the first line (default REPAIR_INSTRUCTION; config si.repair_instruction)."""
  parts = [instruction or REPAIR_INSTRUCTION, f"Problem: {problem_text.strip()}", "Failed:",
           _block(failed)]
  if anchor is not None:
    parts += ["Reference:", _block(anchor)]
  return "\n".join(parts)


def repair_prompt_ids(tokenizer, problem: str, failed: str, anchor: str | None,
                      system: str | None = None, instruction: str | None = None) -> list[int]:
  """`repair_prompt` in the tokenizer's chat template (with the task's system prompt), ids."""
  return tokenizer.prompt_ids(repair_prompt(problem, failed, anchor, instruction), system)


def _after_thinking(text: str) -> str | None:
  """The text after a closed `<think>...</think>` block; None while thinking is unfinished."""
  if "</think>" in text:
    return text.rsplit("</think>", 1)[1]
  if "<think>" in text:
    return None
  return text


def _strip_end_markers(text: str) -> str:
  changed = True
  while changed:
    changed = False
    text = text.rstrip()
    for marker in _END_MARKERS:
      if text.endswith(marker):
        text, changed = text[:-len(marker)], True
  return text


def parse_repair(text: str) -> str | None:
  """The repaired solution in a repair-mode output, or None when there is none.

  The output is the repaired solution itself; a closed `<think>` block before it and trailing
  end-of-turn markers are removed, surrounding blank lines stripped. None for a non-string, an
  empty output or an unfinished `<think>` block.
  """
  if not isinstance(text, str):
    return None
  body = _after_thinking(text)
  if body is None:
    return None
  body = _strip_end_markers(body).strip("\n").rstrip()
  return body if body.strip() else None


def reflection_prompt(problem_text: str, failed: str, mode: str = "auto") -> str:
  """The reflection user message: the failed solution with its steps numbered from 1.

  mode: how `segment_steps` cuts `failed` into steps ('lines' for the arithmetic task).
  """
  steps = segment_steps(failed, mode)
  numbered = [f"[{i + 1}] {s.text.strip()}" for i, s in enumerate(steps)]
  return "\n".join([REFLECTION_INSTRUCTION, f"Problem: {problem_text.strip()}", "Solution:"]
                   + numbered)


def reflection_target(step: int) -> str:
  """What the reflection should answer when 0-based `step` is the first wrong one."""
  if step < 0:
    raise ValueError(f"reflection_target: step must be >= 0 (0-based), got {step}")
  return f"\\boxed{{{step + 1}}}"


def parse_reflection(text: str, num_steps: int | None = None) -> int | None:
  """The 1-based step k of the last `\\boxed{k}` (after any `<think>` block), or None.

  None when there is no such box, k < 1, or k > num_steps (when num_steps is given).
  """
  if not isinstance(text, str):
    return None
  body = _after_thinking(text)
  if body is None:
    return None
  matches = _BOXED_RE.findall(body)
  if not matches:
    return None
  k = int(matches[-1])
  if k < 1 or (num_steps is not None and k > num_steps):
    return None
  return k
