"""The synthetic arithmetic task: language, verifier, error injection, repairs, prompts."""

import os
import random
import re

import pytest

from si_jax.data import arith
from si_jax.data.arith import ArithConfig, ArithDataset, Problem
from si_jax.data.tasks import Example, get_task, task_names
from si_jax.si import prompts
from si_jax.tokenizer import DEFAULT_WORDS, Tokenizer, build_char_tokenizer
from si_jax.verify.types import Verdict

P = Problem(7, ("+", "*", "-"), (5, 3, 4), modulus=None)  # 7+5=12, 12*3=36, 36-4=32
PM = Problem(7, ("+", "*", "-"), (5, 3, 4), modulus=10)  # 7+5=2, 2*3=6, 6-4=2

CONFIGS = {
    "mod10": ArithConfig(),
    "plain": ArithConfig(modulus=None, num_steps=(1, 6), operand_range=(0, 20)),
    "mod7_any": ArithConfig(modulus=7, invertible_steps=False, operators=("+", "*")),
}


# ---------------------------------------------------------------- hand-checkable cases


def test_prompt_and_solution_format():
  assert P.values == (7, 12, 36, 32) and P.answer == 32
  assert P.prompt == "Start at 7. Add 5. Multiply by 3. Subtract 4."
  assert arith.solve(P) == "7+5=12\n12*3=36\n36-4=32\nAnswer: 32"
  assert arith.solve(P, "spaced") == "7 + 5 = 12\n12 * 3 = 36\n36 - 4 = 32\nAnswer: 32"
  assert PM.prompt == "Mod 10. Start at 7. Add 5. Multiply by 3. Subtract 4."
  assert arith.solve(PM) == "7+5=2\n2*3=6\n6-4=2\nAnswer: 2"
  neg = Problem(3, ("-", "*"), (5, 3))
  assert arith.solve(neg) == "3-5=-2\n-2*3=-6\nAnswer: -6"
  assert arith.first_wrong_step(neg, arith.solve(neg)) == "none"


@pytest.mark.parametrize("text,expected", [
    ("7+5=12\n12*3=36\n36-4=32\nAnswer: 32", "none"),
    ("7 + 5=12\n\n 12 *3 = 36\n36-4=32\n\nAnswer:32\n", "none"),  # spacing is free
    ("007+5=12\n12*3=36\n36-4=32\nAnswer: 32", "none"),  # so are leading zeros
    ("7+5=12\n12*3=36\n36-4=32\nAnswer: 32\nblah\nAnswer: 1", "none"),  # after the answer
    ("7+5=13\n13*3=39\n39-4=35\nAnswer: 35", 0),  # wrong result, propagated
    ("8+5=13\n13*3=39\n39-4=35\nAnswer: 35", 0),  # wrong start carried
    ("7+5=12\n13*3=39\n39-4=35\nAnswer: 35", 1),  # wrong value carried
    ("7+5=12\n12+3=15\n15-4=11\nAnswer: 11", 1),  # wrong operator
    ("7+5=12\n12*4=48\n48-4=44\nAnswer: 44", 1),  # wrong operand
    ("7+5=12\n12+24=36\n36-4=32\nAnswer: 32", 1),  # wrong operator and operand, right value
    ("8+4=12\n12*3=36\n36-4=32\nAnswer: 32", 0),  # wrong carry and operand, right value
    ("7+5=12\n12*3=36\n36-4=32\nAnswer: 32\n", "none"),
    ("7+5=12\n36-4=32\nAnswer: 32", 1),  # missing step (right answer: outcome says correct)
    ("7+5=12\n12*3=36\nAnswer: 36", 2),  # missing last step
    ("7+5=12\n12*3=36\n36-4=32", 3),  # no answer line
    ("7+5=12\n12*3=36\n36-4=32\nAnswer: 31", 3),  # wrong answer
    ("7+5=12\n12*3=36\n36-4=32\n32+0=32\nAnswer: 32", 3),  # extra line
    ("7+5=12\n12*3=36\n36-4=32\nAnswer: 32x", 3),
    ("Let me see\n7+5=12\n12*3=36\n36-4=32\nAnswer: 32", 0),
    ("7+5=12\n12*3=" + "9" * 5000 + "\nAnswer: 32", 1),  # huge number
    ("Answer: 32", 0),
    ("", "unparseable"),
    ("   \n\n", "unparseable"),
    ("the answer is 32", "unparseable"),
    ("\u00e9\u00e9\x00\n####", "unparseable"),
])
def test_first_wrong_step_cases(text, expected):
  assert arith.first_wrong_step(P, text) == expected


