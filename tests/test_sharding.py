"""Sharded execution equals single-device execution (8 simulated CPU devices)."""

import functools

import jax
import numpy as np
import pytest

from si_jax import sampling
from si_jax import sharding as shd
from si_jax.models import transformer

import tiny

MESHES = [dict(data=8), dict(fsdp=4, tensor=2), dict(data=2, fsdp=2, tensor=2)]

# Head/hidden sizes divisible by the mesh axes so that every param really is split.
CFG = tiny.WIDE


@pytest.fixture(scope="module")
def setup():
  if jax.device_count() < 8:
    pytest.fail("tests need 8 devices: XLA_FLAGS=--xla_force_host_platform_device_count=8 "
                "(set by tests/conftest.py before jax is imported)")
  params = tiny.params(CFG)
  # Perturb norms so they matter.
  params = jax.tree.map(lambda x: x, params)
  params["layers"]["attn_norm"] = params["layers"]["attn_norm"] + 0.1
  rng = np.random.default_rng(0)
  prompts = [list(rng.integers(1, 128, n)) for n in (3, 9, 5, 12, 7, 2, 10, 4)]
  tokens, mask = sampling.pad_prompts(prompts, 0)
  return params, prompts, tokens, mask


def _single(params, tokens, mask):
  logits = transformer.forward(params, tokens, mask, CFG)
  lp, ent = transformer.token_logprobs(params, tokens, mask, CFG, chunk_size=4,
                                       return_entropy=True)
  return np.asarray(logits), np.asarray(lp), np.asarray(ent)


def test_logical_to_spec_rules():
  mesh = shd.make_mesh(fsdp=4, tensor=2)
  assert shd.logical_to_spec(("vocab", "embed"), (128, 64), mesh) == jax.P("tensor", "fsdp")
  # 2 KV heads * 16 = 32 divisible by tensor=2; 3 is not: replicated.
  assert shd.logical_to_spec(("embed", "kv_heads"), (64, 3), mesh) == jax.P("fsdp", None)
  assert shd.logical_to_spec(("batch", None), (8, 5), mesh) == jax.P("fsdp", None)
  mesh = shd.make_mesh(data=2, fsdp=2, tensor=2)
  assert shd.logical_to_spec(("batch", None), (8, 5), mesh) == jax.P(("data", "fsdp"), None)
  assert shd.logical_to_spec(("batch", None), (2, 5), mesh) == jax.P("data", None)
  with pytest.raises(ValueError, match="no sharding rule"):
    shd.logical_to_spec(("nonsense",), (4,), mesh)


def test_make_mesh_places_devices_with_jax_make_mesh_and_auto_axes():
  mesh = shd.make_mesh(data=2, fsdp=2, tensor=2)
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  # Auto axes, as jax.sharding.Mesh gives: jax.make_mesh's default (Explicit) would turn on
  # sharding-in-types for every jit that uses the mesh.
  assert mesh.axis_types == (jax.sharding.AxisType.Auto,) * 3
  want = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  assert mesh == want
  # -1 fills the remaining devices; explicit devices: the first n of them are used.
  assert shd.make_mesh(fsdp=-1, tensor=2).devices.shape == (1, jax.device_count() // 2, 2)
  one = shd.make_mesh(devices=jax.devices()[1:])
  assert one.devices.shape == (1, 1, 1) and one.devices.item() == jax.devices()[1]
  assert [d.id for d in shd.make_mesh(tensor=2, devices=jax.devices()[4:]).devices.flat] == [4, 5]


def test_make_mesh_errors():
  with pytest.raises(ValueError, match="needs 16 devices"):
    shd.make_mesh(data=4, fsdp=4)
  with pytest.raises(ValueError, match="at most one"):
    shd.make_mesh(data=-1, fsdp=-1)
  assert shd.make_mesh(data=-1, tensor=2).shape["data"] == jax.device_count() // 2


@pytest.mark.parametrize("mesh_kw", MESHES, ids=lambda m: ",".join(f"{k}={v}" for k, v in m.items()))
def test_sharded_forward_logprobs_sampling_match_single_device(setup, mesh_kw):
  params, prompts, tokens, mask = setup
  ref_logits, ref_lp, ref_ent = _single(params, tokens, mask)

  mesh = shd.make_mesh(**mesh_kw)
  psh = shd.param_shardings(CFG, mesh)
  sparams = jax.device_put(params, psh)
  # Params are split whenever the mesh has model axes (data=8 is pure data parallelism).
  split = any(not s.is_fully_replicated for s in jax.tree.leaves(psh))
  assert split == (mesh.shape["fsdp"] * mesh.shape["tensor"] > 1)
  bsh = shd.batch_sharding(mesh, tokens.shape)

  fwd = jax.jit(functools.partial(transformer.forward, cfg=CFG), in_shardings=(psh, bsh, bsh),
                out_shardings=shd.batch_sharding(mesh, ref_logits.shape))
  np.testing.assert_allclose(np.asarray(fwd(sparams, tokens, mask)), ref_logits, atol=2e-5)

  lpf = jax.jit(functools.partial(transformer.token_logprobs, cfg=CFG, chunk_size=4,
                                  return_entropy=True),
                in_shardings=(psh, bsh, bsh), out_shardings=(bsh, bsh))
  lp, ent = lpf(sparams, tokens, mask)
  np.testing.assert_allclose(np.asarray(lp), ref_lp, atol=2e-5)
  np.testing.assert_allclose(np.asarray(ent), ref_ent, atol=2e-5)

  sp = sampling.SamplingParams(max_new_tokens=6, temperature=0.0)
  ref = sampling.Sampler(CFG, max_len=32).generate(params, prompts, jax.random.key(1), sp)
  out = sampling.Sampler(CFG, mesh, max_len=32).generate(sparams, prompts, jax.random.key(1), sp)
  np.testing.assert_array_equal(out.tokens, ref.tokens)
  np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=2e-5)
  # Stochastic sampling with the same key is the same on any mesh too.
  sp = sampling.SamplingParams(max_new_tokens=6, temperature=1.0, top_p=0.9)
  ref = sampling.Sampler(CFG, max_len=32).generate(params, prompts, jax.random.key(2), sp)
  out = sampling.Sampler(CFG, mesh, max_len=32).generate(sparams, prompts, jax.random.key(2), sp)
  np.testing.assert_array_equal(out.tokens, ref.tokens)


def test_init_sharded_params_places_without_replicated_copy():
  mesh = shd.make_mesh(fsdp=4, tensor=2)
  params = shd.init_sharded_params(CFG, mesh, jax.random.key(0))
  psh = shd.param_shardings(CFG, mesh)
  for p, s in zip(jax.tree.leaves(params), jax.tree.leaves(psh)):
    assert p.sharding.is_equivalent_to(s, p.ndim)
  ref = transformer.init_params(CFG, jax.random.key(0))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-8)
