"""Decode cache growth (`Sampler(grow_every=G)`): the cache starts at the prompt plus G columns
and grows by G columns between segments. Specs: it changes no token and no log-prob beyond
float rounding (greedy, sampled with shared keys, with compaction and row keys, on a mesh),
it grows exactly when a segment needs the columns, and bad values are named."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from si_jax import configs
from si_jax import sampling
from si_jax import sharding as shd
from si_jax.models import transformer
from si_jax.models.config import preset

import tiny

CFG = preset("tiny", num_layers=1, max_position_embeddings=96)
N_NEW = 24
LENS = (3, 17, 8, 1, 12, 5, 9, 2)  # longest 17: prompt width 32 with the default bucket 16
P = 32


@pytest.fixture(scope="module")
def params():
  return tiny.params(CFG)


@pytest.fixture(scope="module")
def plain():
  return sampling.Sampler(CFG, max_len=64)


@pytest.fixture(scope="module")
def growing():
  return sampling.Sampler(CFG, max_len=64, grow_every=8)


def _prompts(seed=0):
  rng = np.random.default_rng(seed)
  return [list(rng.integers(40, CFG.vocab_size, n)) for n in LENS]


def _assert_same(out, ref):
  for name in ("tokens", "lengths", "finished"):
    np.testing.assert_array_equal(getattr(out, name), getattr(ref, name), err_msg=name)
  np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-5)


@pytest.mark.parametrize("sp", [
    sampling.SamplingParams(max_new_tokens=N_NEW, temperature=0.0),
    sampling.SamplingParams(max_new_tokens=N_NEW, temperature=1.0, top_k=20),
    sampling.SamplingParams(max_new_tokens=N_NEW, temperature=0.7, top_p=0.9,
                            stop_ids=tuple(range(1, 40))),
], ids=["greedy", "top_k", "top_p_stops"])
def test_growing_cache_samples_what_the_full_cache_samples(params, plain, growing, sp):
  prompts = _prompts(1)
  ref = plain.generate(params, prompts, jax.random.key(3), sp)
  out = growing.generate(params, prompts, jax.random.key(3), sp)
  _assert_same(out, ref)
  if not sp.stop_ids:  # every row runs all 24 steps: three segments, two growths
    assert growing.last_cache_lengths == [(0, P + 8), (8, P + 16), (16, P + 24)]
  else:  # it grew while rows were left, and never past the budget
    assert growing.last_cache_lengths[0] == (0, P + 8)
    assert all(s <= P + N_NEW for _, s in growing.last_cache_lengths)


def test_growth_with_compaction_and_on_a_mesh_equals_row_keys_without(params, plain):
  sp = sampling.SamplingParams(max_new_tokens=N_NEW, temperature=1.0,
                               stop_ids=tuple(range(1, 40)), row_keys=True)
  prompts = _prompts(2)
  ref = plain.generate(params, prompts, jax.random.key(4), sp)
  both = sampling.Sampler(CFG, max_len=64, compact=True, compact_every=4, grow_every=6)
  _assert_same(both.generate(params, prompts, jax.random.key(4), sp), ref)
  assert len(both.last_cache_lengths) >= 2 and len(both.last_buckets) >= 2
  assert [s for _, s in both.last_cache_lengths] == sorted(
      {s for _, s in both.last_cache_lengths})  # grows only
  mesh = shd.make_mesh(data=4, devices=jax.devices()[:4])
  sharded = sampling.Sampler(CFG, mesh, max_len=64, grow_every=10)
  _assert_same(sharded.generate(params, prompts, jax.random.key(4), sp), ref)
  # 24 steps in segments of 10: columns for steps 0-9, 10-19, then 20-23 (capped at P + N).
  assert sharded.last_cache_lengths == [(0, P + 10), (10, P + 20), (20, P + 24)]


def test_a_growth_step_larger_than_the_budget_is_one_full_cache(params, plain):
  sp = sampling.SamplingParams(max_new_tokens=N_NEW, temperature=0.0)
  big = sampling.Sampler(CFG, max_len=64, grow_every=100)
  _assert_same(big.generate(params, _prompts(5), jax.random.key(0), sp),
               plain.generate(params, _prompts(5), jax.random.key(0), sp))
  assert big.last_cache_lengths == [(0, P + N_NEW)]


def test_grow_state_adds_empty_invalid_columns():
  B, KV, hd, S, N = 2, CFG.num_kv_heads, CFG.head_dim, 5, 3
  ones = lambda *s: jnp.ones(s, jnp.float32)
  cache = transformer.KVCache(k=(ones(B, KV, hd, S),) * 2, v=(ones(B, KV, S, hd),) * 2,
                              valid=jnp.ones((B, S), bool), index=jnp.array(S, jnp.int32),
                              positions=jnp.array([4, 2], jnp.int32))
  state = sampling.init_state(jnp.zeros((B, CFG.vocab_size)), cache,
                              sampling.SamplingParams(max_new_tokens=N))
  grown = sampling.grow_state(state, columns=3).cache
  assert grown.k[1].shape == (B, KV, hd, S + 3) and grown.v[0].shape == (B, KV, S + 3, hd)
  assert (grown.k[0][..., :S] == 1).all() and (grown.k[0][..., S:] == 0).all()
  assert (grown.v[1][:, :, S:] == 0).all() and (grown.v[1][:, :, :S] == 1).all()
  np.testing.assert_array_equal(grown.valid, np.array([[True] * S + [False] * 3] * B))
  assert int(grown.index) == S and grown.positions.tolist() == [4, 2]


def test_bad_growth_is_named_and_the_config_default_is_off():
  with pytest.raises(ValueError, match="grow_every must be >= 0 cache columns"):
    sampling.Sampler(CFG, grow_every=-1)
  assert configs.base_config().rl.decode_cache_growth == 0


def test_decode_grow_workload_minuscule(params):
  from si_jax.tools.bench import cli as bench_cli
  from si_jax.tools.bench import grow as bench_grow

  args = bench_cli._parser().parse_args(["--repeats", "1", "--warmup", "0", "--batch", "4",
                                         "--prompt_len", "8", "--grow_new_tokens", "20",
                                         "--grow_every", "8"])
  r = bench_grow.row("tiny", CFG, params, args)
  assert r["tokens_equal"] and r["parity"] == "tokens equal"
  assert r["cache_lengths"] == [(0, 16), (8, 24), (16, 28)]
  assert r["off_tok_s"] == 4 * 20 / r["off_s"] and r["ratio"] == r["off_s"] / r["on_s"]
  lines = bench_grow.markdown_table([r]).splitlines()
  assert lines[0] == "| " + " | ".join(bench_grow.COLUMNS) + " |"
  assert lines[2].startswith("| tiny | B=4 P=8 N=20 greedy | 8 | 16@0 -> 24@8 -> 28@16 | ")
  assert bench_grow._lengths([(i, i) for i in range(6)]) == "0@0 -> 1@1 -> ... -> 5@5"