@pytest.mark.parametrize("text,verdict", [
    ("7+5=12\n12*3=36\n36-4=32\nAnswer: 32", Verdict(1.0, "correct")),
    ("Answer: 32", Verdict(1.0, "correct")),  # outcome only
    ("  Answer:  032 \nAnswer: 5", Verdict(1.0, "correct")),  # the first answer line counts
    ("Answer: 5\nAnswer: 32", Verdict(0.0, "wrong_answer")),
    ("7+5=12\n12*3=36\n36-4=32\nAnswer: 31", Verdict(0.0, "wrong_answer")),
    ("Answer: thirty-two", Verdict(0.0, "wrong_answer")),
    ("Answer: " + "3" * 10000, Verdict(0.0, "wrong_answer")),
    ("Answer: -32", Verdict(0.0, "wrong_answer")),
    ("7+5=12\n12*3=36\n36-4=32", Verdict(0.0, "no_answer")),
    ("", Verdict(0.0, "no_answer")),
    ("answer: 32", Verdict(0.0, "no_answer")),
])
def test_verify_cases(text, verdict):
  assert arith.verify(P, text) == verdict


def test_example_round_trips_to_problem_and_meta():
  ex = ArithDataset(ArithConfig(), "train")[3]
  problem = arith.as_problem(ex)
  assert ex.prompt == problem.prompt and ex.answer == problem.answer
  assert ex.meta["values"] == problem.values and ex.meta["ops"] == problem.ops
  assert ex.meta["operands"] == problem.operands and ex.meta["solution"] == arith.solve(problem)
  assert arith.verify(ex, ex.meta["solution"]).reward == 1.0
  with pytest.raises(ValueError, match="lacks key 'ops'"):
    arith.as_problem(Example("x", "p", 1, {"start": 1}))


# ---------------------------------------------------------------- dataset


def test_dataset_is_deterministic_random_access_and_splits_are_disjoint():
  cfg = ArithConfig(num_steps=3, train_size=3000, test_size=300, seed=5)
  train, test = ArithDataset(cfg, "train"), ArithDataset(cfg, "test")
  assert len(train) == 3000 and len(test) == 300
  assert train[17] == ArithDataset(cfg, "train")[17] == train[17 - 3000]
  assert [e.id for e in train[:3]] == ["arith/train/0", "arith/train/1", "arith/train/2"]
  assert ArithDataset(ArithConfig(num_steps=3, seed=6), "train")[17] != train[17]
  train_prompts = {e.prompt for e in train}
  test_prompts = {e.prompt for e in test}
  assert not train_prompts & test_prompts
  assert len(test_prompts) > 200  # the test bucket is not degenerate
  with pytest.raises(IndexError):
    train[3000]


def test_config_knobs_shape_the_problems():
  cfg = ArithConfig(num_steps=(3, 5), operand_range=(2, 6), operators=("+", "*"), modulus=100,
                    start_range=(50, 60))
  lengths = set()
  for ex in ArithDataset(cfg, "train")[:200]:
    p = arith.as_problem(ex)
    lengths.add(p.num_steps)
    assert set(p.ops) <= {"+", "*"} and 50 <= p.start <= 60
    assert all(2 <= b <= 6 for b in p.operands)
    assert all(b in (3,) for op, b in zip(p.ops, p.operands) if op == "*")  # coprime with 100
    assert all(0 <= v < 100 for v in p.values)
  assert lengths == {3, 4, 5}


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match=r"operators must be a non-empty subset"):
    ArithConfig(operators=("/",))
  with pytest.raises(ValueError, match=r"num_steps must have min <= max"):
    ArithConfig(num_steps=(4, 2))
  with pytest.raises(ValueError, match=r"modulus must be None or an int >= 2, got 1"):
    ArithConfig(modulus=1)
  with pytest.raises(ValueError, match=r"no operand in \(2, 2\) is coprime with 10"):
    ArithConfig(operand_range=(2, 2))
  assert ArithConfig(modulus=7).start_range == (0, 6)  # default start: any residue
  assert ArithConfig(modulus=None, operand_range=(1, 3)).start_range == (1, 3)
  assert ArithConfig(num_steps=[2, 3], operators=["+"]).operators == ("+",)  # from ConfigDict


def test_task_registry_and_score():
  assert "arith" in task_names()
  task = get_task("arith", num_steps=3, test_size=4)
  exs = list(task.examples("test"))
  assert len(exs) == 4 and all(arith.as_problem(e).num_steps == 3 for e in exs)
  verdicts = task.score(exs, [e.meta["solution"] for e in exs[:2]] + ["", "Answer: 99"])
  assert [v.reason for v in verdicts] == ["correct", "correct", "no_answer", "wrong_answer"]
  assert task.first_wrong_step(exs[0], exs[0].meta["solution"]) is None
  assert task.trace_correct(exs[0], exs[0].meta["solution"])
  wrong = arith.inject_error(exs[0], 1, 0)
  assert task.first_wrong_step(exs[0], wrong) == 1 and not task.trace_correct(exs[0], wrong)
  assert task.first_wrong_step(exs[0], "gibberish") is None
  assert len(task.segment(exs[0].meta["solution"])) == 4
  with pytest.raises(ValueError, match="unknown split 'validation'"):
    task.examples("validation")
  with pytest.raises(ValueError, match="2 examples but 1 completions"):
    task.score(exs[:2], ["x"])


