"""Decoder-only LM (Llama / Qwen2 / Qwen3) as pure functions over a param pytree.

Param layout (layers stacked on a leading L axis; kernels stored [in, out]):

  embed [V, d]; final_norm [d]; lm_head [d, V] (untied only)
  layers: attn_norm [L, d]; q [L, d, H*hd]; k, v [L, d, KV*hd]; o [L, H*hd, d];
          q_bias [L, H*hd], k_bias, v_bias [L, KV*hd] (attention_bias);
          q_norm, k_norm [L, hd] (qk_norm); mlp_norm [L, d]; gate, up [L, d, F]; down [L, F, d]

Sequences are batches of token ids with a validity mask `[B, T]`; padding may sit on either
side. Positions are `cumsum(mask) - 1`, so a left-padded prompt and an unpadded one give the same
logits. Attention is causal over valid keys.

Two execution paths share the same layer math:
  * `forward_hidden` / `forward` scan over the stacked layers (training, prefill, scoring):
    compile time does not grow with depth.
  * `decode_step` runs one token per row against a KV cache. The cache keeps K transposed,
    `[B, KV, hd, S]`, and V as `[B, KV, S, hd]`, so both attention products are plain batched
    matmuls; the layer loop is unrolled over per-layer buffers (PERF_NOTES: slicing a stacked
    cache inside the decode loop cost more than the matmuls). This departs from DESIGN's
    "scanned layers" for decode only: its compile time grows with depth.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from si_jax.models import attention
from si_jax.models import constraints
from si_jax.models.config import ModelConfig

Params = dict[str, Any]
_NEG = attention.NEG  # finite "minus infinity": fully masked rows give a uniform softmax


# ----------------------------------------------------------------------------- params


def param_shapes(cfg: ModelConfig) -> Params:
  """Shapes of every param (same tree as `init_params`)."""
  d, L, hd, f = cfg.hidden_size, cfg.num_layers, cfg.head_dim, cfg.intermediate_size
  qd, kvd = cfg.num_heads * hd, cfg.num_kv_heads * hd
  layers = {
      "attn_norm": (L, d), "q": (L, d, qd), "k": (L, d, kvd), "v": (L, d, kvd), "o": (L, qd, d),
      "mlp_norm": (L, d), "gate": (L, d, f), "up": (L, d, f), "down": (L, f, d),
  }
  if cfg.attention_bias:
    layers.update(q_bias=(L, qd), k_bias=(L, kvd), v_bias=(L, kvd))
  if cfg.qk_norm:
    layers.update(q_norm=(L, hd), k_norm=(L, hd))
  shapes = {"embed": (cfg.vocab_size, d), "layers": layers, "final_norm": (d,)}
  if not cfg.tie_embeddings:
    shapes["lm_head"] = (d, cfg.vocab_size)
  return shapes


def param_axes(cfg: ModelConfig) -> Params:
  """Logical axis names of every param dimension (same tree as `init_params`)."""
  layers = {
      "attn_norm": ("layers", "norm"), "q": ("layers", "embed", "heads"),
      "k": ("layers", "embed", "kv_heads"), "v": ("layers", "embed", "kv_heads"),
      "o": ("layers", "heads", "embed"), "mlp_norm": ("layers", "norm"),
      "gate": ("layers", "embed", "mlp"), "up": ("layers", "embed", "mlp"),
      "down": ("layers", "mlp", "embed"),
  }
  if cfg.attention_bias:
    layers.update(q_bias=("layers", "heads"), k_bias=("layers", "kv_heads"),
                  v_bias=("layers", "kv_heads"))
  if cfg.qk_norm:
    layers.update(q_norm=("layers", "norm"), k_norm=("layers", "norm"))
  axes = {"embed": ("vocab", "embed"), "layers": layers, "final_norm": ("norm",)}
  if not cfg.tie_embeddings:
    axes["lm_head"] = ("embed", "vocab")
  return axes


def init_params(cfg: ModelConfig, key: jax.Array) -> Params:
  """Random params: normal(0.02) kernels, unit norms, zero biases, in `cfg.param_dtype`."""
  shapes = param_shapes(cfg)
  leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
  paths = [jax.tree_util.keystr(p) for p, _ in
           jax.tree_util.tree_flatten_with_path(shapes, is_leaf=lambda x: isinstance(x, tuple))[0]]
  keys = jax.random.split(key, len(leaves))
  out = []
  for path, shape, k in zip(paths, leaves, keys):
    if "norm" in path:
      x = jnp.ones(shape)
    elif "bias" in path:
      x = jnp.zeros(shape)
    else:
      x = 0.02 * jax.random.normal(k, shape)
    out.append(x.astype(cfg.jnp_param_dtype))
  return jax.tree.unflatten(treedef, out)


# ----------------------------------------------------------------------------- layer math


def rms_norm(x: jax.Array, w: jax.Array, eps: float) -> jax.Array:
  """HF RMSNorm: normalize in float32, cast back, then scale."""
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return w.astype(x.dtype) * y.astype(x.dtype)


@functools.lru_cache(maxsize=32)
def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
  """[hd/2] inverse frequencies, with Llama-3 frequency-dependent scaling when configured."""
  hd = cfg.head_dim
  inv = 1.0 / (cfg.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
  rs = cfg.rope_scaling
  if rs is not None:
    low_wl = rs.original_max_position_embeddings / rs.low_freq_factor
    high_wl = rs.original_max_position_embeddings / rs.high_freq_factor
    wl = 2 * np.pi / inv
    scaled = np.where(wl > low_wl, inv / rs.factor, inv)
    smooth = (rs.original_max_position_embeddings / wl - rs.low_freq_factor) / (
        rs.high_freq_factor - rs.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rs.factor + smooth * scaled
    medium = (wl >= high_wl) & (wl <= low_wl)
    inv = np.where(medium, smoothed, scaled)
  return inv.astype(np.float32)


def rope_tables(positions: jax.Array, cfg: ModelConfig, dtype) -> tuple[jax.Array, jax.Array]:
  """(cos, sin), each [..., T, 1, hd/2] in `dtype`, for positions [..., T].

  Computed once per forward and shared by every layer: inside the layer scan XLA would fuse
  cos/sin into each head's elementwise work and recompute them per element (and again in
  the rematerialized backward).
  """
  freqs = positions.astype(jnp.float32)[..., None] * rope_inv_freq(cfg)  # [..., T, hd/2]
  return jnp.cos(freqs)[..., None, :].astype(dtype), jnp.sin(freqs)[..., None, :].astype(dtype)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotary embedding (HF rotate-half convention). x [..., T, heads, hd]; cos, sin from
  `rope_tables`."""
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def rope(x: jax.Array, positions: jax.Array, cfg: ModelConfig) -> jax.Array:
  """Rotary embedding (HF rotate-half convention). x [..., T, heads, hd], positions [..., T]."""
  return apply_rope(x, *rope_tables(positions, cfg, x.dtype))


