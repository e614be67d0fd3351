"""Tests for si_jax.rl.losses: hand-computed cases, then gradient identities and properties."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from si_jax.rl import losses as L


def _grad_wrt_logprobs(lp, old, adv, mask, **kw):
  """d(loss_sum / denominator) / d logprobs."""

  def f(x):
    s, d, _ = L.policy_loss(x, old, adv, mask, **kw)
    return s / d

  return jax.grad(f)(lp)


# --- token ratio: clipping -------------------------------------------------------------------

def test_clipped_token_with_positive_advantage_has_zero_gradient():
  # Token 0: ratio 1.5 > 1.2 and A > 0 -> clipped. Token 1: ratio 1.0, unclipped.
  lp = jnp.log(jnp.array([[0.6, 0.3]]))
  old = jnp.log(jnp.array([[0.4, 0.3]]))
  adv = jnp.array([[1.0, 2.0]])
  mask = jnp.ones((1, 2))
  s, d, m = L.policy_loss(lp, old, adv, mask)
  # Loss = -(1.2 * 1 + 1.0 * 2) / 2.
  np.testing.assert_allclose(s, -3.2, rtol=1e-6)
  np.testing.assert_allclose(d, 2.0)
  g = _grad_wrt_logprobs(lp, old, adv, mask)
  # d/dlp of -(r * A) / 2 is -(r * A) / 2 (dr/dlp = r).
  np.testing.assert_allclose(g, [[0.0, -1.0]], atol=1e-6)
  fin = L.finalize_metrics(m)
  np.testing.assert_allclose(fin["clip_frac"], 0.5)
  np.testing.assert_allclose(fin["clip_frac_high"], 0.5)
  np.testing.assert_allclose(fin["clip_frac_low"], 0.0)
  np.testing.assert_allclose(fin["ratio"], 1.25, rtol=1e-6)


def test_ratio_above_range_with_negative_advantage_is_not_clipped():
  # PPO clips only in the direction that would improve the objective.
  lp = jnp.log(jnp.array([[0.6]]))
  old = jnp.log(jnp.array([[0.4]]))
  adv = jnp.array([[-1.0]])
  s, _, m = L.policy_loss(lp, old, adv, jnp.ones((1, 1)))
  np.testing.assert_allclose(s, 1.5, rtol=1e-6)
  np.testing.assert_allclose(_grad_wrt_logprobs(lp, old, adv, jnp.ones((1, 1))), [[1.5]],
                             rtol=1e-6)
  assert float(m["clip_frac"][0]) == 0.0


def test_clip_higher_asymmetry():
  # ratio 1.25 with A > 0: clipped at eps_high = 0.2 but not at eps_high = 0.28 (DAPO).
  # ratio 0.78 with A < 0: clipped at eps_low = 0.2 either way.
  lp = jnp.log(jnp.array([[0.5, 0.39]]))
  old = jnp.log(jnp.array([[0.4, 0.5]]))
  adv = jnp.array([[1.0, -1.0]])
  mask = jnp.ones((1, 2))
  g_sym = _grad_wrt_logprobs(lp, old, adv, mask, eps_low=0.2, eps_high=0.2)
  g_dapo = _grad_wrt_logprobs(lp, old, adv, mask, eps_low=0.2, eps_high=0.28)
  np.testing.assert_allclose(g_sym, [[0.0, 0.0]], atol=1e-7)
  np.testing.assert_allclose(g_dapo, [[-1.25 / 2, 0.0]], rtol=1e-6, atol=1e-7)
  s_sym, _, m_sym = L.policy_loss(lp, old, adv, mask, eps_low=0.2, eps_high=0.2)
  s_dapo, _, m_dapo = L.policy_loss(lp, old, adv, mask, eps_low=0.2, eps_high=0.28)
  np.testing.assert_allclose(s_sym, -1.2 + 0.8, rtol=1e-6)
  np.testing.assert_allclose(s_dapo, -1.25 + 0.8, rtol=1e-6)
  fin_sym, fin_dapo = L.finalize_metrics(m_sym), L.finalize_metrics(m_dapo)
  np.testing.assert_allclose([fin_sym["clip_frac_low"], fin_sym["clip_frac_high"]], [0.5, 0.5])
  np.testing.assert_allclose([fin_dapo["clip_frac_low"], fin_dapo["clip_frac_high"]],
                             [0.5, 0.0])


# --- sequence ratio (GSPO) -------------------------------------------------------------------

def test_gspo_sequence_ratio_two_tokens_by_hand():
  lp = jnp.log(jnp.array([[0.5, 0.3, 0.9]]))
  old = jnp.log(jnp.array([[0.4, 0.6, 0.1]]))
  mask = jnp.array([[1.0, 1.0, 0.0]])  # Third token is off the mask: not in the ratio.
  s_i = math.sqrt(1.25 * 0.5)  # exp((log 1.25 + log 0.5) / 2) = 0.7906
  adv = jnp.array([[1.0, 1.0, 1.0]])
  s, d, m = L.policy_loss(lp, old, adv, mask, ratio="sequence", eps_low=0.5, eps_high=0.5,
                          aggregation="seq_mean_token_mean")
  np.testing.assert_allclose(s, -s_i, rtol=1e-6)
  np.testing.assert_allclose(d, 1.0)
  np.testing.assert_allclose(L.finalize_metrics(m)["ratio"], s_i, rtol=1e-6)
  # Gradient: d(-s_i)/d lp_t = -s_i / 2 on each masked token, 0 elsewhere.
  g = _grad_wrt_logprobs(lp, old, adv, mask, ratio="sequence", eps_low=0.5, eps_high=0.5,
                         aggregation="seq_mean_token_mean")
  np.testing.assert_allclose(g, [[-s_i / 2, -s_i / 2, 0.0]], rtol=1e-6)
  # With GSPO's eps and A < 0, s_i < 1 - 3e-4 is clipped: value -A * (1 - 3e-4), no gradient.
  kw = dict(ratio="sequence", eps_low=3e-4, eps_high=4e-4, aggregation="seq_mean_token_mean")
  s, _, m = L.policy_loss(lp, old, -adv, mask, **kw)
  np.testing.assert_allclose(s, 1 - 3e-4, rtol=1e-6)
  np.testing.assert_allclose(_grad_wrt_logprobs(lp, old, -adv, mask, **kw), 0.0, atol=1e-8)
  np.testing.assert_allclose(L.finalize_metrics(m)["clip_frac_low"], 1.0)


def _gspo_reference(lp, old, seq_adv, mask, eps_low, eps_high):
  """GSPO as written in the paper: one ratio and one advantage per sequence."""
  n = mask.sum(axis=1)
  s = jnp.exp((mask * (lp - old)).sum(axis=1) / n)
  per_seq = -jnp.minimum(s * seq_adv, jnp.clip(s, 1 - eps_low, 1 + eps_high) * seq_adv)
  return per_seq.mean()


def test_gspo_token_form_gradient_equals_gspo_with_constant_advantages():
  rng = np.random.default_rng(0)
  b, t = 6, 5  # The shape of _random_batch, so eager ops compiled there are reused.
  lp = jnp.asarray(rng.normal(-1.0, 0.3, (b, t)), jnp.float32)
  old = lp + jnp.asarray(rng.normal(0.0, 0.05, (b, t)), jnp.float32)
  mask = jnp.asarray(rng.random((b, t)) < 0.7, jnp.float32).at[:, 0].set(1.0)
  seq_adv = jnp.asarray([1.0, -1.0, 0.5, -0.5, 2.0, -2.0], jnp.float32)
  adv = seq_adv[:, None] * jnp.ones((b, t))
  eps_low, eps_high = 0.02, 0.03  # Some sequences clipped, some not.
  s_ref = jnp.exp((mask * (lp - old)).sum(1) / mask.sum(1))
  clipped = (seq_adv > 0) & (s_ref > 1 + eps_high) | (seq_adv < 0) & (s_ref < 1 - eps_low)
  assert 0 < int(clipped.sum()) < b, s_ref

  ref_fn = lambda x: _gspo_reference(x, old, seq_adv, mask, eps_low, eps_high)
  kw = dict(ratio="sequence", eps_low=eps_low, eps_high=eps_high,
            aggregation="seq_mean_token_mean")
  ours_fn = lambda x: (lambda s, d, _: s / d)(*L.policy_loss(x, old, adv, mask, **kw))
  np.testing.assert_allclose(ours_fn(lp), ref_fn(lp), rtol=1e-5, atol=1e-7)
  g_ref, g_ours = jax.grad(ref_fn)(lp), jax.grad(ours_fn)(lp)
  np.testing.assert_allclose(g_ours, g_ref, rtol=1e-5, atol=1e-7)
  assert float(jnp.abs(g_ref).sum()) > 0


def test_gspo_token_form_credits_each_token_with_its_own_advantage():
  # Gated sequence ratio with token advantages: gradient on token t is -s * A_t / |y| (unclipped).
  lp = jnp.log(jnp.array([[0.5, 0.3, 0.2]]))
  old = jnp.log(jnp.array([[0.5, 0.3, 0.2]]))
  gate = jnp.array([[1.0, 0.0, 1.0]])
  adv = jnp.array([[-1.0, 5.0, -3.0]])  # The ungated token's advantage must not matter.
  g = _grad_wrt_logprobs(lp, old, adv, gate, ratio="gated_sequence",
                         aggregation="seq_mean_token_mean")
  np.testing.assert_allclose(g, [[0.5, 0.0, 1.5]], rtol=1e-6)


# --- aggregation modes -----------------------------------------------------------------------

def test_token_mean_vs_seq_mean_vs_dr_grpo_denominators():
  # ratio = 1 everywhere, so each token loss is -A.
  lp = jnp.zeros((3, 3))
  adv = jnp.array([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0], [7.0, 7.0, 7.0]])
  mask = jnp.array([[1, 1, 1], [1, 0, 0], [0, 0, 0]])  # Last row: a sequence with no tokens.
  s, d, _ = L.policy_loss(lp, lp, adv, mask, aggregation="token_mean")
  np.testing.assert_allclose([s, d], [-10.0, 4.0])
  s, d, _ = L.policy_loss(lp, lp, adv, mask, aggregation="seq_mean_token_mean")
  np.testing.assert_allclose([s, d], [-(6 / 3 + 4), 2.0])
  s, d, _ = L.policy_loss(lp, lp, adv, mask, aggregation="seq_mean_token_sum_norm", max_len=8)
  np.testing.assert_allclose([s, d], [-10.0, 3 * 8.0])  # All three rows count for Dr.GRPO.
  # A padding row (seq_mask = 0) counts in none of them.
  s, d, _ = L.policy_loss(lp, lp, adv, mask, aggregation="seq_mean_token_sum_norm", max_len=8,
                          seq_mask=jnp.array([1, 1, 0]))
  np.testing.assert_allclose([s, d], [-10.0, 2 * 8.0])
  s, d, _ = L.policy_loss(lp, lp, adv, mask, aggregation="token_mean",
                          seq_mask=jnp.array([0, 1, 1]))
  np.testing.assert_allclose([s, d], [-4.0, 1.0])


def test_values_off_the_mask_are_ignored_even_if_not_finite():
  lp = jnp.array([[-1.0, -jnp.inf, jnp.nan]])
  old = jnp.array([[-1.2, jnp.nan, -jnp.inf]])
  adv = jnp.array([[1.0, jnp.nan, jnp.inf]])
  ref = jnp.array([[-0.9, jnp.inf, jnp.nan]])
  mask = jnp.array([[1.0, 0.0, 0.0]])
  for ratio in ("token", "sequence"):
    for agg in L.AGGREGATIONS:
      kw = dict(ratio=ratio, aggregation=agg, max_len=4, ref_logprobs=ref, kl_beta=0.1)
      s, d, m = L.policy_loss(lp, old, adv, mask, **kw)
      g = _grad_wrt_logprobs(lp, old, adv, mask, **kw)
      assert np.isfinite(float(s)) and np.isfinite(float(d)), (ratio, agg)
      assert np.all(np.isfinite(np.asarray(g))), (ratio, agg, g)
      assert all(np.isfinite(float(v)) for pair in m.values() for v in pair), (ratio, agg)


def test_extreme_log_ratio_stays_finite():
  # A token the old policy almost never sampled: exp(lp - old) = exp(99) would overflow.
  lp = jnp.array([[-1.0, -1.0]])
  old = jnp.array([[-100.0, -1.0]])
  mask = jnp.ones((1, 2))
  for sign in (1.0, -1.0):
    adv = jnp.array([[sign, sign]])
    for ratio in ("token", "sequence"):
      s, d, m = L.policy_loss(lp, old, adv, mask, ratio=ratio)
      g = _grad_wrt_logprobs(lp, old, adv, mask, ratio=ratio)
      assert np.isfinite(float(s)) and np.all(np.isfinite(np.asarray(g))), (sign, ratio, s, g)
      assert all(np.isfinite(float(v)) for pair in m.values() for v in pair), (sign, ratio)
  # A > 0: the first token is clipped (no gradient), the second is not.
  g = _grad_wrt_logprobs(lp, old, jnp.ones((1, 2)), mask)
  np.testing.assert_allclose(g, [[0.0, -0.5]], atol=1e-7)


# --- KL to the reference ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["k2", "k3"])
def test_kl_term_values_and_gradient(kind):
  lp = jnp.log(jnp.array([[0.5, 0.2]]))
  ref = jnp.log(jnp.array([[0.25, 0.4]]))
  mask = jnp.ones((1, 2))
  zero_adv = jnp.zeros((1, 2))
  d = np.log([0.25 / 0.5, 0.4 / 0.2])  # log(ref / pi)
  value = {"k2": 0.5 * d**2, "k3": np.expm1(d) - d}[kind]
  dvalue = {"k2": -d, "k3": 1 - np.exp(d)}[kind]  # d/d lp
  beta = 0.1
  s, den, m = L.policy_loss(lp, lp, zero_adv, mask, ref_logprobs=ref, kl_beta=beta,
                            kl_estimator=kind)
  np.testing.assert_allclose(s / den, beta * value.mean(), rtol=1e-5, atol=1e-7)
  fin = L.finalize_metrics(m)
  np.testing.assert_allclose(fin["kl_ref"], value.mean(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(fin["kl_loss"], beta * value.mean(), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(fin["pg_loss"], 0.0, atol=1e-7)
  g = _grad_wrt_logprobs(lp, lp, zero_adv, mask, ref_logprobs=ref, kl_beta=beta,
                         kl_estimator=kind)
  # old_logprobs is lp itself but treated as a constant, so only the KL term has gradient.
  np.testing.assert_allclose(g, [beta * dvalue / 2], rtol=1e-5)


def test_approx_kl_old_metric():
  lp = jnp.log(jnp.array([[0.6, 0.3]]))
  old = jnp.log(jnp.array([[0.4, 0.3]]))
  _, _, m = L.policy_loss(lp, old, jnp.ones((1, 2)), jnp.ones((1, 2)))
  r = 1.5
  np.testing.assert_allclose(L.finalize_metrics(m)["approx_kl_old"], (r - 1 - math.log(r)) / 2,
                             rtol=1e-5)


# --- micro-batch accumulation property -------------------------------------------------------

def _random_batch(seed, b=6, t=5):
  rng = np.random.default_rng(seed)
  lp = jnp.asarray(rng.normal(-1.5, 0.5, (b, t)), jnp.float32)
  old = lp + jnp.asarray(rng.normal(0.0, 0.3, (b, t)), jnp.float32)
  ref = lp + jnp.asarray(rng.normal(0.0, 0.3, (b, t)), jnp.float32)
  adv = jnp.asarray(rng.normal(0.0, 1.0, (b, t)), jnp.float32)
  mask = jnp.asarray(rng.random((b, t)) < 0.6, jnp.float32).at[2].set(0.0)  # Row 2 is empty.
  seq_mask = jnp.ones(b).at[4].set(0.0)  # Row 4 is padding.
  ent = jnp.asarray(rng.random((b, t)), jnp.float32)
  return lp, old, ref, adv, mask, seq_mask, ent


@pytest.mark.parametrize("ratio", ["token", "sequence"])
@pytest.mark.parametrize("aggregation", L.AGGREGATIONS)
def test_micro_batch_sums_equal_full_batch_loss_and_gradient(aggregation, ratio):
  batch = _random_batch(seed=len(aggregation) * 10 + len(ratio))
  kw = dict(ratio=ratio, aggregation=aggregation, max_len=5, eps_low=0.1, eps_high=0.15,
            kl_beta=0.05, kl_estimator="k3")

  def loss_sum(lp, old, ref, adv, mask, seq_mask, ent):
    s, d, m = L.policy_loss(lp, old, adv, mask, ref_logprobs=ref, seq_mask=seq_mask,
                            entropy=ent, **kw)
    return s, (d, m)

  value_and_grad = jax.value_and_grad(loss_sum, has_aux=True)
  (s, (den, metrics)), g = value_and_grad(*batch)
  loss, grad, fin = s / den, g / den, L.finalize_metrics(metrics)
  assert float(den) > 0 and float(jnp.abs(grad).sum()) > 0
  for n in (2, 3):  # Micro-batches of 3 and of 2 rows.
    bounds = np.linspace(0, batch[0].shape[0], n + 1).astype(int)
    parts = [value_and_grad(*(x[a:b] for x in batch)) for a, b in zip(bounds[:-1], bounds[1:])]
    s_tot = sum(p[0][0] for p in parts)
    den_tot = sum(p[0][1][0] for p in parts)
    m_tot = functools.reduce(lambda x, y: jax.tree.map(jnp.add, x, y),
                             [p[0][1][1] for p in parts])
    g_tot = jnp.concatenate([p[1] for p in parts])
    np.testing.assert_allclose(den_tot, den, rtol=1e-6)
    np.testing.assert_allclose(s_tot / den_tot, loss, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g_tot / den_tot, grad, rtol=1e-5, atol=1e-7)
    fin_tot = L.finalize_metrics(m_tot)
    for name in fin:
      np.testing.assert_allclose(fin_tot[name], fin[name], rtol=1e-5, atol=1e-7, err_msg=name)


# --- jit, SFT, helpers -----------------------------------------------------------------------

def test_policy_loss_jits_with_static_options():
  lp, old, ref, adv, mask, seq_mask, _ = _random_batch(seed=1)
  kw = dict(ratio="sequence", aggregation="seq_mean_token_mean", eps_low=3e-4, eps_high=4e-4)
  eager = L.policy_loss(lp, old, adv, mask, seq_mask=seq_mask, **kw)
  jitted = jax.jit(functools.partial(L.policy_loss, **kw))(lp, old, adv, mask,
                                                           seq_mask=seq_mask)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), eager, jitted)
  # kl_beta may be a traced scalar (e.g. a schedule).
  f = jax.jit(lambda beta: L.policy_loss(lp, old, adv, mask, ref_logprobs=ref, kl_beta=beta)[0])
  np.testing.assert_allclose(f(0.0), L.policy_loss(lp, old, adv, mask)[0], rtol=1e-6)
  assert float(f(1.0)) != float(f(0.0))


def test_sft_loss():
  lp = jnp.log(jnp.array([[0.5, 0.25, 0.1], [0.125, 0.9, 0.9]]))
  mask = jnp.array([[1, 1, 0], [1, 0, 0]])
  s, d = L.sft_loss(lp, mask)
  np.testing.assert_allclose(s / d, (math.log(2) + math.log(4) + math.log(8)) / 3, rtol=1e-6)
  np.testing.assert_allclose(d, 3.0)
  g = jax.grad(lambda x: L.sft_loss(x, mask)[0])(lp)
  np.testing.assert_allclose(g, -np.asarray(mask, np.float32))


def test_finalize_metrics_nan_on_empty_and_error_on_bad_entry():
  fin = L.finalize_metrics({"a": (jnp.float32(2.0), jnp.float32(4.0)),
                            "b": (jnp.float32(0.0), jnp.float32(0.0))})
  np.testing.assert_allclose(fin["a"], 0.5)
  assert np.isnan(float(fin["b"]))
  with pytest.raises(ValueError, match="metric 'c' must be a \\(sum, count\\) pair"):
    L.finalize_metrics({"c": jnp.float32(1.0)})


# --- presets and errors ----------------------------------------------------------------------

def _preset(name, **over):
  from si_jax import configs
  return {**configs.LOSS_PRESETS[name], **over}


def _loss_kw(p):
  return dict(ratio=p["ratio"], aggregation=p["aggregation"], eps_low=p["eps_low"],
              eps_high=p["eps_high"], max_len=8)


def test_presets_behave_as_their_papers_say():
  """Each preset, fed to policy_loss, shows its paper's distinguishing behaviour."""
  mask = jnp.ones((2, 4))
  adv = jnp.ones((2, 4))
  old = jnp.zeros((2, 4))
  # A token ratio of 1.25 with A > 0: clipped by GRPO (eps 0.2), not by DAPO (eps_high 0.28).
  lp = jnp.full((2, 4), math.log(1.25))
  _, _, m = L.policy_loss(lp, old, adv, mask, **_loss_kw(_preset("grpo")))
  assert float(m["clip_frac_high"][0] / m["clip_frac_high"][1]) == 1.0
  _, _, m = L.policy_loss(lp, old, adv, mask, **_loss_kw(_preset("dapo")))
  assert float(m["clip_frac_high"][0]) == 0.0
  # GSPO: a sequence whose mean log-ratio is 1e-3 (> eps_high 4e-4) is clipped as a whole even
  # though one of its tokens has ratio 1; a sequence at 1e-4 is not clipped at all.
  lp = jnp.array([[4e-3, 0.0, 0.0, 0.0], [4e-4, 0.0, 0.0, 0.0]])
  _, _, m = L.policy_loss(lp, old, adv, mask, **_loss_kw(_preset("gspo")))
  assert float(m["clip_frac_high"][0]) == 4.0 and float(m["clip_frac_high"][1]) == 8.0
  # Dr.GRPO: token sum over rows * max_len, whatever the number of loss tokens.
  mask2 = jnp.array([[1, 1, 0, 0], [1, 0, 0, 0]], jnp.float32)
  s, d, _ = L.policy_loss(old, old, adv, mask2, **_loss_kw(_preset("dr_grpo")))
  assert float(d) == 2 * 8 and float(s) == -3.0
  # GRPO: per-sequence token mean, then mean over sequences.
  s, d, _ = L.policy_loss(old, old, adv * jnp.array([[1.0], [3.0]]), mask2,
                          **_loss_kw(_preset("grpo")))
  np.testing.assert_allclose(float(s / d), -(1.0 + 3.0) / 2)
  # DAPO: token mean over the whole batch.
  s, d, _ = L.policy_loss(old, old, adv * jnp.array([[1.0], [3.0]]), mask2,
                          **_loss_kw(_preset("dapo")))
  np.testing.assert_allclose(float(s / d), -(1.0 + 1.0 + 3.0) / 3)