# ---------------------------------------------------------------- properties over many problems


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_correct_traces_verify_and_injected_errors_are_found(name):
  cfg = CONFIGS[name]
  rng = random.Random(name)
  injected = 0
  for ex in ArithDataset(cfg, "train")[:150]:
    problem = arith.as_problem(ex)
    for style in arith.STYLES:
      good = arith.solve(problem, style)
      assert arith.verify(problem, good) == Verdict(1.0, "correct")
      assert arith.first_wrong_step(problem, good) == "none"
    step = rng.randrange(problem.num_steps)
    kind = rng.choice(arith.ERROR_KINDS)
    try:
      bad = arith.inject_error(problem, step, rng, kind=kind, style=rng.choice(arith.STYLES))
    except ValueError as e:
      # Only where the mistake cannot reach the answer: skipping an identity step, or (without
      # invertible steps) a later multiplication by 0 mod m.
      assert "changes the final answer" in str(e)
      continue
    injected += 1
    assert arith.verify(problem, bad).reward == 0.0
    assert arith.first_wrong_step(problem, bad) == step
    # The lines before the mistake are the correct ones.
    assert bad.split("\n")[:step] == arith.solve(problem, style=_style(bad)).split("\n")[:step]
  assert injected >= 120


def _style(text):
  return "spaced" if " = " in text else "compact"


def test_inject_error_is_deterministic_and_rejects_bad_steps():
  assert arith.inject_error(PM, 1, 7, "result") == arith.inject_error(PM, 1, 7, "result")
  assert arith.inject_error(P, 0, 0, "operator") != arith.solve(P)
  with pytest.raises(ValueError, match=r"step must be in \[0, 3\)"):
    arith.inject_error(P, 3)
  with pytest.raises(ValueError, match="unknown kind 'typo'"):
    arith.inject_error(P, 0, kind="typo")
  identity = Problem(1, ("+", "+"), (0, 2))
  with pytest.raises(ValueError, match="no 'skip' mistake at step 0"):
    arith.inject_error(identity, 0, kind="skip")


def test_sft_traces_error_rate_steps_and_labels():
  cfg = ArithConfig(num_steps=4)
  traces = arith.sft_traces(cfg, 200, error_rate=0.25, seed=1, step_dist="late")
  assert traces == arith.sft_traces(cfg, 200, error_rate=0.25, seed=1, step_dist="late")
  wrong = [t for t in traces if t.first_wrong is not None]
  assert len(wrong) == 50
  for ex, trace, first_wrong in traces:
    assert arith.first_wrong_step(ex, trace) == ("none" if first_wrong is None else first_wrong)
    assert arith.verify(ex, trace).reward == (1.0 if first_wrong is None else 0.0)
  steps = [t.first_wrong for t in wrong]
  assert steps.count(3) > steps.count(0)  # 'late' puts mistakes towards the end
  only_first = arith.sft_traces(cfg, 20, error_rate=1.0, seed=2, step_dist=[1, 0, 0, 0])
  assert {t.first_wrong for t in only_first} == {0}
  test_prompts = {e.prompt for e in ArithDataset(ArithConfig(num_steps=4, test_size=2000), "test")}
  assert not {t.example.prompt for t in traces} & test_prompts


def test_repair_pairs_are_minimal_edits_that_verify():
  cfg = ArithConfig(num_steps=(2, 5), styles=arith.STYLES)
  pairs = arith.repair_pairs(cfg, 300, seed=0)
  assert len(pairs) == 300 and pairs == arith.repair_pairs(cfg, 300, seed=0)
  kinds = set()
  for p in pairs:
    kinds.add(p.kind)
    assert arith.verify(p.example, p.repaired).reward == 1.0
    assert arith.verify(p.example, p.failed).reward == 0.0
    assert arith.verify(p.example, p.anchor).reward == 1.0
    assert arith.first_wrong_step(p.example, p.failed) == p.first_wrong
    failed, repaired = p.failed.split("\n"), p.repaired.split("\n")
    k = p.first_wrong
    assert failed[:k] == repaired[:k] and failed[k] != repaired[k]
    assert _style(p.failed) == _style(p.repaired) != _style(p.anchor)  # anchor is not a copy
    assert prompts.parse_repair(p.repaired + "\n") == p.repaired
  assert kinds == set(arith.ERROR_KINDS)
  one_style = arith.repair_pairs(ArithConfig(), 5, seed=0)  # default: compact only
  assert all(p.anchor == p.repaired and " " not in p.failed.split("\n")[0] for p in one_style)


