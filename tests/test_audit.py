"""The audit gate (si_jax/si/audit.py): hand-made repair cases, then the judge model's mechanics.

Rule-gate cases use the arithmetic task's language with char-level ids (one id per character), so
every edit distance can be checked by hand. Judge tests use a tiny random Qwen3 checkpoint whose
vocab is the synthetic task's char+word tokenizer: the judge's verdicts are meaningless, its
arithmetic (which tokens, which position, which comparison) is what is tested.
"""

from __future__ import annotations

import copy
import math
import random

import jax
import numpy as np
import pytest
import torch

from si_jax import configs
from si_jax import sharding as shd
from si_jax.si import audit
from si_jax.si import judge as judge_lib
from si_jax.si.audit import RepairCase, RuleGate
from si_jax.tokenizer import DEFAULT_ALPHABET, Tokenizer, build_char_tokenizer

import hf_fixtures
import tiny

PROBLEM = "Mod 10. Start at 7. Add 5. Multiply by 3. Subtract 4."
CORRECT = "7+5=2\n2*3=6\n6-4=2\nAnswer: 2"               # compact style, 27 chars
FAILED_LATE = "7+5=2\n2*3=6\n6-4=3\nAnswer: 3"           # wrong last step
FAILED_EARLY = "7+5=3\n3*3=9\n9-4=5\nAnswer: 5"          # wrong first step
ANCHOR_SPACED = "7 + 5 = 2\n2 * 3 = 6\n6 - 4 = 2\nAnswer: 2"  # the same trace, spaced: 39 chars


def ids(text: str) -> list[int]:
  return [ord(c) for c in text]


def case(failed: str, candidate: str, anchor: str | None = ANCHOR_SPACED, *,
         finished: bool = True, problem: str = PROBLEM, cand_ids=None) -> RepairCase:
  return RepairCase(problem=problem, failed_ids=ids(failed), failed_text=failed,
                    anchor_ids=None if anchor is None else ids(anchor), anchor_text=anchor,
                    candidate_ids=ids(candidate) if cand_ids is None else cand_ids,
                    candidate_text=candidate, finished=finished)


# ----------------------------------------------------------------------------- rule gate


def test_passes_a_genuine_small_repair():
  # d(cand, failed) = 2/27 = 0.074 (two digits), d(cand, anchor) = 12/39 = 0.308 (spaces).
  assert RuleGate()([case(FAILED_LATE, CORRECT)]) == [None]
  # ... also inside a closed think block with an end marker after it.
  text = "<think>line 3 is wrong</think>\n" + CORRECT + "<|im_end|>"
  assert RuleGate()([case(FAILED_LATE, text, cand_ids=ids(CORRECT))]) == [None]


def test_blocks_a_copied_anchor():
  # The anchor verbatim: d(cand, anchor) = 0, d(cand, failed) = 14/39 = 0.359 > 0 + 0.1.
  assert RuleGate()([case(FAILED_LATE, ANCHOR_SPACED)]) == ["copies_anchor"]


def test_blocks_a_bare_answer():
  # One step against a 4-step failed trace (3 operation lines + the answer line).
  assert RuleGate()([case(FAILED_LATE, "Answer: 2")]) == ["answer_only"]
  assert RuleGate()([case(FAILED_LATE, "Answer: 2", anchor=None)]) == ["answer_only"]


@pytest.mark.parametrize("text", ["", "  \n ", "<think>line 3 looks wrong, so", "<|im_end|>",
                                  "<think>fix line 3</think>\n<|im_end|>", "<think></think>",
                                  "<think>x</think><|im_start|> <|endoftext|>"])
def test_blocks_malformed(text):
  assert RuleGate()([case(FAILED_LATE, text, anchor=None)]) == ["malformed"]


def test_blocks_truncated_before_anything_else():
  assert RuleGate()([case(FAILED_LATE, CORRECT, finished=False)]) == ["truncated"]
  assert RuleGate()([case(FAILED_LATE, "", finished=False)]) == ["truncated"]
  assert RuleGate()([case(FAILED_LATE, ANCHOR_SPACED, finished=False)]) == ["truncated"]


