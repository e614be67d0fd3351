"""The credit report (`si_jax/si/report.py`, `experiments/show_repairs.py`): hand-checkable
renderings of one repaired pair first, then a trained run's step re-run into an HTML page whose
pairs, coloured tokens and verdicts are checked against what the run logged."""

import json
import os
import re
import time

import numpy as np
import pytest

import jax_cache
import test_si_credit  # registers arith_parity (a random model is right half the time)
import tiny
from experiments import show_repairs
from si_jax import compilation
from si_jax.train import trainer
from si_jax.si import report

BAD = test_si_credit.BAD      # 3+4=7 / 7*3=2 / Answer: 2  (first wrong: line 2)
GOOD = test_si_credit.GOOD    # 3+4=7 / 7*3=1 / Answer: 1


class StrTok:
  """Tokens are strings (several characters, newlines inside), decoded by concatenation."""

  def __init__(self, vocab):
    self.vocab = vocab

  def decode(self, ids, skip_special=True):
    return "".join(self.vocab[i] for i in ids)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return tiny.char_tokenizer(tmp_path_factory.mktemp("tok"))


def _detail(tok):
  """The pair of test_si_credit's scripted repair: one edit per side credited (7*3=[2] ->
  7*3=[1]), K* = K = 1 of 2 edits, verified by the policy's continuation of '3+4=7\\n7*3=1'."""
  stop = tok.stop_ids[0]
  failed, repaired = tok.encode(BAD) + [stop], tok.encode(GOOD) + [stop]
  j = BAD.index("=2") + 1  # the char tokenizer: one token per character up to 'Answer'
  minus = np.zeros(len(failed))
  minus[j] = -1.0
  plus = np.zeros(len(repaired))
  plus[j] = 1.0
  return dict(
      example="t/0", problem="Mod 10. Start at 3. Add 4. Multiply by 3.", failed=failed,
      repaired=repaired, minus_adv=minus.tolist(), minus_mask=(minus != 0).tolist(),
      plus_adv=plus.tolist(), plus_mask=(plus != 0).tolist(), kstar=1, num_edits=2, rung="K",
      anchor="3 + 4 = 7\n7 * 3 = 1\nAnswer: 1",
      candidates=[dict(text="7*3", reason="truncated", verified=False, kept=False),
                  dict(text=GOOD, reason=None, verified=True, kept=True)],
      continuation="3+4=7\n7*3=1\nAnswer: 1", continuation_prefix=len(tok.encode("3+4=7\n7*3=1")),
      first_wrong=1)


def test_token_steps_put_a_token_in_the_step_of_its_first_character():
  t = StrTok(["a", "b\nc", "d\n", "e"])  # 'ab\ncd\ne': lines 'ab\n', 'cd\n', 'e'
  assert report.token_steps(t, [0, 1, 2, 3], "ab\ncd\ne", [0, 3, 6]).tolist() == [0, 0, 1, 2]
  assert report.token_steps(t, [0], "a", [0]).tolist() == [0]


