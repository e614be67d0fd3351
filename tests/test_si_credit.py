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
from si_jax.train import trainer
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
  # the tests count SI's own rows: correct rollouts' outcome rows (arith_si's default) only
  # where a test asks for them
  c.si.update({"train_correct_base": False, **si})
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
  from si_jax.si import locate as locate_lib
  texts = ["1+2=3\n3*3=9\nAnswer: 9", "7-1=6\nAnswer: 5"]
  refl = ["\\boxed{2}", "no box"]
  assert locate_lib.locate("reset", texts, step_mode="lines", reflections=refl) == [2, None]
  assert locate_lib.locate("oracle_reset", texts, step_mode="lines", truth=[1, None]) == [2, None]
  assert locate_lib.locate("oracle_reset", texts, step_mode="lines", truth=[3, 0]) == [None, 1]
  ks = locate_lib.locate("random_reset", texts * 50, step_mode="lines",
                        rng=np.random.default_rng(0))
  assert set(ks[0::2]) == {1, 2, 3} and set(ks[1::2]) == {1, 2}
  with pytest.raises(ValueError, match="correction must be one of"):
    locate_lib.locate("bogus", texts, step_mode="lines")


def test_prefix_ids_are_the_sampled_ids_before_the_step(tmp_path):
  from si_jax.si import locate as locate_lib
  from si_jax.tokenizer import Tokenizer, build_char_tokenizer
  tok = Tokenizer.from_dir(build_char_tokenizer(str(tmp_path)))
  text = "1+2=3\n3*3=9\nAnswer: 9"
  ids = tok.encode(text) + [tok.stop_ids[0]]
  assert locate_lib.prefix_ids(tok, ids, text, 1, "lines") == []
  p2 = locate_lib.prefix_ids(tok, ids, text, 2, "lines")
  assert p2 == ids[:len(p2)] and tok.decode(p2) == "1+2=3\n"
  assert tok.decode(locate_lib.prefix_ids(tok, ids, text, 3, "lines")) == "1+2=3\n3*3=9\n"


# ----------------------------------------------------------------------------- repair credit,
# step by step, with a scripted sampler


class ScriptedSampler:
  """Returns scripted responses (lists of ids) in call order; records the prompts."""

  def __init__(self, responses, stop_id):
    self.responses = list(responses)
    self.stop_id = stop_id
    self.prompts = []

  def generate(self, params, prompts, key, sp, *, width=0, rows=0):
    from si_jax.sampling import SampleOutput
    self.prompts.append([list(p) for p in prompts])
    outs = [self.responses.pop(0) for _ in prompts]
    N = sp.max_new_tokens
    toks = np.full((len(outs), N), sp.pad_id, np.int32)
    lps = np.zeros((len(outs), N), np.float32)
    for i, o in enumerate(outs):
      toks[i, :len(o)] = o
      lps[i, :len(o)] = -0.5
    return SampleOutput(tokens=toks, logprobs=lps, lengths=np.array([len(o) for o in outs]),
                        finished=np.array([bool(o) and o[-1] == self.stop_id for o in outs]))


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  from si_jax.tokenizer import Tokenizer, build_char_tokenizer
  return Tokenizer.from_dir(build_char_tokenizer(str(tmp_path_factory.mktemp("tok"))))


PROBLEM = arith.Problem(3, ("+", "*"), (4, 3), 10)  # 3+4=7, 7*3=1
GOOD = "3+4=7\n7*3=1\nAnswer: 1"
SPACED = "3 + 4 = 7\n7 * 3 = 1\nAnswer: 1"  # a correct sibling spelled otherwise
BAD = "3+4=7\n7*3=2\nAnswer: 2"  # first wrong step: 1
BAD2 = "3+4=8\n8*3=4\nAnswer: 4"  # first wrong step: 0


def _scored(tok, texts):
  from si_jax.rl import credit as credit_lib
  from si_jax.rl import rollout
  ex = arith._example(PROBLEM, "t/0")  # pylint: disable=protected-access
  ids = [tok.encode(t) + [tok.stop_ids[0]] for t in texts]
  task = arith.ArithTask()
  ro = rollout.Rollouts(
      examples=[ex], group_size=len(texts), prompt_ids=[tok.prompt_ids(ex.prompt)],
      response_ids=ids, logprobs=[np.full(len(i), -1.0, np.float32) for i in ids],
      texts=[tok.decode(i) for i in ids], verdicts=[], rewards=np.zeros((1, len(texts))),
      finished=np.ones(len(texts), bool), timing={})
  ro = rollout.score(ro, task)
  return task, credit_lib.Scored(rollouts=ro, rewards=ro.rewards, success=ro.rewards >= 1.0,
                                 group_mask=np.ones(1, bool), prompt_len=48)