def matmul_rows(x: jax.Array, w: jax.Array) -> jax.Array:
  """x [..., K] @ w [K, N] -> [..., N] as one 2-D GEMM over all leading rows.

  XLA:CPU differentiates a [B, T, K] @ [K, N] matmul into a weight gradient that contracts two
  batch-like axes and materializes transposed [N, B*T] copies of the activation gradient (slow
  loop-emitted transposes); flattening the rows first gives plain [K, M] x [M, N] GEMMs.
  """
  return jnp.matmul(x.reshape(-1, x.shape[-1]), w).reshape(*x.shape[:-1], w.shape[-1])


def _proj(x, p, name, dtype):
  y = matmul_rows(x, p[name].astype(dtype))
  if name + "_bias" in p:
    y = y + p[name + "_bias"].astype(dtype)
  return y


def _qkv(x, p, rope_cs, cfg):
  """x [B, T, d] -> q [B, T, H, hd], k, v [B, T, KV, hd] with norms and RoPE applied.

  rope_cs: (cos, sin) from `rope_tables` for the rows' positions."""
  B, T, _ = x.shape
  dt, hd = cfg.jnp_dtype, cfg.head_dim
  q = _proj(x, p, "q", dt).reshape(B, T, cfg.num_heads, hd)
  k = _proj(x, p, "k", dt).reshape(B, T, cfg.num_kv_heads, hd)
  v = _proj(x, p, "v", dt).reshape(B, T, cfg.num_kv_heads, hd)
  if cfg.qk_norm:
    q = rms_norm(q, p["q_norm"], cfg.rms_norm_eps)
    k = rms_norm(k, p["k_norm"], cfg.rms_norm_eps)
  return apply_rope(q, *rope_cs), apply_rope(k, *rope_cs), v


def _mlp(x, p, cfg):
  dt = cfg.jnp_dtype
  h = rms_norm(x, p["mlp_norm"], cfg.rms_norm_eps)
  g = matmul_rows(h, p["gate"].astype(dt))
  u = matmul_rows(h, p["up"].astype(dt))
  return x + matmul_rows(jax.nn.silu(g) * u, p["down"].astype(dt))


