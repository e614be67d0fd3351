"""One jit-compiled, sharded optimizer update over a sum of loss terms.

An update consumes a *mini-batch*: a dict mapping each loss term's name to that term's own
sub-batch (sequences may differ per term: the policy term trains on rollouts under the task
prompt, a repair-mode term on repairs under the repair prompt). Every term returns a loss sum,
and its denominator is computed from masks over the whole mini-batch before the micro-batch
loop, so

    loss = sum_k weight_k * (sum over micro-batches of loss_sum_k) / denominator_k

is the same number, with the same gradient, whatever the number of micro-batches.

Sub-batch arrays (all [B, T] unless noted; B a multiple of the number of micro-batches):
  tokens int32, input_mask (1 = real token), loss_mask (1 = token gets loss; may be an SI gate),
  and per term: old_logprobs, advantages, ref_logprobs (policy term with KL), seq_mask [B].

With LoRA (`si_jax.models.lora`) the state's params are the adapters; the frozen base params
are an extra, non-donated argument, merged with them inside the loss, so gradients, clipping
and the optimizer state cover the adapters only.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import optax

from si_jax import sharding as shd
from si_jax.models import lora as lora_lib
from si_jax.models import transformer
from si_jax.models.config import ModelConfig
from si_jax.rl import losses
from si_jax.rl.train_state import TrainState

Batch = Mapping[str, Mapping[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class PolicyTerm:
  """The GRPO-family clipped surrogate (`losses.policy_loss`) on rollouts.

  The fields are `policy_loss`'s arguments; they have no defaults here: their one home is the
  config (`si_jax.configs.LOSS_PRESETS` and `rl.*`), read by `si_jax.rl.credit.policy_term`.
  """

  ratio: str
  eps_low: float
  eps_high: float
  aggregation: str
  max_len: int | None
  kl_beta: float
  kl_estimator: str
  temperature: float
  name: str = "policy"
  weight: float = 1.0

  def __post_init__(self):
    if self.ratio not in losses.RATIOS:
      raise ValueError(f"ratio must be one of {losses.RATIOS}, got {self.ratio!r}")
    if self.aggregation not in losses.AGGREGATIONS:
      raise ValueError(f"aggregation must be one of {losses.AGGREGATIONS}, got "
                       f"{self.aggregation!r}")
    if self.kl_estimator not in ("k2", "k3") and self.kl_beta:
      raise ValueError(f"kl_estimator must be 'k2' or 'k3' as a loss (k1's gradient is zero "
                       f"in expectation), got {self.kl_estimator!r}")

  def _loss(self, logprobs, b, entropy=None):
    return losses.policy_loss(
        logprobs, b["old_logprobs"], b["advantages"], b["loss_mask"], ratio=self.ratio,
        eps_low=self.eps_low, eps_high=self.eps_high, aggregation=self.aggregation,
        max_len=self.max_len, ref_logprobs=b.get("ref_logprobs"), kl_beta=self.kl_beta,
        kl_estimator=self.kl_estimator, seq_mask=b.get("seq_mask"), entropy=entropy)

  def denominator(self, b) -> jax.Array:
    z = jnp.zeros(b["loss_mask"].shape, jnp.float32)
    return losses.aggregate(z, b["loss_mask"], self.aggregation, max_len=self.max_len,
                            seq_mask=b.get("seq_mask"))[1]

  def loss(self, params, b, cfg: ModelConfig, chunk_size: int, remat: bool | str):
    lp, ent = transformer.token_logprobs(params, b["tokens"], b["input_mask"], cfg,
                                         temperature=self.temperature, chunk_size=chunk_size,
                                         remat=remat, return_entropy=True)
    s, _, metrics = self._loss(lp, b, jax.lax.stop_gradient(ent))
    return s, metrics


@dataclasses.dataclass(frozen=True)
class NLLTerm:
  """Token-mean negative log-likelihood of the loss-masked tokens (SFT; repair-mode NLL)."""

  name: str = "sft"
  weight: float = 1.0

  def denominator(self, b) -> jax.Array:
    return jnp.sum(b["loss_mask"].astype(jnp.float32))

  def loss(self, params, b, cfg: ModelConfig, chunk_size: int, remat: bool | str):
    lp = transformer.token_logprobs(params, b["tokens"], b["input_mask"], cfg,
                                    chunk_size=chunk_size, remat=remat)
    s, d = losses.sft_loss(lp, b["loss_mask"])
    return s, {"nll": (s, d)}


def _split_micro(x: jax.Array, n: int) -> jax.Array:
  if x.shape[0] % n:
    raise ValueError(f"batch of {x.shape[0]} rows does not split into {n} micro-batches")
  return x.reshape(n, x.shape[0] // n, *x.shape[1:])


def loss_and_grads(params, batch: Batch, *, terms: tuple, cfg: ModelConfig, num_micro: int = 1,
                   chunk_size: int = 128, remat: bool | str = False, to_model=None):
  """(loss, grads, metrics) of the weighted sum of `terms` over `batch`, accumulated over
  `num_micro` micro-batches with a scan. metrics: name -> (sum, count) pairs, prefixed with
  the term name, plus '<term>/loss'. to_model: maps `params` (what is differentiated) to the
  model's params inside the loss (LoRA: the frozen base merged with the adapters); default
  the identity."""
  dens = {t.name: jnp.maximum(t.denominator(batch[t.name]), 1e-9) for t in terms}
  micro = jax.tree.map(functools.partial(_split_micro, n=num_micro), dict(batch))

  def micro_loss(p, mb):
    total, metrics = 0.0, {}
    p = p if to_model is None else to_model(p)
    for t in terms:
      s, m = t.loss(p, mb[t.name], cfg, chunk_size, remat)
      total = total + t.weight * s / dens[t.name]
      metrics[f"{t.name}/loss"] = (s, dens[t.name] / num_micro)
      metrics.update({f"{t.name}/{k}": v for k, v in m.items()})
    return total, metrics

  grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

  def step(carry, mb):
    loss, grads, metrics = carry
    l, m = None, None
    (l, m), g = grad_fn(params, mb)
    grads = jax.tree.map(jnp.add, grads, g)
    metrics = jax.tree.map(jnp.add, metrics, m) if metrics is not None else m
    return (loss + l, grads, metrics), None

  first = jax.tree.map(lambda x: x[0], micro)
  (l0, m0), g0 = grad_fn(params, first)
  if num_micro == 1:
    return l0, g0, m0
  rest = jax.tree.map(lambda x: x[1:], micro)
  (loss, grads, metrics), _ = jax.lax.scan(step, (l0, g0, m0), rest)
  return loss, grads, metrics


def loss_tokens(batch: Batch) -> jax.Array:
  """Number of tokens that get loss in a mini-batch, over all terms (loss_mask * seq_mask)."""
  n = jnp.zeros((), jnp.float32)
  for sub in batch.values():
    m = sub["loss_mask"].astype(jnp.float32)
    if "seq_mask" in sub:
      m = m * sub["seq_mask"].astype(jnp.float32)[:, None]
    n = n + jnp.sum(m)
  return n


def update_step(state: TrainState, batch: Batch, frozen=None, *, terms: tuple, cfg: ModelConfig,
                optimizer: optax.GradientTransformation, num_micro: int = 1,
                chunk_size: int = 128, remat: bool | str = False,
                lora: lora_lib.LoraConfig | None = None):
  """One optimizer update. With `lora`, state.params are LoRA adapters and `frozen` the base
  params they are merged into inside the loss (`lora.merge`): gradients, clipping and the
  optimizer state cover the adapters only.

  Skipped (params, optimizer state and its schedule unchanged) when the loss or gradient is
  non-finite (counted in `skipped` / `bad_streak`, metric 'update_skipped') or when no token
  of the mini-batch gets loss, e.g. every group was filtered out (metric
  'update_skipped_empty'; AdamW would otherwise still move the moments, decay the weights and
  advance the schedule)."""
  to_model = None if lora is None else (lambda p: lora_lib.merge(frozen, p, lora))
  loss, grads, metrics = loss_and_grads(state.params, batch, terms=terms, cfg=cfg,
                                        num_micro=num_micro, chunk_size=chunk_size,
                                        remat=remat, to_model=to_model)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  empty = loss_tokens(batch) == 0

  def apply(_):
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    return optax.apply_updates(state.params, updates), opt_state

  params, opt_state = jax.lax.cond(finite & ~empty, apply,
                                   lambda _: (state.params, state.opt_state), None)
  bad = (~finite).astype(jnp.int32)
  skip_empty = (finite & empty).astype(jnp.int32)
  new = state.replace(step=state.step + (1 - bad) * (1 - skip_empty), params=params,
                      opt_state=opt_state, skipped=state.skipped + bad,
                      bad_streak=(state.bad_streak + bad) * bad)
  out = losses.finalize_metrics(metrics)
  out.update(loss=loss, grad_norm=grad_norm, update_skipped=bad,
             update_skipped_empty=skip_empty)
  return new, out


def make_update_fn(state: TrainState, batch_example: Batch, mesh, *, terms: tuple,
                   cfg: ModelConfig, optimizer, num_micro: int = 1, chunk_size: int = 128,
                   remat: bool | str = False, lora: lora_lib.LoraConfig | None = None,
                   frozen=None):
  """`update_step` jitted with explicit shardings: state as it is placed (donated), every
  batch array split over the batch axes, metrics replicated. With `lora`, `frozen` (the base
  params, placed) is bound as an extra argument in its own shardings, never donated: the
  returned function is still `(state, batch) -> (state, metrics)`."""
  from si_jax.rl.train_state import state_shardings  # local: avoid a cycle at import
  st_sh = state_shardings(state, mesh)
  b_sh = jax.tree.map(lambda x: shd.batch_sharding(mesh, x.shape), batch_example)
  fn = shd.on_mesh(functools.partial(update_step, terms=terms, cfg=cfg, optimizer=optimizer,
                                     num_micro=num_micro, chunk_size=chunk_size, remat=remat,
                                     lora=lora), mesh)
  out_sh = (st_sh, shd.replicated(mesh))
  if lora is None:
    return jax.jit(fn, in_shardings=(st_sh, b_sh), out_shardings=out_sh, donate_argnums=(0,))
  if frozen is None:
    raise ValueError("make_update_fn: lora is set but frozen (the base params) is None")
  f_sh = jax.tree.map(lambda x: x.sharding, frozen)
  jitted = jax.jit(fn, in_shardings=(st_sh, b_sh, f_sh), out_shardings=out_sh,
                   donate_argnums=(0,))

  def step(state, batch):
    return jitted(state, batch, frozen)
  step.lower = lambda state, batch: jitted.lower(state, batch, frozen)  # as jit's, for AOT
  return step
