"""Causal self-attention over valid keys, in four implementations behind one function.

`attend(q, k, v, mask, impl=..., block_size=...)`: query t of a row attends key j iff j <= t
and mask[j]; grouped-query heads (H = KV * G). Implementations (`IMPLEMENTATIONS`):

  dense      the scores [B, KV, G*T, T] as batched matmuls, softmax, autodiff backward: the
             backward keeps the T x T probabilities of every layer (the historic path;
             `transformer._layer_full` inlines the same math with a bias built once).
  blockwise  flash-style in plain XLA, any backend: queries and keys in blocks of
             `block_size`, online softmax over the key blocks at or below the diagonal (blocks
             above it are skipped), and a custom VJP that recomputes each block's
             probabilities from the saved row log-sum-exp. The backward keeps q, k, v, the
             output and [B, H, T] statistics: no T x T residual, at most [B, H, block, block]
             scores alive at once.
  cudnn      `jax.nn.dot_product_attention(implementation="cudnn")` (GPU, bf16/fp16 only):
             rows are rotated so their valid tokens start at column 0, then cuDNN's
             padding-causal mask with per-row lengths applies; a batch with a row whose valid
             tokens are not contiguous takes the blockwise path instead (`lax.cond`).
  splash     the Pallas TPU splash-attention kernel (causal mask, padding as segment ids).
             Imported only when chosen; `interpret=True` runs it on CPU for tests.

`resolve(impl, ...)` turns "auto" into one of them: cudnn on GPU for bf16/fp16 where cuDNN's
head-dim limits hold, splash on TPU when importable, blockwise elsewhere when the sequence is
longer than one block, dense for shorter sequences (where blocking buys nothing).

Rows with no valid key at or before a query (left padding) output finite values that differ
between implementations; every caller masks those positions.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

IMPLEMENTATIONS = ("auto", "dense", "blockwise", "cudnn", "splash")
NEG = -1e30  # finite "minus infinity", as in transformer._NEG: masked rows stay finite.
_F32 = jnp.float32
# checkpoint_name()s of the blockwise residuals a remat policy may keep (transformer "dots").
SAVEABLE_NAMES = ("attention_out", "attention_lse")


def check(impl: str, block_size: int, *, where: str = "attention") -> None:
  """Raises ValueError naming `where` if impl / block_size are not valid."""
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"{where} must be one of {IMPLEMENTATIONS}, got {impl!r}")
  if block_size < 1:
    raise ValueError(f"{where} block size must be >= 1, got {block_size}")


def resolve(impl: str, *, seq_len: int, block_size: int, dtype, head_dim: int,
            backend: str | None = None) -> str:
  """The implementation `attend` runs for `impl` ("auto" picks by backend, dtype, length)."""
  check(impl, block_size)
  if impl != "auto":
    return impl
  backend = backend or jax.default_backend()
  low_precision = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
  if backend == "gpu" and low_precision and head_dim % 8 == 0 and head_dim <= 128:
    return "cudnn"
  if backend == "tpu" and _splash_module() is not None:
    return "splash"
  return "blockwise" if seq_len > block_size else "dense"


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *, impl: str,
           block_size: int = 128) -> jax.Array:
  """Causal attention over valid keys.

  Args:
    q: [B, T, H, hd] queries (RoPE applied, not scaled).
    k, v: [B, T, KV, hd] keys and values, H a multiple of KV.
    mask: [B, T] key validity (bool or 0/1).
    impl: one of `IMPLEMENTATIONS` ("auto" goes through `resolve`).
    block_size: query / key block length of the blockwise path (also its "auto" threshold).

  Returns:
    [B, T, H, hd] in q.dtype.
  """
  impl = resolve(impl, seq_len=q.shape[1], block_size=block_size, dtype=q.dtype,
                 head_dim=q.shape[-1])
  mask = mask.astype(bool)
  if impl == "dense":
    return dense(q, k, v, mask)
  if impl == "blockwise":
    return blockwise(q, k, v, mask, block_size)
  if impl == "cudnn":
    return cudnn(q, k, v, mask, block_size=block_size)
  return splash(q, k, v, mask)


# ----------------------------------------------------------------------------- dense


def causal_bias(mask: jax.Array) -> jax.Array:
  """[B, T] key validity -> additive causal + validity bias [B, 1, 1, T, T] float32 (0 / NEG)."""
  T = mask.shape[-1]
  ok = jnp.tril(jnp.ones((T, T), dtype=bool))[None] & mask.astype(bool)[:, None, :]
  return jnp.where(ok, 0.0, NEG).astype(_F32)[:, None, None]


def dense_with_bias(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array) -> jax.Array:
  """Dense attention with a prebuilt `causal_bias` [B, 1, 1, T, T] (built once per forward).

  q [B, T, H, hd]; k, v [B, T, KV, hd] -> [B, T, H, hd]. Scores as [B, KV, G*T, T] batched
  matmuls (K transposed once), softmax in float32, probabilities cast to v.dtype.
  """
  B, T, H, hd = q.shape
  KV = k.shape[2]
  G = H // KV
  qg = q.reshape(B, T, KV, G, hd).transpose(0, 2, 3, 1, 4).reshape(B, KV, G * T, hd)
  k_t = k.transpose(0, 2, 3, 1)  # [B, KV, hd, T]
  v_ = v.transpose(0, 2, 1, 3)  # [B, KV, T, hd]
  s = jnp.matmul(qg, k_t).astype(_F32).reshape(B, KV, G, T, T) * hd ** -0.5 + bias
  probs = jax.nn.softmax(s, axis=-1).astype(v.dtype).reshape(B, KV, G * T, T)
  o = jnp.matmul(probs, v_).reshape(B, KV, G, T, hd).transpose(0, 3, 1, 2, 4)
  return o.reshape(B, T, H, hd)


def dense(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """Dense attention: q [B, T, H, hd]; k, v [B, T, KV, hd]; mask [B, T] -> [B, T, H, hd]."""
  return dense_with_bias(q, k, v, causal_bias(mask))


# ----------------------------------------------------------------------------- blockwise
#
# Blocked layouts (b = block size, n = number of blocks, R = G * b query rows per block, ordered
# group-major so one [R, hd] x [hd, b] matmul serves all G query heads of a KV head):
#   q, o, do: [n, B, KV, R, hd]     k, v, dk, dv: [n, B, KV, b, hd]
#   key bias: [n, B, 1, 1, b]        row statistics (lse, D): [n, B, KV, R]


def _dot(a, b, contract_a, contract_b):
  """Batched (over the leading B, KV axes) matmul contracting one axis each, float32 result."""
  return jax.lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((0, 1), (0, 1))),
                             preferred_element_type=_F32)


def _diag_bias(G: int, b: int) -> np.ndarray:
  """[R, b] additive causal bias of a diagonal block (row g*b + r sees keys c <= r)."""
  return np.tile(np.where(np.tril(np.ones((b, b), bool)), 0.0, NEG).astype(np.float32), (G, 1))


def _fwd_block(carry, q, k, v, bias, scale):
  """One key block of the online softmax. carry = (m, l [B, KV, R] f32, acc [B, KV, R, hd] f32)."""
  m, l, acc = carry
  s = _dot(q, k, 3, 3) * scale + bias  # [B, KV, R, b]
  m_new = jnp.maximum(m, jnp.max(s, axis=-1))
  p = jnp.exp(s - m_new[..., None])
  corr = jnp.exp(m - m_new)
  l = l * corr + jnp.sum(p, axis=-1)
  acc = acc * corr[..., None] + _dot(p.astype(v.dtype), v, 3, 2)
  return m_new, l, acc


def _flash_forward(qb, kb, vb, kbias, scale):
  """Blocked forward: returns o [n, B, KV, R, hd] (q dtype) and lse [n, B, KV, R] float32.

  A scan over query blocks i; inside it a loop over the key blocks j < i (no causal mask
  inside them), then the diagonal block with its causal mask. Program size does not grow with
  the number of blocks.
  """
  n, B, KV, R, hd = qb.shape
  diag = _diag_bias(R // kb.shape[3], kb.shape[3])

  def q_block(_, xs):
    i, q = xs
    init = (jnp.full((B, KV, R), NEG, _F32), jnp.zeros((B, KV, R), _F32),
            jnp.zeros((B, KV, R, hd), _F32))
    below = lambda j, c: _fwd_block(c, q, kb[j], vb[j], kbias[j], scale)
    m, l, acc = _fwd_block(jax.lax.fori_loop(0, i, below, init), q, kb[i], vb[i],
                           kbias[i] + diag, scale)
    return None, ((acc / l[..., None]).astype(qb.dtype), m + jnp.log(l))

  _, (o, lse) = jax.lax.scan(q_block, None, (jnp.arange(n), qb))
  return o, lse


def _bwd_block(q, k, v, bias, do, lse, delta, scale):
  """Gradients of one (query block, key block) pair: (dq [B, KV, R, hd], dk, dv [B, KV, b, hd])
  in float32, recomputing the block's probabilities from the row log-sum-exp."""
  s = _dot(q, k, 3, 3) * scale + bias
  p = jnp.exp(s - lse[..., None])  # [B, KV, R, b]
  dv = _dot(p.astype(do.dtype), do, 2, 2)  # p^T do: [B, KV, b, hd]
  dp = _dot(do, v, 3, 3)  # do v^T: [B, KV, R, b]
  ds = (p * (dp - delta[..., None]) * scale).astype(q.dtype)
  dq = _dot(ds, k, 3, 2)  # [B, KV, R, hd]
  dk = _dot(ds, q, 2, 2)  # ds^T q: [B, KV, b, hd]
  return dq, dk, dv


