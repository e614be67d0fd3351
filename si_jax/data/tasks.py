"""Tasks: a prompt format paired with a verifier, looked up by name from config.

A task module registers a factory with `@register("name", options=...)`; `get_task(name,
**kwargs)` builds it. `options` is the task's keyword options with their defaults (a dict, or a
callable returning one): the config layer copies them into `config.task.kwargs`, so each option
is overridable field by field (`--config.task.kwargs.manual_dir=...`). Without `options`, the
keyword parameters of the factory's signature that have defaults are the options. The
registry, `TASKS` (a `si_jax.registry.Registry`), imports the modules that register tasks
(`_TASK_MODULES`) on its first lookup, so that it is complete whenever it is read.
"""

from __future__ import annotations

import abc
import dataclasses
import difflib
import inspect
from typing import Any, Callable, Mapping, Sequence

from si_jax.registry import Registry
from si_jax.verify.types import Verdict

__all__ = ["Example", "Task", "Verdict", "TASKS", "register", "get_task", "task_names",
           "task_options", "check_options", "signature_options"]


@dataclasses.dataclass(frozen=True)
class Example:
  """One problem.

  id: stable identifier (dataset name + index), used for logging and resume.
  prompt: the user message (the chat template is applied by the tokenizer).
  answer: the reference the verifier checks against (task-specific type).
  meta: anything else the task keeps (difficulty, level, tests, true step values, ...).
  """

  id: str
  prompt: str
  answer: Any
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class Task(abc.ABC):
  """A prompt format + data splits + a verifier."""

  name: str = ""
  system_prompt: str | None = None
  step_mode: str = "auto"  # how `si_jax.data.steps.segment_steps` cuts its responses

  @abc.abstractmethod
  def examples(self, split: str) -> Sequence[Example]:
    """Random-access examples of a split ('train', 'test', ...). Unknown split: ValueError."""

  @abc.abstractmethod
  def score(self, examples: Sequence[Example], completions: Sequence[str]) -> list[Verdict]:
    """Verdicts for completions[i] as an answer to examples[i]. Never raises on model output."""

  def sft_pairs(self, n: int, error_rate: float, seed: int) -> list[tuple[str, str]]:
    """n (user prompt, response) pairs for cold-start SFT, round(error_rate * n) of them with a
    mistake, from a task that can generate traces. Others: ValueError (use a data file)."""
    raise ValueError(f"task {self.name!r} has no trace generator; set config.sft.data_path to "
                     f"a jsonl file of {{\"prompt\", \"response\"}} lines")

  def repair_pairs(self, n: int, seed: int) -> list[dict]:
    """n error -> repair pairs for the repair mode's cold start, from a task that can make
    them: dicts with 'problem' (the user message), 'failed', 'anchor' (a correct solution),
    'repaired' (the minimal repair of failed) and 'first_wrong' (0-based step, or None).
    Others: ValueError (use a data file)."""
    raise ValueError(f"task {self.name!r} cannot generate repair pairs; set "
                     f"config.sft.repair_data_path to a jsonl of {{\"problem\", \"failed\", "
                     f"\"anchor\", \"repaired\"}} lines")

  def answer_key(self, completion: str) -> str | None:
    """The final answer of a completion as a string, for majority voting (maj@k); None if
    there is none. Default: a boxed answer, `#### x`, or an `Answer: x` line."""
    from si_jax.verify.math import extract_answer  # local: keep this module light
    ans = extract_answer(completion)
    return None if ans is None else ans.strip()

  def trace_correct(self, example: Example, completion: str) -> bool | None:
    """Whether every step of `completion` is right, where the task knows its steps' truth
    (the synthetic task); None where only the outcome can be checked."""
    return None

  def first_wrong_step(self, example: Example, completion: str) -> int | None:
    """0-based index (into `segment_steps(completion, step_mode)`) of the first wrong step,
    where the task knows it; None when all steps are right, it cannot tell, or the text does
    not parse."""
    return None

  def probe_failures(self, n: int, seed: int) -> list[dict]:
    """Held-out failed solutions for probing a repair mode, where the task can make them:
    dicts with 'example', 'failed' (a wrong solution), 'anchor' (a correct one) and
    'wrong_anchor' (another wrong solution of the same problem). Default: none."""
    return []

  def close(self) -> None:
    """Releases worker pools and temp dirs (idempotent)."""


# Modules whose import registers tasks. Append when you add a task module.
_TASK_MODULES = ("si_jax.data.arith", "si_jax.data.math_tasks", "si_jax.data.code_tasks",
                 "si_jax.data.humaneval")
# name -> task factory; info: {"options": the `options` given to `register`}.
TASKS = Registry("task", modules=_TASK_MODULES)


def register(name: str, options: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None
             = None):
  """Registers a task factory under `name`, with its options (see the module docstring)."""
  return TASKS.register(name, options=options)


def signature_options(factory) -> dict[str, Any]:
  """The keyword parameters of `factory` (a class: its `__init__`) that have defaults, with
  them."""
  target = factory.__init__ if inspect.isclass(factory) else factory
  out = {}
  for p in inspect.signature(target).parameters.values():
    if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is not p.empty and \
        p.name != "self":
      out[p.name] = p.default
  return out


def task_options(name: str) -> dict[str, Any]:
  """The options of task `name` with their defaults (see the module docstring)."""
  opts = TASKS.info(name).get("options")
  if opts is None:
    return signature_options(TASKS.get(name))
  return dict(opts() if callable(opts) else opts)


def check_options(name: str, kwargs: Mapping[str, Any], where: str = "task options") -> None:
  """Raises ValueError naming the first of `kwargs` that task `name` has no option for (with
  the closest one, and the task's options), instead of the constructor's TypeError."""
  known = task_options(name)
  for key in kwargs:
    if key not in known:
      close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
      hint = f"; did you mean {close[0]!r}?" if close else ""
      raise ValueError(f"{where}: task {name!r} has no option {key!r}{hint} (its options: "
                       f"{', '.join(sorted(known))})")


def task_names() -> list[str]:
  return TASKS.names()


def get_task(name: str, **kwargs) -> Task:
  return TASKS.get(name)(**kwargs)