def test_kl_estimators_expected_gradients_on_a_categorical_policy():
  """k2's and k3's expected gradients (over tokens sampled from pi, differentiated through
  log pi only) are those of KL(pi||ref) and KL(ref||pi); k1's is zero, and k1 is refused as a
  loss."""
  from si_jax.rl import advantages as A
  theta = jnp.array([0.3, -1.2, 0.8, 0.1, -0.4])
  ref = jax.nn.log_softmax(jnp.array([0.0, 0.5, -0.3, 1.0, 0.2]))

  def expected_grad(kind):
    def f(t):
      logp = jax.nn.log_softmax(t)
      k = A.kl_penalty(logp, ref, kind)  # one "token" per category
      return jnp.sum(jax.lax.stop_gradient(jnp.exp(logp)) * k)  # E_{y ~ pi}, pi not diffed
    return jax.grad(f)(theta)

  def kl(p_logits, q):  # KL(softmax(p) || q)
    lp = jax.nn.log_softmax(p_logits)
    return jnp.sum(jnp.exp(lp) * (lp - q))

  np.testing.assert_allclose(expected_grad("k1"), 0.0, atol=1e-6)
  np.testing.assert_allclose(expected_grad("k2"), jax.grad(lambda t: kl(t, ref))(theta),
                             rtol=1e-5, atol=1e-6)
  rev = jax.grad(lambda t: jnp.sum(jnp.exp(ref) * (ref - jax.nn.log_softmax(t))))(theta)
  np.testing.assert_allclose(expected_grad("k3"), rev, rtol=1e-5, atol=1e-6)
  x = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match="k1' cannot be a loss.*zero in expectation"):
    L.policy_loss(x, x, x, x, ref_logprobs=x, kl_beta=0.1, kl_estimator="k1")
  L.policy_loss(x, x, x, x, ref_logprobs=x, kl_beta=0.0, kl_estimator="k1")  # metric only: ok


