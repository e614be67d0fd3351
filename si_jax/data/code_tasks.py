"""Code task "livecodebench": write a Python program; reward = fraction of tests it passes,
run in the sandbox (si_jax.verify.sandbox).

Two kinds of problems, as in LiveCodeBench:
  stdin:      the program reads the input from stdin and prints the answer (AtCoder,
              Codeforces). The prompt asks for a complete program.
  functional: LeetCode-style; the prompt shows the starter code (`class Solution` with one
              method) and asks to complete it. Each test input is one JSON value per line (the
              method's arguments) and the output is the JSON of the return value; a driver
              appended to the model's code (which gets LeetCode's implicit imports,
              `from typing import *` and the like) reads the arguments from stdin, calls
              `Solution().<func_name>(*args)` and prints `json.dumps(result)`, so the same
              stdin/stdout sandbox runs both kinds. Expected outputs are re-serialized with
              json.dumps so that spacing differences (`[1,2]` vs `[1, 2]`) do not count.

Task kwargs: data_dir, manual_dir (see sources.py); tests: "all" | "public" | "private" (which
tests score a completion); verifier_options: kwargs for CodeVerifier (limits, workers, ...);
prompt templates with a `{question}` placeholder (and `{starter_code}` for functional ones).
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from etils import epath

from si_jax.data import tasks
from si_jax.data import verified
from si_jax.verify.types import Verdict

__all__ = ["CodeTask", "STDIN_TEMPLATE", "FUNCTIONAL_TEMPLATE", "functional_program",
           "TEST_SETS"]

STDIN_TEMPLATE = (
    "{question}\n\nWrite a Python 3 program that reads the input from standard input and "
    "prints the answer to standard output. Put the complete program in a single ```python "
    "code block.")
FUNCTIONAL_TEMPLATE = (
    "{question}\n\nComplete the following Python 3 code. Your method is called directly with "
    "the arguments: do not read input or print. Put the complete code, including the class "
    "definition, in a single ```python code block.\n\n```python\n{starter_code}\n```")
TEST_SETS = ("all", "public", "private")

# LeetCode runs solutions with these names already imported (starter code says `List[int]`).
_FUNCTIONAL_HEADER = (
    "from typing import *\n"
    "from collections import *\n"
    "from heapq import *\n"
    "from bisect import *\n"
    "from math import *\n"
    "from itertools import *\n"
    "from functools import *\n"
    "from builtins import *\n"  # math's star import shadows pow(); restore the builtins
    "import collections, heapq, bisect, math, itertools, functools, string, re\n\n")

_DRIVER = '''

if __name__ == "__main__":
    import json as _si_json
    import sys as _si_sys
    _si_args = [_si_json.loads(_l) for _l in _si_sys.stdin.read().splitlines() if _l.strip()]
    _si_result = Solution().{func_name}(*_si_args)
    print(_si_json.dumps(_si_result))
'''


def functional_program(code: str, func_name: str) -> str:
  """The model's `class Solution` code, after LeetCode's implicit imports, plus a driver that
  runs one functional test from stdin."""
  if not func_name.isidentifier():
    raise ValueError(f"func_name must be a Python identifier, got {func_name!r}")
  return _FUNCTIONAL_HEADER + code + _DRIVER.format(func_name=func_name)


def _normalize_json(text: str) -> str:
  try:
    return json.dumps(json.loads(text))
  except json.JSONDecodeError:
    return text


class CodeTask(verified.VerifiedTask):
  """LiveCodeBench-style problems scored by the fraction of tests passed."""

  def __init__(self, name: str = "livecodebench", *, dataset: str = "livecodebench",
               data_dir: epath.PathLike | None = None,
               manual_dir: epath.PathLike | None = None, tests: str = "all",
               verifier_options: Mapping[str, Any] | None = None,
               stdin_template: str = STDIN_TEMPLATE,
               functional_template: str = FUNCTIONAL_TEMPLATE,
               system_prompt: str | None = None, verifier: Any = None):
    """verifier: anything with `.score(programs, tests_list) -> list[Verdict]` and `.close()`;
    None builds a CodeVerifier(**verifier_options) on first use (and closes it)."""
    if tests not in TEST_SETS:
      raise ValueError(f"{name}: tests must be one of {TEST_SETS}, got {tests!r}")
    for key, template in (("stdin_template", stdin_template),
                          ("functional_template", functional_template)):
      self._check_template(name, key, template)
    super().__init__(name, system_prompt=system_prompt, verifier=verifier)
    self._dataset = dataset
    self._data_dir = data_dir
    self._manual_dir = manual_dir
    self._tests = tests
    self._stdin_template = stdin_template
    self._functional_template = functional_template
    self._verifier_options = dict(verifier_options or {})

  def examples(self, split: str) -> Sequence[tasks.Example]:
    return self._dataset_examples(self._dataset, split, self._data_dir, self._manual_dir)

  def _example(self, split: str, index: int, row: Mapping[str, Any]) -> tasks.Example:
    from si_jax.verify.sandbox import TestCase  # pylint: disable=g-import-not-at-top
    chosen = {"all": row["public_tests"] + row["private_tests"],
              "public": row["public_tests"], "private": row["private_tests"]}[self._tests]
    functional = any(t["testtype"] == "functional" for t in chosen)
    if functional:
      prompt = self._functional_template.replace("{starter_code}", row["starter_code"])
      cases = tuple(TestCase(t["input"], _normalize_json(t["output"])) for t in chosen)
    else:
      prompt = self._stdin_template
      cases = tuple(TestCase(t["input"], t["output"]) for t in chosen)
    meta = {k: v for k, v in row.items() if k not in ("public_tests", "private_tests")}
    meta["functional"] = functional
    return tasks.Example(id=f"{self.name}/{split}/{index}",
                         prompt=prompt.replace("{question}", row["question_content"]),
                         answer=cases, meta=meta)

  def _prepare(self, example: tasks.Example, completion: str) -> Verdict | tuple[str, list]:
    """(program, tests) to run; "no_code" / "no_tests" Verdicts when there is nothing to run."""
    from si_jax.verify.sandbox import extract_code  # pylint: disable=g-import-not-at-top
    code = extract_code(completion)
    if code is None:
      return Verdict(0.0, "no_code")
    if not example.answer:
      return Verdict(0.0, "no_tests")
    if example.meta.get("functional"):
      code = functional_program(code, example.meta["func_name"])
    return code, list(example.answer)

  def _verify(self, verifier, jobs: list[tuple[str, list]]) -> list[Verdict]:
    return verifier.score([program for program, _ in jobs], [tests for _, tests in jobs])

  def _make_verifier(self):
    from si_jax.verify.sandbox import CodeVerifier  # pylint: disable=g-import-not-at-top
    return CodeVerifier(**self._verifier_options)


def _options() -> dict[str, Any]:
  """CodeTask's keyword options (the config's task.kwargs); `verifier` is for tests only."""
  opts = tasks.signature_options(CodeTask)
  for k in ("verifier", "name"):
    opts.pop(k)
  return opts


@tasks.register("livecodebench", options=_options)
def make_livecodebench(**kwargs) -> CodeTask:
  """LiveCodeBench-style code generation; kwargs as in CodeTask."""
  return CodeTask("livecodebench", **kwargs)