def test_reasons_in_order_malformed_then_answer_only_then_copies_anchor():
  # A bare answer equal to the anchor is both answer_only and copies_anchor
  # (d(cand, anchor) = 0, d(cand, failed) = 19/27): answer_only is reported.
  anchor = "Answer: 2"
  assert RuleGate()([case(FAILED_LATE, "Answer: 2", anchor=anchor)]) == ["answer_only"]
  assert RuleGate(min_steps=1)([case(FAILED_LATE, "Answer: 2", anchor=anchor)]) == [
      "copies_anchor"]
  assert RuleGate()([case(FAILED_LATE, "<think>", anchor=anchor)]) == ["malformed"]


def test_copy_rule_is_strict_at_the_margin():
  # failed = ten 1s, anchor = ten 2s, candidate = six 2s then four 1s:
  # d(cand, anchor) = 0.4, d(cand, failed) = 0.6; blocked iff 0.4 + margin < 0.6.
  c = RepairCase(PROBLEM, [1] * 10, "x", [2] * 10, "y", [2] * 6 + [1] * 4, "z", True)
  assert RuleGate(copy_margin=0.0)([c]) == ["copies_anchor"]
  assert RuleGate(copy_margin=0.15)([c]) == ["copies_anchor"]
  assert RuleGate(copy_margin=0.25)([c]) == [None]
  # At exactly the margin (0.5 + 0.5 vs 1.0 is not <) it passes: near-ties are repairs.
  tie = RepairCase(PROBLEM, [1] * 2, "x", [2] * 2, "y", [2, 1], "z", True)
  assert RuleGate(copy_margin=0.0)([tie]) == [None]


def test_answer_only_needs_fewer_steps_than_min_steps_and_a_multi_step_failure():
  one_line_failed = "Answer: 3"
  assert RuleGate()([case(one_line_failed, "Answer: 2", anchor=None)]) == [None]
  two_lines = "6-4=2\nAnswer: 2"
  assert RuleGate()([case(FAILED_LATE, two_lines, anchor=None)]) == [None]
  assert RuleGate(min_steps=3)([case(FAILED_LATE, two_lines, anchor=None)]) == ["answer_only"]
  assert RuleGate(min_steps=3)([case("2*3=6\n6-4=3", "Answer: 2", anchor=None)]) == [None]
  # 'auto' counts each text in its own mode: a candidate written as lines is not one
  # paragraph just because the failed trace used paragraphs.
  paragraphs = "First add.\n7+5=2\n\nThen multiply.\n2*3=6\n\nAnswer: 6"
  assert RuleGate()([case(paragraphs, "7+5=2\n2*3=6\nAnswer: 6", anchor=None)]) == [None]
  assert RuleGate(step_mode="paragraphs")(
      [case(paragraphs, "7+5=2\n2*3=6\nAnswer: 6", anchor=None)]) == ["answer_only"]
  assert audit.count_steps("<think>a\nb\nc</think>\nAnswer: 2") == 1
  assert audit.count_steps("") == 0 and audit.count_steps(FAILED_LATE, "lines") == 4


def test_without_anchor_the_copy_rule_does_not_apply():
  assert RuleGate(copy_margin=0.0)([case(FAILED_LATE, ANCHOR_SPACED, anchor=None)]) == [None]


def test_known_limit_one_correct_trace_per_problem():
  # Single style: the correct repair of an early mistake IS the anchor, token for token, so the
  # rule blocks a genuine repair (RESEARCH_NOTES; the counterfactual probes are what tell).
  assert RuleGate()([case(FAILED_EARLY, CORRECT, anchor=CORRECT)]) == ["copies_anchor"]
  # With the anchor spelled otherwise the same repair keeps the failed trace's spelling:
  # d(cand, failed) = 6/27 = 0.222 < d(cand, anchor) + 0.1 = 0.408, so it passes.
  assert RuleGate()([case(FAILED_EARLY, CORRECT)]) == [None]


