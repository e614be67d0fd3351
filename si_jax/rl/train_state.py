"""Train state and optimizer: Optax AdamW, warmup + cosine, global-norm clipping.

The state is a pytree (params, optimizer state, counters) that lives sharded on the mesh and
is donated to every update step. Its shardings are derived from the param shardings: the
optimizer's moments are sharded like the params they track (`init_shardings`).
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding

from si_jax import sharding as shd


@flax.struct.dataclass
class TrainState:
  """step: optimizer updates applied; skipped: updates skipped for non-finite loss/grads;
  bad_streak: consecutive skipped updates (the trainer stops past a limit)."""

  step: jax.Array
  params: Any
  opt_state: Any
  skipped: jax.Array
  bad_streak: jax.Array


def make_schedule(lr: float, total_steps: int, warmup_steps: int = 0, schedule: str = "cosine",
                  end_lr_frac: float = 0.1) -> optax.Schedule:
  """'cosine' (linear warmup then cosine to end_lr_frac * lr) or 'constant' (after warmup)."""
  if lr < 0:
    raise ValueError(f"learning rate must be >= 0, got {lr}")
  if warmup_steps < 0:
    raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
  if schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0 if warmup_steps else lr, lr, warmup_steps, max(total_steps, warmup_steps + 1),
        end_value=lr * end_lr_frac)
  if schedule == "constant":
    if not warmup_steps:
      return optax.constant_schedule(lr)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup_steps), optax.constant_schedule(lr)],
        [warmup_steps])
  raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")


def make_optimizer(lr: float, total_steps: int, *, warmup_steps: int = 0,
                   schedule: str = "cosine", end_lr_frac: float = 0.1, b1: float = 0.9,
                   b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
                   clip_norm: float = 1.0, state_dtype: str | None = None
                   ) -> optax.GradientTransformation:
  """Clip by global norm (0 = off), then AdamW with the schedule.

  state_dtype: dtype of the moments and of the optimizer's arithmetic (`with_state_dtype`),
  e.g. 'float32' with bfloat16 params; None = the params' own dtype.

  Every configuration yields the same optimizer-state tree structure, so a checkpoint of one
  phase (SFT) restores into the state of the next (RL).
  """
  sched = make_schedule(lr, total_steps, warmup_steps, schedule, end_lr_frac)
  clip = optax.clip_by_global_norm(clip_norm) if clip_norm > 0 else optax.clip_by_global_norm(
      jnp.inf)
  tx = optax.chain(clip, optax.adamw(sched, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
  return tx if state_dtype is None else with_state_dtype(tx, state_dtype)


STATE_DTYPES = ("float32", "bfloat16")


def with_state_dtype(tx: optax.GradientTransformation, dtype: str
                     ) -> optax.GradientTransformation:
  """`tx` run in `dtype`: its state is initialized from params cast to `dtype` (AdamW's mu
  and nu are then `dtype` whatever the params are: optax's `mu_dtype` covers mu only), and
  gradients and params are cast to `dtype` before each update, whose result is cast back to
  each gradient's dtype. The state's tree structure is `tx`'s own."""
  if dtype not in STATE_DTYPES:
    raise ValueError(f"optimizer state dtype must be one of {STATE_DTYPES}, got {dtype!r}")
  dt = jnp.dtype(dtype)

  def cast(tree):
    return jax.tree.map(lambda x: x.astype(dt) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                        tree)

  def init(params):
    return tx.init(cast(params))

  def update(updates, state, params=None):
    new, state = tx.update(cast(updates), state, None if params is None else cast(params))
    return jax.tree.map(lambda u, g: u.astype(g.dtype), new, updates), state

  return optax.GradientTransformation(init, update)


def optimizer_from_config(optim_cfg, total_steps: int) -> optax.GradientTransformation:
  return make_optimizer(
      optim_cfg.lr, total_steps, warmup_steps=optim_cfg.warmup_steps,
      schedule=optim_cfg.schedule, end_lr_frac=optim_cfg.end_lr_frac, b1=optim_cfg.b1,
      b2=optim_cfg.b2, eps=optim_cfg.eps, weight_decay=optim_cfg.weight_decay,
      clip_norm=optim_cfg.clip_norm,
      state_dtype=optim_cfg.get("state_dtype"))  # absent in configs written before the field


def init_fn(optimizer: optax.GradientTransformation):
  def init(p):
    zero = jnp.zeros((), jnp.int32)
    return TrainState(step=zero, params=p, opt_state=optimizer.init(p), skipped=zero,
                      bad_streak=zero)
  return init


def init_shardings(params, optimizer: optax.GradientTransformation, mesh) -> TrainState:
  """Shardings of a fresh state around `params` (arrays or ShapeDtypeStructs with shardings):
  params as placed, every params-shaped part of the optimizer state (AdamW's mu and nu) like
  the params (`optax.tree_map_params`), counters and other optimizer fields replicated.
  Left to jit, the moments (zeros that depend on no input) would come out replicated."""
  rep = shd.replicated(mesh)
  on_mesh = lambda s: s if isinstance(s, NamedSharding) and s.mesh == mesh else rep  # noqa: E731
  param_sh = jax.tree.map(lambda x: on_mesh(getattr(x, "sharding", None)), params)
  opt_sh = optax.tree_map_params(optimizer, lambda _, s: s,
                                 jax.eval_shape(optimizer.init, params), param_sh,
                                 transform_non_params=lambda _: rep)
  return TrainState(step=rep, params=param_sh, opt_state=opt_sh, skipped=rep, bad_streak=rep)


def create(params, optimizer: optax.GradientTransformation, mesh=None) -> TrainState:
  """A fresh state around `params` (already placed); optimizer state created in place, in
  the shardings of `init_shardings` on a mesh."""
  if mesh is None:
    return jax.jit(init_fn(optimizer))(params)
  return jax.jit(init_fn(optimizer),
                 out_shardings=init_shardings(params, optimizer, mesh))(params)


def state_shardings(state: TrainState, mesh) -> TrainState:
  """The shardings of `state`'s leaves; leaves not on the mesh (scalars) become replicated."""
  rep = shd.replicated(mesh)
  def sh(x):
    s = getattr(x, "sharding", None)
    return s if isinstance(s, NamedSharding) and s.mesh == mesh else rep
  return jax.tree.map(sh, state)


def abstract_state(state: TrainState) -> TrainState:
  """ShapeDtypeStructs with shardings: the restore target of a checkpoint."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      state)


def reset_optimizer(state: TrainState, optimizer: optax.GradientTransformation) -> TrainState:
  """Same params, fresh optimizer state and counters (e.g. when SFT hands over to RL)."""
  shardings = jax.tree.map(lambda x: x.sharding, state)
  zero = jnp.zeros((), jnp.int32)
  fresh = jax.jit(lambda p: TrainState(step=zero, params=p, opt_state=optimizer.init(p),
                                       skipped=zero, bad_streak=zero),
                  out_shardings=shardings)
  return fresh(state.params)
