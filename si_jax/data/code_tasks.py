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

from si_jax.data import sources
from si_jax.data import tasks
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


class CodeTask(tasks.Task):
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
      if "{question}" not in template:
        raise ValueError(f"{name}: {key} must contain '{{question}}', got {template!r}")
    self.name = name
    self.system_prompt = system_prompt
    self._dataset = dataset
    self._data_dir = data_dir
    self._manual_dir = manual_dir
    self._tests = tests
    self._stdin_template = stdin_template
    self._functional_template = functional_template
    self._verifier_options = dict(verifier_options or {})
    self._verifier = verifier
    self._owns_verifier = verifier is None
    self._splits: dict[str, Sequence[tasks.Example]] = {}

  def examples(self, split: str) -> Sequence[tasks.Example]:
    if split not in self._splits:
      rows = sources.load_split(self._dataset, split, self._data_dir, self._manual_dir)
      self._splits[split] = sources.MappedSequence(
          rows, lambda i, row, split=split: self._example(split, i, row))
    return self._splits[split]

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

  def score(self, examples: Sequence[tasks.Example],
            completions: Sequence[str]) -> list[Verdict]:
    from si_jax.verify.sandbox import extract_code  # pylint: disable=g-import-not-at-top
    if len(examples) != len(completions):
      raise ValueError(f"{self.name}.score: {len(examples)} examples but {len(completions)} "
                       "completions")
    verdicts: list[Verdict | None] = [None] * len(completions)
    programs, tests_list, where = [], [], []
    for i, (ex, completion) in enumerate(zip(examples, completions)):
      code = extract_code(completion)
      if code is None:
        verdicts[i] = Verdict(0.0, "no_code")
        continue
      if not ex.answer:
        verdicts[i] = Verdict(0.0, "no_tests")
        continue
      if ex.meta.get("functional"):
        code = functional_program(code, ex.meta["func_name"])
      programs.append(code)
      tests_list.append(list(ex.answer))
      where.append(i)
    if programs:
      for i, v in zip(where, self._get_verifier().score(programs, tests_list)):
        verdicts[i] = v
    return verdicts

  def _get_verifier(self):
    if self._verifier is None:
      from si_jax.verify.sandbox import CodeVerifier  # pylint: disable=g-import-not-at-top
      self._verifier = CodeVerifier(**self._verifier_options)
    return self._verifier

  def close(self) -> None:
    if self._verifier is not None and self._owns_verifier:
      self._verifier.close()
      self._verifier = None


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