def test_rule_gate_decides_each_case_alone():
  pool = [case(FAILED_LATE, CORRECT), case(FAILED_LATE, ANCHOR_SPACED),
          case(FAILED_LATE, "Answer: 2"), case(FAILED_LATE, ""),
          case(FAILED_LATE, CORRECT, finished=False), case(FAILED_EARLY, CORRECT, anchor=CORRECT),
          case(FAILED_EARLY, CORRECT, anchor=None)]
  gate = RuleGate()
  single = [gate([c])[0] for c in pool]
  assert set(single) == {None, *audit.BLOCK_REASONS} - {"judge_no"}
  rng = random.Random(0)
  for _ in range(5):
    order = rng.sample(range(len(pool)), len(pool))
    assert gate([pool[i] for i in order]) == [single[i] for i in order]
  assert gate([]) == []


@pytest.mark.parametrize("kwargs,culprit", [
    (dict(copy_margin=-0.1), "copy_margin"), (dict(copy_margin=1.5), "copy_margin"),
    (dict(copy_margin=True), "copy_margin"), (dict(step_mode="words"), "step_mode"),
    (dict(min_steps=0), "min_steps"), (dict(min_steps=2.0), "min_steps")])
def test_rule_gate_rejects_bad_parameters(kwargs, culprit):
  with pytest.raises(ValueError, match=culprit):
    RuleGate(**kwargs)


def test_repair_case_needs_anchor_ids_and_text_together():
  with pytest.raises(ValueError, match="anchor_ids and anchor_text"):
    RepairCase(PROBLEM, [1], "a", [2], None, [3], "c", True)
  with pytest.raises(ValueError, match="anchor_ids and anchor_text"):
    RepairCase(PROBLEM, [1], "a", None, "b", [3], "c", True)


def test_no_gate_passes_everything():
  cases = [case(FAILED_LATE, "", finished=False), case(FAILED_LATE, ANCHOR_SPACED)]
  assert audit.NoGate()(cases) == [None, None]


def test_make_gate():
  gate = audit.make_gate("rule", copy_margin=0.3, step_mode="lines")
  assert isinstance(gate, RuleGate) and gate.copy_margin == 0.3 and gate.step_mode == "lines"
  assert isinstance(audit.make_gate("none"), audit.NoGate)
  with pytest.raises(ValueError, match=r"config.si.audit must be one of \['judge', 'none', "
                                       r"'rule'\], got 'llm'"):
    audit.make_gate("llm")
  with pytest.raises(ValueError, match="model_dir"):
    audit.make_gate("judge", threshold=0.0)
  with pytest.raises(ValueError, match=r"make_gate\('none'\):.*takes no arguments"):
    audit.make_gate("none", copy_margin=0.1)
  assert audit.GATES.names() == sorted(configs.AUDIT_GATES)  # the config's choices, all built


def test_block_counts():
  counts = audit.block_counts([None, "truncated", "copies_anchor", None, "truncated"])
  assert counts == {"truncated": 2, "malformed": 0, "answer_only": 0, "copies_anchor": 1,
                    "judge_no": 0}
  assert list(counts) == list(audit.BLOCK_REASONS)
  assert audit.block_counts([]) == dict.fromkeys(audit.BLOCK_REASONS, 0)
  with pytest.raises(ValueError, match="reason 1 is 'copied'"):
    audit.block_counts([None, "copied"])


# ----------------------------------------------------------------------------- judge gate


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
  """(model_dir, tokenizer, torch model, gate): one HF dir with a random Qwen3 and the char
  tokenizer, the fixture's vocab = the tokenizer's."""
  d = str(tmp_path_factory.mktemp("judge"))
  tok = tiny.char_tokenizer(d)
  for word in ("yes", "Yes", "no", "No"):
    assert tok.decode(tok.encode(word)) == word  # spelled without <|unk|>
  _, model = hf_fixtures.make_checkpoint("qwen3", d, seed=5, vocab_size=tok.vocab_size)
  return d, tok, model, judge_lib.JudgeGate(d, bucket=32)


def judge_cases() -> list[RepairCase]:
  """Cases that pass the rules, of different prompt lengths."""
  return [case(FAILED_LATE, CORRECT), case(FAILED_EARLY, CORRECT, anchor=None),
          case("7+5=2\n2*3=7\nAnswer: 7", "7+5=2\n2*3=6\nAnswer: 6",
               anchor="7 + 5 = 2\n2 * 3 = 6\nAnswer: 6",
               problem="Mod 10. Start at 7. Add 5. Multiply by 3."),
          case(FAILED_LATE + "\n", "7+5=2\n2*3=6\n6-4=2\n\nAnswer: 2"),
          case(FAILED_EARLY, "7+5=2\n2*3=6\n9-4=5\nAnswer: 5")]


