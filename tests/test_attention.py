"""Attention implementations: every path equals the dense one on valid positions.

Hand-checkable first (zero queries average the visible values), then parity of values and
gradients over masks, head groupings and block sizes, then the model-level contracts: no T x T
residual, remat policies, prefill, and 8 simulated devices equal to one.
"""

import contextlib
import functools
import io
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from si_jax import sharding as shd
from si_jax.models import attention
from si_jax.models import config as config_lib
from si_jax.models import transformer

import tiny


def _qkv(B, T, H, KV, hd, seed=0):
  ks = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(ks[0], (B, T, H, hd)), jax.random.normal(ks[1], (B, T, KV, hd)),
          jax.random.normal(ks[2], (B, T, KV, hd)))


def _mixed_mask(B, T):
  """Row 0 full, row 1 left-padded, row 2 right-padded, row 3 both (prompt + response rows)."""
  mask = np.ones((B, T), bool)
  mask[1 % B, :5] = False
  mask[2 % B, T - 7:] = False
  mask[3 % B, :3] = False
  mask[3 % B, T - 2:] = False
  return jnp.asarray(mask)


def _valid(x, mask):
  """x [B, T, ...] with rows at invalid positions zeroed (their values are unspecified)."""
  return jnp.where(mask.reshape(mask.shape + (1,) * (x.ndim - 2)), x, 0.0)


def _run(impl, q, k, v, mask, block):
  if impl == "cudnn_as_xla":  # the cuDNN path's rotation and lengths, computed by XLA
    return attention.cudnn(q, k, v, mask, block_size=block, implementation="xla")
  if impl == "splash_interpret":
    return attention.splash(q, k, v, mask, interpret=True)
  return attention.attend(q, k, v, mask, impl=impl, block_size=block)


# ----------------------------------------------------------------------------- by hand


@pytest.mark.parametrize("impl", ["dense", "blockwise", "cudnn_as_xla"])
def test_zero_queries_average_the_visible_values(impl):
  # q = 0 makes every visible score equal: o[t] = mean of v[j] over valid j <= t.
  v = jnp.arange(5, dtype=jnp.float32).reshape(1, 5, 1, 1) * jnp.ones((1, 1, 1, 2))
  q = jnp.zeros((1, 5, 2, 2))
  mask = jnp.asarray([[False, True, True, True, True]])
  o = _run(impl, q, v, v, mask, block=2)  # T = 5 is not a multiple of the block
  expected = [(1,), (1, 2), (1, 2, 3), (1, 2, 3, 4)]
  np.testing.assert_allclose(o[0, 1:, :, 0], [[np.mean(e)] * 2 for e in expected], rtol=1e-6)


def test_a_masked_key_gets_no_weight():
  q, k, v = _qkv(1, 6, 2, 1, 4)
  mask = jnp.asarray([[True, True, False, True, True, True]])
  o = attention.attend(q, k, v, mask, impl="blockwise", block_size=4)
  o_changed = attention.attend(q, k.at[:, 2].set(100.0), v.at[:, 2].set(-100.0), mask,
                               impl="blockwise", block_size=4)
  np.testing.assert_allclose(o, o_changed, atol=1e-6)


# ----------------------------------------------------------------------------- parity


SHAPES = [  # (B, T, H, KV, hd, block)
    (4, 37, 4, 2, 8, 8),  # GQA, T not a multiple of the block
    (4, 32, 4, 4, 8, 16),  # MHA, T a multiple
    (4, 19, 6, 1, 4, 64),  # MQA, one block longer than T
    (4, 7, 4, 2, 8, 1),  # blocks of one token
]


@pytest.mark.parametrize("impl", ["blockwise", "cudnn_as_xla"])
@pytest.mark.parametrize("B,T,H,KV,hd,block", SHAPES)
def test_values_and_gradients_equal_dense(impl, B, T, H, KV, hd, block):
  q, k, v = _qkv(B, T, H, KV, hd)
  mask = _mixed_mask(B, T)
  w = _valid(jax.random.normal(jax.random.key(9), q.shape), mask)

  def loss(impl, q, k, v):
    return jnp.sum(_run(impl, q, k, v, mask, block) * w)

  ref = attention.dense(q, k, v, mask)
  np.testing.assert_allclose(_valid(_run(impl, q, k, v, mask, block), mask), _valid(ref, mask),
                             atol=1e-5)
  g_ref = jax.grad(functools.partial(loss, "dense"), argnums=(0, 1, 2))(q, k, v)
  g = jax.grad(functools.partial(loss, impl), argnums=(0, 1, 2))(q, k, v)
  for name, a, b in zip("qkv", g, g_ref):
    np.testing.assert_allclose(a, b, atol=1e-5, err_msg=f"d{name}")


