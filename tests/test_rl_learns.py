"""End to end, the policy-gradient direction is right: a bandit over token ids is learned.

Reward = fraction of the 4 response tokens equal to 7. Sampler -> group advantages ->
pack_rows -> update must raise the reward from chance (~1/16) to nearly 1 within 30 updates,
for the token ratio (GRPO) and the sequence ratio (GSPO).
"""

import jax
import numpy as np
import pytest

from si_jax import sampling
from si_jax import sharding as shd
from si_jax.rl import advantages
from si_jax.rl import rollout
from si_jax import train_state as ts
from si_jax.rl import update

import tiny

CFG = tiny.config(vocab_size=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16)


_COMMON = dict(aggregation="seq_mean_token_mean", max_len=None, kl_beta=0.0, kl_estimator="k3",
               temperature=1.0)


@pytest.mark.parametrize("term", [
    update.PolicyTerm(ratio="token", eps_low=0.2, eps_high=0.2, **_COMMON),
    update.PolicyTerm(ratio="sequence", eps_low=3e-4, eps_high=4e-4, **_COMMON),
], ids=["grpo", "gspo"])
def test_policy_gradient_learns_a_token_bandit(term):
  mesh = shd.make_mesh(devices=jax.devices()[:1])
  opt = ts.make_optimizer(1e-2, 100, schedule="constant")
  state = ts.create(tiny.params(CFG), opt, mesh)
  sampler = sampling.Sampler(CFG, mesh, max_len=16)
  sp = sampling.SamplingParams(max_new_tokens=4, temperature=1.0)
  P, G = 8, 8
  prompts = [[1, 2, 3]] * (P * G)
  fn, curve = None, []
  for step in range(30):
    out = sampler.generate(state.params, prompts, jax.random.key(step), sp)
    resp = [list(map(int, out.tokens[i, :out.lengths[i]])) for i in range(P * G)]
    r = np.array([x.count(7) / 4 for x in resp], np.float32).reshape(P, G)
    curve.append(r.mean())
    adv = np.asarray(advantages.group_advantages(r)).reshape(-1)
    batch = {"policy": rollout.pack_rows(
        prompts, resp, prefix_len=3, completion_len=4, pad_id=0,
        values={"old_logprobs": [out.logprobs[i, :out.lengths[i]] for i in range(P * G)],
                "advantages": [np.full(len(x), a) for x, a in zip(resp, adv)]})}
    fn = fn or update.make_update_fn(state, batch, mesh, terms=(term,), cfg=CFG, optimizer=opt)
    state, m = fn(state, batch)
    assert abs(float(m["policy/ratio"]) - 1.0) < 1e-3  # on-policy: sampler == trainer log-probs
  assert curve[0] < 0.2, curve
  assert np.mean(curve[-5:]) > 0.9, curve
