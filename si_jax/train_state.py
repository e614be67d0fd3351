"""Train state and optimizer: Optax AdamW, warmup + cosine, global-norm clipping.

The state is a pytree (params, optimizer state, counters) that lives sharded on the mesh and
is donated to every update step. Its shardings are derived from the param shardings: the
optimizer's moments are sharded like the params they track (`init_shardings`).

Params kept in bfloat16 get float32 master weights by default (`config.model.master_weights`,
`with_master_weights`): the optimizer state holds a float32 copy of the params, the update is
computed and added there, and the params are that copy rounded to bfloat16. Without it an
update smaller than half a bfloat16 step is lost: at lr 1e-6, 50 AdamW steps changed 1.9% of
4,096 bfloat16 weights at all (`tests/test_train_state.py`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

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
                   clip_norm: float = 1.0, state_dtype: str | None = None,
                   master_weights: bool = False) -> optax.GradientTransformation:
  """Clip by global norm (0 = off), then AdamW with the schedule.

  state_dtype: dtype of the moments and of the optimizer's arithmetic (`with_state_dtype`),
  e.g. 'float32' with bfloat16 params; None = the params' own dtype.
  master_weights: keep float32 master weights in the state (`with_master_weights`); the
  optimizer then runs on them, so its moments are float32 too.

  Every configuration yields the same optimizer-state tree structure, so a checkpoint of one
  phase (SFT) restores into the state of the next (RL).
  """
  sched = make_schedule(lr, total_steps, warmup_steps, schedule, end_lr_frac)
  clip = optax.clip_by_global_norm(clip_norm) if clip_norm > 0 else optax.clip_by_global_norm(
      jnp.inf)
  tx = optax.chain(clip, optax.adamw(sched, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
  tx = tx if state_dtype is None else with_state_dtype(tx, state_dtype)
  return with_master_weights(tx) if master_weights else tx


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


class MasterWeightsState(NamedTuple):
  """The state of `with_master_weights`: `master`, the params in float32 (params-shaped, so
  sharded like the params: `init_shardings`), and the wrapped optimizer's state."""
  master: Any
  inner: Any


def with_master_weights(tx: optax.GradientTransformation, dtype: str = "float32"
                        ) -> optax.GradientTransformation:
  """`tx` run on float32 master weights kept in its state, for params stored in bfloat16.

  init(params): master = params in `dtype`; `tx` is initialized on the master.
  update(grads, state, params): the gradients in `dtype`, `tx`'s update computed on and added
  to the master; the returned update is (master rounded to the params' dtype) - params, in
  `dtype`, so `optax.apply_updates` (which adds in float32 and casts back to the params' dtype)
  leaves the params equal to the master rounded, to the bit, unless one step moves a weight
  across more than 15 binades (then within float32 rounding of it); the next update starts
  from the master again, so nothing drifts. The training code is unchanged: it still calls
  `optimizer.update(grads, opt_state, params)` and `optax.apply_updates`.

  Master and moments cost 12 bytes per param beside 2 for the bfloat16 params (16 with float32
  params and no master); si-plan counts them in the optimizer state.
  """
  dt = jnp.dtype(dtype)

  def cast(tree):
    return jax.tree.map(lambda x: x.astype(dt), tree)

  def init(params):
    master = cast(params)
    return MasterWeightsState(master=master, inner=tx.init(master))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("with_master_weights: update needs the params (to return the rounding)")
    step, inner = tx.update(cast(updates), state.inner, state.master)
    master = optax.apply_updates(state.master, step)
    delta = jax.tree.map(lambda m, p: m.astype(p.dtype).astype(dt) - p.astype(dt), master,
                         params)
    return delta, MasterWeightsState(master=master, inner=inner)

  return optax.GradientTransformation(init, update)


def gradient_dtypes(state: "TrainState"):
  """The dtype, per param, that gradients are summed in before the optimizer step: the master
  weights' (float32) where the optimizer keeps them, else the params' own. Summing micro-batch
  gradients of bfloat16 params in bfloat16 would drop the small ones, as adding small updates
  to bfloat16 weights did; the master's 4 bytes per param in the accumulator are counted by
  si-plan like the rest of the update."""
  like = state.opt_state.master if isinstance(state.opt_state, MasterWeightsState) else state.params
  return jax.tree.map(lambda x: jnp.dtype(x.dtype), like)


def master_weights_for(config, dtype) -> bool:
  """Whether the optimizer keeps float32 master weights for trained params of `dtype`:
  `config.model.master_weights` (absent in configs written before the field: no) and params
  narrower than float32."""
  wanted = bool(config.model.get("master_weights", False))
  return wanted and jnp.issubdtype(dtype, jnp.floating) and jnp.dtype(dtype).itemsize < 4


def optimizer_from_config(optim_cfg, total_steps: int, master_weights: bool = False
                          ) -> optax.GradientTransformation:
  """The optimizer of `config.<phase>.optim`; `master_weights` from `master_weights_for` (the
  same for SFT and RL: a checkpoint of one phase restores into the state of the next)."""
  return make_optimizer(
      optim_cfg.lr, total_steps, warmup_steps=optim_cfg.warmup_steps,
      schedule=optim_cfg.schedule, end_lr_frac=optim_cfg.end_lr_frac, b1=optim_cfg.b1,
      b2=optim_cfg.b2, eps=optim_cfg.eps, weight_decay=optim_cfg.weight_decay,
      clip_norm=optim_cfg.clip_norm,
      state_dtype=optim_cfg.get("state_dtype"),  # absent in configs written before the field
      master_weights=master_weights)


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
  """Same params, fresh optimizer state and counters (e.g. when SFT hands over to RL). Master
  weights carry over (they are the params; the bfloat16 params are only their rounding)."""
  shardings = jax.tree.map(lambda x: x.sharding, state)
  zero = jnp.zeros((), jnp.int32)

  def fresh(p, old):
    opt = optimizer.init(p)
    if isinstance(opt, MasterWeightsState) and isinstance(old, MasterWeightsState):
      opt = opt._replace(master=old.master)
    return TrainState(step=zero, params=p, opt_state=opt, skipped=zero, bad_streak=zero)

  return jax.jit(fresh, out_shardings=shardings)(state.params, state.opt_state)