def _ctx(tok, task, sampler, **si):
  import jax
  from si_jax import configs
  from si_jax import sampling
  from si_jax import sharding
  from si_jax.rl import credit as credit_lib
  c = _config(**si)
  with c.unlocked():
    c.task.name = "arith"
  c.rl.max_new_tokens = c.si.repair_max_new_tokens = 40
  sp = sampling.SamplingParams(max_new_tokens=40, stop_ids=tok.stop_ids, pad_id=tok.pad_id)
  return credit_lib.CreditContext(
      config=c, step=0, key=lambda p: jax.random.fold_in(jax.random.key(0), p), params=None,
      sampler=sampler, tokenizer=tok, task=task,
      mesh=sharding.make_mesh(devices=jax.devices()[:1]), loss=configs.resolve_loss(c),
      policy_term=credit_lib.policy_term(c), sampling_params=sp)


def _span(row_tokens, gate):
  return [int(t) for t, g in zip(row_tokens, gate) if g]


def test_repair_credit_marks_the_decisive_tokens_of_failure_and_repair(tok):
  from si_jax.si import repair as si_repair
  task, scored = _scored(tok, [SPACED, BAD])
  stop = tok.stop_ids[0]
  garbage = tok.encode("7*3")  # cut by the budget: no stop token -> audit 'truncated'
  repair = tok.encode(GOOD) + [stop]
  # truncation by continuation: the policy continues the repair's prefix up to the end of its
  # first edit ("3+4=7\n7*3=1"); one of its two continuations recomputes the answer right
  right, wrong = tok.encode("\nAnswer: 1") + [stop], tok.encode("\nAnswer: 5") + [stop]
  sampler = ScriptedSampler([garbage, repair, wrong, right], stop)
  ctx = _ctx(tok, task, sampler, repair_samples=2)
  credit = si_repair.repair_credit(ctx, scored)
  m = credit.metrics
  assert m["si/requests"] == 1 and m["si/kept"] == 1 and m["si/repair_success"] == 1.0
  assert m["si/audit_block/truncated"] == 1 and m["si/candidate_success"] == 0.5
  # the repair prompt shows the failure and the correct sibling as the anchor
  repair_prompts, cont_prompts = sampler.prompts
  assert "Failed:\n" + BAD in tok.decode(repair_prompts[0])
  assert "Reference:\n" + SPACED in tok.decode(repair_prompts[0])
  # the continuations start from the policy prompt + the repair up to its first edit
  assert len(cont_prompts) == 2 and tok.decode(cont_prompts[0]).endswith("3+4=7\n7*3=1")
  # edits: the two wrong values (the result, and the answer that follows from it); the first
  # alone lets the policy finish right: K* = K = 1, the answer is not credited
  assert (m["si/kstar_at_k"], m["si/kstar_at_all"], m["si/kstar_mean"]) == (1, 0, 1.0)
  assert m["tokens/credit_sampled"] == len(garbage) + len(repair) + len(right) + len(wrong)
  assert m["si/localization_precision"] == 1.0  # the first edit is in step 1, the true one
  (detail,) = credit.details
  assert detail["rung"] == "K" and detail["continuation"] == "3+4=7\n7*3=1\nAnswer: 1"
  # the policy continued the repair's first 11 tokens ("3+4=7\n7*3=1"); the gates are the rows'
  assert detail["continuation_prefix"] == len(tok.encode("3+4=7\n7*3=1"))
  assert tok.decode(_span(detail["failed"], detail["minus_mask"])) == "2"
  assert tok.decode(_span(detail["repaired"], detail["plus_mask"])) == "1"
  assert detail["first_wrong"] == 1 and detail["kstar"] == 1 and detail["num_edits"] == 2
  policy, nll = credit.terms[0].rows, credit.terms[1].rows
  assert credit.terms[1].term.name == "repair" and policy["tokens"].shape[0] == 2
  minus, plus = policy["tokens"]
  assert tok.decode(_span(minus, policy["loss_mask"][0])) == "2"  # 7*3=[2], Answer: 2
  assert tok.decode(_span(plus, policy["loss_mask"][1])) == "1"   # 7*3=[1], Answer: 1
  # si.adv_scale=group: the failure's own group-relative magnitude (1 in a group of 2)
  np.testing.assert_allclose(policy["advantages"][0][policy["loss_mask"][0] > 0], -1.0, rtol=1e-5)
  np.testing.assert_allclose(policy["advantages"][1][policy["loss_mask"][1] > 0], 1.0, rtol=1e-5)
  # si.gate_norm=response: the gated rows are weighed by their response lengths
  assert policy["row_len"].tolist() == [len(scored.rollouts.response_ids[1]), len(repair)]
  assert policy["advantages"][:, :48].sum() == 0 and policy["loss_mask"][:, :48].sum() == 0
  # both rows train under the policy prompt; the repair on its sampled ids, verbatim
  failed_ids = scored.rollouts.response_ids[1]
  assert [int(t) for t in minus[48:48 + len(failed_ids)]] == failed_ids
  assert [int(t) for t in plus[48:48 + len(repair)]] == repair
  assert policy["has_old"].tolist() == [True, False]  # the repair's are recomputed
  # internalization: the NLL row is the repair prompt + the kept repair's ids
  assert nll["loss_mask"].sum() == len(repair)
  assert [int(t) for t in nll["tokens"][0][nll["loss_mask"][0] > 0]] == repair
  assert m["si/active_token_ratio"] == pytest.approx(2 / (len(failed_ids) + len(repair)))
  # by graft (the failure's own suffix after the first edit: "Answer: 2") K = 1 cannot
  # verify: the mistake propagated, and K* = all
  sampler = ScriptedSampler([garbage, repair], stop)
  credit = si_repair.repair_credit(_ctx(tok, task, sampler, repair_samples=2,
                                        truncation="graft"), scored)
  m = credit.metrics
  assert (m["si/kstar_at_k"], m["si/kstar_at_all"], m["si/kstar_mean"]) == (0, 1, 2.0)
  policy = credit.terms[0].rows
  assert tok.decode(_span(policy["tokens"][0], policy["loss_mask"][0])) == "22"
  assert tok.decode(_span(policy["tokens"][1], policy["loss_mask"][1])) == "11"


