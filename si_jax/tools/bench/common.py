"""What si-bench's workloads share (`si_jax/tools/bench/` and its siblings `bench_floor.py`,
`bench_grow.py`): the goals, the FLOP model, the timer, random prompts and the jitted train
step. A module of its own so the siblings need not import bench.py, which imports them."""

from __future__ import annotations

import resource
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
