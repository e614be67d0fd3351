"""Supervision internalization end to end on CPU: select, repair/reset, audit, align, truncate,
rows and both loss terms, on a task every model gets right half of the time.

`arith_parity` is the synthetic arithmetic task whose verifier rewards an even-length response:
a random tiny model is then correct about half the time, so groups have anchors, repairs
verify and credit flows without a trained model. It keeps the arithmetic task's generators
(cold start, repair pairs, probe failures)."""

import importlib.util
import json
import os

import numpy as np
import pytest

from si_jax.data import arith
from si_jax.data import tasks
from si_jax.rl import trainer
from si_jax.si import select as select_lib
from si_jax.verify.types import Verdict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@tasks.register("arith_parity", options=arith.options)
class ParityTask(arith.ArithTask):
  name = "arith_parity"

  def score(self, examples, completions):
    return [Verdict(float(len(c) % 2 == 0), "even" if len(c) % 2 == 0 else "odd")
            for c in completions]

  def trace_correct(self, example, completion):
    return None


def _config(**si):
  spec = importlib.util.spec_from_file_location(
      "arith_si", os.path.join(REPO, "experiments", "configs", "arith_si.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config("smoke")
  with c.unlocked():
    c.task.name = "arith_parity"
  c.si.update(si)
  c.rl.steps = 2
  c.checkpoint.every = 0
  return c


def _rows(workdir):
  return [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]


def test_select_failures_takes_anchored_failures_up_to_m_fail():
  success = np.array([[True, False, False, False], [False, False, False, False],
                      [True, True, False, True]])
  rng = np.random.default_rng(0)
  reqs = select_lib.select_failures(success, np.array([True, True, True]), max_failed=2,
                                    require_anchor=True, rng=rng)
  assert [r.group for r in reqs] == [0, 0, 2]
  assert {r.row for r in reqs[:2]} <= {1, 2, 3} and reqs[2].row == 10
  assert reqs[0].anchor_row == 0 and reqs[2].anchor_row in (8, 9, 11)
  free = select_lib.select_failures(success, np.array([True, True, False]), max_failed=1,
                                    require_anchor=False, rng=rng)
  assert [r.group for r in free] == [0, 1] and free[1].anchor_row is None


def test_repair_correction_end_to_end(tmp_path):
  c = _config(audit="none", repair_rl=True)
  summary = trainer.train(c, str(tmp_path))
  assert summary["steps"] == 8
  rl = [r for r in _rows(tmp_path) if r["phase"] == 1]
  assert sum(r["si/kept"] for r in rl) > 0, rl
  for r in rl:
    for key in ("si/repair_success", "si/candidate_success", "si/audit_block_rate",
                "si/kstar_at_k", "si/kstar_at_all", "time/repair", "time/align",
                "time/truncate", "time/credit", "time/update", "policy/entropy"):
      assert key in r, key
    if r["si/kept"]:
      assert 0 < r["si/active_token_ratio"] <= 1 and r["si/kstar_mean"] >= 1
      assert np.isfinite(r["policy/loss"]) and np.isfinite(r["repair/nll"])
      assert np.isfinite(r["repair_rl/loss"])
      assert r["si/policy_rows"] >= 2 * r["si/kept"]  # a failed and a repaired row per repair
  evals = [r for r in _rows(tmp_path) if "eval/avg@4" in r]
  assert evals and all("eval/si/probe_repair_no_anchor" in r for r in evals)


@pytest.mark.parametrize("correction", ["reset", "random_reset"])
def test_reset_corrections_end_to_end(tmp_path, correction):
  c = _config(correction=correction)
  if correction == "reset":  # a cold start long enough for the reflection format (\boxed{k})
    c.sft.steps, c.sft.num_traces, c.sft.reflection_pairs, c.sft.repair_pairs = 60, 64, 1024, 0
    c.sft.optim.lr = 1e-2
  trainer.train(c, str(tmp_path))
  rl = [r for r in _rows(tmp_path) if r["phase"] == 1]
  assert sum(r["si/resets"] for r in rl) > 0
  for r in rl:
    assert {"si/resets", "si/located", "time/reset", "time/locate"} <= set(r)
    assert np.isfinite(r["policy/loss"])
    if r["si/resets"]:
      assert 0 < r["si/active_token_ratio"] <= 1 and 0 <= r["si/repair_success"] <= 1
  if correction == "reset":
    assert all(r["si/located"] > 0 for r in rl)
    # reflections whose reset found a correct continuation are internalized
    assert any(np.isfinite(r.get("repair/nll", np.nan)) for r in rl)
    evals = [r for r in _rows(tmp_path) if "eval/avg@4" in r]
    assert all("eval/si/probe_reflection_precision" in r for r in evals)


def test_locate_and_prefix():
  from si_jax.si import reset as reset_lib
  from si_jax.tokenizer import Tokenizer, build_char_tokenizer
  texts = ["1+2=3\n3*3=9\nAnswer: 9", "7-1=6\nAnswer: 5"]
  refl = ["\\boxed{2}", "no box"]
  assert reset_lib.locate("reset", texts, step_mode="lines", reflections=refl) == [2, None]
  assert reset_lib.locate("oracle_reset", texts, step_mode="lines", truth=[1, None]) == [2, None]
  assert reset_lib.locate("oracle_reset", texts, step_mode="lines", truth=[3, 0]) == [None, 1]
  ks = reset_lib.locate("random_reset", texts * 50, step_mode="lines",
                        rng=np.random.default_rng(0))
  assert set(ks[0::2]) == {1, 2, 3} and set(ks[1::2]) == {1, 2}
  with pytest.raises(ValueError, match="correction must be one of"):
    reset_lib.locate("bogus", texts, step_mode="lines")


def test_prefix_ids_are_the_sampled_ids_before_the_step(tmp_path):
  from si_jax.si import reset as reset_lib
  from si_jax.tokenizer import Tokenizer, build_char_tokenizer
  tok = Tokenizer.from_dir(build_char_tokenizer(str(tmp_path)))
  text = "1+2=3\n3*3=9\nAnswer: 9"
  ids = tok.encode(text) + [tok.stop_ids[0]]
  assert reset_lib.prefix_ids(tok, ids, text, 1, "lines") == []
  p2 = reset_lib.prefix_ids(tok, ids, text, 2, "lines")
  assert p2 == ids[:len(p2)] and tok.decode(p2) == "1+2=3\n"
  assert tok.decode(reset_lib.prefix_ids(tok, ids, text, 3, "lines")) == "1+2=3\n3*3=9\n"