def test_a_pair_in_text(tok):
  d = _detail(tok)
  f, r = report.side(tok, d["failed"], d["minus_adv"], d["minus_mask"], "lines"), report.side(
      tok, d["repaired"], d["plus_adv"], d["plus_mask"], "lines")
  assert f.step.tolist() == [0] * 6 + [1] * 6 + [2] * 5 and f.unit == "line"
  assert f.texts[-1] == "<|im_end|>" and f.special[-1] and not any(f.special[:-1])
  assert report.marked(f) == "3+4=7 | 7*3=[2] | Answer: 2<|im_end|>"
  assert report.pair_summary(f, r, 1) == (
      "credited: 1 token on the failure at -1 (line 2, the true first wrong line) / "
      "1 on the repair at +1 (line 2)")
  # where the credit lies against the truth, when it is not exactly there
  assert "(line 2; the true first wrong line is unknown)" in report.pair_summary(f, r, None)
  assert "(line 2; misses the true first wrong line, 1)" in report.pair_summary(f, r, 0)
  wide = report.side(tok, d["failed"], -1.0 * np.ones(17), None, "lines")
  assert "17 tokens on the failure at -1 (lines 1-3; starts before the true first wrong line, 2)" \
      in report.pair_summary(wide, r, 1)
  sft = report.side(tok, d["repaired"], [], d["plus_mask"], "lines")  # si.plus = sft
  assert report.pair_summary(f, sft, 1).endswith("/ 1 on the repair as SFT targets (line 2)")
  assert [report.verdict(c) for c in d["candidates"]] == ["blocked: truncated, not verified",
                                                         "kept"]
  assert report.verdict(dict(kept=False, reason=None, verified=False)) == "not verified"
  text = report.render_text([report.StepReport(3, {"si/kept": 1, "accuracy": 0.5}, [d],
                                               logged=None)], tok, "lines", n=10)
  assert "step 3: accuracy 0.500" in text and "(a step the run did not take)" in text
  assert "--- pair 1 (t/0): K* = 1 of 2 edits (rung K)" in text
  assert "repair:  3+4=7 | 7*3=[1] | Answer: 1<|im_end|>" in text
  assert "candidates: blocked: truncated, not verified; kept" in text
  assert "\u00ab3+4=7 | 7*3=1\u00bb | Answer: 1" in text  # the prefix, then the policy's own
  # edit K* a deletion at the start: the policy was given nothing of the repair
  d["continuation_prefix"] = 0
  text = report.render_text([report.StepReport(3, {}, [d])], tok, "lines", n=10)
  assert "\u00ab\u00bb3+4=7 | 7*3=1 | Answer: 1 (the policy was given no repair token" in text


def test_a_pair_in_html(tok):
  d = _detail(tok)
  m = {"si/kept": 1, "si/requests": 1, "si/localization_precision": float("nan")}
  page = report.render_html([report.StepReport(3, m, [d],  # NaN metrics are not logged
                                               logged={"si/kept": 1, "si/requests": 2})],
                            tok, "lines", n=10, title="t", settings=[("si.truncation_k", 1)])
  credited = re.findall(r'<span class="t c[^>]*>([^<]*)</span>', page)
  assert credited == ["2", "1"]  # the failure's, then the repair's
  assert len(re.findall(r'class="t[ "]', page)) == 2 * 17
  # the true first wrong line is banded and holds the credited token
  (fw,) = re.findall(r'<div class="ln fw"[^>]*>(.*?)</div>', page, re.S)
  assert '<span class="no">2</span>' in fw and 'title="token 10, id' in fw and "t c" in fw
  assert "rgba(207,34,46,1.00)" in fw  # red, full intensity: |A| is the report's largest
  assert "blocked: truncated, not verified" in page and ">kept<" in page
  assert ('<span class="pfx" title="the repair up to the end of edit K*">3+4=7\n7*3=1</span>'
          '\nAnswer: 1</pre>') in page
  assert "3 + 4 = 7\n7 * 3 = 1" in page  # the anchor
  # the re-run's metrics beside the logged ones, a difference flagged
  assert "<td>si/requests</td><td>1</td><td class=diff>2</td>" in page
  assert "differs from the run&#x27;s logged step in si/requests (" in page
  assert "<script" not in page and "http" not in page.replace('lang="en"', "")


def test_steps_are_chosen_among_the_rl_checkpoints():
  assert show_repairs.parse_steps(None) is None
  assert show_repairs.parse_steps([["6"], ["8,10", "6"]]) == [6, 8, 10]  # repeated, listed
  with pytest.raises(SystemExit, match="integers"):
    show_repairs.parse_steps([["last"]])
  assert show_repairs.choose_steps([2, 6, 8], None, 6, "w") == [8]  # the latest
  assert show_repairs.choose_steps([2, 6, 8], [8, 6], 6, "w") == [8, 6]
  with pytest.raises(SystemExit, match=r"no checkpoint at step 7; its checkpoints: \[2, 6, 8\]"):
    show_repairs.choose_steps([2, 6, 8], [7], 6, "w")
  with pytest.raises(SystemExit, match="step 2 is an SFT checkpoint"):
    show_repairs.choose_steps([2, 6, 8], [2], 6, "w")
  with pytest.raises(SystemExit, match="no RL checkpoint"):
    show_repairs.choose_steps([2], None, 6, "w")