def test_garbage_never_raises():
  rng = random.Random(0)
  alphabet = "0123456789+-*= \nAnswer:x" + "\u00e9"
  for ex in ArithDataset(ArithConfig(), "test")[:100]:
    good = ex.meta["solution"]
    outputs = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))),
               good[:rng.randint(0, len(good))],  # truncated
               good + "\n" + good,  # repeated
               good.replace("=", "=" + "9" * 5000, 1)]
    for text in outputs:
      result = arith.first_wrong_step(ex, text)
      assert result in ("none", "unparseable") or 0 <= result <= ex.meta["num_steps"]
      verdict = arith.verify(ex, text)
      assert isinstance(verdict, Verdict)
      assert (result == "none") <= (verdict.reward == 1.0)  # "none" implies a correct answer
  assert arith.first_wrong_step(P, None) == "unparseable"
  assert arith.verify(P, None) == Verdict(0.0, "no_answer")


# ---------------------------------------------------------------- prompts and the tokenizer


def test_repair_and_reflection_formats_and_parsers():
  failed = "7+5=12\n12*3=35\n35-4=31\nAnswer: 31"
  text = prompts.repair_prompt(P.prompt, failed + "\n", arith.solve(P, "spaced"))
  assert text == (prompts.REPAIR_INSTRUCTION + "\nProblem: " + P.prompt + "\nFailed:\n" + failed
                  + "\nReference:\n" + arith.solve(P, "spaced"))
  assert "Reference" not in prompts.repair_prompt(P.prompt, failed, None)
  assert prompts.parse_repair("\n7+5=12\nAnswer: 12\n<|im_end|>") == "7+5=12\nAnswer: 12"
  assert prompts.parse_repair("<think>hmm</think>\n7+5=12") == "7+5=12"
  for bad in ["", "  \n", "<think>still thinking", "<|im_end|>", None]:
    assert prompts.parse_repair(bad) is None

  refl = prompts.reflection_prompt(P.prompt, failed, mode="lines")
  assert refl.endswith("Solution:\n[1] 7+5=12\n[2] 12*3=35\n[3] 35-4=31\n[4] Answer: 31")
  assert prompts.reflection_target(1) == "\\boxed{2}"
  assert prompts.parse_reflection(prompts.reflection_target(1)) == 2
  assert prompts.parse_reflection("step \\boxed{1} no, \\boxed{ 3 }") == 3
  assert prompts.parse_reflection("<think>\\boxed{2}</think> \\boxed{4}", num_steps=4) == 4
  for bad in ["", "\\boxed{0}", "\\boxed{x}", "\\boxed{5}", "<think>\\boxed{2}", None,
              "\\boxed{" + "9" * 5000 + "}"]:
    assert prompts.parse_reflection(bad, num_steps=4) is None


def test_every_word_of_the_language_is_one_token_and_prompts_are_short(tmp_path):
  tok = Tokenizer.from_dir(build_char_tokenizer(str(tmp_path)))
  pairs = arith.repair_pairs(ArithConfig(num_steps=4), 50, seed=0)
  texts = [prompts.REPAIR_INSTRUCTION, prompts.REFLECTION_INSTRUCTION, arith.solve(P),
           ArithDataset(ArithConfig(modulus=None), "test")[0].prompt]
  texts += [prompts.reflection_prompt(p.example.prompt, p.failed, "lines") for p in pairs[:5]]
  words = {w for t in texts for w in re.findall(r"[A-Za-z]{2,}", t)}
  assert words <= set(DEFAULT_WORDS), sorted(words - set(DEFAULT_WORDS))
  rendered = [prompts.repair_prompt(p.example.prompt, p.failed, p.anchor) for p in pairs]
  lengths = [len(tok.prompt_ids(r)) for r in rendered]
  assert max(lengths) < 200, max(lengths)
  for r in rendered[:10]:
    assert tok.decode(tok.encode(r)) == r


# ---------------------------------------------------------------- multi-part problems (parts=m)
# m independent chains, one modulus, every answer required: a slip changes one part and leaves
# the other m - 1 right. m = 1 is everything above, unchanged.

MP = arith.MultiPartProblem((Problem(7, ("+", "*"), (5, 3), 10), Problem(3, ("*",), (3,), 10)))
MP_SOLUTION = "Part 1:\n7+5=2\n2*3=6\nAnswer: 6\nPart 2:\n3*3=9\nAnswer: 9"
PART_CONFIGS = {
    "mod10_x2": ArithConfig(parts=2),
    "mod10_x4_spaced": ArithConfig(parts=4, styles=arith.STYLES),
    "plain_x3": ArithConfig(parts=3, modulus=None, num_steps=(1, 5), operand_range=(0, 20)),
}


