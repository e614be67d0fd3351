"""GRPO-family policy losses (GRPO, Dr.GRPO, DAPO, GSPO, SI's gated GSPO) and the SFT loss.

Conventions (shared with the trainer):
  * A batch row b is one right-aligned sequence; `logprobs[b, t]` is
    log pi(tokens[b, t] | tokens[b, :t]); `mask[b, t]` is 1 on the tokens that get loss
    (response tokens, or SI's gated tokens g_minus / g_plus) and 0 elsewhere. Values of
    logprobs / advantages off the mask are ignored, even if they are inf or NaN.
  * `advantages [B, T]` are token-level. Outcome-only methods broadcast a sequence advantage
    (`si_jax.rl.advantages.token_advantages`); SI writes per-token credit.
  * Every loss returns `(loss_sum, denominator, ...)`. The loss is `loss_sum / denominator`
    AFTER both are summed over micro-batches and hosts, so gradient accumulation gives the
    global mean: grad(loss) = sum_k grad(loss_sum_k) / sum_k denominator_k. Micro-batches
    split rows (whole sequences), never the time axis.
  * Metrics are a dict name -> (sum, count) of float32 scalars. Accumulate with
    `jax.tree.map(jnp.add, m1, m2)` (or a psum), then `finalize_metrics` gives sum / count.

Aggregation modes (how token losses l[b, t] become one number):
  'token_mean'              sum_bt m l / sum_bt m                      (DAPO)
  'seq_mean_token_mean'     sum_b (sum_t m l / sum_t m) / #{b: sum_t m > 0}   (GRPO, GSPO)
  'seq_mean_token_sum_norm' sum_bt m l / (num_seqs * max_len)          (Dr.GRPO)
where num_seqs counts the rows of the batch (those with seq_mask = 1), with or without loss
tokens, and max_len is a constant such as the generation budget.
"""

from __future__ import annotations

import numbers
from typing import Literal, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from si_jax.rl import advantages as adv_lib

__all__ = [
    "AGGREGATIONS",
    "MAX_LOG_RATIO",
    "RATIOS",
    "aggregate",
    "denominator",
    "finalize_metrics",
    "policy_loss",
    "sft_loss",
]

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
# 'gated_sequence' is 'sequence' with SI's gate g_t as the mask (DESIGN 5.2 step 6): the same
# computation, accepted under the name the config uses.
RATIOS = ("token", "sequence", "gated_sequence")

Metrics = dict[str, tuple[jax.Array, jax.Array]]

# |log(pi / pi_old)| is clamped to this before exp in `policy_loss` (as verl does).
MAX_LOG_RATIO = 20.0


def _check_shape(name: str, x, shape: tuple[int, ...], where: str) -> None:
  if jnp.shape(x) != shape:
    raise ValueError(f"{where}: {name} must have shape {shape} (that of logprobs / mask), "
                     f"got {jnp.shape(x)}")


def _effective_mask(mask, seq_mask, where: str) -> tuple[jax.Array, jax.Array]:
  """Returns (m [B, T] float32 loss weights, rows [B] float32 row-in-batch indicator)."""
  if jnp.ndim(mask) != 2:
    raise ValueError(f"{where}: mask must be [B, T], got shape {jnp.shape(mask)}")
  m = jnp.asarray(mask, jnp.float32)
  if seq_mask is None:
    rows = jnp.ones(m.shape[:1], jnp.float32)
  else:
    _check_shape("seq_mask", seq_mask, m.shape[:1], where)
    rows = jnp.asarray(seq_mask, jnp.float32)
    m = m * rows[:, None]
  return m, rows


