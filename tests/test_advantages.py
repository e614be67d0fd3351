"""Tests for si_jax.rl.advantages: hand-computed values first, then edge cases."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from si_jax.rl import advantages as A


# --- group_advantages ------------------------------------------------------------------------

def test_group_zscore_on_1001():
  adv = A.group_advantages(jnp.array([[1.0, 0.0, 0.0, 1.0]]), eps=1e-6)
  # mean 0.5, population std 0.5 -> +-0.5 / (0.5 + 1e-6).
  expected = 0.5 / (0.5 + 1e-6)
  np.testing.assert_allclose(adv, [[expected, -expected, -expected, expected]], rtol=1e-6)
  assert adv.dtype == jnp.float32


def test_group_zscore_unbiased_std():
  adv = A.group_advantages(jnp.array([[1.0, 0.0, 0.0, 1.0]]), ddof=1, eps=0.0)
  s = math.sqrt(1.0 / 3.0)  # sum of squares 1, divided by G - 1 = 3.
  np.testing.assert_allclose(adv, [[0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s]], rtol=1e-6)


def test_dr_grpo_mean_centred_only():
  adv = A.group_advantages(jnp.array([[1.0, 0.0, 0.0, 0.0], [0.2, 0.4, 0.6, 0.8]]),
                           normalize_std=False)
  np.testing.assert_allclose(adv, [[0.75, -0.25, -0.25, -0.25], [-0.3, -0.1, 0.1, 0.3]],
                             atol=1e-6)


def test_group_of_equal_rewards_has_zero_advantage():
  adv = A.group_advantages(jnp.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
  np.testing.assert_array_equal(adv, np.zeros((2, 3)))


def test_group_rows_are_independent():
  r = jnp.array([[3.0, 1.0], [0.0, 10.0]])
  adv = A.group_advantages(r, eps=0.0)
  np.testing.assert_allclose(adv, [[1.0, -1.0], [-1.0, 1.0]], rtol=1e-6)


def test_group_valid_mask_ignores_invalid_members_even_nan():
  r = jnp.array([[1.0, 0.0, jnp.nan, 0.0]])
  valid = jnp.array([[True, True, False, True]])
  adv = A.group_advantages(r, valid=valid, normalize_std=False)
  np.testing.assert_allclose(adv, [[2 / 3, -1 / 3, 0.0, -1 / 3]], atol=1e-6)
  adv = A.group_advantages(r, valid=valid, eps=0.0)
  std = math.sqrt((4 / 9 + 1 / 9 + 1 / 9) / 3)
  np.testing.assert_allclose(adv, [[2 / 3 / std, -1 / 3 / std, 0.0, -1 / 3 / std]],
                             rtol=1e-5)


def test_group_advantages_jits_and_takes_numpy():
  r = np.array([[1.0, 0.0, 0.0, 1.0]], np.float32)
  eager = A.group_advantages(r)
  jitted = jax.jit(A.group_advantages, static_argnames=("normalize_std",))(r)
  np.testing.assert_allclose(eager, jitted, rtol=1e-6)


def test_group_advantages_errors():
  with pytest.raises(ValueError, match=r"rewards must have rank 2, got shape \(4,\)"):
    A.group_advantages(jnp.zeros(4))
  with pytest.raises(ValueError, match="ddof must be 0 or 1, got 2"):
    A.group_advantages(jnp.zeros((1, 4)), ddof=2)
  with pytest.raises(ValueError, match=r"\(1, 4\) and \(1, 3\)"):
    A.group_advantages(jnp.zeros((1, 4)), valid=jnp.ones((1, 3), bool))


# --- token_advantages ------------------------------------------------------------------------

def test_token_advantages_broadcast_onto_mask():
  mask = jnp.array([[0, 1, 1, 0], [1, 1, 1, 1]])
  out = A.token_advantages(jnp.array([0.5, -2.0]), mask)
  np.testing.assert_array_equal(out, [[0.0, 0.5, 0.5, 0.0], [-2.0, -2.0, -2.0, -2.0]])
  assert out.dtype == jnp.float32


def test_token_advantages_row_mismatch():
  with pytest.raises(ValueError, match=r"seq_adv has 3 rows but mask has 2"):
    A.token_advantages(jnp.zeros(3), jnp.zeros((2, 5)))


# --- dynamic_sampling_keep -------------------------------------------------------------------

def test_dynamic_sampling_keeps_groups_with_different_rewards():
  r = jnp.array([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.5, 0.5, 0.5001]])
  np.testing.assert_array_equal(A.dynamic_sampling_keep(r), [False, True, False, True])
  np.testing.assert_array_equal(A.dynamic_sampling_keep(r, atol=1e-3),
                                [False, True, False, False])


def test_dynamic_sampling_valid_mask_and_host_indexing():
  r = np.array([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]], np.float32)
  valid = np.array([[True, False, True], [True, True, False]])
  keep = np.asarray(A.dynamic_sampling_keep(r, valid=valid))
  np.testing.assert_array_equal(keep, [False, True])
  groups = np.array(["a", "b"])
  assert list(groups[keep]) == ["b"]  # What the trainer's refill loop does with it.


def test_dynamic_sampling_single_valid_member_is_dropped():
  r = jnp.array([[1.0, 0.0]])
  np.testing.assert_array_equal(A.dynamic_sampling_keep(r, valid=jnp.array([[1, 0]])),
                                [False])


# --- overlong_penalty ------------------------------------------------------------------------

def test_overlong_penalty_values():
  # L = 10, C = 4: zero up to 6, then linear to -1 at 10, -1 beyond.
  out = A.overlong_penalty(jnp.array([0, 6, 7, 8, 9, 10, 12]), max_new_tokens=10, buffer=4)
  np.testing.assert_allclose(out, [0.0, 0.0, -0.25, -0.5, -0.75, -1.0, -1.0], atol=1e-7)
  assert out.dtype == jnp.float32


def test_overlong_penalty_zero_buffer_is_off_and_errors():
  np.testing.assert_array_equal(A.overlong_penalty(jnp.array([5, 10]), 10, 0), [0.0, 0.0])
  with pytest.raises(ValueError, match=r"buffer must be in \[0, max_new_tokens=10\], got 11"):
    A.overlong_penalty(jnp.array([5]), 10, 11)
  with pytest.raises(ValueError, match="max_new_tokens must be > 0, got 0"):
    A.overlong_penalty(jnp.array([5]), 0, 0)


# --- kl_penalty ------------------------------------------------------------------------------

def test_kl_estimators_values():
  lp = jnp.log(jnp.array([[0.5, 0.2]]))
  ref = jnp.log(jnp.array([[0.25, 0.2]]))
  d = math.log(0.5)  # log(ref / pi) on the first token; 0 on the second.
  np.testing.assert_allclose(A.kl_penalty(lp, ref, "k1"), [[-d, 0.0]], atol=1e-6)
  np.testing.assert_allclose(A.kl_penalty(lp, ref, "k2"), [[0.5 * d * d, 0.0]], atol=1e-6)
  np.testing.assert_allclose(A.kl_penalty(lp, ref, "k3"), [[0.5 - d - 1.0, 0.0]], atol=1e-6)


def test_k3_is_nonnegative_and_unbiased_on_exact_distribution():
  # E_{x~pi}[k1] = E_{x~pi}[k3] = KL(pi || ref) when the expectation is taken exactly.
  pi = jnp.array([0.7, 0.2, 0.1])
  ref = jnp.array([0.3, 0.3, 0.4])
  kl = float(jnp.sum(pi * jnp.log(pi / ref)))
  lp, rlp = jnp.log(pi)[None], jnp.log(ref)[None]
  k1 = A.kl_penalty(lp, rlp, "k1")[0]
  k3 = A.kl_penalty(lp, rlp, "k3")[0]
  assert np.all(np.asarray(k3) >= 0)
  np.testing.assert_allclose(jnp.sum(pi * k1), kl, rtol=1e-5)
  np.testing.assert_allclose(jnp.sum(pi * k3), kl, rtol=1e-5)


def test_kl_penalty_errors():
  with pytest.raises(ValueError, match=r"kind must be one of \('k1', 'k2', 'k3'\), got 'k4'"):
    A.kl_penalty(jnp.zeros((1, 2)), jnp.zeros((1, 2)), "k4")
  with pytest.raises(ValueError, match=r"\(1, 2\) and \(1, 3\)"):
    A.kl_penalty(jnp.zeros((1, 2)), jnp.zeros((1, 3)), "k3")
