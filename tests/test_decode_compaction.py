"""Decode compaction and per-row sampling keys: what they change and what they must not.

Specs: the exact fast kernels equal what they replace (so the default sampler's tokens are
bitwise those of `jax.random.categorical` and `lax.top_k`); with row keys a row samples the
same tokens in any batch; the compacted sampler equals the uncompacted row-key sampler token
for token, with log-probs that equal teacher forcing, and greedy decoding equal to the old path.
"""

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

CFG = preset("tiny", num_layers=1, max_position_embeddings=96)  # vocab 512, near-uniform
STOP = tuple(range(1, 40))  # ~8% of the vocab: lengths spread over the whole budget
N_NEW = 24
LENS = (3, 17, 8, 1, 12, 5, 9, 2)  # mixed prompt lengths, 8 rows


@pytest.fixture(scope="module")
def params():
  return tiny.params(CFG)


@pytest.fixture(scope="module")
def plain():  # shared by the tests, so that they share its compiled functions
  return sampling.Sampler(CFG, max_len=64)


@pytest.fixture(scope="module")
def compacting():
  return sampling.Sampler(CFG, max_len=64, compact=True, compact_every=4)


def _prompts(seed=0, lens=LENS):
  rng = np.random.default_rng(seed)
  return [list(rng.integers(40, CFG.vocab_size, n)) for n in lens]


def _sp(**kw):
  return sampling.SamplingParams(max_new_tokens=N_NEW, stop_ids=STOP, **kw)


# ----------------------------------------------------------------------------- exact kernels


def test_argmax_last_is_jnp_argmax_with_ties_infinities_and_nan():
  rng = np.random.default_rng(0)
  x = np.round(rng.standard_normal((6, 50)) * 2).astype(np.float32)  # many ties
  x[1] = -np.inf
  x[2, [3, 9]] = np.inf
  x[3, [4, 7]] = np.nan
  x[4, 0], x[4, 1:] = 0.0, -0.0
  np.testing.assert_array_equal(sampling.argmax_last(jnp.asarray(x)), jnp.argmax(x, -1))


@pytest.mark.parametrize("k", [1, 2, 7, 50, 511, 512])
def test_kth_largest_is_the_last_value_of_lax_top_k(k):
  rng = np.random.default_rng(k)
  x = rng.standard_normal((5, 512)).astype(np.float32) * 3
  x[1] = np.round(x[1])  # ties
  x[2, ::3] = -1e30  # already filtered
  x[3, :5], x[3, 5:9] = 0.0, -0.0
  x[4, ::2] = -np.inf
  np.testing.assert_array_equal(sampling.kth_largest(jnp.asarray(x), k),
                                jax.lax.top_k(x, k)[0][:, -1])


def _old_sample_token(logits, key, sp):
  """sample_token as it was: lax.top_k and jax.random.categorical."""
  scaled = logits / (1.0 if sp.greedy else sp.temperature)
  logp = jax.nn.log_softmax(scaled, axis=-1)
  if sp.greedy:
    tok = jnp.argmax(logits, axis=-1)
  else:
    if sp.top_k:
      kth = jax.lax.top_k(scaled, sp.top_k)[0][:, -1:]
      scaled = jnp.where(scaled < kth, sampling._NEG, scaled)
    tok = jax.random.categorical(key, sampling.filter_logits(scaled, 0, sp.top_p), axis=-1)
  return tok, jnp.take_along_axis(logp, tok[:, None], axis=-1)[:, 0]


@pytest.mark.parametrize("temperature,top_p,top_k", [(0.0, 1.0, 0), (1.0, 1.0, 0),
                                                     (0.7, 0.9, 0), (1.3, 1.0, 5),
                                                     (1.0, 0.8, 20)])