def torch_margin(model, prompt: list[int], yes: list[int], no: list[int]) -> float:
  logits = hf_fixtures.torch_logits(model, [prompt], [[1] * len(prompt)])[0, -1]
  logp = torch.log_softmax(torch.as_tensor(logits, dtype=torch.float64), -1)
  return float(torch.logsumexp(logp[yes], 0) - torch.logsumexp(logp[no], 0))


def test_yes_no_ids_of_the_char_tokenizer(judge):
  _, tok, _, gate = judge
  (y,), (Y,), (n,), (N,) = (tok.encode(c) for c in "yYnN")
  # ' yes' starts with a bare space (also the start of ' no'), so only the letters count.
  assert judge_lib.yes_no_ids(tok) == ((y, Y), (n, N)) == (gate.yes_ids, gate.no_ids)


def test_yes_no_ids_needs_both_words(tmp_path):
  tok = Tokenizer.from_dir(build_char_tokenizer(
      str(tmp_path), alphabet=DEFAULT_ALPHABET.replace("y", "").replace("Y", ""), words=()))
  with pytest.raises(ValueError, match="cannot write yes"):
    judge_lib.yes_no_ids(tok)


def test_judge_prompt_is_the_chat_template_of_the_question(judge):
  _, tok, _, gate = judge
  c = judge_cases()[0]
  text = tok.decode(gate.prompt_ids(c), skip_special=False)
  assert text == tok.prompt_text(judge_lib.judge_prompt(PROBLEM, FAILED_LATE, CORRECT, ANCHOR_SPACED))
  assert text.index("Failed:\n" + FAILED_LATE) < text.index("Reference:\n" + ANCHOR_SPACED) < (
      text.index("Candidate:\n" + CORRECT))
  no_ref = tok.decode(gate.prompt_ids(judge_cases()[1]))
  assert "Reference:" not in no_ref and "Candidate:\n" + CORRECT in no_ref
  # The judge reads the solution, not the candidate's think block or end marker.
  thinking = case(FAILED_LATE, "<think>fix it</think>\n" + CORRECT + "<|im_end|>", anchor=None)
  assert gate.prompt_ids(thinking) == gate.prompt_ids(case(FAILED_LATE, CORRECT, anchor=None))


def test_judge_margin_equals_transformers(judge):
  _, _, model, gate = judge
  cases = judge_cases()
  assert RuleGate()(cases) == [None] * len(cases)
  got = gate.scores(cases)
  want = np.array([torch_margin(model, gate.prompt_ids(c), list(gate.yes_ids),
                                list(gate.no_ids)) for c in cases])
  assert got.dtype == np.float32 and got.shape == (len(cases),)
  np.testing.assert_allclose(got, want, atol=2e-4)
  # Pass iff margin > threshold: a threshold between the scores splits them.
  mid = float(np.median(want))
  g = copy.copy(gate)
  g.threshold = mid
  assert g(cases) == [None if w > mid else "judge_no" for w in want]
  assert "judge_no" in g(cases) and None in g(cases)


def test_infinite_thresholds_block_all_or_pass_all(judge):
  gate = judge[3]
  cases = judge_cases()
  g = copy.copy(gate)
  g.threshold = math.inf
  assert g(cases) == ["judge_no"] * len(cases)
  g.threshold = -math.inf
  assert g(cases) == [None] * len(cases)


def test_mixed_length_batch_equals_one_at_a_time(judge):
  gate = copy.copy(judge[3])
  gate.batch_size, gate.shapes = 2, set()
  cases = judge_cases()
  lengths = {len(gate.prompt_ids(c)) for c in cases}
  assert len(lengths) == 4  # 231, 242, 269 (twice), 270 tokens: mixed within a batch
  batched = gate.scores(cases)
  single = np.concatenate([gate.scores([c]) for c in cases])
  np.testing.assert_allclose(batched, single, atol=1e-5)
  gate.threshold = float(np.sort(single)[2] + np.sort(single)[3]) / 2
  assert gate(cases) == [None if s > gate.threshold else "judge_no" for s in single]
  # Rows are padded to powers of two (<= batch_size), widths to multiples of the bucket.
  assert {r for r, _ in gate.shapes} == {1, 2}
  assert all(w % gate.bucket == 0 for _, w in gate.shapes)
  assert gate.scores([]).shape == (0,)