def test_cudnn_path_falls_back_to_blockwise_for_a_row_with_a_hole():
  q, k, v = _qkv(2, 12, 2, 1, 4)
  mask = jnp.ones((2, 12), bool).at[1, 4:6].set(False)  # row 1: valid, hole, valid
  assert not bool(attention.contiguous_rows(mask))
  assert bool(attention.contiguous_rows(_mixed_mask(4, 12)))
  out = attention.cudnn(q, k, v, mask, block_size=4, implementation="xla")
  np.testing.assert_allclose(_valid(out, mask), _valid(attention.dense(q, k, v, mask), mask),
                             atol=1e-5)


def test_splash_kernel_in_interpret_mode_equals_dense():
  if attention._splash_module() is None:
    pytest.fail("jax.experimental.pallas.ops.tpu.splash_attention should import on CPU")
  q, k, v = _qkv(2, 20, 4, 2, 8)
  mask = _mixed_mask(2, 20).at[0, :2].set(False)
  out = attention.splash(q, k, v, mask, interpret=True)
  np.testing.assert_allclose(_valid(out, mask), _valid(attention.dense(q, k, v, mask), mask),
                             atol=1e-5)


def test_bfloat16_blockwise_stays_close_to_float32_dense():
  q, k, v = _qkv(2, 40, 4, 2, 16)
  mask = _mixed_mask(2, 40)
  ref = attention.dense(q, k, v, mask)
  lo = [x.astype(jnp.bfloat16) for x in (q, k, v)]
  out = attention.attend(*lo, mask, impl="blockwise", block_size=16)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(_valid(out.astype(jnp.float32), mask), _valid(ref, mask), atol=5e-2)


# ----------------------------------------------------------------------------- selection


def test_auto_picks_by_backend_dtype_and_length():
  r = functools.partial(attention.resolve, "auto", block_size=128, head_dim=64)
  assert r(seq_len=256, dtype=jnp.float32, backend="cpu") == "blockwise"
  assert r(seq_len=128, dtype=jnp.float32, backend="cpu") == "dense"  # a single block
  assert r(seq_len=256, dtype=jnp.bfloat16, backend="gpu") == "cudnn"
  assert r(seq_len=256, dtype=jnp.float32, backend="gpu") == "blockwise"  # cuDNN: bf16/fp16
  assert r(seq_len=256, dtype=jnp.bfloat16, backend="tpu") == "splash"
  assert attention.resolve("dense", seq_len=4096, block_size=128, dtype=jnp.float32,
                           head_dim=64) == "dense"


def test_bad_choices_name_the_field():
  with pytest.raises(ValueError, match="attention must be one of .*got 'flash'"):
    config_lib.ModelConfig(attention="flash")
  with pytest.raises(ValueError, match="attention_block_size must be >= 1, got 0"):
    config_lib.ModelConfig(attention_block_size=0)
  with pytest.raises(ValueError, match="remat must be a bool or one of"):
    transformer.remat_policy("some")
  assert config_lib.ATTENTION_IMPLS == attention.IMPLEMENTATIONS


def test_attention_choice_is_not_written_to_hf_config():
  cfg = config_lib.preset("tiny", attention="blockwise", attention_block_size=64)
  hf = config_lib.to_hf_config(cfg)
  assert not any("attention_block" in key or key == "attention" for key in hf)
  back = config_lib.from_hf_config(hf, attention="blockwise", attention_block_size=64)
  assert back == cfg


# ----------------------------------------------------------------------------- in the model


CFG = tiny.WIDE
BLOCKWISE = CFG.replace(attention="blockwise", attention_block_size=8)


@pytest.fixture(scope="module")
def model():
  params = tiny.params(CFG)
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(1, CFG.vocab_size, (8, 21)), jnp.int32)
  mask = jnp.asarray(np.arange(21)[None] >= np.array([0, 3, 7, 0, 1, 12, 5, 2])[:, None])
  mask = mask.at[3, 15:].set(False)  # and one right-padded row
  return params, tokens, mask


