"""LoRA adapters: merge is W + (alpha / r) A @ B, gradients reach only the adapters, and a LoRA
RL run keeps its base frozen, trains and checkpoints only the adapters, and resumes exactly."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from si_jax import configs
from si_jax import sharding as shd
from si_jax.train import workdir as workdir_lib
from si_jax.models import lora
from si_jax.models import transformer
from si_jax import train_state as ts
from si_jax.train import trainer
from si_jax.rl import update

import tiny

CFG = tiny.config(intermediate_size=48)
LC = lora.LoraConfig(rank=4, alpha=8.0, targets=lora.TARGETS)
B, T = 8, 12
_init = jax.jit(lora.init, static_argnums=(0, 1))  # one compile instead of one per op


def _adapters(seed=0, lc=LC):
  """Adapters with a nonzero B (after init B is 0 and the merge is the identity); numpy's
  generator: no compile."""
  rng = np.random.default_rng(seed)
  out = {}
  for name, ab in lora.adapter_shapes(CFG, lc)["layers"].items():
    a = rng.standard_normal(ab["a"]) / np.sqrt(ab["a"][1])
    out[name] = {"a": jnp.asarray(a, jnp.float32),
                 "b": jnp.asarray(0.1 * rng.standard_normal(ab["b"]), jnp.float32)}
  return {"layers": out}


def _tokens(seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, CFG.vocab_size, (B, T)).astype(np.int32)
  mask = np.ones((B, T), bool)
  mask[::2, :3] = False  # some left padding
  return tokens, mask


@pytest.fixture(scope="module")
def base():
  """Random float32 params (numpy's generator: no compile); norms 1."""
  rng = np.random.default_rng(0)
  return jax.tree_util.tree_map_with_path(
      lambda p, shape: jnp.asarray(np.ones(shape) if "norm" in jax.tree_util.keystr(p)
                                   else 0.02 * rng.standard_normal(shape), jnp.float32),
      transformer.param_shapes(CFG), is_leaf=lambda x: isinstance(x, tuple))


def test_shapes_axes_and_shardings_follow_the_kernels(base):
  shapes = lora.adapter_shapes(CFG, LC)["layers"]
  L, d, hd, f = 2, 32, 8, 48
  assert shapes["q"] == {"a": (L, d, 4), "b": (L, 4, 4 * hd)}  # heads flattened: [L, d, H*hd]
  assert shapes["k"] == {"a": (L, d, 4), "b": (L, 4, 2 * hd)}
  assert shapes["o"] == {"a": (L, 4 * hd, 4), "b": (L, 4, d)}
  assert shapes["down"] == {"a": (L, f, 4), "b": (L, 4, d)}
  axes = lora.adapter_axes(CFG, LC)["layers"]
  assert axes["q"] == {"a": ("layers", "embed", None), "b": ("layers", None, "heads")}
  assert axes["down"] == {"a": ("layers", "mlp", None), "b": ("layers", None, "embed")}
  mesh = shd.make_mesh(data=2, fsdp=2, tensor=2)
  sh = lora.adapter_shardings(CFG, LC, mesh)["layers"]
  P = jax.sharding.PartitionSpec
  assert sh["q"]["a"].spec == P(None, "fsdp", None) and sh["q"]["b"].spec == P(None, None,
                                                                               "tensor")
  assert sh["o"]["a"].spec == P(None, "tensor", None) and sh["o"]["b"].spec == P(None, None,
                                                                               "fsdp")
  # the sharded merge (what the trainer's policy_params runs) equals the one-device merge
  ad = jax.tree.map(lambda x, s: jax.device_put(x, s), _adapters(), lora.adapter_shardings(
      CFG, LC, mesh))
  sharded_base = jax.device_put(base, shd.param_shardings(CFG, mesh))
  merged = lora.make_merge_fn(LC, shd.param_shardings(CFG, mesh))(sharded_base, ad)
  assert merged["layers"]["q"].sharding.spec == P(None, "fsdp", "tensor")
  one = jax.devices()[0]
  want = jax.jit(lora.merge, static_argnums=2)(jax.device_put(base, one), jax.device_put(ad, one),
                                                LC)
  for x, y in zip(jax.tree.leaves(jax.device_get(merged)), jax.tree.leaves(want)):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
  only_qv = lora.LoraConfig(rank=2, alpha=1.0, targets=("q", "v"))
  assert sorted(lora.adapter_shapes(CFG, only_qv)["layers"]) == ["q", "v"]


def test_init_is_fan_in_scaled_a_and_zero_b():
  ad = _init(CFG, LC, jax.random.key(3))["layers"]
  for name, ab in ad.items():
    assert ab["a"].dtype == ab["b"].dtype == jnp.float32
    assert not np.any(np.asarray(ab["b"]))
    d_in = ab["a"].shape[1]
    assert 0.5 < float(jnp.std(ab["a"])) * np.sqrt(d_in) < 1.5, name


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_merge_with_zero_b_is_the_base_bitwise(base, dtype):
  base = jax.tree.map(lambda x: x.astype(dtype), base)
  merged = lora.merge(base, _init(CFG, LC, jax.random.key(1)), LC)
  assert jax.tree.structure(merged) == jax.tree.structure(base)
  for x, y in zip(jax.tree.leaves(merged), jax.tree.leaves(base)):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32))


