"""Edits -> gates and token advantages in packed training rows (DESIGN 5.2 step 6), as array code.

The policy update trains on the failed rollout y with a negative advantage on its gated tokens
(g_minus) and on the repair y_bar with a positive one on its gated tokens (g_plus); the gate is
also the mask of the gated sequence ratio (`si_jax.rl.losses.policy_loss`, ratio='sequence').
This module places those gates into rows packed like `si_jax.rl.rollout.pack_rows`
(`prompt (left-padded) + response`, the response starting at column `offset`):

  gate[r, offset[r] + t] = 1  iff  start[r, e] <= t < end[r, e] for some edit e < kstar[r]
  advantages[r, c] = value[r] * gate[r, c]

`start` / `end` are the failed side's (a_start, a_end) for y rows or the repaired side's
(b_start, b_end) for y_bar rows, `[R, E_max]` padded with empty edits (start = end = 0).

The kernel compares every column against every active edit's bounds (one unsigned compare
each), EDIT_CHUNK edits at a time in a `lax.scan`: O(R * W * E_max) work, one chunk's
[R, W, EDIT_CHUNK] at a time. Measured on the shared 2-core CPU for R = 1,000, W = 2,300, every
edit column active (best of 7, load ~4): ~3 ms at E_max = 16, ~15 ms at 64, ~55 ms at 256.
Rejected: a scatter of +-1 at the bounds plus `jnp.cumsum` along W, O(R * (W + E_max)), but
XLA:CPU's cumsum alone took ~30-40 ms here; one unchunked compare, which fell off a cliff above
E_max = 32 (~250 ms at 64). `make_credit_fn` also cuts the edit columns no row activates
(index >= max kstar) and sends rows with more than EDIT_CHUNK active edits through the same
program once per further chunk: one compiled program per (rows, W), whatever K* a step brings.
Columns at or past W are never gated; `make_credit_fn` refuses rows whose edits reach past W.
"""

from __future__ import annotations

import functools
from typing import Callable, Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from si_jax import shapes
from si_jax import sharding
from si_jax.si.align import Alignment

__all__ = ["edit_arrays", "token_credit", "make_credit_fn"]

Side = Literal["failed", "repaired"]

# Edits compared per scan step of the kernel (see the module docstring).
EDIT_CHUNK = 16


def _bucket(n: int) -> int:
  """The smallest power of two >= max(n, 1)."""
  return 1 << max(n - 1, 0).bit_length()


def edit_arrays(alignments: Sequence[Alignment], side: Side,
                e_max: int | None = None, both_sides: bool = False
                ) -> tuple[np.ndarray, np.ndarray]:
  """Pads the edits of one side of R alignments into (start, end), int32 [R, E_max].

  Args:
    alignments: R alignments (`si_jax.si.align.align`).
    side: 'failed' -> (a_start, a_end); 'repaired' -> (b_start, b_end).
    e_max: padded width; None = the smallest power of two >= the largest edit count (so a
      jitted consumer sees few distinct shapes).
    both_sides: every edit credits a token on both sides. An edit that is empty on this side
      (a pure insertion seen from the failure, a pure deletion seen from the repair) then
      covers this side's token at the point of divergence: the token this side emitted where
      the other side emitted something else (the last token if the edit is at the very end).

  Padding entries are empty edits start = end = 0, which gate nothing.
  """
  if side not in ("failed", "repaired"):
    raise ValueError(f"edit_arrays: side must be 'failed' or 'repaired', got {side!r}")
  most = max((a.num_edits for a in alignments), default=0)
  if e_max is None:
    e_max = _bucket(most)
  elif e_max < most:
    row = next(i for i, a in enumerate(alignments) if a.num_edits > e_max)
    raise ValueError(f"edit_arrays: e_max={e_max} but alignment {row} has "
                     f"{alignments[row].num_edits} edits")
  counts = np.fromiter((a.num_edits for a in alignments), np.int64, len(alignments))
  rows = np.repeat(np.arange(len(alignments)), counts)
  cols = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
  lo, hi = ("a_start", "a_end") if side == "failed" else ("b_start", "b_end")
  start = np.zeros((len(alignments), e_max), np.int32)
  end = np.zeros((len(alignments), e_max), np.int32)
  if len(rows):
    s_, e_ = (np.concatenate([getattr(a, lo) for a in alignments]),
              np.concatenate([getattr(a, hi) for a in alignments]))
    if both_sides:
      length = np.repeat([a.len_a if side == "failed" else a.len_b for a in alignments],
                         counts)
      empty = (s_ == e_) & (length > 0)
      s_ = np.where(empty, np.minimum(s_, length - 1), s_)
      e_ = np.where(empty, s_ + 1, e_)
    start[rows, cols] = s_
    end[rows, cols] = e_
  return start, end