def test_rules_run_before_the_judge(judge, monkeypatch):
  gate = copy.copy(judge[3])
  gate.threshold = -math.inf  # the judge alone would pass everything
  judged = []
  real_scores = gate.scores
  monkeypatch.setattr(gate, "scores", lambda cs: judged.extend(cs) or real_scores(cs))
  good = case(FAILED_LATE, CORRECT)
  cut = case(FAILED_LATE, CORRECT, finished=False)
  copied = case(FAILED_LATE, ANCHOR_SPACED)
  assert gate([cut, good, copied]) == ["truncated", None, "copies_anchor"]
  assert judged == [good]
  # rules=None: the judge sees every case.
  judged.clear()
  gate.rules = None
  assert gate([cut, good, copied]) == [None, None, None]
  assert judged == [cut, good, copied]


def test_long_prompts_lose_the_middle_of_the_texts(judge):
  d, tok, model, _ = judge
  gate = judge_lib.JudgeGate(d, max_len=256, bucket=32)
  lines = [f"{i % 10}+1={(i + 1) % 10}" for i in range(40)]
  failed = "\n".join(lines + ["Answer: 0"])
  long_case = case(failed, "Answer: 0\n" + CORRECT, anchor=None)
  prompt = gate.prompt_ids(long_case)
  assert len(prompt) <= 256
  text = tok.decode(prompt)
  assert text.count(judge_lib.TRUNCATION_MARK) == 1
  # The failed text keeps its beginning and its end; the short candidate stays whole; the
  # problem is never cut.
  assert "Failed:\n" + lines[0] in text and "Answer: 0\nCandidate:" in text
  assert "Candidate:\nAnswer: 0\n" + CORRECT in text and PROBLEM in text
  np.testing.assert_allclose(
      gate.scores([long_case]),
      [torch_margin(model, prompt, list(gate.yes_ids), list(gate.no_ids))], atol=2e-4)
  # A short prompt is left alone.
  short = gate.prompt_ids(case(FAILED_LATE, CORRECT, anchor=None))
  assert len(short) < 256 and judge_lib.TRUNCATION_MARK not in tok.decode(short)
  with pytest.raises(ValueError, match="case 1: .* too long"):
    gate.scores([judge_cases()[0], case(FAILED_LATE, CORRECT, problem="Add 1. " * 40)])


def test_judge_on_a_mesh_gives_the_same_scores(judge):
  d, _, _, gate = judge
  mesh = shd.make_mesh(fsdp=2, tensor=4, devices=jax.devices()[:8])
  sharded = judge_lib.JudgeGate(d, bucket=32, mesh=mesh)
  cases = judge_cases()[:2]
  np.testing.assert_allclose(sharded.scores(cases), gate.scores(cases), atol=1e-5)


def test_judge_gate_checks_its_inputs(judge, tmp_path):
  d, tok, _, _ = judge
  small = str(tmp_path / "small")
  hf_fixtures.make_checkpoint("qwen3", small, vocab_size=tok.vocab_size - 1)
  with pytest.raises(ValueError, match=f"{tok.vocab_size} tokens, more than the vocab_size"):
    judge_lib.JudgeGate(small, tokenizer_dir=d)
  with pytest.raises(ValueError, match="max_len"):
    judge_lib.JudgeGate(d, max_len=10_000)
  with pytest.raises(ValueError, match="batch_size"):
    judge_lib.JudgeGate(d, batch_size=0)
  with pytest.raises(ValueError, match="NaN"):
    judge_lib.JudgeGate(d, threshold=math.nan)
  gate = audit.make_gate("judge", model_dir=d, threshold=1.5, rules=None)
  assert isinstance(gate, judge_lib.JudgeGate) and gate.threshold == 1.5 and gate.rules is None
  assert isinstance(judge_lib.JudgeGate(d).rules, RuleGate)
