"""What si-bench's workloads share: the goals, the FLOP model, the timers, random prompts and the
jitted train step. The workload modules import it, never the package or the command line.

Achieved GFLOP/s counts model FLOPs analytically (the work the model needs, not what an
implementation happens to do: masked attention columns, rematerialization and optimizer
arithmetic are not counted). Per token, with d hidden, L layers, H / KV heads of size hd,
F MLP width, V vocab:

  body  = 2 * L * (d * hd * (2 H + 2 KV) + 3 d F)    q, k, v, o projections and the MLP
  head  = 2 * d * V                                   lm head
  attn(c) = 4 * L * H * hd * c                        QK^T and PV against c keys

  train step (B x T):  3 * B * (T * (body + head) + sum_{t=1..T} attn(t))   fwd + 2x fwd in bwd
  generate (B, P + N): B * (P * body + head + sum_{t=1..P} attn(t))          prefill, last logits
                     + B * sum_{i=1..N-1} (body + head + attn(P + i))       N-1 decode steps

(the first new token comes from the prefill's logits).
"""

from __future__ import annotations

import resource
import statistics
import time
from typing import Any, Callable

import numpy as np

# Benchmark targets from the speed issue: (size, workload) -> minimum si_jax / HF tok/s ratio.
TARGETS = {("tiny", "decode"): 3.0, ("25m", "decode"): 2.0, ("tiny", "train"): 1.0,
           ("25m", "train"): 1.2}


# ----------------------------------------------------------------------------- FLOP model


def body_flops(cfg) -> int:
  d, hd, f = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
  return 2 * cfg.num_layers * (d * hd * (2 * cfg.num_heads + 2 * cfg.num_kv_heads) + 3 * d * f)


def head_flops(cfg) -> int:
  return 2 * cfg.hidden_size * cfg.vocab_size


def attn_flops(cfg, context: int) -> int:
  return 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim * context


def train_flops(cfg, batch: int, length: int) -> int:
  """Model FLOPs of one fwd+bwd step on [batch, length] tokens (backward = 2x forward)."""
  attn = sum(attn_flops(cfg, t) for t in range(1, length + 1))
  return 3 * batch * (length * (body_flops(cfg) + head_flops(cfg)) + attn)


def generate_flops(cfg, batch: int, prompt_len: int, new_tokens: int) -> int:
  """Model FLOPs of generating `new_tokens` after a `prompt_len` prompt, for `batch` rows."""
  prefill = (prompt_len * body_flops(cfg) + head_flops(cfg)
             + sum(attn_flops(cfg, t) for t in range(1, prompt_len + 1)))
  decode = sum(body_flops(cfg) + head_flops(cfg) + attn_flops(cfg, prompt_len + i)
               for i in range(1, new_tokens))
  return batch * (prefill + decode)


# ----------------------------------------------------------------------------- timing


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int,
               usage: dict[str, float] | None = None) -> list[float]:
  """Wall seconds of `repeats` calls of `fn` (which must block until its result is ready),
  after `warmup` untimed calls. With `usage`, also stores there the minor page faults
  ('faults') and system CPU seconds ('sys_s') per timed call (getrusage of this process)."""
  for _ in range(warmup):
    fn()
  times = []
  r0 = resource.getrusage(resource.RUSAGE_SELF)
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  r1 = resource.getrusage(resource.RUSAGE_SELF)
  if usage is not None:
    usage["faults"] = (r1.ru_minflt - r0.ru_minflt) / repeats
    usage["sys_s"] = (r1.ru_stime - r0.ru_stime) / repeats
  return times


def median_time(fn: Callable[[], Any], args) -> float:
  """Median wall seconds of `fn` over `args.repeats` calls after `args.warmup` (`time_calls`)."""
  return statistics.median(time_calls(fn, args.repeats, args.warmup))


def time_rounds(calls: dict[str, Callable[[], Any]], repeats: int,
                warmup: int) -> dict[str, list[float]]:
  """Wall seconds of each of `calls` (name -> fn, each blocking until its result is ready),
  interleaved: every round calls each once in order, so a neighbour's load hits all alike.
  `warmup` untimed rounds, then `repeats` timed ones."""
  times: dict[str, list[float]] = {name: [] for name in calls}
  for i in range(warmup + repeats):
    for name, fn in calls.items():
      t0 = time.perf_counter()
      fn()
      if i >= warmup:
        times[name].append(time.perf_counter() - t0)
  return times


def prompts(cfg, batch: int, length: int, seed: int) -> np.ndarray:
  """[batch, length] int32 random token ids in [1, vocab) (0 is the pad id)."""
  return np.random.default_rng(seed).integers(1, cfg.vocab_size, (batch, length), np.int32)


def jax_train_step(cfg, lr: float, weight_decay: float, remat: str = "none"):
  """(init_state(params), jitted step(state, tokens, mask) -> (state, loss)); state donated.

  remat: `transformer.token_logprobs`'s remat policy name."""
  import jax
  import jax.numpy as jnp
  import optax

  from si_jax.models import transformer

  opt = optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay)

  def loss_fn(params, tokens, mask):
    lp = transformer.token_logprobs(params, tokens, mask, cfg, remat=remat)  # [B, T]
    w = mask[:, 1:].astype(jnp.float32)
    return -jnp.sum(lp[:, 1:] * w) / jnp.maximum(jnp.sum(w), 1.0)

  def step(state, tokens, mask):
    params, opt_state = state
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens, mask)
    updates, opt_state = opt.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  return (lambda params: (params, opt.init(params))), jax.jit(step, donate_argnums=0)
