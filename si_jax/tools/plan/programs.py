"""The programs the trainer runs, built by the library's own builders and compiled from shapes.

No weights and no data: every array is a `jax.ShapeDtypeStruct` with its sharding, and each
program is lowered and compiled (`jax.jit(...).lower(...).compile()`) on the simulated mesh.
The programs, with the shapes the trainer would build (`inputs.Workload`):

  sample    `Sampler` prefill and decode loop (the trainer's jits, `Sampler.programs`) at the
            rollout batch (rl.prompts_per_step x rl.group_size rows, rounded up to the batch
            shards) and a KV cache of prompt + rl.max_new_tokens positions.
  logprobs  the pack stage's trainer log-probs (`batching.logprob_program`, the jit of
            `batching.make_logprob_fn`) of the packed rows, in rl.logprob_microbatches calls.
  update    the `update.Updater` programs the trainer runs, with the config's policy term
            (`credit.policy_term`), its optimizer (`train_state.optimizer_from_config(
            config.rl.optim)`), model.remat and model.attention: the gradient call
            (`update_grads`) on one call's rows (the rollout rows of a mini-batch /
            rl.microbatches, `batching.call_rows`), each row `--prompt_len` (rounded up to
            16) + rl.max_new_tokens tokens wide, while the optimizer state stays on the
            device; and the optimizer step (`update_apply`). With model.lora.rank > 0 the
            state's params are the adapters and the frozen base is an extra argument.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp

from si_jax import sampling
from si_jax import sharding as shd
from si_jax import train_state as ts
from si_jax.models import transformer
from si_jax.rl import batching
from si_jax.rl import credit as credit_lib
from si_jax.rl import update as update_lib
from si_jax.tools.plan.inputs import Workload, lora_config
from si_jax.tools.plan.memory import Program, abstract, compile_program, plain, tree_bytes


@dataclasses.dataclass
class Abstracts:
  """The abstract (shape, dtype, sharding) state of a run: `state` (params = the trained
  params: the model's, or LoRA adapters), `model_params` (what the sampler runs), `frozen`
  (LoRA base, else None)."""

  state: ts.TrainState
  model_params: Any
  frozen: Any
  lora: Any


def abstract_state(config, cfg, mesh, optimizer) -> Abstracts:
  """Params in their shardings and the state `train_state.create` makes around them, in its
  shardings (`train_state.init_shardings`)."""
  params = abstract(transformer.param_shapes(cfg), cfg.jnp_param_dtype,
                    shd.param_shardings(cfg, mesh))
  lc = lora_config(config)
  trained = params
  if lc is not None:
    from si_jax.models import lora as lora_lib
    trained = abstract(lora_lib.adapter_shapes(cfg, lc), jnp.float32,
                       lora_lib.adapter_shardings(cfg, lc, mesh))
  init = ts.init_fn(optimizer)
  state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                       jax.eval_shape(init, trained), ts.init_shardings(trained, optimizer, mesh))
  return Abstracts(state=state, model_params=params, frozen=params if lc else None, lora=lc)


def policy_batch(config, mesh, rows: int, width: int) -> dict:
  """The policy term's sub-batch as `batching.prepare` leaves it (UPDATE_KEYS), abstract."""
  def arr(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=shd.batch_sharding(mesh, shape))
  b = {"tokens": arr((rows, width), jnp.int32), "input_mask": arr((rows, width), jnp.bool_),
       "loss_mask": arr((rows, width), jnp.float32), "seq_mask": arr((rows,), jnp.float32),
       "advantages": arr((rows, width), jnp.float32),
       "old_logprobs": arr((rows, width), jnp.float32)}
  if config.rl.kl_beta > 0:
    b["ref_logprobs"] = arr((rows, width), jnp.float32)
  return b


def plan_update(config, cfg, mesh, wl: Workload, ab: Abstracts, optimizer) -> list[Program]:
  """The update's programs (`update.Updater`, the trainer's): the policy term's gradient call
  on one call's rows (`update_grads`, the accumulator donated; the optimizer state stays on
  the device meanwhile) and the optimizer step (`update_apply`, the state donated)."""
  term = credit_lib.policy_term(config)
  updater = update_lib.Updater(ab.state, mesh, cfg=cfg, chunk_size=config.model.logprob_chunk,
                               remat=config.model.remat, lora=ab.lora, frozen=ab.frozen)
  chunk = policy_batch(config, mesh, wl.micro_rows, wl.width)
  st = ab.state
  acc = updater.accumulator_shapes(st.params)  # float32 gradients with master weights
  den = jax.ShapeDtypeStruct((), jnp.float32, sharding=shd.replicated(mesh))
  args = (st.params, acc, chunk, den) + ((ab.frozen,) if ab.lora is not None else ())
  parts = {"params": tree_bytes(st.params), "accumulator": tree_bytes(acc),
           "batch": tree_bytes(chunk) + tree_bytes(den)}
  if ab.frozen is not None:
    parts["frozen_base"] = tree_bytes(ab.frozen)
  grads = compile_program("update_grads", updater.accumulate_program(term, chunk), args, parts)
  grads.held = {"opt_state": tree_bytes(st.opt_state)}
  empty = jax.ShapeDtypeStruct((), jnp.bool_, sharding=shd.replicated(mesh))
  apply = compile_program(
      "update_apply", updater.apply_program(optimizer), (st, acc, empty),
      {"params": tree_bytes(st.params), "opt_state": tree_bytes(st.opt_state),
       "counters": tree_bytes((st.step, st.skipped, st.bad_streak)),
       "accumulator": tree_bytes(acc), "batch": tree_bytes(empty)})
  return [grads, apply]


def plan_logprobs(config, cfg, mesh, wl: Workload, ab: Abstracts) -> Program:
  """`batching.logprob_program` (the jit of `batching.make_logprob_fn`) over one of its calls'
  share of the packed rows."""
  shape = (wl.logprob_rows, wl.width)
  fn = batching.logprob_program(cfg, mesh, shd.param_shardings(cfg, mesh), shape,
                                temperature=config.rl.temperature,
                                chunk_size=config.model.logprob_chunk)
  b = shd.batch_sharding(mesh, shape)
  tokens = jax.ShapeDtypeStruct(shape, jnp.int32, sharding=b)
  mask = jax.ShapeDtypeStruct(shape, jnp.bool_, sharding=b)
  return compile_program("logprobs", fn, (ab.model_params, tokens, mask),
                         {"params": tree_bytes(ab.model_params),
                          "batch": tree_bytes((tokens, mask))})


def plan_sampler(config, cfg, mesh, wl: Workload, ab: Abstracts) -> tuple[Program, Program]:
  """The trainer's `Sampler` jits (`Sampler.programs`): prefill [B, P] -> (logits, cache);
  decode loop (cache donated)."""
  c = config.rl
  sampler = sampling.Sampler(cfg, mesh, max_len=cfg.max_position_embeddings)
  sp = sampling.SamplingParams(max_new_tokens=c.max_new_tokens, temperature=c.temperature,
                               top_p=c.top_p, top_k=c.top_k, stop_ids=(1,), pad_id=0)
  B, P = wl.sample_batch, wl.prompt_len
  prefill, decode = sampler.programs(B, P, sp)
  bs = shd.batch_sharding(mesh, (B, P))
  tokens = jax.ShapeDtypeStruct((B, P), jnp.int32, sharding=bs)
  mask = jax.ShapeDtypeStruct((B, P), jnp.bool_, sharding=bs)
  params_b = tree_bytes(ab.model_params)
  t0 = time.perf_counter()
  compiled = prefill.lower(ab.model_params, tokens, mask).compile()
  logits, cache = plain(compiled.out_info)
  kv = tree_bytes((cache.k, cache.v))
  pre = Program.from_compiled("prefill", compiled, time.perf_counter() - t0,
                              {"params": params_b, "batch": tree_bytes((tokens, mask))})
  pre.out_parts["kv_cache"] = kv
  key = jax.ShapeDtypeStruct((), jax.eval_shape(lambda: jax.random.key(0)).dtype,
                             sharding=shd.replicated(mesh))
  dec = compile_program("decode", decode, (ab.model_params, logits, cache, key),
                        {"params": params_b, "kv_cache": kv,
                         "batch": tree_bytes(logits) + tree_bytes(key)
                         + tree_bytes((cache.valid, cache.index, cache.positions))})
  return pre, dec
