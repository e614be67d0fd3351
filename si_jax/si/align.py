"""Token-level alignment of a failed rollout and its repair: edits, grafts and bilateral masks.

Step 4 of supervision internalization (DESIGN 5.2). The inputs are two token-id sequences from
the same model: the failed rollout `a` (= y) and its best repair `b` (= y_bar).

Definitions (everything downstream counts in these units):

- **Alignment**: `rapidfuzz.distance.Levenshtein.opcodes(a, b)`, an optimal edit script of
  unit-cost substitutions, insertions and deletions of tokens. When several scripts are
  optimal, rapidfuzz's choice is the one used.
- **distance**: the number of token edit operations of that script, i.e. the Levenshtein
  distance. `normalized_distance = distance / max(len_a, len_b, 1)`.
- **Edit** (the unit K of adaptive truncation counts): a maximal run of consecutive non-equal
  opcodes (replace / insert / delete with no equal token between them), i.e. one contiguous
  changed region. Edit e covers failed tokens `[a_start[e], a_end[e])` (deleted + substituted;
  empty for a pure insertion) and repaired tokens `[b_start[e], b_end[e])` (inserted +
  substituted; empty for a pure deletion). Edits are ordered by position; consecutive edits are
  separated by the same positive number of equal tokens on both sides.
- **Masks**: with the first k edits active, `g_minus[t]` is True on failed tokens inside an
  active edit and `g_plus[t]` on repaired tokens inside one. With all edits active, the
  unmasked tokens of both sides, read in order, are the same sequence.
- **Graft**: the failed sequence with only its first k edits applied,
  `b[:b_end[k-1]] + a[a_end[k-1]:]` (k = 0 gives `a`; k >= num_edits gives `b` exactly).

Speed (PERF_NOTES, `si_jax/tools/bench/align.py`; 1,000 pairs of 2,000 tokens, distance ~100,
shared 2-core CPU): `score_hint` makes rapidfuzz look for the distance in a band that it
doubles until the distance fits, so any hint gives the same alignment (tested); hints of 32..128 ran
~2x faster than none, 512 only ~1.3x. Lists of ints go to rapidfuzz as they are; numpy integer
arrays are first viewed as a `str` of code points (ids below 0x110000), which rapidfuzz compares
natively: ~1.6x faster than passing the arrays and ~1.3x faster than `tolist()`.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import numpy as np
from rapidfuzz.distance import Levenshtein

__all__ = [
    "DEFAULT_SCORE_HINT", "Alignment", "align", "align_many", "graft", "edit_masks",
]

# Expected distance handed to rapidfuzz as `score_hint` (a speed knob only; see the docstring).
DEFAULT_SCORE_HINT = 64

_BOUNDS = ("a_start", "a_end", "b_start", "b_end")

# numpy ids below this become code points of a str (the largest code point is 0x10FFFF).
_CODE_POINT_LIMIT = 0x110000


@dataclasses.dataclass(frozen=True, eq=False)
class Alignment:
  """The edits of one (failed, repaired) pair; arrays are int32 [E], E = num_edits.

  Attributes:
    a_start, a_end: int32 [E], failed-side token range [a_start[e], a_end[e]) of edit e.
    b_start, b_end: int32 [E], repaired-side token range [b_start[e], b_end[e]) of edit e.
    distance: Levenshtein distance (token edit operations).
    len_a, len_b: lengths of the failed and the repaired sequence.

  No `==` (eq=False): the fields are arrays, compare them field by field.
  """
  a_start: np.ndarray
  a_end: np.ndarray
  b_start: np.ndarray
  b_end: np.ndarray
  distance: int
  len_a: int
  len_b: int

  def __post_init__(self):
    for name in _BOUNDS:
      x = getattr(self, name)
      if not (isinstance(x, np.ndarray) and x.dtype == np.int32):  # skip the copy when it is
        object.__setattr__(self, name, np.asarray(x, np.int32))
    shapes = [getattr(self, name).shape for name in _BOUNDS]
    if len(shapes[0]) != 1 or len(set(shapes)) != 1:
      raise ValueError(f"Alignment: {', '.join(_BOUNDS)} must be 1-D of one length, got shapes "
                       f"{shapes}")

  @property
  def num_edits(self) -> int:
    return int(self.a_start.shape[0])

  @property
  def normalized_distance(self) -> float:
    return self.distance / max(self.len_a, self.len_b, 1)


def _as_sequence(ids, name: str):
  """What rapidfuzz compares: a list / tuple as given, numpy ids as a str of code points."""
  if isinstance(ids, (list, tuple)):
    return ids
  arr = np.asarray(ids)
  if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
    raise ValueError(f"align: {name} must be a 1-D sequence of integer token ids, got dtype "
                     f"{arr.dtype} and shape {arr.shape}")
  if not arr.size:
    return ""
  lo, hi = int(arr.min()), int(arr.max())
  if lo < 0:
    raise ValueError(f"align: {name} has a negative token id {lo} at position "
                     f"{int(np.argmin(arr))}")
  if hi >= _CODE_POINT_LIMIT:
    return arr.tolist()
  return arr.astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")


def _edits(opcodes: Iterable[tuple[str, int, int, int, int]]) -> tuple[list[list[int]], int]:
  """Merges runs of non-equal opcodes into edits [a_start, a_end, b_start, b_end]; + distance."""
  edits: list[list[int]] = []
  distance = 0
  open_edit = False
  for tag, i1, i2, j1, j2 in opcodes:
    if tag == "equal":
      open_edit = False
      continue
    distance += max(i2 - i1, j2 - j1)
    if open_edit:
      edits[-1][1] = i2
      edits[-1][3] = j2
    else:
      edits.append([i1, i2, j1, j2])
      open_edit = True
  return edits, distance


def align(failed_ids: Sequence[int] | np.ndarray, repaired_ids: Sequence[int] | np.ndarray, *,
          score_hint: int | None = DEFAULT_SCORE_HINT) -> Alignment:
  """Edits that turn `failed_ids` [len_a] into `repaired_ids` [len_b] (see the module docstring).

  Args:
    failed_ids: token ids of the failed rollout: a list / tuple of ints or a 1-D integer array.
    repaired_ids: token ids of its repair, same kinds.
    score_hint: expected distance for rapidfuzz (speed only; None = no hint).
  """
  a = _as_sequence(failed_ids, "failed_ids")
  b = _as_sequence(repaired_ids, "repaired_ids")
  edits, distance = _edits(Levenshtein.opcodes(a, b, score_hint=score_hint).as_list())
  cols = np.asarray(edits, np.int32).reshape(-1, 4).T
  return Alignment(a_start=cols[0], a_end=cols[1], b_start=cols[2], b_end=cols[3],
                   distance=distance, len_a=len(a), len_b=len(b))


def align_many(pairs: Iterable[tuple[Sequence[int] | np.ndarray, Sequence[int] | np.ndarray]],
               *, score_hint: int | None = DEFAULT_SCORE_HINT) -> list[Alignment]:
  """`align` of every (failed_ids, repaired_ids) pair, in order."""
  return [align(a, b, score_hint=score_hint) for a, b in pairs]


def _check_lengths(failed_ids, repaired_ids, alignment: Alignment, where: str) -> None:
  if len(failed_ids) != alignment.len_a or len(repaired_ids) != alignment.len_b:
    raise ValueError(f"{where}: sequences of lengths ({len(failed_ids)}, {len(repaired_ids)}) do "
                     f"not match the alignment's (len_a={alignment.len_a}, "
                     f"len_b={alignment.len_b})")


def _to_list(ids) -> list[int]:
  return ids.tolist() if isinstance(ids, np.ndarray) else list(ids)


def graft(failed_ids: Sequence[int] | np.ndarray, repaired_ids: Sequence[int] | np.ndarray,
          alignment: Alignment, k: int) -> list[int]:
  """The failed sequence with only the first `k` edits applied (k >= 0).

  = repaired[:b_end[k-1]] + failed[a_end[k-1]:]; k = 0 gives the failed sequence and
  k >= num_edits the repaired sequence, exactly.
  """
  if k < 0:
    raise ValueError(f"graft: k must be >= 0, got {k}")
  _check_lengths(failed_ids, repaired_ids, alignment, "graft")
  if k == 0:
    return _to_list(failed_ids)
  if k >= alignment.num_edits:
    return _to_list(repaired_ids)
  return (_to_list(repaired_ids[:int(alignment.b_end[k - 1])])
          + _to_list(failed_ids[int(alignment.a_end[k - 1]):]))


def edit_masks(alignment: Alignment, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Host bilateral masks with the first `k` edits active (None = all).

  Returns:
    g_minus: bool [len_a], failed tokens deleted or substituted by an active edit.
    g_plus: bool [len_b], repaired tokens inserted or substituted by an active edit.
  """
  if k is not None and k < 0:
    raise ValueError(f"edit_masks: k must be >= 0 or None, got {k}")
  active = alignment.num_edits if k is None else min(k, alignment.num_edits)
  g_minus = np.zeros(alignment.len_a, bool)
  g_plus = np.zeros(alignment.len_b, bool)
  for e in range(active):
    g_minus[alignment.a_start[e]:alignment.a_end[e]] = True
    g_plus[alignment.b_start[e]:alignment.b_end[e]] = True
  return g_minus, g_plus
