"""Math and code tasks over fixture files: prompts, examples from the builders, and scoring with
the real verifiers (math-verify pool, sandbox)."""

import json

import pytest

from si_jax.data import math_tasks
from si_jax.data import tasks

_GSM8K_TEST = [
    {"question": "Ann has 3 boxes of 400 pens. How many pens?",
     "answer": "3 * 400 = <<3*400=1200>>1200\n#### 1,200"},
    {"question": "Bob eats 2 of 5 apples. How many are left?", "answer": "5 - 2 = 3\n#### 3"},
]


def _write_jsonl(path, rows):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("tasks")
  _write_jsonl(root / "manual" / "gsm8k" / "test.jsonl", _GSM8K_TEST)
  _write_jsonl(root / "manual" / "math500" / "test.jsonl", [
      {"problem": "Compute $1/2 + 1/4$.", "solution": r"$\boxed{\frac{3}{4}}$",
       "answer": r"\frac{3}{4}", "subject": "Prealgebra", "level": 1, "unique_id": "u/1.json"}])
  return root


@pytest.fixture(scope="module")
def gsm8k(dirs):
  task = tasks.get_task("gsm8k", data_dir=dirs / "data", manual_dir=dirs / "manual" / "gsm8k",
                        num_workers=1, timeout_s=20.0)
  yield task
  task.close()


def test_all_math_and_code_tasks_are_registered():
  names = tasks.task_names()
  for name in ("gsm8k", "math", "math500", "deepmath", "aime", "hmmt", "livecodebench"):
    assert name in names


def test_gsm8k_examples(gsm8k):
  examples = gsm8k.examples("test")
  assert len(examples) == 2
  ex = examples[0]
  assert ex.id == "gsm8k/test/0"
  assert ex.prompt.startswith(_GSM8K_TEST[0]["question"] + "\n\n")
  assert "\\boxed{}" in ex.prompt
  assert ex.answer == "1200"
  assert ex.meta["question"] == _GSM8K_TEST[0]["question"]
  assert ex.meta["answer"] == _GSM8K_TEST[0]["answer"]  # the worked solution column
  assert ex.meta["source"] == "test.jsonl:line 1"
  assert [e.answer for e in examples[0:2]] == ["1200", "3"]
  assert gsm8k.examples("test") is examples  # built and opened once
  with pytest.raises(ValueError, match="no split 'train'"):
    gsm8k.examples("train")


def test_gsm8k_scores_right_and_wrong_completions(gsm8k):
  ex = gsm8k.examples("test")
  right = "3 boxes of 400 pens is 1200 pens.\nThe answer is \\boxed{1200}."
  wrong = "3 + 400 = 403.\n\\boxed{403}"
  verdicts = gsm8k.score([ex[0], ex[0], ex[1], ex[1]], [right, wrong, "\\boxed{3}", "no idea"])
  assert [v.reward for v in verdicts] == [1.0, 0.0, 1.0, 0.0]
  assert [v.reason for v in verdicts] == ["correct", "wrong_answer", "correct", "no_answer"]
  assert gsm8k.score([], []) == []
  with pytest.raises(ValueError, match="2 examples but 1 completions"):
    gsm8k.score(ex[0:2], [right])


def test_math500_latex_answers_are_equivalence_checked(dirs):
  task = tasks.get_task("math500", data_dir=dirs / "data",
                        manual_dir=dirs / "manual" / "math500", num_workers=1, timeout_s=20.0)
  try:
    (ex,) = task.examples("test")
    assert ex.answer == r"\frac{3}{4}" and ex.meta["level"] == 1
    verdicts = task.score([ex] * 3, [r"\boxed{0.75}", r"\boxed{\dfrac{3}{4}}", r"\boxed{3/5}"])
    assert [v.reward for v in verdicts] == [1.0, 1.0, 0.0]
  finally:
    task.close()
    task.close()  # idempotent


def test_prompt_template_and_errors(dirs):
  task = math_tasks.MathTask("gsm8k", math_tasks.SPECS["gsm8k"], data_dir=dirs / "data",
                             manual_dir=dirs / "manual" / "gsm8k",
                             prompt_template="Q: {question}\nA: (in \\boxed{})")
  assert task.examples("test")[1].prompt == f"Q: {_GSM8K_TEST[1]['question']}\nA: (in \\boxed{{}})"
  with pytest.raises(ValueError, match="must contain '{question}'"):
    math_tasks.MathTask("gsm8k", math_tasks.SPECS["gsm8k"], prompt_template="no placeholder")