def test_unrepaired_failures_take_the_configured_fallback(tok):
  from si_jax.si import repair as si_repair
  task, scored = _scored(tok, [SPACED, BAD, BAD2])
  stop = tok.stop_ids[0]
  # m_fail = 1: one failure is requested and its repair does not verify, the other is not
  # requested; both take the fallback.
  for fallback, rows in (("outcome", 2), ("drop", 0)):
    sampler = ScriptedSampler([tok.encode(BAD2) + [stop]] * 2, stop)  # no repair verifies
    credit = si_repair.repair_credit(_ctx(tok, task, sampler, unrepaired=fallback,
                                          repair_samples=2, max_failed_per_prompt=1), scored)
    assert credit.metrics["si/kept"] == 0
    n = credit.terms[0].rows["tokens"].shape[0] if credit.terms else 0
    assert n == rows
  # without an anchor (an all-failed group) nothing is requested unless require_anchor=False
  task, scored = _scored(tok, [BAD, BAD2])
  credit = si_repair.repair_credit(_ctx(tok, task, ScriptedSampler([], stop)), scored)
  assert credit.metrics["si/requests"] == 0
  sampler = ScriptedSampler([tok.encode(GOOD) + [stop]] * 4, stop)
  credit = si_repair.repair_credit(_ctx(tok, task, sampler, require_anchor=False,
                                        max_failed_per_prompt=2, audit="none",
                                        truncation="graft"), scored)
  assert credit.metrics["si/requests"] == 2 and credit.metrics["si/kept"] == 2
  assert all("Reference" not in tok.decode(p) for p in sampler.prompts[0])
  # correct rollouts get outcome credit only with train_correct_base
  task, scored = _scored(tok, [GOOD, SPACED])
  ctx = _ctx(tok, task, ScriptedSampler([], stop), train_correct_base=True)
  assert si_repair.repair_credit(ctx, scored).terms[0].rows["tokens"].shape[0] == 2
  ctx = _ctx(tok, task, ScriptedSampler([], stop))
  assert si_repair.repair_credit(ctx, scored).terms == []


