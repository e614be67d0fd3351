"""The optimizer update over a sum of loss terms: one small program per term, a fixed shape each.

An update consumes a *mini-batch*: a dict mapping each loss term's name to that term's own
sub-batch (sequences may differ per term: the policy term trains on rollouts under the task
prompt, a repair-mode term on repairs under the repair prompt). Each term's rows are cut into
*calls* of a fixed number of rows (`rows_per_call`), and the update runs as

    for each term, for each call:  acc <- acc + grad(weight * loss_sum(call) / denominator)
    apply:                          clip, AdamW, skip if non-finite or empty

where a term's denominator is computed from the masks of its whole sub-batch first (it adds
over rows: `losses.denominator`), so

    loss = sum_k weight_k * (sum over calls of loss_sum_k) / denominator_k

is the same number, with the same gradient, whatever the number of calls. The programs are
`accumulate_step` (one per term and call shape) and `apply_step` (one per optimizer); a step
with more rows makes more calls, not a new program, and the terms' shapes do not multiply into
combinations (SI's policy rows, repair rows and repair-RL rows each vary on their own). The
accumulator (gradients and the loss) is donated from call to call.

Sub-batch arrays (all [B, T] unless noted; B a multiple of the term's rows per call):
  tokens int32, input_mask (1 = real token), loss_mask (1 = token gets loss; may be an SI gate),
  and per term: old_logprobs, advantages, ref_logprobs (policy term with KL), seq_mask [B].

With LoRA (`si_jax.models.lora`) the state's params are the adapters; the frozen base params
are an extra, non-donated argument, merged with them inside the loss, so gradients, clipping
and the optimizer state cover the adapters only.

Several processes: each brings its own rows (`local=True`, the RL terms) or every process holds
the whole batch (`local=False`, SFT); calls are cut the same way on every process (the row
counts agree, `batching.agree_terms`), and denominators are summed over processes.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from si_jax import multihost
from si_jax import sharding as shd
from si_jax.models import lora as lora_lib
from si_jax.models import transformer
from si_jax.models.config import ModelConfig
from si_jax.rl import losses
from si_jax import train_state as ts
from si_jax.train_state import TrainState

Batch = Mapping[str, Mapping[str, Any]]


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
  # cap of the truncated importance weight of rows sampled by another policy (SI's repairs,
  # `losses.policy_loss`'s behavior_logprobs); rows without behavior log-probs ignore it
  tis_cap: float = 1.0

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
        kl_estimator=self.kl_estimator, seq_mask=b.get("seq_mask"), entropy=entropy,
        row_len=b.get("row_len"), behavior_logprobs=b.get("behavior_logprobs"),
        behavior_rows=b.get("behavior_rows"), tis_cap=self.tis_cap)

  def denominator(self, b, xp=jnp) -> jax.Array:
    return losses.denominator(b["loss_mask"], self.aggregation, max_len=self.max_len,
                              seq_mask=b.get("seq_mask"), xp=xp)

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

  def denominator(self, b, xp=jnp) -> jax.Array:
    return losses.denominator(b["loss_mask"], "token_mean", xp=xp)

  def loss(self, params, b, cfg: ModelConfig, chunk_size: int, remat: bool | str):
    lp = transformer.token_logprobs(params, b["tokens"], b["input_mask"], cfg,
                                    chunk_size=chunk_size, remat=remat)
    s, d = losses.sft_loss(lp, b["loss_mask"])
    return s, {"nll": (s, d)}


@flax.struct.dataclass
class Accum:
  """What the calls of one update add up: gradients (the shape of the trained params) and the
  loss, both already divided by each term's denominator."""

  grads: Any
  loss: jax.Array


def groups(sub) -> list[Mapping[str, Any]]:
  """A term's sub-batch as a list of groups of one shape each (a dict is one group)."""
  return list(sub) if isinstance(sub, (list, tuple)) else [sub]


def loss_tokens(batch: Batch) -> float:
  """Tokens that get loss in a mini-batch, over all terms (loss_mask * seq_mask); host rows."""
  n = 0.0
  for sub in batch.values():
    for g in groups(sub):
      m = np.asarray(g["loss_mask"], np.float32)
      if "seq_mask" in g:
        m = m * np.asarray(g["seq_mask"], np.float32)[:, None]
      n += float(m.sum())
  return n


