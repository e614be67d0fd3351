"""Advantages and reward shaping for GRPO-family RL: pure JAX functions.

Everything here is jit-able (shapes are static, no Python control flow on traced values) and
also works on host numpy inputs, so the trainer's Python loops (e.g. DAPO's refill of groups)
can call the same functions it jits. Host inputs are computed with numpy (`_xp`): run op by op
through jax.numpy they would compile a program per primitive and shape in the step that first
meets them.

Shapes: P prompts, G rollouts per prompt, B = P * G sequences (or any number of rows, e.g. SI's
failed + repaired rows), T sequence length.

Advantages are token-level `[B, T]` from the start: outcome-only methods broadcast one
sequence advantage onto the response tokens (`token_advantages`); supervision internalization
(DESIGN 5.2) writes different advantages onto different gated tokens and passes the same
`[B, T]` array to `si_jax.rl.losses.policy_loss`.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "KL_ESTIMATORS",
    "dynamic_sampling_keep",
    "group_advantages",
    "kl_penalty",
    "overlong_penalty",
    "token_advantages",
]

KL_ESTIMATORS = ("k1", "k2", "k3")


def _xp(*xs):
  """jax.numpy when any input is a JAX array (or a tracer, under jit), else numpy."""
  return jnp if any(isinstance(x, jax.Array) for x in xs) else np


def _check_rank(name: str, x, rank: int, where: str) -> None:
  if jnp.ndim(x) != rank:
    raise ValueError(f"{where}: {name} must have rank {rank}, got shape {jnp.shape(x)}")


def _check_same_shape(names: tuple[str, str], a, b, where: str) -> None:
  if jnp.shape(a) != jnp.shape(b):
    raise ValueError(f"{where}: {names[0]} and {names[1]} must have the same shape, got "
                     f"{jnp.shape(a)} and {jnp.shape(b)}")


def _rewards_and_valid(rewards, valid, where: str) -> tuple[jax.Array, jax.Array]:
  """(rewards [P, G] float32 with 0 in invalid slots (NaN there is ignored), valid [P, G] bool)."""
  xp = _xp(rewards, valid)
  r = xp.asarray(rewards, xp.float32)
  if valid is None:
    return r, xp.ones(r.shape, bool)
  _check_same_shape(("rewards", "valid"), rewards, valid, where)
  v = xp.asarray(valid, bool)
  return xp.where(v, r, xp.float32(0.0)), v


def group_advantages(
    rewards: jax.Array,
    *,
    normalize_std: bool = True,
    eps: float = 1e-6,
    ddof: int = 0,
    valid: jax.Array | None = None,
) -> jax.Array:
  """Group-relative advantages of each rollout against its siblings.

  GRPO (normalize_std=True):  A_ij = (r_ij - mean_j r_ij) / (std_j r_ij + eps).
  Dr.GRPO (normalize_std=False): A_ij = r_ij - mean_j r_ij.

  A group whose rewards are all equal gets advantage 0 for every member (the std term is 0,
  so the numerator is 0 too; eps keeps it finite).

  Args:
    rewards: [P, G] float rewards, one row per prompt.
    normalize_std: divide by the group std (GRPO, DAPO, GSPO) or not (Dr.GRPO).
    eps: added to the std before dividing.
    ddof: 0 for the population std (the 1/G of the GRPO formula, default), 1 for the unbiased
      std (what TRL and verl compute with torch.std). With ddof=1 a group with one valid
      member gets std 0.
    valid: optional [P, G] bool; members with False are left out of the mean and std and
      get advantage 0 (groups with dropped or padded rollouts, SI reset groups of unequal
      size).

  Returns:
    [P, G] float32 advantages.
  """
  where = "group_advantages"
  _check_rank("rewards", rewards, 2, where)
  if ddof not in (0, 1):
    raise ValueError(f"{where}: ddof must be 0 or 1, got {ddof}")
  r, v = _rewards_and_valid(rewards, valid, where)
  xp, f32 = _xp(r), np.float32
  n = v.sum(axis=1, keepdims=True).astype(xp.float32)
  mean = r.sum(axis=1, keepdims=True) / xp.maximum(n, f32(1.0))
  centred = xp.where(v, r - mean, f32(0.0))
  if not normalize_std:
    return centred
  var = (centred**2).sum(axis=1, keepdims=True) / xp.maximum(n - ddof, f32(1.0))
  std = xp.where(n - ddof > 0, xp.sqrt(var), f32(0.0))
  return centred / (std + f32(eps))


def token_advantages(seq_adv: jax.Array, mask: jax.Array) -> jax.Array:
  """Broadcasts one advantage per sequence onto its loss tokens.

  Args:
    seq_adv: [B] float, e.g. `group_advantages(...).reshape(-1)`.
    mask: [B, T] bool/float, 1 on the tokens that get loss.

  Returns:
    [B, T] float32: seq_adv[b] * mask[b, t] (0 off the mask).
  """
  where = "token_advantages"
  _check_rank("seq_adv", seq_adv, 1, where)
  _check_rank("mask", mask, 2, where)
  if jnp.shape(seq_adv)[0] != jnp.shape(mask)[0]:
    raise ValueError(f"{where}: seq_adv has {jnp.shape(seq_adv)[0]} rows but mask has "
                     f"{jnp.shape(mask)[0]} (shape {jnp.shape(mask)})")
  return jnp.asarray(seq_adv, jnp.float32)[:, None] * jnp.asarray(mask, jnp.float32)


def dynamic_sampling_keep(rewards: jax.Array, *, atol: float = 0.0,
                          valid: jax.Array | None = None) -> jax.Array:
  """DAPO dynamic sampling: which groups carry a learning signal.

  A group whose rewards are all equal (all correct or all wrong) has zero group advantage for
  every member, so it contributes no policy gradient; DAPO drops it and samples more prompts
  until the batch is full. The refill loop is the trainer's: it calls this on each freshly
  scored chunk of groups, e.g. `keep = np.asarray(dynamic_sampling_keep(r))`, and appends
  `groups[keep]` until it has enough.

  Args:
    rewards: [P, G] float rewards.
    atol: rewards whose spread (max - min) is <= atol count as equal (0 = exact; use a small
      tolerance for continuous rewards such as a fraction of tests passed).
    valid: optional [P, G] bool; members with False are ignored. A group with fewer than two
      valid members is not kept.

  Returns:
    [P] bool, True for groups to keep.
  """
  where = "dynamic_sampling_keep"
  _check_rank("rewards", rewards, 2, where)
  r, v = _rewards_and_valid(rewards, valid, where)
  xp = _xp(r)
  hi = xp.where(v, r, -np.inf).max(axis=1)
  lo = xp.where(v, r, np.inf).min(axis=1)
  return (v.sum(axis=1) >= 2) & (hi - lo > atol)


def overlong_penalty(lengths: jax.Array, max_new_tokens: int, buffer: int) -> jax.Array:
  """DAPO soft overlong punishment, added to the reward.

  With L = max_new_tokens and C = buffer:
    0                    if length <= L - C
    ((L - C) - length)/C if L - C < length <= L   (linear from 0 down to -1)
    -1                   if length > L

  Args:
    lengths: [B] int response lengths (number of generated tokens).
    max_new_tokens: the generation budget L (> 0).
    buffer: the punishment interval C, 0 <= C <= L. 0 disables the penalty (all zeros).

  Returns:
    [B] float32 penalties in [-1, 0].
  """
  where = "overlong_penalty"
  _check_rank("lengths", lengths, 1, where)
  if max_new_tokens <= 0:
    raise ValueError(f"{where}: max_new_tokens must be > 0, got {max_new_tokens}")
  if not 0 <= buffer <= max_new_tokens:
    raise ValueError(f"{where}: buffer must be in [0, max_new_tokens={max_new_tokens}], "
                     f"got {buffer}")
  xp = _xp(lengths)
  n = xp.asarray(lengths, xp.float32)
  if buffer == 0:
    return xp.zeros_like(n)
  start = np.float32(max_new_tokens - buffer)
  return xp.clip((start - n) / np.float32(buffer), np.float32(-1.0), np.float32(0.0))


def kl_penalty(
    logprobs: jax.Array,
    ref_logprobs: jax.Array,
    kind: Literal["k1", "k2", "k3"] = "k3",
) -> jax.Array:
  """Per-token estimators of KL(pi || pi_ref) from tokens sampled from pi (Schulman 2020).

  With d = ref_logprobs - logprobs = log(pi_ref / pi):
    k1 = -d               (unbiased, high variance, can be negative)
    k2 = d**2 / 2         (biased, low variance, >= 0)
    k3 = exp(d) - d - 1   (unbiased, low variance, >= 0; GRPO's estimator)

  As a loss on tokens y ~ pi, with the gradient taken through log pi(y) only (the sampling
  distribution is not differentiated), the expected gradients are:
    k1: E[grad log pi(y)] = 0               regularizes nothing (refused by `policy_loss`)
    k2: E[(log pi - log ref) grad log pi]   = grad KL(pi || ref)   (reverse KL)
    k3: E[(1 - ref / pi) grad log pi]       = grad KL(ref || pi)   (forward KL)
  (tests/test_losses.py checks all three on a small categorical policy against the analytic
  gradients.) As values, k1 and k3 are unbiased estimates of KL(pi || ref).

  Gradients flow through both arguments; pass `jax.lax.stop_gradient(ref_logprobs)` or a
  constant. Positions off the loss mask are the caller's to zero.

  Args:
    logprobs: [B, T] log pi(token) under the current policy.
    ref_logprobs: [B, T] log pi_ref(token) under the reference policy.
    kind: 'k1', 'k2' or 'k3'.

  Returns:
    [B, T] float32.
  """
  where = "kl_penalty"
  _check_same_shape(("logprobs", "ref_logprobs"), logprobs, ref_logprobs, where)
  d = jnp.asarray(ref_logprobs, jnp.float32) - jnp.asarray(logprobs, jnp.float32)
  if kind == "k1":
    return -d
  if kind == "k2":
    return 0.5 * d * d
  if kind == "k3":
    return jnp.expm1(d) - d
  raise ValueError(f"{where}: kind must be one of {KL_ESTIMATORS}, got {kind!r}")