def test_policy_loss_errors_name_the_problem():
  x = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match=r"ratio must be one of .*got 'seq'"):
    L.policy_loss(x, x, x, x, ratio="seq")
  with pytest.raises(ValueError, match="needs max_len"):
    L.policy_loss(x, x, x, x, aggregation="seq_mean_token_sum_norm")
  with pytest.raises(ValueError, match="kl_beta=0.1 needs ref_logprobs"):
    L.policy_loss(x, x, x, x, kl_beta=0.1)
  with pytest.raises(ValueError, match=r"advantages must have shape \(2, 3\).*got \(2,\)"):
    L.policy_loss(x, x, jnp.zeros(2), x)
  with pytest.raises(ValueError, match=r"seq_mask must have shape \(2,\).*got \(3,\)"):
    L.policy_loss(x, x, x, x, seq_mask=jnp.ones(3))
  with pytest.raises(ValueError, match="eps_low must be < 1"):
    L.policy_loss(x, x, x, x, eps_low=1.0)
  with pytest.raises(ValueError, match=r"kl_estimator must be one of .*got 'k5'"):
    L.policy_loss(x, x, x, x, kl_estimator="k5")


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean",
                                         "seq_mean_token_sum_norm"])
def test_a_gated_token_weighs_what_a_response_token_weighs(aggregation):
  """SI's gated rows (a gate over 2 of a row's 6 response tokens) with row_len = the response
  length: under every aggregation the gradient on a gated token, per unit of advantage,
  equals that on a token of a whole-response (outcome) row of the same length. Under
  seq_mean_token_mean without row_len a 2-token gate weighs as much as a 6-token row: each of
  its tokens 3x more."""
  T = 6
  lp = jnp.full((2, T), -1.0)
  outcome_mask = jnp.ones((2, T)).at[1].set(0.0)                      # row 0: whole response
  gate = jnp.zeros((2, T)).at[1, 2:4].set(1.0)                        # row 1: 2 gated tokens
  mask = outcome_mask + gate
  adv = 1.0 * mask
  kw = dict(ratio="token", aggregation=aggregation, max_len=T, eps_low=0.2, eps_high=0.2)

  def grad(row_len):
    f = lambda x: (lambda s, d, _: s / d)(*L.policy_loss(x, lp, adv, mask, row_len=row_len,
                                                              **kw))
    return np.asarray(jax.grad(f)(lp))

  g = grad(jnp.array([T, T], jnp.float32))
  np.testing.assert_allclose(g[1, 2:4], g[0, 0], rtol=1e-6)
  assert (g[1, :2] == 0).all() and (g[1, 4:] == 0).all()
  g_gate = grad(None)  # today's "gate" normalization
  if aggregation == "seq_mean_token_mean":
    np.testing.assert_allclose(g_gate[1, 2], 3 * g_gate[0, 0], rtol=1e-6)
  else:
    np.testing.assert_allclose(g_gate, g, rtol=1e-6)  # row_len changes nothing there