def accumulate_step(params, acc: Accum, chunk, denominator, frozen=None, *, term,
                    cfg: ModelConfig, chunk_size: int = 128, remat: bool | str = False,
                    lora: lora_lib.LoraConfig | None = None):
  """acc + the gradient of `term.weight * loss_sum(chunk) / denominator`, and the chunk's
  metrics as (sum, count) pairs ('<term>/loss': (loss_sum, the chunk's own denominator), so
  the pairs of all calls finalize to the term's loss). With `lora`, params are the adapters
  and `frozen` the base they are merged into inside the loss."""
  def scaled(p):
    model = p if lora is None else lora_lib.merge(frozen, p, lora)
    s, m = term.loss(model, chunk, cfg, chunk_size, remat)
    return term.weight * s / denominator, (s, m)

  (value, (s, m)), g = jax.value_and_grad(scaled, has_aux=True)(params)
  metrics = {f"{term.name}/loss": (s, term.denominator(chunk))}
  metrics.update({f"{term.name}/{k}": v for k, v in m.items()})
  grads = jax.tree.map(lambda a, b: a + b.astype(a.dtype), acc.grads, g)  # in acc's dtype
  return Accum(grads=grads, loss=acc.loss + value), metrics


def apply_step(state: TrainState, acc: Accum, empty, *, optimizer: optax.GradientTransformation):
  """The optimizer step on accumulated gradients.

  Skipped (params, optimizer state and its schedule unchanged) when the loss or gradient is
  non-finite (counted in `skipped` / `bad_streak`, metric 'update_skipped') or when no token
  of the mini-batch gets loss (`empty`), e.g. every group was filtered out (metric
  'update_skipped_empty'; AdamW would otherwise still move the moments, decay the weights and
  advance the schedule)."""
  grad_norm = optax.tree.norm(acc.grads)
  finite = jnp.isfinite(acc.loss) & jnp.isfinite(grad_norm)

  def apply(_):
    updates, opt_state = optimizer.update(acc.grads, state.opt_state, state.params)
    return optax.apply_updates(state.params, updates), opt_state

  params, opt_state = jax.lax.cond(finite & ~empty, apply,
                                   lambda _: (state.params, state.opt_state), None)
  bad = (~finite).astype(jnp.int32)
  skip_empty = (finite & empty).astype(jnp.int32)
  new = state.replace(step=state.step + (1 - bad) * (1 - skip_empty), params=params,
                      opt_state=opt_state, skipped=state.skipped + bad,
                      bad_streak=(state.bad_streak + bad) * bad)
  return new, dict(loss=acc.loss, grad_norm=grad_norm, update_skipped=bad,
                   update_skipped_empty=skip_empty)


def _sum_metrics(parts: list[dict]) -> dict[str, float]:
  """Finalizes (sum, count) pairs added over calls, in float64 on the host (NaN: count 0)."""
  sums: dict[str, list[float]] = {}
  for m in parts:
    for k, (s, c) in m.items():
      acc = sums.setdefault(k, [0.0, 0.0])
      acc[0] += float(s)
      acc[1] += float(c)
  return {k: (s / c if c > 0 else float("nan")) for k, (s, c) in sums.items()}