def test_multi_part_prompt_solution_and_lines():
  assert MP.prompt == "Mod 10. Part 1: Start at 7. Add 5. Multiply by 3. Part 2: Start at 3. " \
                      "Multiply by 3."
  assert MP.answer == (6, 9) and MP.num_steps == 3 and MP.modulus == 10
  assert arith.solve(MP) == MP_SOLUTION
  assert arith.solve(MP, "spaced") == MP_SOLUTION.replace("7+5=2", "7 + 5 = 2").replace(
      "2*3=6", "2 * 3 = 6").replace("3*3=9", "3 * 3 = 9")
  # Lines: 0 header, 1-2 steps, 3 answer of part 1; 4 header, 5 step, 6 answer of part 2.
  assert arith.part_lines(MP) == [range(0, 4), range(4, 7)]
  assert arith.operation_lines(MP) == [(1, 0, 0), (2, 0, 1), (5, 1, 0)]
  assert arith.part_lines(PM) == [range(0, 4)]  # a single chain is one part, no header
  assert arith.operation_lines(PM) == [(0, 0, 0), (1, 0, 1), (2, 0, 2)]
  assert arith.first_wrong_step(MP, MP_SOLUTION) == "none"
  plain = arith.MultiPartProblem((Problem(3, ("-",), (5,)), Problem(1, ("+",), (1,))))
  assert arith.solve(plain) == "Part 1:\n3-5=-2\nAnswer: -2\nPart 2:\n1+1=2\nAnswer: 2"
  assert plain.prompt == "Part 1: Start at 3. Subtract 5. Part 2: Start at 1. Add 1."
  with pytest.raises(ValueError, match="need >= 2 Problems"):
    arith.MultiPartProblem((PM,))
  with pytest.raises(ValueError, match="share one modulus"):
    arith.MultiPartProblem((PM, P))


@pytest.mark.parametrize("text,expected", [
    (MP_SOLUTION, "none"),
    ("Part 1 :\n7 + 5 = 2\n\n2*3=6\nAnswer:6\n  Part  2:\n3*3=9\nAnswer: 9\n", "none"),
    (MP_SOLUTION + "\nPart 3:\nblah", "none"),  # after the last answer line
    ("Part 1:\n7+5=3\n3*3=9\nAnswer: 9\nPart 2:\n3*3=9\nAnswer: 9", 1),  # part 1's first step
    ("Part 1:\n7+5=2\n2*3=6\nAnswer: 6\nPart 2:\n3*3=8\nAnswer: 8", 5),  # part 2's step
    ("Part 1:\n7+5=2\n2*3=6\nAnswer: 6\nPart 2:\n3*3=9\nAnswer: 8", 6),  # part 2's answer
    ("Part 1:\n7+5=2\n2*3=6\nAnswer: 9\nPart 2:\n3*3=9\nAnswer: 9", 3),  # part 1's answer
    ("7+5=2\n2*3=6\nAnswer: 6\nPart 2:\n3*3=9\nAnswer: 9", 0),  # header missing
    ("Part 1:\n7+5=2\n2*3=6\nAnswer: 6\nPart 1:\n3*3=9\nAnswer: 9", 4),  # header misnumbered
    ("Part 2:\n3*3=9\nAnswer: 9\nPart 1:\n7+5=2\n2*3=6\nAnswer: 6", 0),  # parts swapped
    ("Part 1:\n7+5=2\n2*3=6\nAnswer: 6", 4),  # part 2 missing
    ("Part 1:\n7+5=2\nAnswer: 2\nPart 2:\n3*3=9\nAnswer: 9", 2),  # step left out
    ("Part 1:", 1),
    ("Answer: 6\nAnswer: 9", 0),
    ("", "unparseable"),
    ("the answers are 6 and 9", "unparseable"),
])
def test_multi_part_first_wrong_step_cases(text, expected):
  assert arith.first_wrong_step(MP, text) == expected


def test_headers_are_not_part_of_the_single_chain_language():
  assert arith.first_wrong_step(PM, "Part 1:") == "unparseable"
  assert arith.first_wrong_step(PM, "Part 1:\n" + arith.solve(PM)) == 0


@pytest.mark.parametrize("text,verdict", [
    (MP_SOLUTION, Verdict(1.0, "correct")),
    ("Answer: 6\nAnswer: 9", Verdict(1.0, "correct")),  # outcome only
    ("Answer: 06\n Answer:9 \nAnswer: 1", Verdict(1.0, "correct")),  # the first m answer lines
    ("Answer: 6\nAnswer: 8", Verdict(0.0, "wrong_answer")),  # one part wrong: reward 0
    ("Answer: 9\nAnswer: 6", Verdict(0.0, "wrong_answer")),  # in the parts' order
    ("Answer: x\nAnswer: 9", Verdict(0.0, "wrong_answer")),
    ("Part 1:\n7+5=2\n2*3=6\nAnswer: 6", Verdict(0.0, "missing_answer")),  # truncated
    ("Part 1:\n7+5=2", Verdict(0.0, "no_answer")),
    ("", Verdict(0.0, "no_answer")),
    (None, Verdict(0.0, "no_answer")),
])
def test_multi_part_verify_cases(text, verdict):
  assert arith.verify(MP, text) == verdict


