"""The update step: micro-batch accumulation, NaN guard, sharded == single device."""

import jax
import numpy as np
import optax
import pytest

from si_jax import sharding as shd
from si_jax import train_state as ts
from si_jax.rl import update

import tiny

CFG = tiny.config()  # vocab 64, d=32, 2 layers, 4 heads / 2 KV heads of 8, mlp 64
B, T = 8, 12


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, CFG.vocab_size, (B, T)).astype(np.int32)
  input_mask = np.ones((B, T), bool)
  for b in range(B):  # left padding of varying length, response of varying length
    input_mask[b, : b % 3] = False
  loss_mask = np.zeros((B, T), np.float32)
  for b in range(B):
    loss_mask[b, 6: 6 + 1 + (b * 5) % 6] = 1.0
  old = (-2.0 + 0.3 * rng.standard_normal((B, T))).astype(np.float32) * loss_mask
  adv = np.repeat(rng.standard_normal((B, 1)), T, 1).astype(np.float32) * loss_mask
  policy = dict(tokens=tokens, input_mask=input_mask, loss_mask=loss_mask, old_logprobs=old,
                advantages=adv)
  sft = dict(tokens=tokens, input_mask=input_mask, loss_mask=loss_mask)
  return {"policy": policy, "sft": sft}


def _term(**kw):
  base = dict(ratio="token", eps_low=0.2, eps_high=0.2, aggregation="token_mean", max_len=None,
              kl_beta=0.0, kl_estimator="k3", temperature=1.0)
  return update.PolicyTerm(**{**base, **kw})


@pytest.fixture(scope="module")
def params():
  return tiny.params(CFG)


@pytest.mark.parametrize("ratio,aggregation", [
    ("token", "token_mean"), ("sequence", "seq_mean_token_mean"),
    ("token", "seq_mean_token_sum_norm")])
def test_calls_of_few_rows_equal_one_big_call(params, aggregation, ratio):
  """Rows cut into 4 calls per term give the loss, the gradient (SGD with lr 1: the params move
  by it) and the metrics of one call."""
  terms = (_term(ratio=ratio, aggregation=aggregation, max_len=8, eps_low=0.1, eps_high=0.3),
           update.NLLTerm(weight=0.5))
  opt = optax.sgd(1.0)
  mesh = shd.make_mesh(devices=jax.devices()[:1])
  out = []
  for per in (B, B // 4):
    state = ts.create(params, opt, mesh)
    updater = update.Updater(state, mesh, cfg=CFG, chunk_size=5)
    out.append(updater(state, _batch(), terms=terms, rows_per_call=per, optimizer=opt))
  (s1, m1), (s4, m4) = out
  np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-5)
  np.testing.assert_allclose(m4["grad_norm"], m1["grad_norm"], rtol=2e-4)
  for k in ("policy/loss", "policy/pg_loss", "policy/advantage", "sft/nll", "sft/loss"):
    np.testing.assert_allclose(m4[k], m1[k], rtol=1e-5, err_msg=k)
  np.testing.assert_allclose(m1["loss"], m1["policy/loss"] + 0.5 * m1["sft/loss"], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(jax.device_get(s4.params)),
                  jax.tree.leaves(jax.device_get(s1.params))):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-7)


def test_one_program_per_term_and_call_shape_whatever_the_row_counts(params):
  """More rows make more calls, not new programs; terms do not combine into programs."""
  from si_jax import compilation
  terms = (_term(), update.NLLTerm(weight=0.5))
  opt = ts.make_optimizer(1e-2, 10)
  mesh = shd.make_mesh(devices=jax.devices()[:1])
  state = ts.create(params, opt, mesh)
  updater = update.Updater(state, mesh, cfg=CFG, chunk_size=5)
  big = _batch()
  calls = []
  for p_rows, n_rows in ((8, 2), (4, 6), (2, 8), (6, 4)):
    batch = {"policy": {k: v[:p_rows] for k, v in big["policy"].items()},
             "sft": {k: v[:n_rows] for k, v in big["sft"].items()}}
    with compilation.counter().since() as c:
      state, _ = updater(state, batch, terms=terms, rows_per_call=2, optimizer=opt)
    calls.append(c[0].requests)
  assert calls[0] > 0 and calls[1:] == [0, 0, 0]
  keys = sorted(k if isinstance(k, str) else k[0] for k in updater._programs)  # pylint: disable=protected-access
  assert keys == ["acc", "acc", "apply", "zeros"]


