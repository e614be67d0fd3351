"""Tasks: a prompt format paired with a verifier, looked up by name from config.

A task module registers a factory with `@register("name")`; `get_task(name, **kwargs)` builds
it. Modules that register tasks are imported by `_import_task_modules` so that the registry is
complete whenever it is read.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
from typing import Any, Callable, Mapping, Sequence

from si_jax.verify.types import Verdict

__all__ = ["Example", "Task", "Verdict", "register", "get_task", "task_names"]


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

  def answer_key(self, completion: str) -> str | None:
    """The final answer of a completion as a string, for majority voting (maj@k); None if
    there is none. Default: a boxed answer, `#### x`, or an `Answer: x` line."""
    from si_jax.verify.math import extract_answer  # local: keep this module light
    ans = extract_answer(completion)
    return None if ans is None else ans.strip()

  def close(self) -> None:
    """Releases worker pools and temp dirs (idempotent)."""


_REGISTRY: dict[str, Callable[..., Task]] = {}
# Modules whose import registers tasks. Append when you add a task module.
_TASK_MODULES = ("si_jax.data.arith", "si_jax.data.math_tasks", "si_jax.data.code_tasks",
                 "si_jax.data.humaneval")


def register(name: str):
  def deco(factory: Callable[..., Task]):
    if name in _REGISTRY and _REGISTRY[name] is not factory:
      raise ValueError(f"task {name!r} is registered twice")
    _REGISTRY[name] = factory
    return factory
  return deco


def _import_task_modules() -> None:
  for mod in _TASK_MODULES:
    try:
      importlib.import_module(mod)
    except ModuleNotFoundError as e:
      if e.name != mod:  # a real missing dependency inside the module: surface it
        raise


def task_names() -> list[str]:
  _import_task_modules()
  return sorted(_REGISTRY)


def get_task(name: str, **kwargs) -> Task:
  _import_task_modules()
  if name not in _REGISTRY:
    raise ValueError(f"unknown task {name!r}; registered tasks: {sorted(_REGISTRY)}")
  return _REGISTRY[name](**kwargs)