def _attend(q, k_t, v, bias, cfg):
  """Grouped-query attention as batched matmuls.

  q [B, KV, G*Tq, hd]; k_t [B, KV, hd, S]; v [B, KV, S, hd]; bias [B, 1, G*Tq or 1, S] (0/_NEG).
  Returns [B, KV, G*Tq, hd].
  """
  scale = cfg.head_dim ** -0.5
  s = jnp.matmul(q, k_t).astype(jnp.float32) * scale + bias
  probs = jax.nn.softmax(s, axis=-1).astype(v.dtype)
  return jnp.matmul(probs, v)


def _layer_full(x, p, rope_cs, mask, bias, cfg):
  """One decoder layer over full sequences. x [B, T, d]; rope_cs: `rope_tables` (cos, sin);
  mask [B, T]; bias [B, 1, 1, T, T] (the dense path's prebuilt `attention.causal_bias`, None
  for the other paths).

  Returns (x, (k, v)) with k, v [B, T, KV, hd] (post-RoPE; for building a KV cache).
  """
  B, T, _ = x.shape
  h = rms_norm(x, p["attn_norm"], cfg.rms_norm_eps)
  q, k, v = _qkv(h, p, rope_cs, cfg)
  if bias is not None:
    o = attention.dense_with_bias(q, k, v, bias)
  else:
    o = attention.attend(q, k, v, mask, impl=attention_impl(cfg, T),
                         block_size=cfg.attention_block_size)
  o = o.reshape(B, T, cfg.num_heads * cfg.head_dim)
  x = x + matmul_rows(o, p["o"].astype(cfg.jnp_dtype))
  return _mlp(x, p, cfg), (k, v)


def attention_impl(cfg: ModelConfig, seq_len: int) -> str:
  """The attention implementation `cfg.attention` resolves to for sequences of seq_len."""
  return attention.resolve(cfg.attention, seq_len=seq_len, block_size=cfg.attention_block_size,
                           dtype=cfg.jnp_dtype, head_dim=cfg.head_dim)


def positions_from_mask(mask: jax.Array) -> jax.Array:
  """[B, T] validity mask -> [B, T] int32 positions (cumsum - 1, 0 on leading padding)."""
  return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def embed(params: Params, tokens: jax.Array, cfg: ModelConfig) -> jax.Array:
  return jnp.take(params["embed"], tokens, axis=0).astype(cfg.jnp_dtype)


def lm_head_kernel(params: Params, cfg: ModelConfig) -> jax.Array:
  """[d, V] output projection (the transposed embedding when tied)."""
  return params["embed"].T if cfg.tie_embeddings else params["lm_head"]


# remat option -> what the backward pass keeps of each layer's forward (jax.checkpoint policy).
REMAT_POLICIES = {
    "none": None,  # everything autodiff saves (MLP activations, T x T probabilities if dense)
    "full": jax.checkpoint_policies.nothing_saveable,  # only the layer inputs; all recomputed
    # the 2-D projection outputs (q, k, v, o, gate, up, down) plus the blockwise attention's
    # output and row log-sum-exp; norms, RoPE, SiLU (and dense attention) are recomputed.
    "dots": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        jax.checkpoint_policies.save_only_these_names(*attention.SAVEABLE_NAMES)),
}


def remat_policy(remat: bool | str):
  """The checkpoint policy of a `remat` argument (False = "none", True = "full"), or None."""
  name = ("full" if remat else "none") if isinstance(remat, bool) else remat
  if name not in REMAT_POLICIES:
    raise ValueError(f"remat must be a bool or one of {sorted(REMAT_POLICIES)}, got {remat!r}")
  return REMAT_POLICIES[name]


def forward_hidden(params: Params, tokens: jax.Array, mask: jax.Array, cfg: ModelConfig,
                   *, remat: bool | str = False, return_kv: bool = False):
  """Final-norm hidden states [B, T, d] (scan over layers).

  tokens [B, T] int; mask [B, T] (1 = real token). With `return_kv`, also returns the per-layer
  post-RoPE keys and values, each [L, B, T, KV, hd].
  """
  rope_cs = rope_tables(positions_from_mask(mask), cfg, cfg.jnp_dtype)  # shared by the layers
  dense = attention_impl(cfg, tokens.shape[1]) == "dense"
  bias = attention.causal_bias(mask) if dense else None  # built once, shared by the layers
  x = constraints.batch_rows(embed(params, tokens, cfg))

  def body(x, p):
    x, kv = _layer_full(x, p, rope_cs, mask, bias, cfg)
    return constraints.batch_rows(x), (kv if return_kv else None)

  policy = remat_policy(remat)
  if policy is not None:
    body = jax.checkpoint(body, policy=policy)
  x, kv = jax.lax.scan(body, x, params["layers"])
  h = constraints.batch_rows(rms_norm(x, params["final_norm"], cfg.rms_norm_eps))
  return (h, kv) if return_kv else h