def test_truncated_importance_weight_of_rows_sampled_by_another_policy():
  """behavior_logprobs: a row sampled under another policy (SI's repair under the repair
  prompt) has its policy gradient scaled by sg(min(pi_old / behavior, cap)); other rows not."""
  lp = jnp.array([[-1.0, -1.0], [-1.0, -1.0]])
  old = lp
  mask = jnp.ones((2, 2))
  adv = jnp.ones((2, 2))
  beh = jnp.array([[-1.0, -1.0], [-3.0, -0.5]])  # row 1: pi_old/beh = e^2, e^-0.5
  rows = jnp.array([0.0, 1.0])
  for ratio, want in (("token", [[1, 1], [1, np.exp(-0.5)]]),
                      ("sequence", [[1, 1], [1, 1]])):  # the gate mean: exp(0.75), capped
    f = lambda x: L.policy_loss(x, old, adv, mask, ratio=ratio, aggregation="token_mean",
                                     eps_low=0.2, eps_high=0.2, behavior_logprobs=beh,
                                     behavior_rows=rows, tis_cap=1.0)[0]
    np.testing.assert_allclose(-np.asarray(jax.grad(f)(lp)), want, rtol=1e-6)
  f = lambda x: L.policy_loss(x, old, adv, mask, ratio="token", aggregation="token_mean",
                                   eps_low=0.2, eps_high=0.2, behavior_logprobs=beh,
                                   behavior_rows=rows, tis_cap=2.0)
  _, _, m = f(lp)
  np.testing.assert_allclose(-np.asarray(jax.grad(lambda x: f(x)[0])(lp))[1], [2.0, np.exp(-0.5)],
                             rtol=1e-6)
  assert float(m["tis_weight"][0] / m["tis_weight"][1]) == pytest.approx((2 + np.exp(-0.5)) / 2)
