"""The sampler against transformers' generate, and its contracts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from si_jax import sampling
from si_jax.models import hf
from si_jax.models import transformer

import hf_fixtures

FAMILIES = ["llama", "qwen2", "qwen3"]
N_NEW = 12


@pytest.fixture(scope="module", params=FAMILIES)
def model(request, tmp_path_factory):
  path, torch_model = hf_fixtures.make_checkpoint(
      request.param, str(tmp_path_factory.mktemp(request.param)), seed=3)
  cfg, params = hf.load_hf(path)
  return request.param, cfg, params, torch_model


def _hf_greedy(torch_model, prompts, n_new):
  tokens, mask = sampling.pad_prompts(prompts, pad_id=0)
  with torch.no_grad():
    out = torch_model.generate(
        input_ids=torch.tensor(tokens, dtype=torch.long),
        attention_mask=torch.tensor(mask.astype(np.int64)), max_new_tokens=n_new,
        min_new_tokens=n_new, do_sample=False, pad_token_id=0, eos_token_id=None)
  return out[:, tokens.shape[1]:].numpy()


def test_greedy_equals_hf_generate_mixed_lengths_and_prefix_continuation(model):
  family, cfg, params, torch_model = model
  rng = np.random.default_rng(7)
  prompts = [list(rng.integers(3, cfg.vocab_size, n)) for n in (4, 11, 1, 7)]
  sampler = sampling.Sampler(cfg, max_len=64, prompt_bucket=8)
  sp = sampling.SamplingParams(max_new_tokens=N_NEW, temperature=0.0)
  out = sampler.generate(params, prompts, jax.random.key(0), sp)
  ref = _hf_greedy(torch_model, prompts, N_NEW)
  np.testing.assert_array_equal(out.tokens, ref)
  assert list(out.lengths) == [N_NEW] * 4 and not out.finished.any()

  # Continue from prefixes of those rollouts (as SI does): prompt + the first j response ids.
  cont = [p + list(out.tokens[i, :j]) for i, (p, j) in enumerate(zip(prompts, (3, 0, 6, 1)))]
  out2 = sampler.generate(params, cont, jax.random.key(1), sp)
  np.testing.assert_array_equal(out2.tokens, _hf_greedy(torch_model, cont, N_NEW))
  # ... which also continues the original greedy rollout exactly.
  np.testing.assert_array_equal(out2.tokens[0, :N_NEW - 3], out.tokens[0, 3:])


@pytest.mark.parametrize("temperature,top_p,top_k", [(0.0, 1.0, 0), (0.8, 0.9, 0),
                                                     (1.3, 1.0, 5)])
def test_sampled_logprobs_equal_teacher_forced(model, temperature, top_p, top_k):
  _, cfg, params, _ = model
  rng = np.random.default_rng(1)
  prompts = [list(rng.integers(3, cfg.vocab_size, n)) for n in (5, 2, 9)]
  stop = (5, 6, 7)
  sp = sampling.SamplingParams(max_new_tokens=N_NEW, temperature=temperature, top_p=top_p,
                               top_k=top_k, stop_ids=stop)
  out = sampling.Sampler(cfg, max_len=64).generate(params, prompts, jax.random.key(4), sp)
  tokens, mask = sampling.pad_prompts(prompts)
  resp_mask = np.arange(N_NEW)[None] < out.lengths[:, None]
  full = np.concatenate([tokens, out.tokens], 1)
  full_mask = np.concatenate([mask, resp_mask], 1)
  lp = transformer.token_logprobs(params, jnp.asarray(full), jnp.asarray(full_mask), cfg,
                                  temperature=temperature or 1.0, chunk_size=5)
  lp = np.asarray(lp)[:, tokens.shape[1]:]
  np.testing.assert_allclose(np.where(resp_mask, out.logprobs, 0), np.where(resp_mask, lp, 0),
                             atol=1e-5)
  # After a stop id: pad tokens, zero log-probs, finished flag.
  for i in range(len(prompts)):
    n = out.lengths[i]
    assert out.finished[i] == (out.tokens[i, n - 1] in stop)
    assert not set(out.tokens[i, :n - 1].tolist()) & set(stop)
    assert (out.tokens[i, n:] == 0).all() and (out.logprobs[i, n:] == 0).all()


def test_top_k_and_top_p_restrict_the_support():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  assert np.isclose(np.asarray(sampling.filter_logits(logits, 2, 1.0))[0, 2:], -1e30).all()
  kept = np.asarray(sampling.filter_logits(logits, 0, 0.7))[0] > -1e29
  assert kept.tolist() == [True, True, False, False]  # 0.5 < 0.7 <= 0.8
  kept = np.asarray(sampling.filter_logits(logits, 0, 0.4))[0] > -1e29
  assert kept.tolist() == [True, False, False, False]  # the top token always stays
  sp = sampling.SamplingParams(max_new_tokens=1, temperature=1.0, top_p=0.7)
  toks = [int(sampling.sample_token(logits, jax.random.key(i), sp)[0][0]) for i in range(64)]
  assert set(toks) <= {0, 1} and len(set(toks)) == 2


def test_same_key_same_samples_other_key_other_samples(model):
  _, cfg, params, _ = model
  prompts = [[3, 4, 5], [9]]
  s = sampling.Sampler(cfg, max_len=64)
  sp = sampling.SamplingParams(max_new_tokens=N_NEW, temperature=1.0)
  a = s.generate(params, prompts, jax.random.key(0), sp)
  b = s.generate(params, prompts, jax.random.key(0), sp)
  c = s.generate(params, prompts, jax.random.key(1), sp)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert not np.array_equal(a.tokens, c.tokens)


def test_bad_inputs_are_clear_errors(model):
  _, cfg, params, _ = model
  s = sampling.Sampler(cfg, max_len=16)
  sp = sampling.SamplingParams(max_new_tokens=8, temperature=0.0)
  with pytest.raises(ValueError, match=r"prompt 1 has 10 tokens.*cache of 18 > max_len=16"):
    s.generate(params, [[1, 2], list(range(3, 13))], jax.random.key(0), sp)
  with pytest.raises(ValueError, match=r"prompt 1 is empty"):
    s.generate(params, [[1, 2], []], jax.random.key(0), sp)
  with pytest.raises(ValueError, match="no prompts"):
    s.generate(params, [], jax.random.key(0), sp)
  for bad in (0.0, -0.1, 1.5, float("nan")):
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
      sampling.SamplingParams(max_new_tokens=4, top_p=bad)
  with pytest.raises(ValueError, match="temperature must be >= 0"):
    sampling.SamplingParams(max_new_tokens=4, temperature=-1.0)
  with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
    sampling.SamplingParams(max_new_tokens=0)
  with pytest.raises(ValueError, match="top_k must be >= 0"):
    sampling.SamplingParams(max_new_tokens=4, top_k=-2)