def forward(params: Params, tokens: jax.Array, mask: jax.Array, cfg: ModelConfig) -> jax.Array:
  """Logits [B, T, V] float32. Materializes [B, T, V]: for training use `token_logprobs`."""
  h = forward_hidden(params, tokens, mask, cfg)
  return jnp.matmul(h, lm_head_kernel(params, cfg).astype(cfg.jnp_dtype)).astype(jnp.float32)


# ----------------------------------------------------------------------------- log-probs


def token_logprobs(params: Params, tokens: jax.Array, mask: jax.Array, cfg: ModelConfig, *,
                   temperature: float = 1.0, chunk_size: int = 128, remat: bool = False,
                   return_entropy: bool = False):
  """Teacher-forced log-probs without materializing [B, T, V].

  Returns logprobs [B, T] float32 with logprobs[:, t] = log p(tokens[:, t] | tokens[:, :t]) under
  softmax(logits / temperature), 0 at t = 0 and wherever mask is 0; with `return_entropy` also
  the entropy [B, T] of the predictive distribution for token t. The lm-head projection and
  log-softmax run in a scan over sequence chunks with rematerialization, so at most
  [B, chunk_size, V] logits exist at once, forward or backward.
  """
  B, T = tokens.shape
  h = forward_hidden(params, tokens, mask, cfg, remat=remat)[:, :-1]  # predicts tokens[:, 1:]
  targets = tokens[:, 1:]
  n = T - 1
  c = max(1, min(chunk_size, n))
  pad = (-n) % c
  h = jnp.pad(h, ((0, 0), (0, pad), (0, 0)))
  targets = jnp.pad(targets, ((0, 0), (0, pad)))
  nc = (n + pad) // c
  h = constraints.batch_rows(h.reshape(B, nc, c, -1).swapaxes(0, 1), axis=1)
  targets = constraints.batch_rows(targets.reshape(B, nc, c).swapaxes(0, 1), axis=1)
  w = lm_head_kernel(params, cfg).astype(cfg.jnp_dtype)
  inv_t = 1.0 / temperature

  @jax.checkpoint
  def chunk(hc, tc):
    logits = matmul_rows(hc, w).astype(jnp.float32) * inv_t
    lse = jax.nn.logsumexp(logits, axis=-1)
    lp = jnp.take_along_axis(logits, tc[..., None], axis=-1)[..., 0] - lse
    if not return_entropy:
      return lp, None
    probs = jnp.exp(logits - lse[..., None])
    return lp, lse - jnp.sum(probs * logits, axis=-1)

  _, (lp, ent) = jax.lax.scan(lambda _, xs: (None, chunk(*xs)), None, (h, targets))
  valid = mask[:, 1:].astype(bool)
  def unchunk(a):
    a = a.swapaxes(0, 1).reshape(B, nc * c)[:, :n]
    return jnp.pad(jnp.where(valid, a, 0.0), ((0, 0), (1, 0)))
  return (unchunk(lp), unchunk(ent)) if return_entropy else unchunk(lp)


# ----------------------------------------------------------------------------- KV cache


@flax.struct.dataclass
class KVCache:
  """Decode state. k: tuple of L arrays [B, KV, hd, S]; v: tuple of L arrays [B, KV, S, hd];
  valid [B, S] bool (key is a real token); index: int32 scalar, next column to write;
  positions [B] int32, position id of the next token of each row."""

  k: tuple
  v: tuple
  valid: jax.Array
  index: jax.Array
  positions: jax.Array


def prefill(params: Params, tokens: jax.Array, mask: jax.Array, cfg: ModelConfig,
            cache_len: int) -> tuple[jax.Array, KVCache]:
  """Runs the prompt [B, P] and returns (last-position logits [B, V] float32, cache of length
  cache_len >= P). Rows may be left-padded; the last column must be a real token in every row."""
  B, P = tokens.shape
  h, (k, v) = forward_hidden(params, tokens, mask, cfg, return_kv=True)  # k: [L, B, P, KV, hd]
  logits = jnp.matmul(h[:, -1], lm_head_kernel(params, cfg).astype(cfg.jnp_dtype))
  extra = cache_len - P
  k = jnp.pad(k.transpose(0, 1, 3, 4, 2), ((0, 0),) * 4 + ((0, extra),))  # [L, B, KV, hd, S]
  v = jnp.pad(v.transpose(0, 1, 3, 2, 4), ((0, 0),) * 3 + ((0, extra), (0, 0)))  # [L,B,KV,S,hd]
  L = cfg.num_layers
  cache = KVCache(
      k=tuple(k[i] for i in range(L)), v=tuple(v[i] for i in range(L)),
      valid=jnp.pad(mask.astype(bool), ((0, 0), (0, extra))),
      index=jnp.array(P, jnp.int32),
      positions=jnp.sum(mask.astype(jnp.int32), axis=-1),
  )
  return logits.astype(jnp.float32), cache