def test_multi_part_answer_key_is_what_verify_reads():
  task = get_task("arith", parts=2)
  assert task.answer_key(MP_SOLUTION) == "6, 9"
  assert task.answer_key("Answer: 06\nAnswer: 9\nAnswer: 1") == "6, 9"
  for text in ["Answer: 6", "Answer: x\nAnswer: 9", "", None]:
    assert task.answer_key(text) is None
  assert get_task("arith").answer_key("7+5=2\nAnswer: 2") == "2"  # one part: the Task default
  # Equal keys mean equal verdicts, so a majority vote over keys votes over outcomes.
  rng = random.Random(0)
  texts = [f"Answer: {rng.randrange(8, 10)}\nAnswer: {rng.randrange(5, 7)}" for _ in range(30)]
  for a in texts:
    for b in texts:
      if task.answer_key(a) == task.answer_key(b):
        assert arith.verify(MP, a) == arith.verify(MP, b)


def test_line_parts_follow_the_headers():
  assert arith.line_parts(MP, MP_SOLUTION) == [0, 0, 0, 0, 1, 1, 1]
  assert arith.line_parts(MP, "7+5=2\nPart 2:\n3*3=9\nPart 7:\nx") == [None, 1, 1, None, None]
  assert arith.line_parts(PM, arith.solve(PM)) == [0, 0, 0, 0]
  assert arith.line_parts(MP, None) == [] and arith.line_parts(MP, "") == []


def test_multi_part_examples_round_trip_meta_and_draw_parts_like_single_chains():
  cfg = ArithConfig(parts=3, num_steps=(2, 4), modulus=7, train_size=500)
  exs = ArithDataset(cfg, "train")
  lengths = set()
  for ex in exs[:200]:
    problem = arith.as_problem(ex)
    assert isinstance(problem, arith.MultiPartProblem) and len(problem.parts) == 3
    assert ex.prompt == problem.prompt and ex.answer == problem.answer == tuple(
        p.answer for p in problem.parts)
    assert ex.meta["solution"] == arith.solve(problem) and ex.meta["modulus"] == 7
    assert ex.meta["num_steps"] == sum(p.num_steps for p in problem.parts)
    assert arith.MultiPartProblem.from_meta(problem.to_meta()) == problem
    assert [p["values"] for p in ex.meta["parts"]] == [p.values for p in problem.parts]
    assert arith.verify(ex, ex.meta["solution"]) == Verdict(1.0, "correct")
    for part in problem.parts:
      lengths.add(part.num_steps)
      assert part.modulus == 7 and 0 <= part.start < 7 and set(part.ops) <= set(arith.OPERATORS)
  assert lengths == {2, 3, 4}  # each part draws its own length
  assert len({tuple(arith.as_problem(e).parts[0].ops) for e in exs[:200]}) > 20
  assert exs[5] == ArithDataset(cfg, "train")[5] and exs[5].id == "arith/train/5"
  with pytest.raises(ValueError, match="lacks key 'ops'"):
    arith.as_problem(Example("x", "p", (1, 2), {"parts": [{"start": 1}, {"start": 2}]}))


def test_multi_part_splits_are_disjoint_by_prompt():
  cfg = ArithConfig(parts=2, train_size=2000, test_size=300, seed=1)
  train = {e.prompt for e in ArithDataset(cfg, "train")}
  test = {e.prompt for e in ArithDataset(cfg, "test")}
  assert not train & test and len(test) > 250


def test_parts_config_errors():
  for bad in (0, -1, 1.5, True, "2"):
    with pytest.raises(ValueError, match="parts must be an int >= 1"):
      ArithConfig(parts=bad)
  assert ArithConfig().parts == 1 and "parts" in get_task("arith").config.__dataclass_fields__


def test_multi_part_task_scores_locates_and_segments():
  task = get_task("arith", parts=2, test_size=4)
  exs = list(task.examples("test"))
  solutions = [e.meta["solution"] for e in exs]
  verdicts = task.score(exs, solutions[:2] + ["Answer: 1", "Answer: 1\nAnswer: 1"])
  assert [v.reason for v in verdicts] == ["correct", "correct", "missing_answer", "wrong_answer"]
  assert task.first_wrong_step(exs[0], solutions[0]) is None and task.trace_correct(exs[0],
                                                                                    solutions[0])
  line = arith.operation_lines(exs[0])[-1][0]  # the last part's last operation
  wrong = arith.inject_error(exs[0], line, 0)
  assert task.first_wrong_step(exs[0], wrong) == line and not task.trace_correct(exs[0], wrong)
  assert len(task.segment(solutions[0])) == sum(len(r) for r in arith.part_lines(exs[0]))