def test_merged_logits_equal_a_model_with_hand_edited_weights(base):
  lc = lora.LoraConfig(rank=4, alpha=8.0, targets=("q", "o", "gate", "down"))
  ad = _adapters(lc=lc)
  edited = jax.tree.map(np.array, base)  # writable copies
  for name, ab in ad["layers"].items():
    a, b = np.asarray(ab["a"], np.float64), np.asarray(ab["b"], np.float64)
    for layer in range(CFG.num_layers):  # W' = W + (alpha / r) A @ B, one layer at a time
      w = edited["layers"][name][layer].astype(np.float64)
      edited["layers"][name][layer] = (w + 2.0 * a[layer] @ b[layer]).astype(np.float32)
  merged = lora.merge(base, ad, lc)
  assert merged["layers"]["k"] is base["layers"]["k"]  # untargeted kernels are the base's
  assert merged["embed"] is base["embed"]
  for x, y in zip(jax.tree.leaves(merged), jax.tree.leaves(edited)):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
  tokens, mask = _tokens()
  forward = jax.jit(transformer.forward, static_argnums=3)
  np.testing.assert_allclose(forward(merged, tokens, mask, CFG),
                             forward(edited, tokens, mask, CFG), atol=1e-5)
  assert not np.allclose(forward(base, tokens, mask, CFG), forward(merged, tokens, mask, CFG),
                         atol=1e-3)


def test_adapter_gradients_are_the_chain_rule_through_the_full_weight(base):
  """dL/dA = s * G @ B^T and dL/dB = s * A^T @ G per layer, G = dL/dW at the merged weights."""
  ad = _adapters()
  tokens, mask = _tokens(1)

  def loss(full):  # next-token NLL
    lp = jax.nn.log_softmax(transformer.forward(full, tokens, mask, CFG)[:, :-1])
    lp = jnp.take_along_axis(lp, tokens[:, 1:, None], -1)[..., 0]
    return -jnp.sum(lp * mask[:, 1:]) / jnp.sum(mask[:, 1:])

  g_ad = jax.jit(jax.grad(lambda a: loss(lora.merge(base, a, LC))))(ad)
  g_full = jax.jit(jax.grad(loss))(lora.merge(base, ad, LC))
  s = LC.scale
  for name, ab in ad["layers"].items():
    G = np.asarray(g_full["layers"][name], np.float64)
    a, b = np.asarray(ab["a"], np.float64), np.asarray(ab["b"], np.float64)
    want_a = s * np.einsum("lio,lro->lir", G, b)
    want_b = s * np.einsum("lir,lio->lro", a, G)
    np.testing.assert_allclose(g_ad["layers"][name]["a"], want_a, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(g_ad["layers"][name]["b"], want_b, rtol=1e-4, atol=1e-7)


def test_config_field_is_validated_and_rank_0_is_off():
  c = configs.base_config()
  c.tokenizer.build = "arith"
  configs.validate(c)
  assert lora.from_config(c.model.lora) is None  # rank 0: off
  assert lora.from_config(None) is None  # a workdir written before the field existed
  c.model.lora.rank = 64
  assert lora.from_config(c.model.lora) == lora.LoraConfig(64, 16.0, lora.TARGETS)
  for field, value, message in (
      ("targets", ("q", "qkv"), r"config.model.lora.targets must be distinct names from"),
      ("targets", (), r"config.model.lora.targets must be"),
      ("rank", -1, r"config.model.lora.rank must be an int >= 0"),
      ("alpha", 0.0, r"config.model.lora.alpha must be a number > 0, got 0.0")):
    bad = configs.base_config()
    bad.tokenizer.build = "arith"
    bad.model.lora[field] = value
    with pytest.raises(ValueError, match=message):
      configs.validate(bad)


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  tokens, mask = _tokens(seed)
  loss_mask = np.zeros((B, T), np.float32)
  loss_mask[:, 6:] = 1.0
  old = (-2.0 + 0.3 * rng.standard_normal((B, T))).astype(np.float32) * loss_mask
  adv = np.repeat(rng.standard_normal((B, 1)), T, 1).astype(np.float32) * loss_mask
  return {"policy": dict(tokens=tokens, input_mask=mask, loss_mask=loss_mask,
                         old_logprobs=old, advantages=adv)}


def test_sharded_update_trains_only_the_adapters(base):
  """On a 2x2x2 mesh: the optimizer state holds adapter-shaped leaves only, the base (an
  argument, never donated) stays bitwise, every adapter moves (B at the first step, A once B
  is nonzero) and stays sharded. (Sharded == one device for the update machinery itself is
  tests/test_update.py's; for the merge, test_shapes_axes_and_shardings_follow_the_kernels.)"""
  if jax.device_count() < 8:
    pytest.fail("needs 8 simulated devices (tests/conftest.py)")
  term = update.PolicyTerm(ratio="token", eps_low=0.2, eps_high=0.2, aggregation="token_mean",
                           max_len=None, kl_beta=0.0, kl_estimator="k3", temperature=1.0)
  opt = ts.make_optimizer(1e-2, 10)
  mesh = shd.make_mesh(data=2, fsdp=2, tensor=2)
  frozen = jax.device_put(base, shd.param_shardings(CFG, mesh))
  state = ts.create(lora.init_sharded(CFG, LC, mesh, jax.random.key(5)), opt, mesh)
  fresh = jax.device_get(state.params)
  shapes = {x.shape for x in jax.tree.leaves(state.params)}
  assert {x.shape for x in jax.tree.leaves(state.opt_state) if x.ndim} == shapes
  step = update.make_update_fn(state, _batch(0), mesh, terms=(term,), cfg=CFG, optimizer=opt,
                               lora=LC, frozen=frozen)
  for seed in range(2):
    state, m = step(state, _batch(seed))
    assert int(m["update_skipped"]) == 0 and np.isfinite(float(m["loss"]))
  for x, y in zip(jax.tree.leaves(jax.device_get(frozen)), jax.tree.leaves(jax.device_get(base))):
    np.testing.assert_array_equal(x, y)  # frozen, and still readable (never donated)
  assert all(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(jax.device_get(
      state.params)), jax.tree.leaves(fresh)))
  sh = lora.adapter_shardings(CFG, LC, mesh)
  assert jax.tree.map(lambda x: x.sharding, state.params) == sh