def _token_mean(values: jax.Array, on: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sum of values over tokens with on = True, number of such tokens)."""
  on_f = on.astype(jnp.float32)
  return (jax.lax.stop_gradient(jnp.where(on, values, 0.0)).sum(), on_f.sum())


def aggregate(
    token_losses: jax.Array,
    mask: jax.Array,
    aggregation: str = "token_mean",
    *,
    max_len: int | None = None,
    seq_mask: jax.Array | None = None,
    row_len: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Reduces per-token losses to (loss_sum, denominator) under an aggregation mode.

  Args:
    token_losses: [B, T] float; values off the mask are ignored (even inf / NaN).
    mask: [B, T] bool/float loss weights.
    aggregation: one of AGGREGATIONS (see the module docstring).
    max_len: the constant of 'seq_mean_token_sum_norm' (e.g. max_new_tokens); required there.
    seq_mask: optional [B] bool/float, 0 for rows that are not part of the batch (padding
      rows); they get no loss and do not count as sequences.
    row_len: optional [B], what each row's token sum is divided by under
      'seq_mean_token_mean' instead of the row's own mask sum. A row whose mask is a gate over
      part of its response (SI) passes the response length, so each gated token weighs what
      a token of a whole-response row of that length weighs; the other aggregations weigh
      every token alike already and ignore it.

  Returns:
    (loss_sum, denominator), float32 scalars; both add across micro-batches (of whole rows).
  """
  where = "aggregate"
  m, _ = _effective_mask(mask, seq_mask, where)
  _check_shape("token_losses", token_losses, m.shape, where)
  denom = denominator(mask, aggregation, max_len=max_len, seq_mask=seq_mask)
  l = jnp.where(m != 0, jnp.asarray(token_losses, jnp.float32), 0.0)
  if aggregation == "seq_mean_token_mean":
    n = m.sum(axis=1)
    has_tokens = n > 0
    if row_len is not None:
      _check_shape("row_len", row_len, m.shape[:1], where)
      n = jnp.maximum(jnp.asarray(row_len, jnp.float32), n)  # never below the row's own tokens
    per_seq = jnp.where(has_tokens, (m * l).sum(axis=1) / jnp.where(has_tokens, n, 1.0), 0.0)
    return per_seq.sum(), denom
  return (m * l).sum(), denom