def test_multi_part_inject_error_rejects_lines_that_are_not_operations():
  for line in (0, 3, 4, 6, 7, -1):  # headers, answer lines, out of range
    with pytest.raises(ValueError, match=r"step must be the line of an operation, one of "
                                         r"\[1, 2, 5\]"):
      arith.inject_error(MP, line)
  assert arith.inject_error(MP, 5, 3, "result") == arith.inject_error(MP, 5, 3, "result")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return Tokenizer.from_dir(build_char_tokenizer(str(tmp_path_factory.mktemp("tok"))))


@pytest.mark.parametrize("name", sorted(PART_CONFIGS))
def test_a_mistake_changes_one_part_and_token_edits_stay_in_it(name, tok):
  """The property the parts option exists for: a failure from inject_error has exactly one
  wrong part, first_wrong_step finds the injected line, and the token-level alignment of the
  failure with the correct trace (what SI's credit reads) edits only that part's lines."""
  from si_jax.data.steps import token_step_index
  from si_jax.si import align as align_lib

  cfg = PART_CONFIGS[name]
  rng = random.Random(name)
  injected, parts_hit = 0, set()
  for ex in ArithDataset(cfg, "train")[:120]:
    problem = arith.as_problem(ex)
    line, part, _ = rng.choice(arith.operation_lines(problem))
    style = rng.choice(cfg.styles)
    try:
      failed = arith.inject_error(problem, line, rng, kind=rng.choice(arith.ERROR_KINDS),
                                  style=style)
    except ValueError as e:
      assert "changes the final answer" in str(e)  # e.g. leaving out an "Add 0." step
      continue
    injected += 1
    parts_hit.add(part)
    good = arith.solve(problem, style)
    assert arith.first_wrong_step(problem, failed) == line
    assert arith.verify(problem, failed) == Verdict(0.0, "wrong_answer")
    # Exactly one wrong part: the stated answers differ from the truth in that part only, and
    # every other part's lines are the correct ones, character for character.
    stated = [int(s.split(":")[1]) for s in failed.split("\n") if s.startswith("Answer:")]
    assert [i for i, (a, b) in enumerate(zip(stated, problem.answer)) if a != b] == [part]
    for text in (failed, good):
      assert len(arith.line_parts(problem, text)) == len(arith.segment(text))
    others = lambda text: [s.text for s, p in zip(arith.segment(text),
                                                   arith.line_parts(problem, text)) if p != part]
    assert others(failed) == others(good)
    # Token edits (failed side and correct side) fall on lines of that part only.
    ids_f, off_f = tok.encode_with_offsets(failed)
    ids_g, off_g = tok.encode_with_offsets(good)
    g_minus, g_plus = align_lib.edit_masks(align_lib.align(ids_f, ids_g))
    assert g_minus.any() or g_plus.any()
    for text, offsets, mask in ((failed, off_f, g_minus), (good, off_g, g_plus)):
      line_of_token = token_step_index(offsets, arith.segment(text))
      parts = arith.line_parts(problem, text)
      assert {parts[k] for k in line_of_token[mask]} <= {part}, (failed, good)
  assert injected >= 100 and parts_hit == set(range(cfg.parts))


@pytest.mark.parametrize("name", sorted(PART_CONFIGS))
def test_multi_part_sft_traces_repair_pairs_and_probes(name):
  cfg = PART_CONFIGS[name]
  traces = arith.sft_traces(cfg, 60, error_rate=0.5, seed=1)
  assert traces == arith.sft_traces(cfg, 60, error_rate=0.5, seed=1)
  assert sum(t.first_wrong is not None for t in traces) == 30
  for ex, trace, first_wrong in traces:
    assert arith.first_wrong_step(ex, trace) == ("none" if first_wrong is None else first_wrong)
    assert arith.verify(ex, trace).reward == (1.0 if first_wrong is None else 0.0)
    assert first_wrong is None or first_wrong in [x[0] for x in arith.operation_lines(ex)]

  pairs = arith.repair_pairs(cfg, 60, seed=0)
  wrong_parts = set()
  for p in pairs:
    assert arith.verify(p.example, p.repaired).reward == arith.verify(p.example,
                                                                      p.anchor).reward == 1.0
    assert arith.verify(p.example, p.failed).reward == 0.0
    assert arith.first_wrong_step(p.example, p.failed) == p.first_wrong
    assert arith.first_wrong_step(p.example, p.repaired) == "none"
    failed, repaired = p.failed.split("\n"), p.repaired.split("\n")
    k = p.first_wrong
    assert failed[:k] == repaired[:k] and failed[k] != repaired[k]
    assert (p.anchor == p.repaired) == (len(cfg.styles) == 1)
    wrong_parts.add(arith.line_parts(p.example, p.failed)[k])
  assert wrong_parts == set(range(cfg.parts))  # mistakes land in every part

  for d in arith.probe_failures(cfg, 10, seed=0):
    assert arith.as_problem(d["example"]).prompt == d["example"].prompt
    assert d["example"].prompt in {e.prompt for e in ArithDataset(cfg, "test")}
    assert arith.first_wrong_step(d["example"], d["failed"]) == d["first_wrong"]
    assert arith.verify(d["example"], d["anchor"]).reward == 1.0
    assert arith.verify(d["example"], d["wrong_anchor"]).reward == 0.0
    assert d["wrong_anchor"] != d["failed"]