class Updater:
  """Updates a `TrainState` with the programs of the module docstring, built on first use per
  (term, call shape) and per optimizer, with explicit shardings: params and the accumulator as
  the state's params, every batch array split over the batch axes, metrics replicated; the
  state is donated to `apply_step` and the accumulator from call to call.

  state: the state as it is placed (its shardings are the programs'). frozen: with `lora`,
  the base params (placed), an extra never-donated argument of every call.
  """

  def __init__(self, state: TrainState, mesh, *, cfg: ModelConfig, chunk_size: int = 128,
               remat: bool | str = False, lora: lora_lib.LoraConfig | None = None,
               frozen=None):
    if lora is not None and frozen is None:
      raise ValueError("Updater: lora is set but frozen (the base params) is None")
    self.mesh, self.cfg, self.chunk_size, self.remat = mesh, cfg, chunk_size, remat
    self.lora, self.frozen = lora, frozen
    self.state_sh = ts.state_shardings(state, mesh)
    rep = shd.replicated(mesh)
    self.acc_sh = Accum(grads=self.state_sh.params, loss=rep)
    # float32 with master weights (bfloat16 params), else the params' dtype
    self.grad_dtypes = ts.gradient_dtypes(state)
    self._frozen_sh = (None if frozen is None else
                       jax.tree.map(lambda x: x.sharding, frozen))
    self._programs: dict = {}

  # -- the programs (public: si-plan lowers them from shapes)

  def zeros_program(self):
    """params -> a zero accumulator (gradients in `grad_dtypes`)."""
    if "zeros" not in self._programs:
      zeros = lambda p, dt: jnp.zeros(p.shape, dt)  # noqa: E731
      self._programs["zeros"] = jax.jit(
          lambda p: Accum(grads=jax.tree.map(zeros, p, self.grad_dtypes),
                          loss=jnp.zeros((), jnp.float32)),
          in_shardings=(self.state_sh.params,), out_shardings=self.acc_sh)
    return self._programs["zeros"]

  def accumulator_shapes(self, params) -> Accum:
    """The accumulator as ShapeDtypeStructs (params: arrays or ShapeDtypeStructs), placed like
    the programs take it: what si-plan lowers the gradient call with."""
    grads = jax.tree.map(lambda p, dt, sh: jax.ShapeDtypeStruct(p.shape, dt, sharding=sh),
                         params, self.grad_dtypes, self.acc_sh.grads)
    return Accum(grads=grads, loss=jax.ShapeDtypeStruct((), jnp.float32,
                                                        sharding=self.acc_sh.loss))

  def accumulate_program(self, term, chunk_example: Mapping[str, Any]):
    """(params, acc, chunk, denominator[, frozen]) -> (acc, metrics) for one term and the shape
    of `chunk_example` (arrays or ShapeDtypeStructs)."""
    shapes = tuple(sorted((k, tuple(v.shape), np.dtype(v.dtype).str)
                          for k, v in chunk_example.items()))
    key = ("acc", term, shapes)
    if key not in self._programs:
      rep = shd.replicated(self.mesh)
      chunk_sh = {k: shd.batch_sharding(self.mesh, v.shape) for k, v in chunk_example.items()}
      fn = shd.on_mesh(functools.partial(
          accumulate_step, term=term, cfg=self.cfg, chunk_size=self.chunk_size,
          remat=self.remat, lora=self.lora), self.mesh)
      in_sh = (self.state_sh.params, self.acc_sh, chunk_sh, rep)
      if self.lora is not None:
        in_sh = in_sh + (self._frozen_sh,)
      self._programs[key] = jax.jit(fn, in_shardings=in_sh, out_shardings=(self.acc_sh, rep),
                                    donate_argnums=(1,))
    return self._programs[key]

  def apply_program(self, optimizer: optax.GradientTransformation):
    """(state, acc, empty) -> (state, metrics); the state donated (the accumulator is freed
    when dropped: no output has its shape)."""
    key = ("apply", id(optimizer))
    if key not in self._programs:
      rep = shd.replicated(self.mesh)
      self._programs[key] = (optimizer, jax.jit(
          shd.on_mesh(functools.partial(apply_step, optimizer=optimizer), self.mesh),
          in_shardings=(self.state_sh, self.acc_sh, rep), out_shardings=(self.state_sh, rep),
          donate_argnums=(0,)))  # the optimizer is kept alive with its program (id key)
    return self._programs[key][1]

  def compile_ahead(self, state: TrainState, optimizer: optax.GradientTransformation,
                    calls: list[tuple[Any, Mapping[str, np.ndarray]]], local: bool = True
                    ) -> None:
    """Compiles, without running them, the programs `__call__` runs for `calls` ([(term, one
    call's host rows of this process)]), the zero accumulator and the optimizer step, and puts
    them in JAX's caches as `__call__` would: a term first trained late in a run compiles
    nothing then."""
    self.zeros_program().lower(state.params).compile()
    acc = self.accumulator_shapes(state.params)
    frozen = (self.frozen,) if self.lora is not None else ()
    for term, chunk in calls:
      chunk = {k: self._put(v, local) for k, v in chunk.items()}
      self.accumulate_program(term, chunk).lower(
          state.params, acc, chunk, np.float32(1), *frozen).compile()
    self.apply_program(optimizer).lower(state, acc, np.bool_(False)).compile()

  # -- one update

  def _put(self, x: np.ndarray, local: bool):
    """Host rows -> what a program takes: this process's rows (`local`) or rows every process
    holds in full, as global arrays (one process: the numpy array, placed by jit)."""
    if jax.process_count() == 1:
      return x
    x = np.asarray(x)
    if local:
      shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
      return multihost.to_global(x, shd.batch_sharding(self.mesh, shape))
    return multihost.global_from_host(x, shd.batch_sharding(self.mesh, x.shape))

  def __call__(self, state: TrainState, batch: Batch, *, terms: tuple, rows_per_call,
               optimizer: optax.GradientTransformation, local: bool = True
               ) -> tuple[TrainState, dict[str, float]]:
    """One optimizer update on `batch` (host arrays: {term name: {key: [R, ...]}}, or a list
    of such dicts of different widths for a term whose rows come in groups, e.g. SFT pairs
    grouped by length; the term's denominator covers all its groups).

    rows_per_call: {term name: rows per call} (or one int for every term), rows of the whole
    run (with `local`, each process brings its share: rows_per_call / processes); every
    term's rows must be a multiple of it.
    Returns the new state and the update's metrics (host floats): 'loss', 'grad_norm',
    'update_skipped', 'update_skipped_empty' and each term's '<term>/...'."""
    by_name = {t.name: t for t in terms}
    if set(by_name) != set(batch):
      raise ValueError(f"Updater: terms {sorted(by_name)} but batch holds {sorted(batch)}")
    dens, tokens = {}, loss_tokens(batch)
    for name, sub in batch.items():
      dens[name] = sum(float(by_name[name].denominator(g, xp=np)) for g in groups(sub))
    if local and jax.process_count() > 1:  # every process holds its own rows: global sums
      tot = multihost.allgather(np.asarray([tokens] + [dens[n] for n in batch], np.float64))
      tot = tot.sum(axis=0)
      tokens, dens = float(tot[0]), {n: float(v) for n, v in zip(batch, tot[1:])}
    acc = self.zeros_program()(state.params)
    parts = []
    for name, sub in batch.items():
      term = by_name[name]
      per = rows_per_call if isinstance(rows_per_call, int) else rows_per_call[name]
      if local:
        per //= jax.process_count()
      den = np.float32(max(dens[name], 1e-9))
      for group in groups(sub):
        rows = next(iter(group.values())).shape[0]
        if per < 1 or rows % per:
          raise ValueError(f"Updater: term {name!r} has {rows} rows, not a multiple of its "
                           f"{per} rows per call")
        for i in range(0, rows, per):
          chunk = {k: self._put(v[i:i + per], local) for k, v in group.items()}
          fn = self.accumulate_program(term, chunk)  # by the global shape (all processes')
          args = (state.params, acc, chunk, den)
          acc, m = fn(*(args + ((self.frozen,) if self.lora is not None else ())))
          parts.append(m)
    state, out = self.apply_program(optimizer)(state, acc, np.bool_(tokens == 0))
    metrics = {k: float(v) if np.ndim(v) == 0 else v for k, v in jax.device_get(out).items()}
    metrics["update_skipped"] = int(metrics["update_skipped"])
    metrics["update_skipped_empty"] = int(metrics["update_skipped_empty"])
    metrics.update(_sum_metrics(jax.device_get(parts)))
    return state, metrics


def make_update_fn(state: TrainState, batch_example: Batch, mesh, *, terms: tuple,
                   cfg: ModelConfig, optimizer, num_micro: int = 1, chunk_size: int = 128,
                   remat: bool | str = False, lora: lora_lib.LoraConfig | None = None,
                   frozen=None):
  """`(state, batch) -> (state, metrics)`: an `Updater` whose terms each take `num_micro` calls
  of the example batch's shape (every term's rows split into num_micro equal calls)."""
  updater = Updater(state, mesh, cfg=cfg, chunk_size=chunk_size, remat=remat, lora=lora,
                    frozen=frozen)
  per = {}
  for name, sub in batch_example.items():
    rows = next(iter(sub.values())).shape[0]
    if rows % num_micro:
      raise ValueError(f"batch of {rows} rows does not split into {num_micro} micro-batches")
    per[name] = rows // num_micro

  def step(state, batch):
    return updater(state, batch, terms=terms, rows_per_call=per, optimizer=optimizer)
  step.updater = updater
  return step
