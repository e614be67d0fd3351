"""Sampling on token ids: jit prefill + `lax.while_loop` decode with a donated KV cache.

Prompts are lists of token ids of any length, left-padded into one `[B, P]` array; a prompt
may be a chat prompt plus a prefix of an earlier response (SI continues failed rollouts from
their prefixes), and nothing is ever re-tokenized. Every call takes an explicit PRNG key; the
key for step t is `fold_in(key, t)`, so results depend only on (params, prompts, key, params).

Pure functions (`sample_token`, `decode_loop`, `generate`) are jit-able with a static
`ModelConfig` and `SamplingParams`; `Sampler` wraps them with explicit shardings on a mesh.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from si_jax import multihost
from si_jax import sharding as shd
from si_jax.models import transformer
from si_jax.models.config import ModelConfig

_NEG = -1e30


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """How to sample. temperature 0 = greedy. top_k 0 = off. top_p 1.0 = off.

  Log-probs are reported under softmax(logits / temperature) (temperature 1 when greedy),
  before top-k/top-p filtering: the behaviour policy's density that RL ratios need.
  """

  max_new_tokens: int
  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0
  stop_ids: tuple[int, ...] = ()
  pad_id: int = 0

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
    if not self.temperature >= 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
    object.__setattr__(self, "stop_ids", tuple(int(s) for s in self.stop_ids))

  @property
  def greedy(self) -> bool:
    return self.temperature == 0


@flax.struct.dataclass
class SampleOutput:
  """tokens [B, N] int32 (pad_id after a stop); logprobs [B, N] float32 (0 after a stop);
  lengths [B] int32 (generated tokens, stop token included); finished [B] bool (hit a stop id)."""

  tokens: jax.Array
  logprobs: jax.Array
  lengths: jax.Array
  finished: jax.Array


def pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int = 0, *,
                length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads token lists into (tokens [B, P] int32, mask [B, P] bool).

  P = `length` if given, else the longest prompt. An empty prompt or one longer than `length`
  is an error naming its row.
  """
  if len(prompts) == 0:
    raise ValueError("pad_prompts: got no prompts")
  lens = [len(p) for p in prompts]
  for i, n in enumerate(lens):
    if n == 0:
      raise ValueError(f"prompt {i} is empty: every prompt needs at least one token")
  P = max(lens) if length is None else length
  for i, n in enumerate(lens):
    if n > P:
      raise ValueError(f"prompt {i} has {n} tokens, more than the prompt length {P}")
  tokens = np.full((len(prompts), P), pad_id, np.int32)
  mask = np.zeros((len(prompts), P), bool)
  for i, p in enumerate(prompts):
    tokens[i, P - len(p):] = np.asarray(p, np.int32)
    mask[i, P - len(p):] = True
  return tokens, mask