def test_show_repairs_html_of_a_trained_run(tmp_path):
  """Trains the smoke config on arith_parity (a cold start long enough for arithmetic-shaped
  traces, so the task knows the first wrong step of some failures), re-runs its first RL step
  and checks the page against the run's logged metrics for that step. The run writes its
  programs to a compilation cache that the re-run reads (as show_repairs.py after si-train,
  both with the default cache), so the re-run compiles nothing of its own."""
  t0 = time.perf_counter()
  c = test_si_credit._config()  # pylint: disable=protected-access
  c.rl.steps = 1
  c.eval.num_examples = 0
  c.sft.steps, c.sft.num_traces = 60, 64
  c.sft.optim.lr = 1e-2
  workdir, out = str(tmp_path / "run"), str(tmp_path / "report.html")
  step = c.sft.steps
  with jax_cache.scoped(tmp_path / "xla") as cache:
    trainer.train(c, workdir)
    with compilation.counter().since() as rerun:
      assert show_repairs.main(["--workdir", workdir, "--step", str(step), "--n", "100",
                                "--html", out, "--compile_cache_dir", cache]) == 0
  assert rerun[0].compiles == 0 and rerun[0].cache_hits > 0, rerun[0]  # the run's programs
  (logged,) = [r for r in map(json.loads, open(os.path.join(workdir, "metrics.jsonl")))
               if r["step"] == step + 1]
  page = open(out, encoding="utf-8").read()
  assert "The re-run reproduces the run&#x27;s logged metrics for this step." in page
  blocks = page.split('<section class="pair"')[1:]
  assert len(blocks) == logged["si/kept"] > 0
  # every response token is a span; the credited ones are the gated tokens of the step
  tokens = len(re.findall(r'class="t[ "]', page))
  credited = len(re.findall(r'class="t c', page))
  assert credited / tokens == pytest.approx(logged["si/active_token_ratio"], rel=1e-6)
  continued = 0
  for b in blocks:
    failed, repaired = b.split("<h4>kept repair")
    repaired = repaired.split("<h4>anchor")[0]
    n_f, n_r = map(int, re.search(r"credited: (\d+) tokens? on the failure.* / (\d+) on the "
                                  r"repair", b).groups())
    assert failed.count('class="t c') == n_f > 0 and repaired.count('class="t c') == n_r > 0
    fw = re.search(r"the true first wrong line: (\d+)", failed)
    assert failed.count('class="ln fw"') == (1 if fw else 0)
    if fw:
      assert f'class="ln fw" title="the true first wrong line"><span class="no">{fw[1]}<' in failed
    verdicts = re.findall(r'<span class="verdict [^"]*">([^<]*)<', b)
    assert len(verdicts) == c.si.repair_samples and verdicts.count("kept") == 1
    assert all(v == "kept" or v.startswith("blocked: ") or v == "not verified"
               or v.startswith("verified and passed") for v in verdicts)
    rung = re.search(r"\(rung (K|2K|all)\)</h3>", b)[1]
    if rung == "all":
      assert "none: K* = all" in b
    else:
      continued += 1
      assert f"the policy continuation that verified rung {rung} " in b
      assert '<pre><span class="pfx" title="the repair up to the end of edit K*">' in b
  assert continued == logged["si/kstar_at_k"] + logged["si/kstar_at_2k"]
  if "si/localization_precision" in logged:  # the task knew some failure's first wrong step
    assert 'class="ln fw"' in page
  print(f"trained and reported in {time.perf_counter() - t0:.0f} s")