def _chunk_gate(start: jax.Array, length: jax.Array, pos: jax.Array) -> jax.Array:
  """bool [R, W]: pos [R, W] lies in [start, start + length) of one of the C edits [R, C].

  One unsigned compare per (column, edit): pos - start wraps to a huge value when pos < start.
  """
  offset_in_edit = (pos[:, :, None] - start[:, None, :]).astype(jnp.uint32)
  return jnp.any(offset_in_edit < length[:, None, :].astype(jnp.uint32), axis=2)


def token_credit(start: jax.Array, end: jax.Array, kstar: jax.Array, offset: jax.Array,
                 value: jax.Array, *, width: int) -> tuple[jax.Array, jax.Array]:
  """Gates and token advantages of R packed rows (module docstring); jit with width static.

  Args:
    start, end: int32 [R, E_max], edit bounds of one side, relative to the response start.
    kstar: int32 [R], number of active edits per row (the first kstar edits).
    offset: int32 [R], column where the response starts (the prompt width).
    value: float32 [R], advantage put on every gated token of the row.
    width: W, the packed row width.

  Returns:
    gate: float32 [R, W] in {0, 1}.
    advantages: float32 [R, W] = value[:, None] * gate.
  """
  start, end = start.astype(jnp.int32), end.astype(jnp.int32)
  R, E = start.shape
  active = jnp.arange(E)[None, :] < kstar.astype(jnp.int32)[:, None]  # [R, E]
  length = jnp.where(active, end - start, 0)  # an inactive edit is an empty one
  pos = jnp.arange(width, dtype=jnp.int32)[None, :] - offset.astype(jnp.int32)[:, None]  # [R, W]
  chunk = min(EDIT_CHUNK, max(E, 1))
  pad = -E % chunk  # empty edits up to a whole number of chunks
  start, length = jnp.pad(start, ((0, 0), (0, pad))), jnp.pad(length, ((0, 0), (0, pad)))
  E += pad
  chunks = (start.reshape(R, E // chunk, chunk).transpose(1, 0, 2),
            length.reshape(R, E // chunk, chunk).transpose(1, 0, 2))  # [E / chunk, R, chunk]

  def add_chunk(gate, edges):
    return gate | _chunk_gate(edges[0], edges[1], pos), None

  inside, _ = jax.lax.scan(add_chunk, jnp.zeros((R, width), bool), chunks)
  gate = inside.astype(jnp.float32)
  return gate, value.astype(jnp.float32)[:, None] * gate


def _host_inputs(start, end, kstar, offset, value, width: int):
  """The inputs as int32 / float32 numpy arrays, shapes and bounds checked (naming the row)."""
  start, end = np.asarray(start, np.int32), np.asarray(end, np.int32)
  kstar, offset = np.asarray(kstar, np.int32), np.asarray(offset, np.int32)
  value = np.asarray(value, np.float32)
  if start.ndim != 2 or end.shape != start.shape:
    raise ValueError(f"credit: start and end must both be [R, E_max], got {start.shape} and "
                     f"{end.shape}")
  R = start.shape[0]
  for name, x in (("kstar", kstar), ("offset", offset), ("value", value)):
    if x.shape != (R,):
      raise ValueError(f"credit: {name} must be [R] = ({R},), got {x.shape}")
  for name, x in (("kstar", kstar), ("offset", offset), ("start", start)):
    if x.size and x.min() < 0:
      row = int(np.argwhere(x < 0)[0][0])
      raise ValueError(f"credit: {name} of row {row} is negative")
  if np.any(end < start):
    row = int(np.argwhere(end < start)[0][0])
    raise ValueError(f"credit: row {row} has an edit with end < start")
  reach = offset + (end.max(axis=1) if end.size else np.zeros(R, np.int32))
  if R and reach.max() > width:
    row = int(np.argmax(reach))
    raise ValueError(f"credit: row {row} has an edit ending at column {int(reach[row])} > "
                     f"width {width} (offset {int(offset[row])})")
  return start, end, kstar, offset, value


def make_credit_fn(mesh: Mesh) -> Callable[..., tuple[jax.Array, jax.Array]]:
  """`token_credit` jitted with rows over the mesh's batch axes.

  Returns credit_fn(start, end, kstar, offset, value, *, width) -> (gate, advantages), taking
  host arrays (checked: shapes, non-negative, edits within the width) and returning [R, W]
  numpy arrays. The program takes EDIT_CHUNK edit columns: the edits of rows with more active
  edits (K* > EDIT_CHUNK, a repair that rewrote much of a long trace) go through the same
  program once per further chunk, the gates OR-ed, so a rare long repair never compiles a
  wider program mid-run (one did, at RL step 20 of a parts2 study run). Edit columns at or past
  the largest kstar gate nothing and are not sent. Rows are padded to the `shapes.rung` of the
  batch shards (empty rows), so the pairs of a step, whose number varies, compile one program
  per rung and W, not one per count or edit count.
  """
  divisor = sharding.batch_divisor(mesh)

  @functools.lru_cache(maxsize=None)
  def compiled(rows: int, e_max: int, width: int):
    edges = sharding.batch_sharding(mesh, (rows, e_max))
    per_row = sharding.batch_sharding(mesh, (rows,))
    out = sharding.batch_sharding(mesh, (rows, width))
    ins = (edges, edges, per_row, per_row, per_row)
    return jax.jit(functools.partial(token_credit, width=width), in_shardings=ins,
                   out_shardings=(out, out)), ins

  def credit_fn(start, end, kstar, offset, value, *, width: int, rows: int = 0):
    """rows: the most rows such a call gets in a run; fewer are padded to it (one shape)."""
    if width < 1:
      raise ValueError(f"credit: width must be >= 1, got {width}")
    start, end, kstar, offset, value = _host_inputs(start, end, kstar, offset, value, width)
    chunks = max(1, -(-int(kstar.max(initial=0)) // EDIT_CHUNK))
    used = chunks * EDIT_CHUNK  # later edits are inactive; fewer are padded with empty ones
    pad = ((0, 0), (0, max(used - start.shape[1], 0)))
    start, end = np.pad(start, pad)[:, :used], np.pad(end, pad)[:, :used]
    R = start.shape[0]
    rows = shapes.fit(R, rows, divisor)
    if rows != R:  # empty rows: no active edit, zero advantage
      grow = lambda x: np.concatenate([x, np.zeros((rows - R,) + x.shape[1:], x.dtype)])
      start, end, kstar, offset, value = map(grow, (start, end, kstar, offset, value))
    fn, ins = compiled(rows, EDIT_CHUNK, int(width))
    gate = None
    for c in range(chunks):
      cols = slice(c * EDIT_CHUNK, (c + 1) * EDIT_CHUNK)
      active = np.clip(kstar - c * EDIT_CHUNK, 0, EDIT_CHUNK).astype(np.int32)
      # Placed before the call: jit takes numpy inputs with a sharded layout only in a single
      # process (with several, `mesh` is this process's own devices, see si/rows.py).
      args = jax.device_put((start[:, cols], end[:, cols], active, offset, value), ins)
      g, adv = fn(*args)
      if chunks == 1:
        return np.asarray(g)[:R], np.asarray(adv)[:R]
      gate = np.asarray(g) if gate is None else np.maximum(gate, np.asarray(g))
    return gate[:R], (value[:, None] * gate)[:R]

  return credit_fn