def _loss(params, tokens, mask, cfg, remat=False):
  """Mean log-prob of the tokens whose predecessor is valid: a left-padded row's first token is
  predicted from a padding position, whose value no implementation specifies."""
  lp = transformer.token_logprobs(params, tokens, mask, cfg, chunk_size=8, remat=remat)
  w = mask[:, 1:] & mask[:, :-1]
  return jnp.sum(lp[:, 1:] * w) / jnp.sum(w)


def _assert_trees_close(a, b, atol):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, atol=atol, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("remat", [False, "dots", "full"])
def test_model_logprobs_and_param_gradients_equal_dense(model, remat):
  params, tokens, mask = model
  ref, g_ref = jax.value_and_grad(_loss)(params, tokens, mask, CFG)
  val, g = jax.value_and_grad(_loss)(params, tokens, mask, BLOCKWISE, remat)
  np.testing.assert_allclose(val, ref, atol=1e-6)
  _assert_trees_close(g, g_ref, atol=1e-5)


def test_prefill_with_blockwise_attention_equals_dense(model):
  params, tokens, mask = model
  mask = mask.at[3].set(True)  # prefill needs a real last column
  logits, cache = transformer.prefill(params, tokens, mask, BLOCKWISE, 24)
  ref_logits, ref_cache = transformer.prefill(params, tokens, mask, CFG, 24)
  np.testing.assert_allclose(logits, ref_logits, atol=1e-5)
  valid = np.asarray(cache.valid)[:, None, None, :]  # K is [B, KV, hd, S]
  for k, rk in zip(cache.k, ref_cache.k):
    np.testing.assert_allclose(np.where(valid, k, 0), np.where(valid, rk, 0), atol=1e-5)


def _residual_sizes(cfg, B, T, remat):
  """Element counts of what the backward pass keeps (print_saved_residuals lines such as
  'f32[2,64,64] output of ...'), the params themselves left out."""
  params = tiny.params(cfg)
  tokens = jnp.ones((B, T), jnp.int32)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    jax.ad_checkpoint.print_saved_residuals(
        lambda p: _loss(p, tokens, jnp.ones((B, T), bool), cfg, remat), params)
  lines = [l for l in out.getvalue().splitlines() if "from the argument" not in l]
  shapes = [re.match(r"\w+\[([\d,]*)\]", l).group(1) for l in lines]
  return [int(np.prod([int(d) for d in s.split(",") if d])) for s in shapes]


def test_blockwise_backward_keeps_no_t_by_t_residual():
  # Doubling T quadruples the largest dense residual (the probabilities) but only doubles the
  # largest blockwise one.
  def largest(cfg, T):
    return max(_residual_sizes(cfg, 2, T, False))
  L, H = CFG.num_layers, CFG.num_heads
  assert largest(CFG, 128) == 4 * largest(CFG, 64) == L * 2 * H * 128 * 128  # [L, B, H, T, T]
  assert largest(BLOCKWISE, 128) == 2 * largest(BLOCKWISE, 64)
  # "dots" keeps less than "none" and more than "full".
  sizes = {r: sum(_residual_sizes(BLOCKWISE, 2, 64, r)) for r in ("none", "dots", "full")}
  assert sizes["full"] < sizes["dots"] < sizes["none"]


@pytest.mark.parametrize("mesh_kw", [dict(data=8), dict(data=2, fsdp=2, tensor=2)],
                         ids=lambda m: ",".join(f"{k}={v}" for k, v in m.items()))
def test_sharded_blockwise_equals_single_device(model, mesh_kw):
  params, tokens, mask = model
  ref, g_ref = jax.value_and_grad(_loss)(params, tokens, mask, BLOCKWISE, "dots")
  mesh = shd.make_mesh(**mesh_kw)
  psh = shd.param_shardings(CFG, mesh)
  bsh = shd.batch_sharding(mesh, tokens.shape)
  f = jax.jit(jax.value_and_grad(functools.partial(_loss, cfg=BLOCKWISE, remat="dots")),
              in_shardings=(psh, bsh, bsh), out_shardings=(shd.replicated(mesh), psh))
  val, g = f(jax.device_put(params, psh), tokens, mask)
  np.testing.assert_allclose(val, ref, atol=1e-6)
  _assert_trees_close(g, g_ref, atol=1e-5)
