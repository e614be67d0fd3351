"""Model contracts that parity tests do not cover: chunking, remat, padding, config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from si_jax.models import config as config_lib
from si_jax.models import transformer

import tiny

CFG = tiny.config("qwen2", vocab_size=96, num_kv_heads=1, intermediate_size=48)


@pytest.fixture(scope="module")
def params():
  return tiny.params(CFG)


def _data(B=3, T=17, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, CFG.vocab_size, (B, T)).astype(np.int32)
  mask = np.ones((B, T), bool)
  mask[1, :5] = False  # left padding
  mask[2, -4:] = False  # right padding
  return jnp.asarray(tokens), jnp.asarray(mask)


@pytest.mark.parametrize("chunk", [1, 4, 16, 100])
def test_chunked_logprobs_equal_full_softmax(params, chunk):
  tokens, mask = _data()
  logits = transformer.forward(params, tokens, mask, CFG) / 0.7
  ref = jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), tokens[:, 1:, None], -1)[..., 0]
  ref = jnp.pad(jnp.where(mask[:, 1:], ref, 0.0), ((0, 0), (1, 0)))
  p = jax.nn.softmax(logits[:, :-1])
  ref_ent = jnp.pad(jnp.where(mask[:, 1:], -(p * jax.nn.log_softmax(logits[:, :-1])).sum(-1),
                              0.0), ((0, 0), (1, 0)))
  lp, ent = transformer.token_logprobs(params, tokens, mask, CFG, temperature=0.7,
                                       chunk_size=chunk, return_entropy=True)
  np.testing.assert_allclose(lp, ref, atol=2e-6)
  np.testing.assert_allclose(ent, ref_ent, atol=2e-5)


def test_remat_gives_the_same_gradients(params):
  tokens, mask = _data()
  f = lambda p, remat: transformer.token_logprobs(p, tokens, mask, CFG, chunk_size=4,
                                                  remat=remat).sum()
  g0 = jax.grad(f)(params, False)
  g1 = jax.grad(f)(params, True)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_left_padding_does_not_change_logits(params):
  tokens = _data()[0][:1, :9]
  pad = jnp.concatenate([jnp.zeros((1, 5), jnp.int32), tokens], 1)
  pmask = jnp.concatenate([jnp.zeros((1, 5), bool), jnp.ones((1, 9), bool)], 1)
  a = transformer.forward(params, tokens, jnp.ones((1, 9), bool), CFG)
  b = transformer.forward(params, pad, pmask, CFG)[:, 5:]
  np.testing.assert_allclose(a, b, atol=2e-5)


def test_prefill_and_decode_equal_full_forward(params):
  tokens, mask = _data()
  mask = mask.at[2].set(True)
  full = transformer.forward(params, tokens, mask, CFG)
  logits, cache = transformer.prefill(params, tokens[:, :10], mask[:, :10], CFG, 17)
  np.testing.assert_allclose(logits, full[:, 9], atol=2e-5)
  lps = transformer.decode_layer_params(params, CFG)
  for t in range(10, 17):
    logits, cache = transformer.decode_step(params, lps, tokens[:, t], cache, CFG)
    np.testing.assert_allclose(logits, full[:, t], atol=2e-5)


def test_bf16_params_and_compute_run_close_to_fp32(params):
  cfg16 = CFG.replace(param_dtype="bfloat16", dtype="bfloat16")
  p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  tokens, mask = _data()
  a = transformer.forward(params, tokens, mask, CFG)
  b = transformer.forward(p16, tokens, mask, cfg16)
  assert b.dtype == jnp.float32 and np.isfinite(b).all()
  assert np.abs(np.asarray(a) - np.asarray(b)).max() < 0.1


def test_llama3_rope_scaling_matches_reference_formula():
  cfg = config_lib.make_config("llama", head_dim=16, num_heads=2, num_kv_heads=1,
                               hidden_size=32, rope_theta=500000.0,
                               rope_scaling=config_lib.RopeScaling(8.0, 1.0, 4.0, 64))
  inv = transformer.rope_inv_freq(cfg)
  base = 1.0 / 500000.0 ** (np.arange(0, 16, 2) / 16)
  wl = 2 * np.pi / base
  assert np.allclose(inv[wl < 64 / 4], base[wl < 64 / 4])  # high frequencies unchanged
  assert np.allclose(inv[wl > 64], base[wl > 64] / 8)  # low frequencies divided by factor


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match=r"num_heads \(6\) must be a multiple of num_kv_heads \(4\)"):
    config_lib.make_config("qwen3", num_heads=6, num_kv_heads=4)
  with pytest.raises(ValueError, match="unknown model family 'gpt2'"):
    config_lib.make_config("gpt2")
  with pytest.raises(ValueError, match="unsupported model_type 'gpt_neox'"):
    config_lib.from_hf_config({"model_type": "gpt_neox"}, source="x/config.json")
  with pytest.raises(ValueError, match="x/config.json: missing required field 'hidden_size'"):
    config_lib.from_hf_config({"model_type": "llama", "vocab_size": 8,
                               "num_attention_heads": 2, "num_hidden_layers": 1,
                               "intermediate_size": 4}, source="x/config.json")
  with pytest.raises(ValueError, match="unknown model preset"):
    config_lib.preset("huge")
  assert config_lib.preset("25m").num_params() == transformer_param_count(config_lib.preset("25m"))


def transformer_param_count(cfg):
  shapes = transformer.param_shapes(cfg)
  return sum(int(np.prod(s)) for s in jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple)))
