"""The synthetic arithmetic task: language, verifier, error injection, repairs, prompts."""

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