def _flash_backward(qb, kb, vb, kbias, o, lse, do, scale):
  """Blocked backward (FlashAttention-2 style): (dq, dk, dv) in the blocked layouts.

  Same loop structure as the forward; dk and dv [n, B, KV, b, hd] float32 are carried through
  the scan over query blocks and updated in place.
  """
  b = kb.shape[3]
  diag = _diag_bias(qb.shape[3] // b, b)
  delta = jnp.sum(do.astype(_F32) * o.astype(_F32), axis=-1)  # [n, B, KV, R]

  def q_block(carry, xs):
    i, q, doi, lsei, di = xs
    dq, dk_i, dv_i = _bwd_block(q, kb[i], vb[i], kbias[i] + diag, doi, lsei, di, scale)
    dk, dv = carry
    dk, dv = dk.at[i].add(dk_i), dv.at[i].add(dv_i)

    def below(j, c):
      dq, dk, dv = c
      dq_j, dk_j, dv_j = _bwd_block(q, kb[j], vb[j], kbias[j], doi, lsei, di, scale)
      return dq + dq_j, dk.at[j].add(dk_j), dv.at[j].add(dv_j)

    dq, dk, dv = jax.lax.fori_loop(0, i, below, (dq, dk, dv))
    return (dk, dv), dq.astype(qb.dtype)

  init = (jnp.zeros(kb.shape, _F32), jnp.zeros(vb.shape, _F32))
  (dk, dv), dq = jax.lax.scan(q_block, init, (jnp.arange(qb.shape[0]), qb, do, lse, delta))
  return dq, dk.astype(kb.dtype), dv.astype(vb.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flash(qb, kb, vb, kbias, scale):
  return _flash_forward(qb, kb, vb, kbias, scale)[0]


def _flash_fwd(qb, kb, vb, kbias, scale):
  o, lse = _flash_forward(qb, kb, vb, kbias, scale)
  o, lse = checkpoint_name(o, "attention_out"), checkpoint_name(lse, "attention_lse")
  return o, (qb, kb, vb, kbias, o, lse)


def _flash_bwd(scale, res, do):
  qb, kb, vb, kbias, o, lse = res
  dq, dk, dv = _flash_backward(qb, kb, vb, kbias, o, lse, do, scale)
  return dq, dk, dv, jnp.zeros_like(kbias)


_flash.defvjp(_flash_fwd, _flash_bwd)


def blockwise(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
              block_size: int) -> jax.Array:
  """Flash-style attention: q [B, T, H, hd]; k, v [B, T, KV, hd]; mask [B, T] -> [B, T, H, hd].

  T is padded up to a multiple of `block_size` with invalid keys (a sequence shorter than one
  block is a single block of its own length).
  """
  B, T, H, hd = q.shape
  KV = k.shape[2]
  G = H // KV
  b = min(block_size, T)
  n = -(-T // b)
  pad = n * b - T
  if pad:
    q, k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q, k, v))
    mask = jnp.pad(mask, ((0, 0), (0, pad)))
  qb = q.reshape(B, n, b, KV, G, hd).transpose(1, 0, 3, 4, 2, 5).reshape(n, B, KV, G * b, hd)
  kb = k.reshape(B, n, b, KV, hd).transpose(1, 0, 3, 2, 4)
  vb = v.reshape(B, n, b, KV, hd).transpose(1, 0, 3, 2, 4)
  kbias = jnp.where(mask, 0.0, NEG).astype(_F32).reshape(B, n, 1, 1, b).transpose(1, 0, 2, 3, 4)
  o = _flash(qb, kb, vb, kbias, hd ** -0.5)  # [n, B, KV, G*b, hd]
  o = o.reshape(n, B, KV, G, b, hd).transpose(1, 0, 4, 2, 3, 5).reshape(B, n * b, H, hd)
  return o[:, :T]


# ----------------------------------------------------------------------------- cuDNN (GPU)


def contiguous_rows(mask: jax.Array) -> jax.Array:
  """Scalar bool: every row of mask [B, T] holds its valid tokens in one contiguous run."""
  m = mask.astype(bool)
  starts = m & ~jnp.pad(m[:, :-1], ((0, 0), (1, 0)))
  return jnp.all(jnp.sum(starts, axis=-1) <= 1)


def _rotate_rows(x: jax.Array, shift: jax.Array) -> jax.Array:
  """x [B, T, ...] -> y with y[b, t] = x[b, (t + shift[b]) % T]."""
  T = x.shape[1]
  idx = (jnp.arange(T)[None] + shift[:, None]) % T
  return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def cudnn(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *, block_size: int = 128,
          implementation: str = "cudnn") -> jax.Array:
  """cuDNN flash attention: q [B, T, H, hd]; k, v [B, T, KV, hd]; mask [B, T] -> [B, T, H, hd].

  Each row is rotated left by its count of leading padding, so its valid run starts at column
  0 and cuDNN's padding-causal mask with that row's length is exactly "causal over valid keys";
  the output is rotated back and zero at padding. Batches with a non-contiguous row take
  `blockwise`. `implementation="xla"` runs the same code through XLA (how CPU tests check it;
  the cuDNN kernel itself needs a GPU and was not exercised here).
  """
  m = mask.astype(bool)
  lengths = jnp.sum(m, axis=-1).astype(jnp.int32)
  first = jnp.argmax(m, axis=-1).astype(jnp.int32)  # 0 for an all-padding row

  def fused(q, k, v):
    qs, ks, vs = (_rotate_rows(x, first) for x in (q, k, v))
    o = jax.nn.dot_product_attention(
        qs, ks, vs, is_causal=True, query_seq_lengths=jnp.maximum(lengths, 1),
        key_value_seq_lengths=jnp.maximum(lengths, 1), implementation=implementation)
    o = _rotate_rows(o, -first)
    return jnp.where(m[:, :, None, None], o, jnp.zeros_like(o))

  return jax.lax.cond(contiguous_rows(m), fused,
                      lambda q, k, v: blockwise(q, k, v, m, block_size), q, k, v)


# ----------------------------------------------------------------------------- splash (TPU)


@functools.lru_cache(maxsize=1)
def _splash_module():
  """The Pallas splash-attention modules, or None where they cannot be imported."""
  try:
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel, splash_attention_mask)
  except ImportError:
    return None
  return splash_attention_kernel, splash_attention_mask