def decode_layer_params(params: Params, cfg: ModelConfig) -> list[Params]:
  """Per-layer params for the unrolled decode loop, with q/k/v and gate/up fused along the
  output axis (one GEMM each instead of three / two). Call once, outside the decode loop."""
  lp = params["layers"]
  out = []
  for i in range(cfg.num_layers):
    p = {name: a[i] for name, a in lp.items()}
    p["qkv"] = jnp.concatenate([p.pop("q"), p.pop("k"), p.pop("v")], axis=-1)
    if cfg.attention_bias:
      p["qkv_bias"] = jnp.concatenate([p.pop("q_bias"), p.pop("k_bias"), p.pop("v_bias")], -1)
    p["gate_up"] = jnp.concatenate([p.pop("gate"), p.pop("up")], axis=-1)
    out.append(p)
  return out


def decode_step(params: Params, layer_params: list[Params], token: jax.Array, cache: KVCache,
                cfg: ModelConfig) -> tuple[jax.Array, KVCache]:
  """One token per row: token [B] -> (logits [B, V] float32, updated cache).

  layer_params comes from `decode_layer_params(params, cfg)`.
  """
  B = token.shape[0]
  KV, G, hd, H = cfg.num_kv_heads, cfg.q_per_kv, cfg.head_dim, cfg.num_heads
  dt = cfg.jnp_dtype
  idx = cache.index
  pos = cache.positions
  valid = jax.lax.dynamic_update_slice(cache.valid, jnp.ones((B, 1), bool), (0, idx))
  bias = jnp.where(valid, 0.0, _NEG).astype(jnp.float32)[:, None, None, :]  # [B, 1, 1, S]
  # No batch hint in decode: pinning x [B, d] to the batch axes makes XLA gather every
  # fsdp-split weight for the whole decode loop (si-plan: ~120 GiB per device for Qwen3-32B at
  # any device count); left free, it moves the small activations instead (0.75 GiB at 256).
  x = embed(params, token, cfg)  # [B, d]
  ks, vs = list(cache.k), list(cache.v)
  for i, p in enumerate(layer_params):
    h = rms_norm(x, p["attn_norm"], cfg.rms_norm_eps)
    qkv = jnp.matmul(h, p["qkv"].astype(dt))
    if "qkv_bias" in p:
      qkv = qkv + p["qkv_bias"].astype(dt)
    q = qkv[:, :H * hd].reshape(B, 1, H, hd)
    k = qkv[:, H * hd:(H + KV) * hd].reshape(B, 1, KV, hd)
    v = qkv[:, (H + KV) * hd:].reshape(B, KV, 1, hd)
    if cfg.qk_norm:
      q = rms_norm(q, p["q_norm"], cfg.rms_norm_eps)
      k = rms_norm(k, p["k_norm"], cfg.rms_norm_eps)
    q = rope(q, pos[:, None], cfg).reshape(B, KV, G, hd)
    k = rope(k, pos[:, None], cfg).reshape(B, KV, hd, 1)
    k, v = jax.lax.optimization_barrier((k, v))
    ks[i] = jax.lax.dynamic_update_slice(ks[i], k.astype(ks[i].dtype), (0, 0, 0, idx))
    vs[i] = jax.lax.dynamic_update_slice(vs[i], v.astype(vs[i].dtype), (0, 0, idx, 0))
    o = _attend(q, ks[i], vs[i], bias, cfg).reshape(B, H * hd)
    x = x + jnp.matmul(o, p["o"].astype(dt))
    h = rms_norm(x, p["mlp_norm"], cfg.rms_norm_eps)
    gu = jnp.matmul(h, p["gate_up"].astype(dt))
    g, u = jnp.split(gu, 2, axis=-1)
    x = x + jnp.matmul(jax.nn.silu(g) * u, p["down"].astype(dt))
  h = rms_norm(x, params["final_norm"], cfg.rms_norm_eps)
  logits = jnp.matmul(h, lm_head_kernel(params, cfg).astype(dt)).astype(jnp.float32)
  new = KVCache(k=tuple(ks), v=tuple(vs), valid=valid, index=idx + 1, positions=pos + 1)
  return logits, new