def test_shared_key_sampling_is_the_old_stream_bit_for_bit(temperature, top_p, top_k):
  sp = sampling.SamplingParams(max_new_tokens=1, temperature=temperature, top_p=top_p,
                               top_k=top_k)
  new = jax.jit(lambda l, k: sampling.sample_token(l, k, sp))
  old = jax.jit(lambda l, k: _old_sample_token(l, k, sp))
  for i in range(8):
    logits = jax.random.normal(jax.random.key(100 + i), (16, 512)) * 4
    key = jax.random.key(i)
    for a, b in zip(new(logits, key), old(logits, key)):
      np.testing.assert_array_equal(a, b)


def test_row_keys_draw_each_row_with_its_own_key():
  logits = jax.random.normal(jax.random.key(1), (6, 512)) * 3
  keys = jax.random.split(jax.random.key(2), 6)
  sp = sampling.SamplingParams(max_new_tokens=1, temperature=1.0)
  tok, _ = sampling.sample_token(logits, keys, sp)
  np.testing.assert_array_equal(tok, jax.vmap(jax.random.categorical)(keys, logits))
  # and row 4 alone draws what it drew in the batch
  np.testing.assert_array_equal(sampling.sample_token(logits[4:5], keys[4:5], sp)[0], tok[4:5])
  with pytest.raises(ValueError, match=r"one per row \(6\), got keys of shape \(5,\)"):
    sampling.sample_token(logits, keys[:5], sp)


# ----------------------------------------------------------------------------- the sampler


def test_with_row_keys_a_row_samples_the_same_tokens_in_any_batch(params, plain):
  sp = _sp(temperature=1.0, row_keys=True)
  prompts, others = _prompts(2), _prompts(1)
  full = plain.generate(params, prompts, jax.random.key(4), sp)
  alone = plain.generate(params, prompts[:1], jax.random.key(4), sp)  # batch of 1, row 0
  mixed = plain.generate(params, prompts[:3] + others[3:], jax.random.key(4), sp)  # rows 3..
  np.testing.assert_array_equal(alone.tokens[0], full.tokens[0])
  np.testing.assert_array_equal(mixed.tokens[:3], full.tokens[:3])
  np.testing.assert_allclose(mixed.logprobs[:3], full.logprobs[:3], atol=1e-5)


@pytest.mark.parametrize("temperature,top_p,top_k,data", [(1.0, 1.0, 0, 1), (0.8, 0.9, 5, 4)])
def test_compacted_equals_uncompacted_row_keys_and_teacher_forcing(params, plain, compacting,
                                                                   temperature, top_p, top_k,
                                                                   data):
  sp = _sp(temperature=temperature, top_p=top_p, top_k=top_k)
  prompts = _prompts(2)
  ref = plain.generate(params, prompts, jax.random.key(4), dataclasses.replace(sp, row_keys=True))
  s = compacting if data == 1 else sampling.Sampler(
      CFG, shd.make_mesh(data=data, devices=jax.devices()[:data]), max_len=64, compact=True,
      compact_every=4)
  out = s.generate(params, prompts, jax.random.key(4), sp)
  sizes = [b for _, b in s.last_buckets]
  assert len(sizes) >= 2 and sizes == sorted(sizes, reverse=True), s.last_buckets
  assert all(b % data == 0 for b in sizes[1:])  # buckets stay divisible by the batch shards
  assert len(set(ref.lengths.tolist())) >= 4  # really mixed lengths
  for name in ("tokens", "lengths", "finished"):
    np.testing.assert_array_equal(getattr(out, name), getattr(ref, name), err_msg=name)
  np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-5)  # batch size: GEMM rounding

  # The log-probs are the behaviour policy's: teacher forcing gives them back.
  tokens, mask = sampling.pad_prompts(prompts)
  resp = np.arange(N_NEW)[None] < out.lengths[:, None]
  lp = jax.jit(transformer.token_logprobs, static_argnums=3, static_argnames=(
      "temperature", "chunk_size"))(
          params, np.concatenate([tokens, out.tokens], 1), np.concatenate([mask, resp], 1), CFG,
          temperature=temperature, chunk_size=8)
  lp = np.asarray(lp)[:, tokens.shape[1]:]
  np.testing.assert_allclose(np.where(resp, out.logprobs, 0), np.where(resp, lp, 0), atol=1e-5)
  for i, n in enumerate(out.lengths):  # the stop contract: pad and zero after a stop id
    assert out.finished[i] == (out.tokens[i, n - 1] in STOP)
    assert (out.tokens[i, n:] == 0).all() and (out.logprobs[i, n:] == 0).all()