def splash(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *,
           interpret: bool = False) -> jax.Array:
  """Pallas splash attention (TPU): q [B, T, H, hd]; k, v [B, T, KV, hd]; mask [B, T].

  Causal mask per KV head's G query heads (the MQA kernel), padding as segment ids (valid = 1,
  padding = 0: valid queries never see padding keys, and every padding query sees at least
  itself). T is padded to a multiple of 128, the kernel's default block. Checked here only in
  interpret mode on CPU; on a multi-device mesh it is not wrapped in shard_map, so XLA may
  gather its operands onto each device.
  """
  mods = _splash_module()
  if mods is None:
    raise ImportError("attention='splash' needs jax.experimental.pallas.ops.tpu."
                      "splash_attention, which this jax cannot import")
  sk, sm = mods
  B, T, H, hd = q.shape
  KV = k.shape[2]
  G = H // KV
  Tp = -(-T // 128) * 128
  pad = ((0, 0), (0, Tp - T), (0, 0), (0, 0))
  q = jnp.pad(q * jnp.asarray(hd ** -0.5, q.dtype), pad)
  k, v = jnp.pad(k, pad), jnp.pad(v, pad)
  seg = jnp.pad(mask.astype(jnp.int32), ((0, 0), (0, Tp - T)))
  kernel = sk.make_splash_mqa_single_device(
      mask=sm.MultiHeadMask([sm.CausalMask((Tp, Tp))] * G), interpret=interpret)

  def one_row(q, k, v, seg):  # q [KV, G, Tp, hd]; k, v [KV, Tp, hd]; seg [Tp]
    ids = sk.SegmentIds(q=seg, kv=seg)
    return jax.vmap(lambda q, k, v: kernel(q, k, v, segment_ids=ids))(q, k, v)

  qh = q.reshape(B, Tp, KV, G, hd).transpose(0, 2, 3, 1, 4)
  o = jax.vmap(one_row)(qh, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), seg)
  return o.transpose(0, 3, 1, 2, 4).reshape(B, Tp, H, hd)[:, :T]