def filter_logits(logits: jax.Array, top_k: int, top_p: float) -> jax.Array:
  """Sets logits outside the top-k / nucleus (top-p) set to a large negative. [B, V] f32."""
  if top_k > 0 and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, _NEG, logits)
  if top_p < 1.0:
    srt = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(srt, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each token
    keep = before < top_p  # always keeps the top token
    thresh = jnp.min(jnp.where(keep, srt, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < thresh, _NEG, logits)
  return logits


def sample_token(logits: jax.Array, key: jax.Array, sp: SamplingParams):
  """logits [B, V] float32 -> (token [B] int32, logprob [B] float32)."""
  t = 1.0 if sp.greedy else sp.temperature
  scaled = logits / t
  logp = jax.nn.log_softmax(scaled, axis=-1)
  if sp.greedy:
    tok = jnp.argmax(logits, axis=-1)
  else:
    tok = jax.random.categorical(key, filter_logits(scaled, sp.top_k, sp.top_p), axis=-1)
  tok = tok.astype(jnp.int32)
  return tok, jnp.take_along_axis(logp, tok[:, None], axis=-1)[:, 0]


def decode_loop(params, logits: jax.Array, cache: transformer.KVCache, key: jax.Array,
                cfg: ModelConfig, sp: SamplingParams
                ) -> tuple[SampleOutput, transformer.KVCache]:
  """Samples up to sp.max_new_tokens per row from `logits` [B, V] and `cache` (from prefill).

  Stops early once every row has emitted a stop id. Returns the samples and the final cache
  (which aliases the donated input cache under jit).
  """
  B = logits.shape[0]
  N = sp.max_new_tokens
  layer_params = transformer.decode_layer_params(params, cfg)
  stop = jnp.asarray(sp.stop_ids if sp.stop_ids else (-1,), jnp.int32)

  def cond(state):
    step, _, _, _, _, done, _ = state
    return (step < N) & ~jnp.all(done)

  def body(state):
    step, logits, cache, toks, lps, done, lengths = state
    tok, lp = sample_token(logits, jax.random.fold_in(key, step), sp)
    tok = jnp.where(done, sp.pad_id, tok)
    lp = jnp.where(done, 0.0, lp)
    toks = jax.lax.dynamic_update_slice(toks, tok[:, None], (0, step))
    lps = jax.lax.dynamic_update_slice(lps, lp[:, None], (0, step))
    lengths = lengths + (~done).astype(jnp.int32)
    done = done | jnp.isin(tok, stop)
    logits, cache = transformer.decode_step(params, layer_params, tok, cache, cfg)
    return step + 1, logits, cache, toks, lps, done, lengths

  init = (jnp.array(0, jnp.int32), logits, cache,
          jnp.full((B, N), sp.pad_id, jnp.int32), jnp.zeros((B, N), jnp.float32),
          jnp.zeros((B,), bool), jnp.zeros((B,), jnp.int32))
  _, _, cache, toks, lps, done, lengths = jax.lax.while_loop(cond, body, init)
  return SampleOutput(tokens=toks, logprobs=lps, lengths=lengths, finished=done), cache


def generate(params, tokens: jax.Array, mask: jax.Array, key: jax.Array, cfg: ModelConfig,
             sp: SamplingParams) -> SampleOutput:
  """Prefill + decode in one pure function. tokens, mask [B, P] (left-padded)."""
  logits, cache = transformer.prefill(params, tokens, mask, cfg,
                                      tokens.shape[1] + sp.max_new_tokens)
  return decode_loop(params, logits, cache, key, cfg, sp)[0]


class Sampler:
  """Jitted, sharded sampling for one model config on one mesh.

  Prefill and the decode loop are two jits; the cache made by prefill is donated to the decode
  loop, which updates it in place. Prompt widths are rounded up to `prompt_bucket` and the batch
  to the mesh's batch-shard count, so recompiles stay rare; padding rows are dropped again.

  max_len: the cache length (prompt + new tokens); a longer request is an error.
  """

  def __init__(self, cfg: ModelConfig, mesh=None, *, max_len: int | None = None,
               prompt_bucket: int = 16, rules=shd.DEFAULT_RULES):
    self.cfg = cfg
    self.mesh = mesh if mesh is not None else shd.make_mesh(devices=jax.devices()[:1])
    self.max_len = max_len or cfg.max_position_embeddings
    self.prompt_bucket = prompt_bucket
    self.rules = rules
    self._param_sh = shd.param_shardings(cfg, self.mesh, rules)
    self._prefill = {}
    self._decode = {}

  def _cache_shardings(self, B, S):
    m, r = self.mesh, self.rules
    k = shd.named(m, ("batch", "kv_heads", "head_dim", "cache_seq"),
                  (B, self.cfg.num_kv_heads, self.cfg.head_dim, S), r)
    v = shd.named(m, ("batch", "kv_heads", "cache_seq", "head_dim"),
                  (B, self.cfg.num_kv_heads, S, self.cfg.head_dim), r)
    L = self.cfg.num_layers
    return transformer.KVCache(k=(k,) * L, v=(v,) * L,
                               valid=shd.batch_sharding(m, (B, S), r), index=shd.replicated(m),
                               positions=shd.batch_sharding(m, (B,), r))

  def _get_fns(self, B, P, sp):
    S = P + sp.max_new_tokens
    bs2 = shd.batch_sharding(self.mesh, (B, P), self.rules)
    rep = shd.replicated(self.mesh)
    logit_sh = shd.batch_sharding(self.mesh, (B, self.cfg.vocab_size), self.rules)
    cache_sh = self._cache_shardings(B, S)
    if (B, P, S) not in self._prefill:
      self._prefill[(B, P, S)] = jax.jit(
          shd.on_mesh(functools.partial(transformer.prefill, cfg=self.cfg, cache_len=S),
                      self.mesh),
          in_shardings=(self._param_sh, bs2, bs2), out_shardings=(logit_sh, cache_sh))
    if (B, S, sp) not in self._decode:
      out_sh = SampleOutput(
          tokens=shd.batch_sharding(self.mesh, (B, sp.max_new_tokens), self.rules),
          logprobs=shd.batch_sharding(self.mesh, (B, sp.max_new_tokens), self.rules),
          lengths=shd.batch_sharding(self.mesh, (B,), self.rules),
          finished=shd.batch_sharding(self.mesh, (B,), self.rules))
      self._decode[(B, S, sp)] = jax.jit(
          shd.on_mesh(functools.partial(decode_loop, cfg=self.cfg, sp=sp), self.mesh),
          in_shardings=(self._param_sh, logit_sh, cache_sh, rep), out_shardings=(out_sh, cache_sh),
          donate_argnums=(2,))
    return self._prefill[(B, P, S)], self._decode[(B, S, sp)]

  def generate(self, params, prompts: Sequence[Sequence[int]], key: jax.Array,
               sp: SamplingParams) -> SampleOutput:
    """Samples continuations of `prompts` (lists of token ids). Returns numpy arrays.

    In a multi-process run `prompts` are this process's rows and every process must call
    (the jits are collective; a process may pass no prompts): the processes agree on the
    prompt width and the per-process row count, and each gets back its own rows only.
    """
    multi = jax.process_count() > 1
    if len(prompts) == 0 and not multi:
      raise ValueError("Sampler.generate: got no prompts")
    longest = max((len(p) for p in prompts), default=1)
    if longest + sp.max_new_tokens > self.max_len:
      i = max(range(len(prompts)), key=lambda j: len(prompts[j]))
      raise ValueError(
          f"prompt {i} has {longest} tokens; with max_new_tokens={sp.max_new_tokens} that needs "
          f"a cache of {longest + sp.max_new_tokens} > max_len={self.max_len}")
    B0 = len(prompts)
    if multi:  # one shape for all processes
      longest, rows = multihost.allgather(np.array([longest, B0], np.int64)).max(axis=0)
    else:
      rows = B0
    P = -(-int(longest) // self.prompt_bucket) * self.prompt_bucket
    P = min(P, self.max_len - sp.max_new_tokens)
    if B0:
      tokens, mask = pad_prompts(prompts, sp.pad_id, length=P)
    else:  # a process without prompts still takes part, with one-token dummy rows
      tokens, mask = np.full((1, P), sp.pad_id, np.int32), np.zeros((1, P), bool)
      mask[:, -1] = True
    div = shd.batch_divisor(self.mesh) // jax.process_count()
    B = -(-max(int(rows), 1) // div) * div  # rows per process
    if B != len(tokens):  # fill with copies of row 0; their outputs are dropped
      tokens = np.concatenate([tokens, np.repeat(tokens[:1], B - len(tokens), 0)])
      mask = np.concatenate([mask, np.repeat(mask[:1], B - len(mask), 0)])
    G = B * jax.process_count()
    prefill, decode = self._get_fns(G, P, sp)
    bs = shd.batch_sharding(self.mesh, (G, P), self.rules)
    logits, cache = prefill(params, multihost.to_global(tokens, bs),
                            multihost.to_global(mask, bs))
    out, _ = decode(params, logits, cache, key)
    out = multihost.tree_local_rows(out)
    return jax.tree.map(lambda a: a[:B0], out)