def _run_updates(state, batches, step_fn):
  metrics = []
  for b in batches:
    state, m = step_fn(state, b)
    metrics.append(jax.device_get(m))
  return state, metrics


def test_nan_gradient_skips_update_and_counts(params):
  opt = ts.make_optimizer(1e-2, 10)
  mesh = shd.make_mesh(devices=jax.devices()[:1])
  state = ts.create(params, opt, mesh)
  terms = (_term(),)
  good = {"policy": _batch()["policy"]}
  bad = {"policy": dict(good["policy"])}
  adv = bad["policy"]["advantages"].copy()
  adv[0, 6] = np.nan
  bad["policy"]["advantages"] = adv
  step = update.make_update_fn(state, good, mesh, terms=terms, cfg=CFG, optimizer=opt)
  before = jax.device_get(state.params)
  state, m = step(state, bad)
  assert int(m["update_skipped"]) == 1 and not np.isfinite(float(m["loss"]))
  assert int(state.step) == 0 and int(state.skipped) == 1 and int(state.bad_streak) == 1
  for a, b in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(before)):
    np.testing.assert_array_equal(a, b)
  state, m = step(state, bad)
  assert int(state.bad_streak) == 2
  state, m = step(state, good)
  assert int(m["update_skipped"]) == 0 and int(state.step) == 1
  assert int(state.bad_streak) == 0 and int(state.skipped) == 2
  changed = [not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(before))]
  assert any(changed)


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_sum_norm"])
def test_empty_mini_batch_does_not_step_the_optimizer(params, aggregation):
  """Every row filtered out (seq_mask 0): no AdamW step, no weight decay, no schedule move."""
  opt = ts.make_optimizer(1e-2, 10, weight_decay=0.1, warmup_steps=2)
  mesh = shd.make_mesh(devices=jax.devices()[:1])
  state = ts.create(params, opt, mesh)
  good = {"policy": dict(_batch()["policy"], seq_mask=np.ones(B, np.float32))}
  empty = {"policy": dict(good["policy"], seq_mask=np.zeros(B, np.float32))}
  step = update.make_update_fn(state, good, mesh, terms=(_term(aggregation=aggregation,
                                                              max_len=8),),
                               cfg=CFG, optimizer=opt)
  before = jax.device_get((state.params, state.opt_state))
  state, m = step(state, empty)
  assert int(m["update_skipped_empty"]) == 1 and int(m["update_skipped"]) == 0
  assert int(state.step) == 0 and int(state.skipped) == 0
  for a, b in zip(jax.tree.leaves(jax.device_get((state.params, state.opt_state))),
                  jax.tree.leaves(before)):
    np.testing.assert_array_equal(a, b)
  state, m = step(state, good)
  assert int(m["update_skipped_empty"]) == 0 and int(state.step) == 1


def test_policy_term_refuses_bad_fields():
  with pytest.raises(ValueError, match="ratio must be one of"):
    _term(ratio="seq")
  with pytest.raises(ValueError, match="k1's gradient is zero"):
    _term(kl_estimator="k1", kl_beta=0.1)


def test_update_on_fsdp4_tensor2_matches_one_device(params):
  if jax.device_count() < 8:
    pytest.fail("needs 8 simulated devices (tests/conftest.py)")
  terms = (_term(ratio="sequence", aggregation="seq_mean_token_mean"),
           update.NLLTerm(weight=0.1))
  opt = ts.make_optimizer(1e-2, 10, warmup_steps=1)
  batches = [_batch(s) for s in range(3)]
  results = []
  for mesh in (shd.make_mesh(devices=jax.devices()[:1]), shd.make_mesh(fsdp=4, tensor=2)):
    p = jax.device_put(params, shd.param_shardings(CFG, mesh))
    state = ts.create(p, opt, mesh)
    step = update.make_update_fn(state, batches[0], mesh, terms=terms, cfg=CFG, optimizer=opt,
                                 num_micro=2)
    results.append(_run_updates(state, batches, step))
  (s1, m1), (s8, m8) = results
  assert any(not x.sharding.is_fully_replicated for x in jax.tree.leaves(s8.params))
  for a, b in zip(jax.tree.leaves(jax.device_get(s8.params)),
                  jax.tree.leaves(jax.device_get(s1.params))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  for a, b in zip(m8, m1):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