def test_compacted_greedy_equals_the_old_path(params, plain, compacting):
  prompts = _prompts(7)
  tokens, mask = sampling.pad_prompts(prompts)
  first = np.asarray(jnp.argmax(jax.jit(transformer.forward, static_argnums=3)(
      params, tokens, mask, CFG)[:, -1], -1))  # each row's first greedy token
  sp = sampling.SamplingParams(max_new_tokens=N_NEW, temperature=0.0,
                               stop_ids=tuple({int(first[i]) for i in (0, 3, 5, 6, 7)}))
  old = plain.generate(params, prompts, jax.random.key(0), sp)
  out = compacting.generate(params, prompts, jax.random.key(1), sp)  # greedy: no keys
  assert len(compacting.last_buckets) >= 2, compacting.last_buckets
  assert old.lengths.min() == 1 and old.lengths.max() == N_NEW
  for name in ("tokens", "lengths", "finished"):
    np.testing.assert_array_equal(getattr(out, name), getattr(old, name), err_msg=name)
  np.testing.assert_allclose(out.logprobs, old.logprobs, atol=1e-5)


def test_bucket_ladder_and_options():
  s = sampling.Sampler(CFG, shd.make_mesh(data=4, devices=jax.devices()[:4]))
  assert [s.bucket(n) for n in (0, 1, 4, 5, 8, 9, 17)] == [4, 4, 4, 8, 8, 16, 32]
  assert sampling.Sampler(CFG).bucket(5) == 8
  with pytest.raises(ValueError, match="compact_every must be >= 1 decode steps, got 0"):
    sampling.Sampler(CFG, compact=True, compact_every=0)
  assert configs.base_config().rl.decode_compaction is False  # the old streams by default


# ----------------------------------------------------------------------------- si-bench


def test_mixed_stop_ids_end_short_rows_early_and_never_long_rows():
  from si_jax.tools import bench

  tokens = np.array([[5, 6, 7, 8, 9, 10],    # long
                     [5, 11, 6, 12, 13, 14],  # short: 11 (not 12: at position 3 >= cut)
                     [7, 8, 5, 6, 15, 16],    # short: every early token occurs in row 0
                     [17, 18, 19, 20, 21, 22]])  # short: 19, its latest free one before cut
  long_rows = np.array([True, False, False, False])
  assert bench.mixed_stop_ids(tokens, long_rows, cut=3) == (11, 19)


def test_decode_mixed_workload_minuscule(params):
  from si_jax.tools import bench
  from si_jax.tools.bench import cli as bench_cli

  args = bench_cli._parser().parse_args(["--repeats", "1", "--warmup", "0", "--batch", "8",
                                         "--prompt_len", "8", "--new_tokens", "16",
                                         "--compact_every", "2"])
  row = bench.bench_decode_mixed("tiny", CFG, params, args)
  assert row["tokens_equal"] and row["parity"] == "tokens equal"
  assert row["buckets"][0] == (0, 8) and len(row["buckets"]) >= 2  # it compacted
  lengths = np.array(row["row_lengths"])
  assert (lengths <= row["cut"]).sum() >= 4 and (lengths == 16).sum() == 2  # 8 - round(6)
  assert row["tokens"] == lengths.sum() and row["cut"] == 2
  lines = bench.mixed_table([row]).splitlines()
  assert lines[0] == "| " + " | ".join(bench.MIXED_COLUMNS) + " |"
  assert lines[2].startswith("| tiny | B=8 P=8 N=16 t=1 | ") and " 8@0 -> " in lines[2]
