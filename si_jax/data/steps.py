"""Step segmentation: steps are the unit of credit (first wrong step, resets, localization).

`segment_steps(text)` cuts a response into contiguous character spans that cover the whole text:
every character belongs to exactly one step, step i ends where step i+1 starts, and separators
(newlines, blank lines) belong to the step they end. `token_step_index` then maps tokens, given
their character offsets, to those steps.

Modes (how a step starts):
  lines:      every line that is not blank (the synthetic arithmetic task: one step per line).
  paragraphs: every non-blank line that follows a blank line (or starts the text).
  markers:    every line that starts with a `Step k:` / `Step k.` / `**Step k:**` marker.
  auto:       markers if the text has any, else paragraphs if it has a blank line, else lines.
Text before the first step start (indentation, blank lines, a preamble) is its own step when it
holds anything but whitespace, and is otherwise folded into the first step. Empty text has no
steps; text of whitespace only is one step.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np

__all__ = ["MODES", "Step", "resolve_mode", "segment_steps", "token_step_index"]

MODES = ("auto", "lines", "paragraphs", "markers")

_MARKER_RE = re.compile(r"^[ \t]*(?:[*#_]+[ \t]*)?Step[ \t]+[0-9]+[ \t]*[:.)]", re.MULTILINE)
_BLANK_LINE_RE = re.compile(r"\n[ \t\r\f\v]*\n")


@dataclasses.dataclass(frozen=True)
class Step:
  """One step: the characters text[start:end] of the segmented text (separators included)."""

  start: int
  end: int
  text: str


def _line_starts(text: str) -> list[tuple[int, bool]]:
  """(start offset, is blank) of every line of `text` (split on '\\n')."""
  out, pos = [], 0
  for line in text.split("\n"):
    out.append((pos, not line.strip()))
    pos += len(line) + 1
  return out


def _starts(text: str, mode: str) -> list[int]:
  if mode == "markers":
    return [m.start() for m in _MARKER_RE.finditer(text)]
  lines = _line_starts(text)
  if mode == "lines":
    return [start for start, blank in lines if not blank]
  # paragraphs
  starts, prev_blank = [], True
  for start, blank in lines:
    if not blank and prev_blank:
      starts.append(start)
    prev_blank = blank
  return starts


def resolve_mode(text: str, mode: str = "auto") -> str:
  """The concrete mode `segment_steps(text, mode)` uses ('auto' resolved)."""
  if mode not in MODES:
    raise ValueError(f"segment_steps: mode must be one of {MODES}, got {mode!r}")
  if mode != "auto":
    return mode
  if _MARKER_RE.search(text):
    return "markers"
  if _BLANK_LINE_RE.search(text.strip()):
    return "paragraphs"
  return "lines"


def segment_steps(text: str, mode: str = "auto") -> list[Step]:
  """Cuts `text` into steps whose spans cover it (see the module docstring for the modes)."""
  mode = resolve_mode(text, mode)
  if not text:
    return []
  starts = _starts(text, mode)
  if not starts:
    starts = [0]
  elif starts[0] != 0:
    if text[:starts[0]].strip():
      starts = [0] + starts  # a preamble with content is a step of its own
    else:
      starts = [0] + starts[1:]  # leading whitespace joins the first step
  ends = starts[1:] + [len(text)]
  return [Step(s, e, text[s:e]) for s, e in zip(starts, ends)]


def token_step_index(char_offsets, steps: Sequence[Step]) -> np.ndarray:
  """Step index of every token.

  Args:
    char_offsets: [T, 2] (start, end) character offsets of the tokens in the segmented text, as
      HF fast tokenizers return them with `return_offsets_mapping=True`.
    steps: `segment_steps` of that text.

  Returns:
    [T] int32: the index of the step holding the token's first character; -1 for tokens with an
    empty span (special tokens, offsets (0, 0)) or outside the text.
  """
  offsets = np.asarray(char_offsets, dtype=np.int64)
  if offsets.size == 0:
    return np.zeros((0,), np.int32)
  if offsets.ndim != 2 or offsets.shape[1] != 2:
    raise ValueError(f"token_step_index: char_offsets must be [T, 2], got shape {offsets.shape}")
  if not steps:
    return np.full((offsets.shape[0],), -1, np.int32)
  starts = np.asarray([s.start for s in steps], np.int64)
  begin, end = offsets[:, 0], offsets[:, 1]
  idx = np.searchsorted(starts, begin, side="right") - 1
  valid = (end > begin) & (begin >= starts[0]) & (begin < steps[-1].end)
  return np.where(valid, idx, -1).astype(np.int32)