def test_gated_sequence_ratio_value_and_gradient_by_hand():
  """The policy loss on SI rows: w = exp(sum_t g_t (lp_t - old_t) / sum_t g_t) per row,
  per-token loss -min(w A, clip(w) A) on gated tokens only, GSPO-token gradient."""
  import jax
  import jax.numpy as jnp
  from si_jax.rl import losses
  lp = jnp.array([[-1.0, -2.0, -0.5, -3.0]])
  old = jnp.array([[-1.2, -2.0, -0.4, -9.0]])
  gate = jnp.array([[1.0, 0.0, 1.0, 0.0]])
  adv = -1.0 * gate
  kw = dict(ratio="gated_sequence", aggregation="seq_mean_token_mean", eps_low=0.2,
            eps_high=0.2)
  s, d, _ = losses.policy_loss(lp, old, adv, gate, **kw)
  w = np.exp(((-1.0 + 1.2) + (-0.5 + 0.4)) / 2)  # the ungated -3 vs -9 does not count
  assert float(s / d) == pytest.approx(w, rel=1e-6)  # -min(w*-1, clip(w)*-1) = w (w in range)
  g = jax.grad(lambda x: losses.policy_loss(x, old, adv, gate, **kw)[0])(lp)
  # d/dlp_t of mean_t(-A_t * sg(w) * exp(lp_t - sg(lp_t))) = -A_t * w / 2 on gated tokens
  np.testing.assert_allclose(np.asarray(g), [[w / 2, 0.0, w / 2, 0.0]], rtol=1e-6)


def test_reset_without_signal_takes_the_outcome_fallback_and_reflections_are_weighted(tok):
  """A reset whose M continuations all fail (or all succeed) carries no signal: the failure
  keeps its outcome credit instead of getting nothing. Reflections whose reset found a correct
  continuation are internalized with weight k / (the failure's steps): resetting from the
  start (k = 1) is always possible and says little about where the mistake was."""
  from si_jax.si import reset as si_reset
  task, scored = _scored(tok, [GOOD, BAD])  # BAD: lines 7*3=2 (step 1) and the answer wrong
  stop = tok.stop_ids[0]
  wrong = tok.encode("7*3=5\nAnswer: 5") + [stop]
  right = tok.encode("7*3=1\nAnswer: 1") + [stop]
  ctx = _ctx(tok, task, ScriptedSampler([wrong] * 4, stop), correction="oracle_reset",
             reset_samples=4)
  credit = si_reset.reset_credit(ctx, scored)
  m, policy = credit.metrics, credit.terms[0].rows
  assert m["si/resets"] == 1 and m["si/resets_with_signal"] == 0
  assert policy["tokens"].shape[0] == 1  # the failure itself, with its outcome advantage
  assert (policy["advantages"][0][policy["loss_mask"][0] > 0] < 0).all()
  ctx = _ctx(tok, task, ScriptedSampler([wrong, right, wrong, wrong], stop),
             correction="oracle_reset", reset_samples=4)
  credit = si_reset.reset_credit(ctx, scored)
  policy = credit.terms[0].rows
  assert credit.metrics["si/resets_with_signal"] == 1 and policy["tokens"].shape[0] == 4
  # reflection (reset): "\boxed{2}" names line 2 of 3 (the first wrong one); its reset finds a
  # correct continuation -> NLL with weight 2/3 on the reflection's tokens
  refl = tok.encode("\\boxed{2}") + [stop]
  ctx = _ctx(tok, task, ScriptedSampler([refl, wrong, right, wrong, wrong], stop),
             correction="reset", reset_samples=4)
  credit = si_reset.reset_credit(ctx, scored)
  (nll,) = [t.rows for t in credit.terms if t.term.name == "repair"]
  w = nll["loss_mask"][0][nll["loss_mask"][0] > 0]
  assert len(w) == len(refl) and np.allclose(w, 2 / 3)


