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

from si_jax import compilation

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