def denominator(mask, aggregation: str = "token_mean", *, max_len: int | None = None,
                seq_mask=None, xp=jnp):
  """The denominator of `aggregate` (see the module docstring): loss tokens, sequences with a
  loss token, or sequences x max_len. It adds over row splits, so the update can take it from
  the whole mini-batch before looping over calls. xp: jnp (traced) or np (host rows).

  Returns a float32 scalar."""
  where = "aggregate"
  if aggregation not in AGGREGATIONS:
    raise ValueError(f"{where}: aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
  if xp is jnp:
    m, rows = _effective_mask(mask, seq_mask, where)
  else:
    m = np.asarray(mask, np.float32)
    rows = (np.ones(m.shape[:1], np.float32) if seq_mask is None
            else np.asarray(seq_mask, np.float32))
    m = m * rows[:, None]
  if aggregation == "token_mean":
    return m.sum(dtype=xp.float32)
  if aggregation == "seq_mean_token_mean":
    return (m.sum(axis=1) > 0).astype(xp.float32).sum()
  if max_len is None:
    raise ValueError(f"{where}: aggregation='seq_mean_token_sum_norm' (Dr.GRPO) needs "
                     "max_len (e.g. the generation budget max_new_tokens), got None")
  if isinstance(max_len, numbers.Number) and max_len <= 0:
    raise ValueError(f"{where}: max_len must be > 0, got {max_len}")
  return rows.sum(dtype=xp.float32) * xp.float32(max_len)


def policy_loss(
    logprobs: jax.Array,
    old_logprobs: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    ratio: Literal["token", "sequence", "gated_sequence"] = "token",
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    aggregation: str = "token_mean",
    max_len: int | None = None,
    ref_logprobs: jax.Array | None = None,
    kl_beta: float | jax.Array = 0.0,
    kl_estimator: Literal["k1", "k2", "k3"] = "k3",
    seq_mask: jax.Array | None = None,
    entropy: jax.Array | None = None,
    row_len: jax.Array | None = None,
    behavior_logprobs: jax.Array | None = None,
    behavior_rows: jax.Array | None = None,
    tis_cap: float = 1.0,
) -> tuple[jax.Array, jax.Array, Metrics]:
  """Clipped surrogate policy loss (to minimize) of the GRPO family, per token, aggregated.

  Per token: l_t = -min(w_t A_t, clip(w_t, 1 - eps_low, 1 + eps_high) A_t) + kl_beta * KL_t.

  ratio='token' (PPO / GRPO / Dr.GRPO / DAPO): w_t = exp(lp_t - old_lp_t).
  ratio='sequence' (GSPO, in its GSPO-token form):
    s_b = exp(sum_t m_t (lp_t - old_lp_t) / sum_t m_t)   (length-normalized sequence ratio)
    w_t = sg(s_b) * exp(lp_t - sg(lp_t))
  whose value is s_b on every token and whose gradient is s_b * grad lp_t per token, so each
  token carries its own advantage A_t. When A_t is constant over a sequence and aggregation is
  'seq_mean_token_mean', this is GSPO exactly (value and gradient). Clipping is decided per
  sequence (all tokens share w_t = s_b); GSPO uses small eps, e.g. 3e-4 / 4e-4.
  With mask = SI's gate g_t, s_b is the paper's gated sequence ratio
  exp(sum_t g_t log(pi / pi_old)(t) / sum_t g_t) (DESIGN 5.2 step 6); ratio='gated_sequence'
  is accepted as a synonym.

  eps_high > eps_low is DAPO's clip-higher. Tokens where the clipped branch is taken
  (A > 0 and w > 1 + eps_high, or A < 0 and w < 1 - eps_low) get zero policy gradient.

  old_logprobs, advantages and ref_logprobs are treated as constants (stop_gradient).
  log(pi / pi_old) is clamped to [-MAX_LOG_RATIO, MAX_LOG_RATIO] per token before exp.

  Args:
    logprobs: [B, T] log-probs of the sampled tokens under the policy being trained.
    old_logprobs: [B, T] the same under the policy that sampled them.
    advantages: [B, T] float token advantages.
    mask: [B, T] bool/float, 1 on loss tokens.
    ratio: 'token', 'sequence' or 'gated_sequence' (see above).
    eps_low, eps_high: clip range [1 - eps_low, 1 + eps_high].
    aggregation: one of AGGREGATIONS.
    max_len: constant for 'seq_mean_token_sum_norm'.
    ref_logprobs: optional [B, T] reference-policy log-probs, for the KL term and metric.
    kl_beta: KL coefficient (a Python float or a traced scalar); needs ref_logprobs if != 0.
    kl_estimator: 'k2' or 'k3' as a loss (see `si_jax.rl.advantages.kl_penalty` for what the
      gradient of each optimizes); 'k1' is refused when kl_beta != 0, because its gradient on
      sampled tokens is zero in expectation, and allowed with kl_beta = 0 (a metric only).
    seq_mask: optional [B], 0 for padding rows (no loss, not counted as sequences).
    entropy: optional [B, T] per-token policy entropy, only for the 'entropy' metric.
    row_len: optional [B], see `aggregate` (SI's gated rows: their response lengths).
    behavior_logprobs, behavior_rows: optional [B, T] log-probs of the tokens under the
      policy that actually sampled them, for rows (behavior_rows [B] = 1) sampled by another
      policy than the one `old_logprobs` describe (SI's repairs: sampled under the repair
      prompt, trained under the policy prompt). Their policy-gradient term is multiplied by
      the truncated importance weight sg(min(pi_old / behavior, tis_cap)): per token for
      ratio='token', the gate-mean of the log-ratio per row for sequence ratios. Other rows
      get weight 1.

  Returns:
    (loss_sum, denominator, metrics): float32 scalars and a dict name -> (sum, count):
      'pg_loss', 'kl_loss': the two parts of the loss, with the loss's denominator (so their
        finalized values add up to the loss).
      'clip_frac', 'clip_frac_low', 'clip_frac_high': fraction of loss tokens whose gradient
        is zeroed by clipping (low: A < 0 and w < 1 - eps_low; high: A > 0, w > 1 + eps_high).
      'ratio': token mean of w_t (for ratio='sequence': of s_b, weighted by gated length).
      'approx_kl_old': token mean of k3 = (w - 1) - log w with the token ratio
        w = pi / pi_old, Schulman's estimate of KL(pi_old || pi).
      'advantage': token mean of A_t.
      'kl_ref' (if ref_logprobs): token mean of the KL estimator to the reference.
      'entropy' (if entropy): token mean of the entropy.
    Token means count tokens with mask != 0 in rows with seq_mask != 0.
  """
  where = "policy_loss"
  if ratio not in RATIOS:
    raise ValueError(f"{where}: ratio must be one of {RATIOS}, got {ratio!r}")
  if aggregation not in AGGREGATIONS:
    raise ValueError(f"{where}: aggregation must be one of {AGGREGATIONS}, "
                     f"got {aggregation!r}")
  if kl_estimator not in adv_lib.KL_ESTIMATORS:
    raise ValueError(f"{where}: kl_estimator must be one of {adv_lib.KL_ESTIMATORS}, "
                     f"got {kl_estimator!r}")
  for name, eps in (("eps_low", eps_low), ("eps_high", eps_high)):
    if isinstance(eps, numbers.Number) and not 0.0 <= eps:
      raise ValueError(f"{where}: {name} must be >= 0, got {eps}")
  if isinstance(eps_low, numbers.Number) and eps_low >= 1.0:
    raise ValueError(f"{where}: eps_low must be < 1 (the lower clip bound is 1 - eps_low), "
                     f"got {eps_low}")
  if ref_logprobs is None and isinstance(kl_beta, numbers.Number) and kl_beta != 0:
    raise ValueError(f"{where}: kl_beta={kl_beta} needs ref_logprobs, got None")
  if kl_estimator == "k1" and not (isinstance(kl_beta, numbers.Number) and kl_beta == 0):
    raise ValueError(
        f"{where}: kl_estimator='k1' cannot be a loss: on tokens sampled from the policy its "
        f"gradient E[grad log pi] is zero in expectation, so it regularizes nothing. Use 'k2' "
        f"(gradient of KL(pi || ref)) or 'k3' (gradient of KL(ref || pi)).")

  m, _ = _effective_mask(mask, seq_mask, where)
  shape = m.shape
  _check_shape("logprobs", logprobs, shape, where)
  _check_shape("old_logprobs", old_logprobs, shape, where)
  _check_shape("advantages", advantages, shape, where)
  on = m != 0

  sg = jax.lax.stop_gradient
  lp = jnp.where(on, jnp.asarray(logprobs, jnp.float32), 0.0)
  old_lp = sg(jnp.where(on, jnp.asarray(old_logprobs, jnp.float32), 0.0))
  adv = sg(jnp.where(on, jnp.asarray(advantages, jnp.float32), 0.0))
  # [B, T], 0 off the mask; clamped so that exp cannot overflow (a token whose log-ratio is
  # beyond +-MAX_LOG_RATIO is far outside any clip range; the clamp zeroes its gradient instead
  # of letting 0 * inf make it NaN).
  log_ratio = jnp.clip(lp - old_lp, -MAX_LOG_RATIO, MAX_LOG_RATIO)

  if ratio == "token":
    w = jnp.exp(log_ratio)
  else:
    n = m.sum(axis=1)
    seq_log_ratio = (m * log_ratio).sum(axis=1) / jnp.where(n > 0, n, 1.0)  # [B]
    w = sg(jnp.exp(seq_log_ratio))[:, None] * jnp.exp(lp - sg(lp))

  lo, hi = 1.0 - eps_low, 1.0 + eps_high
  pg = jnp.maximum(-adv * w, -adv * jnp.clip(w, lo, hi))  # [B, T]
  tis = None
  if behavior_logprobs is not None:
    _check_shape("behavior_logprobs", behavior_logprobs, shape, where)
    beh = sg(jnp.where(on, jnp.asarray(behavior_logprobs, jnp.float32), 0.0))
    log_w = jnp.clip(old_lp - beh, -MAX_LOG_RATIO, MAX_LOG_RATIO)
    if ratio != "token":
      n = m.sum(axis=1, keepdims=True)
      log_w = jnp.broadcast_to((m * log_w).sum(axis=1, keepdims=True) /
                               jnp.where(n > 0, n, 1.0), shape)
    rows = (jnp.ones(shape[:1], bool) if behavior_rows is None
            else jnp.asarray(behavior_rows) != 0)
    tis = jnp.where(rows[:, None], jnp.minimum(jnp.exp(log_w), tis_cap), 1.0)
    pg = pg * tis

  if ref_logprobs is not None:
    _check_shape("ref_logprobs", ref_logprobs, shape, where)
    ref_lp = sg(jnp.where(on, jnp.asarray(ref_logprobs, jnp.float32), 0.0))
    kl = adv_lib.kl_penalty(lp, ref_lp, kl_estimator)
    kl_term = jnp.asarray(kl_beta, jnp.float32) * kl
  else:
    kl = None
    kl_term = jnp.zeros_like(pg)

  agg = dict(aggregation=aggregation, max_len=max_len, seq_mask=seq_mask, row_len=row_len)
  loss_sum, denom = aggregate(pg + kl_term, mask, **agg)
  pg_sum, _ = aggregate(pg, mask, **agg)
  kl_sum, _ = aggregate(kl_term, mask, **agg)
  w_val = sg(w)
  clip_low = (adv < 0) & (w_val < lo)
  clip_high = (adv > 0) & (w_val > hi)
  metrics: Metrics = {
      "pg_loss": (sg(pg_sum), denom),
      "kl_loss": (sg(kl_sum), denom),
      "clip_frac": _token_mean((clip_low | clip_high).astype(jnp.float32), on),
      "clip_frac_low": _token_mean(clip_low.astype(jnp.float32), on),
      "clip_frac_high": _token_mean(clip_high.astype(jnp.float32), on),
      "ratio": _token_mean(w_val, on),
      "approx_kl_old": _token_mean(jnp.expm1(log_ratio) - log_ratio, on),
      "advantage": _token_mean(adv, on),
  }
  if kl is not None:
    metrics["kl_ref"] = _token_mean(kl, on)
  if tis is not None:
    metrics["tis_weight"] = _token_mean(tis, on & (tis != 1.0))
  if entropy is not None:
    _check_shape("entropy", entropy, shape, where)
    metrics["entropy"] = _token_mean(jnp.asarray(entropy, jnp.float32), on)
  return loss_sum, denom, metrics


def sft_loss(logprobs: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Token-mean negative log-likelihood, as (nll_sum, denominator).

  Used for the cold start and for SI's repair-mode term (DESIGN 5.2 steps 7-8).

  Args:
    logprobs: [B, T] log-probs of the target tokens.
    mask: [B, T] bool/float, 1 on target tokens (values off it are ignored).

  Returns:
    (nll_sum, denominator) = (-sum m * lp, sum m), float32 scalars that add across
    micro-batches.
  """
  where = "sft_loss"
  m, _ = _effective_mask(mask, None, where)
  _check_shape("logprobs", logprobs, m.shape, where)
  lp = jnp.where(m != 0, jnp.asarray(logprobs, jnp.float32), 0.0)
  return -(m * lp).sum(), m.sum()


def finalize_metrics(metrics: Mapping[str, tuple[jax.Array, jax.Array]]) -> dict[str, jax.Array]:
  """Turns accumulated (sum, count) metrics into values sum / count (NaN where count is 0)."""
  out = {}
  for name, pair in metrics.items():
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
      raise ValueError(f"finalize_metrics: metric {name!r} must be a (sum, count) pair, "
                       f"got {type(pair).__name__}")
    s, c = pair
    out[name] = jnp.where(c > 0, s / jnp.where(c > 0, c, 1.0), jnp.nan)
  return out