def test_repair_rl_rows_recompute_old_logprobs_sampled_at_another_temperature(tok):
  from si_jax.si import repair as si_repair
  task, scored = _scored(tok, [SPACED, BAD])
  stop = tok.stop_ids[0]
  repair = tok.encode(GOOD) + [stop]
  for temperature, has_old in ((1.0, True), (0.7, False)):
    ctx = _ctx(tok, task, ScriptedSampler([repair] * 2, stop), repair_samples=2,
               repair_rl=True, repair_temperature=temperature, truncation="graft")
    (rl_term,) = [t for t in si_repair.repair_credit(ctx, scored).terms
                  if t.term.name == "repair_rl"]
    assert rl_term.rows["has_old"].tolist() == [has_old] * 2


@pytest.mark.parametrize("si", [
    {}, {"plus": "is", "repair_copy_weight": 0.5}, {"plus": "sft", "repair_rl": True},
    {"correction": "reset"}], ids=["repair", "plus_is", "plus_sft_repair_rl", "reset"])
def test_a_correction_first_made_after_the_warm_up_compiles_nothing(tmp_path, si):
  """SI's programs are compiled before a process's first RL step (`Run.compile_ahead`), so a
  step whose correction is the run's first (a first correct rollout at RL step 24: SI's
  repair and continuation samplers, gate program, repair-mode NLL and re-scored repairs, the
  reset variants' samplers) compiles nothing in its credit, pack and update stages. On the
  parity task the random tiny model has anchors and verifying repairs at its first step."""
  from si_jax.tokenizer import build_char_tokenizer
  c = _config(audit="none", **si)
  c.sft.steps = 0
  c.eval.every = 0
  # letters only, no word tokens: the random model's texts re-encode to no more tokens than it
  # sampled (fused word tokens would not), so its repair prompts fit the run's bound on them
  c.tokenizer.path = build_char_tokenizer(str(tmp_path / "tokenizer"), words=())
  c.model.overrides = dict(c.model.overrides, max_position_embeddings=512)  # spelled out
  run = trainer.Run(c, str(tmp_path / "run"))
  try:
    stream = trainer.PromptStream(run.task.examples(c.task.train_split), c.seed)
    compiled = {}
    with run.compiling("ahead", compiled):
      run.compile_ahead(0)
    assert compiled["ahead"].compiles + compiled["ahead"].cache_hits > 0
    done = "si/requests" if si.get("correction") == "reset" else "si/kept"
    for step in range(4):  # up to the first step that corrects a failure
      row = run.rl_step(step, stream, compiled)
      late = {k: compiled[k].compiles + compiled[k].cache_hits
              for k in ("credit", "pack", "update")}
      assert late == {"credit": 0, "pack": 0, "update": 0}, (step, row)
      if row[done] > 0:
        break
    assert row[done] > 0
  finally:
    run.close()


def test_with_no_repair_kept_the_balanced_signal_is_outcome_credit(tok):
  """SI with the balanced signal (correct rollouts and unrepaired failures on outcome credit)
  and no verified repair trains on exactly GSPO's rows: same tokens, advantages and loss
  tokens, each row weighed by its response length as outcome rows are (a flat parts4 seed ran
  SI and GSPO as one and the same run)."""
  from si_jax.rl import credit as credit_lib
  from si_jax.si import repair as si_repair
  task, scored = _scored(tok, [GOOD, BAD, BAD2, SPACED])
  stop = tok.stop_ids[0]
  sampler = ScriptedSampler([tok.encode(BAD2) + [stop]] * 8, stop)  # no repair verifies
  ctx = _ctx(tok, task, sampler, train_correct_base=True, unrepaired="outcome",
             repair_samples=2, max_failed_per_prompt=2)
  credit = si_repair.repair_credit(ctx, scored)
  assert credit.metrics["si/requests"] == 2 and credit.metrics["si/kept"] == 0
  (si_rows,) = [t.rows for t in credit.terms if t.term.name == "policy"]
  (gspo,) = credit_lib.outcome_credit(ctx, scored).terms
  for key in ("tokens", "input_mask", "loss_mask", "advantages", "old_logprobs", "seq_mask"):
    np.testing.assert_array_equal(si_rows[key], gspo.rows[key], err_msg=key)
  assert np.abs(gspo.rows["advantages"]).sum() > 0
  np.testing.assert_array_equal(si_rows["row_len"], gspo.rows["loss_mask"].sum(axis=1))
