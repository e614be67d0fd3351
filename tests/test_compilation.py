"""Compilation is counted and bounded: the counter sees every backend compile, a run at fixed
shapes compiles each program once, and the persistent cache makes a second identical run
compile nothing."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from si_jax import compilation
from si_jax import sampling
from si_jax import sharding as shd
from si_jax.models.config import preset

import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "experiments", "configs", "arith_si.py")


def test_counter_sees_a_compile_once_and_nothing_for_a_program_already_made():
  counter = compilation.counter()
  f = jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)
  x, y = np.ones(7, np.float32), np.ones(9, np.float32)
  with counter.since() as first:
    f(x)
  with counter.since() as again:
    f(x)
    f(x + 1)  # same shape, other values: the same program
  with counter.since() as other:
    f(y)
  assert first[0].compiles >= 1 and first[0].compile_s > 0
  assert again[0] == compilation.CompileStats()
  assert other[0].compiles >= 1
  m = compilation.stage_metrics({"update": first[0], "eval": again[0]})
  assert m["compile/compiles"] == first[0].compiles and m["compile/compiles_eval"] == 0
  assert m["compile/seconds"] == first[0].seconds


def _train(workdir, cache, *overrides):
  cmd = [sys.executable, "-m", "si_jax.cli.train", f"--config={CONFIG}:smoke",
         f"--workdir={workdir}", f"--compile_cache_dir={cache}", "--config.rl.credit=outcome",
         "--config.rl.steps=6", "--config.eval.every=3", *overrides]
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  p = subprocess.run(cmd, cwd=REPO, env=dict(env, XLA_FLAGS=""), capture_output=True,
                     text=True, timeout=600)
  assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
  with open(os.path.join(workdir, "summary.json"), encoding="utf-8") as f:
    summary = json.load(f)
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  return summary, rows, p.stdout


def test_fixed_shapes_compile_once_and_a_second_run_reads_every_program_from_the_cache(
    tmp_path):
  """GSPO on the smoke task: every step has the same shapes (the policy prompt width is
  measured once, rows come from fixed calls), so RL steps after the first compile nothing,
  evaluations after the first neither; an identical second run compiles nothing at all."""
  cache = tmp_path / "xla"
  summary, rows, out = _train(tmp_path / "a", cache)
  rl = [r for r in rows if r["phase"] == 1]
  assert len(rl) == 6 and rl[0]["compile/compiles"] > 0
  assert [r["compile/compiles"] for r in rl[1:]] == [0] * 5, [r["compile/compiles"] for r in rl]
  assert summary["compile"]["rl_steps"] == [[s, n] for s, n in
                                            zip(range(1, 7), [rl[0]["compile/compiles"]] +
                                                [0] * 5)]
  assert "RL steps after step 5 that compiled: none" in out
  first = summary["compile"]
  assert first["compiles"] > 0 and first["cache_hits"] == 0
  summary, rows, out = _train(tmp_path / "b", cache)
  second = summary["compile"]
  assert second["compiles"] == 0 and second["hit_rate"] == 1.0, second
  assert second["cache_hits"] == first["compiles"]
  assert "hit rate 1.00" in out


@pytest.mark.parametrize("mode", [
    {}, {"compact": True, "compact_every": 8}, {"grow_every": 8},
    {"compact": True, "compact_every": 4, "grow_every": 8}, {"mesh": 4}],
    ids=["one_loop", "compacting", "growing", "compacting_growing", "mesh"])
def test_a_sampler_compiled_ahead_compiles_nothing_when_it_first_samples(mode):
  """`Sampler.compile_ahead` puts in JAX's caches the very programs `generate` runs at the
  same floors (a caller first used late in a run, SI's repair sampler, then compiles nothing):
  the one decode loop, or every segment and cache growth. No stop id, so no row finishes early
  and no compaction bucket (data-dependent, not compiled ahead) is met."""
  mode = dict(mode)
  devices = mode.pop("mesh", 1)
  cfg = preset("tiny", num_layers=1, max_position_embeddings=96)
  params = tiny.params(cfg)
  sampler = sampling.Sampler(cfg, shd.make_mesh(data=devices, devices=jax.devices()[:devices]),
                             max_len=64, **mode)
  sp = sampling.SamplingParams(max_new_tokens=20, temperature=1.0, top_k=8)
  rng = np.random.default_rng(0)
  prompts = [list(rng.integers(40, cfg.vocab_size, n)) for n in (3, 17, 9, 30, 5)]
  key = jax.random.key(1)
  counter = compilation.counter()
  with counter.since() as ahead:
    sampler.compile_ahead(params, sp, width=32, rows=8)
  with counter.since() as call:
    out = sampler.generate(params, prompts, key, sp, width=32, rows=8)
  assert ahead[0].compiles + ahead[0].cache_hits >= 2
  assert call[0].compiles == 0 and call[0].cache_hits == 0, call[0]
  assert out.tokens.shape == (5, 20) and (out.lengths == 20).all()
  # a call beyond the floors (more rows) takes another shape: compiled then, and counted
  with counter.since() as beyond:
    sampler.generate(params, prompts * 2, key, sp, width=32, rows=8)
  assert beyond[0].compiles + beyond[0].cache_hits >= 1
