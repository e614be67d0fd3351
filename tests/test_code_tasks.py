"""The livecodebench task over a fixture file, scored in the real sandbox."""

import base64
import json
import pickle
import zlib

import pytest

from si_jax.data import code_tasks
from si_jax.data import tasks
from si_jax.verify.sandbox import Limits
from si_jax.verify.sandbox import TestCase

_PUBLIC = [{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]
_PRIVATE = [{"input": "5 5\n", "output": "10\n", "testtype": "stdin"},
            {"input": "0 7\n", "output": "7\n", "testtype": "stdin"}]
_FUNCTIONAL = [{"input": "[2, 7, 11, 15]\n9", "output": "[0,1]", "testtype": "functional"},
               {"input": "[3, 3]\n6", "output": "[0, 1]", "testtype": "functional"}]
_STARTER = "class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n"

ADD = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
ADD_BUT_ZERO = ("Here:\n```python\na, b = map(int, input().split())\n"
                "print(a + b if a else -1)\n```")
TWO_SUM = """I will use a dict.
```python
class Solution:
    def twoSum(self, nums: List[int], target: int) -> List[int]:
        seen = defaultdict(int)  # LeetCode's implicit imports
        seen.clear()
        assert pow(2, 5, 7) == 4  # the builtin, not math.pow
        for i, x in enumerate(nums):
            if target - x in seen:
                return [seen[target - x], i]
            seen[x] = i
```"""


# Every program here must finish (none is meant to hit a limit): roomy limits, so that no
# verdict depends on how loaded the machine is (its wall time can stretch a lot).
_LIMITS = Limits(cpu_s=30.0, wall_s=120.0)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("lcb")
  manual = root / "manual"
  manual.mkdir()
  compressed = base64.b64encode(zlib.compress(pickle.dumps(json.dumps(_PRIVATE)))).decode()
  rows = [
      {"question_title": "A+B", "question_content": "Print the sum of A and B.",
       "platform": "atcoder", "question_id": "abc000_a", "starter_code": "",
       "difficulty": "easy", "public_test_cases": json.dumps(_PUBLIC),
       "private_test_cases": compressed, "metadata": "{}"},
      {"question_title": "Two Sum", "question_content": "Return indices of two numbers that "
       "add up to target.", "platform": "leetcode", "question_id": "1",
       "starter_code": _STARTER, "difficulty": "easy",
       "public_test_cases": json.dumps(_FUNCTIONAL[:1]),
       "private_test_cases": json.dumps(_FUNCTIONAL[1:]),
       "metadata": json.dumps({"func_name": "twoSum"})},
  ]
  (manual / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  return {"data_dir": root / "data", "manual_dir": manual}


@pytest.fixture(scope="module")
def task(dirs):
  t = tasks.get_task("livecodebench", **dirs,
                     verifier_options={"limits": _LIMITS, "max_concurrency": 2})
  yield t
  t.close()


def test_examples_prompts_and_tests(task):
  stdin_ex, func_ex = task.examples("test")
  assert stdin_ex.id == "livecodebench/test/0"
  assert stdin_ex.prompt.startswith("Print the sum of A and B.\n\n")
  assert "standard input" in stdin_ex.prompt and "```python" in stdin_ex.prompt
  assert stdin_ex.answer == tuple(TestCase(t["input"], t["output"]) for t in _PUBLIC + _PRIVATE)
  assert stdin_ex.meta["functional"] is False and stdin_ex.meta["question_id"] == "abc000_a"
  assert "public_tests" not in stdin_ex.meta
  assert func_ex.meta["functional"] is True and func_ex.meta["func_name"] == "twoSum"
  assert _STARTER in func_ex.prompt and "do not read input" in func_ex.prompt
  # Expected JSON outputs re-serialized: `[0,1]` and `[0, 1]` read alike.
  assert [t.expected_stdout for t in func_ex.answer] == ["[0, 1]", "[0, 1]"]


def test_score_is_fraction_of_tests_passed(task):
  stdin_ex, func_ex = task.examples("test")
  verdicts = task.score([stdin_ex, stdin_ex, stdin_ex, func_ex, func_ex],
                        [ADD, ADD_BUT_ZERO, "I don't know.", TWO_SUM, ADD])
  assert [v.reward for v in verdicts] == pytest.approx([1.0, 2 / 3, 0.0, 1.0, 0.0])
  assert verdicts[0].reason == "correct" and verdicts[1].reason == "wrong_answer"
  assert verdicts[2].reason == "no_code" and verdicts[3].reason == "correct"
  assert verdicts[4].reason != "correct"
  with pytest.raises(ValueError, match="1 examples but 2 completions"):
    task.score([stdin_ex], [ADD, ADD])


def test_public_tests_only(dirs):
  public = code_tasks.CodeTask(**dirs, tests="public", verifier_options={"limits": _LIMITS})
  try:
    stdin_ex = public.examples("test")[0]
    assert len(stdin_ex.answer) == 1
    # Passes the public test, fails the private ones: full reward on public tests only.
    (v,) = public.score([stdin_ex], ["```python\nprint(3)\n```"])
    assert v.reward == 1.0
  finally:
    public.close()
  with pytest.raises(ValueError, match="tests must be one of"):
    code_tasks.CodeTask(tests="hidden")


def test_functional_program_driver():
  program = code_tasks.functional_program("class Solution:\n  def f(self, a, b): return a", "f")
  assert program.startswith("from typing import *\n")
  assert program.endswith("print(_si_json.dumps(_si_result))\n")
  with pytest.raises(ValueError, match="identifier"):
    code_tasks.functional_program("", "f(); import os")