def _lora_config():
  """The GRPO smoke run, smaller (no SFT, 2 RL steps), with LoRA rank 4 and a KL term."""
  import test_trainer  # pylint: disable=g-import-not-at-top
  c = test_trainer._load_config()
  c.model.lora.rank = 4
  c.mesh.data = 1  # one device (sharded: test_sharded_update_trains_only_the_adapters)
  c.task.kwargs.train_size, c.task.kwargs.test_size = 200, 8
  c.sft.steps, c.rl.steps = 0, 2
  # a length penalty over the whole budget gives every group a signal, so adapters move
  c.rl.kl_beta, c.rl.overlong, c.rl.overlong_buffer_frac = 0.5, True, 1.0
  c.eval.num_examples = 0
  c.checkpoint.every, c.checkpoint.keep = 1, 3
  c.log.tensorboard = False
  return c


def _rows(workdir):
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return [{k: v for k, v in r.items() if not k.startswith(("time/", "compile/"))}
          for r in rows]


def test_rl_run_with_lora_trains_adapters_only_and_resumes_exactly(tmp_path):
  c = _lora_config()
  a = str(tmp_path / "a")
  run = trainer.Run(c, a)
  base0 = jax.device_get(run.base)
  adapters0 = jax.device_get(run.state.params)
  trainer.train(c, a, run=run)
  # the base is bitwise the model the config makes; only the adapters moved
  _, fresh = workdir_lib.setup_model(c, run.tokenizer, run.mesh)
  for x, y, z in zip(jax.tree.leaves(jax.device_get(run.base)), jax.tree.leaves(base0),
                     jax.tree.leaves(jax.device_get(fresh))):
    np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(x, z)
  adapters = jax.device_get(run.state.params)
  assert jax.tree.structure(adapters) == jax.tree.structure(adapters0)
  assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(adapters),
                                                      jax.tree.leaves(adapters0)))
  shapes = {x.shape for x in jax.tree.leaves(adapters)}
  assert {x.shape for x in jax.tree.leaves(run.state.opt_state) if x.ndim} == shapes
  rl = [r for r in _rows(a) if r["phase"] == 1]
  assert len(rl) == 2 and all(r["update_skipped"] == 0 for r in rl)
  assert any(r.get("policy/kl_ref", 0) > 0 for r in rl)  # the policy left the reference
  # si-eval / si-convert read a LoRA run as its base merged with its adapters
  loaded = workdir_lib.load_run(a)
  assert loaded["step"] == 2
  merged = jax.device_get(lora.merge(base0, adapters, run.lora))
  for x, y in zip(jax.tree.leaves(jax.device_get(loaded["params"])), jax.tree.leaves(merged)):
    np.testing.assert_allclose(x, y, rtol=0, atol=1e-7)

  # Resume: the same workdir as if killed right after the checkpoint of step 1 (the first RL
  # step): the base is re-made, the adapters, optimizer and KL reference re-read from disk.
  b = str(tmp_path / "b")
  shutil.copytree(a, b)
  shutil.rmtree(os.path.join(b, "checkpoints", "2"))
  os.remove(os.path.join(b, "summary.json"))
  run_b = trainer.Run(c, b)
  summary = trainer.train(c, b, run=run_b)
  assert summary["resumed"] and summary["steps"] == 2
  for x, y in zip(jax.tree.leaves(jax.device_get(run_b.state)),
                  jax.tree.leaves(jax.device_get(run.state))):
    np.testing.assert_array_equal(x, y)
  assert _rows(a) == _rows(b)