def test_multi_part_step_dist_weights_lines():
  cfg = ArithConfig(parts=2, num_steps=2)  # lines: 0 h, 1 2 steps, 3 a, 4 h, 5 6 steps, 7 a
  only = arith.sft_traces(cfg, 20, error_rate=1.0, seed=0, step_dist=[0, 0, 0, 0, 0, 0, 1])
  assert {t.first_wrong for t in only} == {6}
  late = [t.first_wrong for t in arith.sft_traces(cfg, 200, 1.0, seed=0, step_dist="late")]
  assert late.count(6) > late.count(1)
  with pytest.raises(ValueError, match=r"positive one at an operation line \[1, 2, 5, 6\]"):
    arith.sft_traces(cfg, 2, 1.0, step_dist=[1, 0, 0, 1])  # header and answer lines only
  dicts = get_task("arith", parts=2).repair_pairs(3, seed=0)
  assert [set(d) for d in dicts] == [{"problem", "failed", "anchor", "repaired", "first_wrong"}] * 3


def test_multi_part_garbage_never_raises():
  rng = random.Random(0)
  alphabet = "0123456789+-*= \nAnswer:Part" + "\u00e9"
  for ex in ArithDataset(ArithConfig(parts=3), "test")[:60]:
    good = ex.meta["solution"]
    n_lines = len(arith.segment(good))
    for text in ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80))),
                 good[:rng.randint(0, len(good))], good + "\n" + good,
                 good.replace("Part 2", "Part 99999999999999999999"),
                 good.replace("=", "=" + "9" * 5000, 1)]:
      result = arith.first_wrong_step(ex, text)
      assert result in ("none", "unparseable") or 0 <= result < n_lines
      verdict = arith.verify(ex, text)
      assert (result == "none") <= (verdict.reward == 1.0)
      assert len(arith.line_parts(ex, text)) == len(arith.segment(text))


def test_multi_part_words_are_tokens_and_repair_prompts_round_trip(tok):
  pairs = arith.repair_pairs(ArithConfig(parts=4), 20, seed=0)
  texts = [p.example.prompt + "\n" + p.failed for p in pairs]
  words = {w for t in texts for w in re.findall(r"[A-Za-z]{2,}", t)}
  assert "Part" in words and words <= set(DEFAULT_WORDS), sorted(words - set(DEFAULT_WORDS))
  assert tok.encode("Part 2:") == tok.encode("Part") + tok.encode(" 2:") and len(
      tok.encode("Part")) == 1
  for p in pairs[:5]:
    r = prompts.repair_prompt(p.example.prompt, p.failed, p.anchor)
    assert tok.decode(tok.encode(r)) == r


@pytest.mark.parametrize("variant", ["long", "parts2", "parts4"])
def test_dilution_budgets_cover_the_longest_prompt_solution_and_repair_prompt(variant, tmp_path):
  """experiments/configs/arith_si.py's study variants: the longest solution fits
  rl.max_new_tokens and a repair prompt of the longest problem (si/rows.py's bound) plus a
  repair fits the model's positions, measured on 2,000 train problems with the built
  tokenizer (a budget too small truncates every long rollout into a wrong one)."""
  import importlib.util
  from si_jax import shapes
  from si_jax.data.arith.render import solve
  spec = importlib.util.spec_from_file_location(
      "arith_si", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "experiments", "configs", "arith_si.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config(variant)
  build_char_tokenizer(str(tmp_path))
  tok = Tokenizer.from_dir(str(tmp_path))
  kw = dict(c.task.kwargs, train_size=2000)
  data = ArithDataset(ArithConfig(**kw), "train")
  prompt = max(len(tok.prompt_ids(ex.prompt, None)) for ex in data)
  solution = max(len(tok.encode(solve(ex))) for ex in data)
  assert solution <= c.rl.max_new_tokens, (solution, c.rl.max_new_tokens)
  template = len(prompts.repair_prompt_ids(tok, "", "", "", None, None))
  around = len(tok.prompt_ids("", None))
  bound = shapes.round_up(template + shapes.round_up(prompt, shapes.QUANTUM) - around
                          + 2 * c.rl.max_new_tokens, shapes.QUANTUM)
  assert bound + c.rl.max_new_tokens <= c.model.overrides.max_position_embeddings
