r"""Math tasks: a problem from a tfds builder, a prompt asking for the answer in \boxed{}, and
math-verify (in a worker pool with timeouts) as the verifier.

Registered: "gsm8k", "math", "math500", "deepmath", "aime", "hmmt". Each takes
  data_dir, manual_dir: where the dataset is built / where its files are (see sources.py);
  num_workers, timeout_s: MathVerifier options (timeout_s None: the verifier's default);
  prompt_template: text with a `{question}` placeholder (no other braces are interpreted);
  system_prompt: optional system message.

Example.answer is the reference answer string; Example.meta holds the row's other columns
(source file:line, level, subject, difficulty, solutions, ...).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from etils import epath

from si_jax.data import tasks
from si_jax.data import verified
from si_jax.verify.types import Verdict

__all__ = ["MathSpec", "MathTask", "SPECS", "DEFAULT_TEMPLATE"]

DEFAULT_TEMPLATE = ("{question}\n\nPlease reason step by step, and put your final answer "
                    "within \\boxed{}.")


@dataclasses.dataclass(frozen=True)
class MathSpec:
  """Which builder a task reads and which of its columns are the question and the answer."""

  dataset: str
  question_key: str
  answer_key: str


SPECS: Mapping[str, MathSpec] = {
    "gsm8k": MathSpec("gsm8k", "question", "final_answer"),
    "math": MathSpec("math", "problem", "answer"),
    "math500": MathSpec("math500", "problem", "answer"),
    "deepmath": MathSpec("deepmath", "question", "final_answer"),
    "aime": MathSpec("aime", "problem", "answer"),
    "hmmt": MathSpec("hmmt", "problem", "answer"),
}


class MathTask(verified.VerifiedTask):
  """A math dataset scored by final-answer equivalence (reward 1 or 0)."""

  def __init__(self, name: str, spec: MathSpec, *, data_dir: epath.PathLike | None = None,
               manual_dir: epath.PathLike | None = None, num_workers: int = 2,
               timeout_s: float | None = None, prompt_template: str = DEFAULT_TEMPLATE,
               system_prompt: str | None = None, verifier: Any = None):
    """verifier: anything with `.score(completions, answers) -> list[Verdict]` and `.close()`;
    None builds a MathVerifier(num_workers, timeout_s) on first use (and closes it)."""
    self._check_template(name, "prompt_template", prompt_template)
    super().__init__(name, system_prompt=system_prompt, verifier=verifier)
    self.spec = spec
    self._data_dir = data_dir
    self._manual_dir = manual_dir
    self._template = prompt_template
    self._verifier_kwargs = {"num_workers": num_workers}
    if timeout_s is not None:
      self._verifier_kwargs["timeout_s"] = timeout_s

  def prompt(self, question: str) -> str:
    return self._template.replace("{question}", question)

  def examples(self, split: str) -> Sequence[tasks.Example]:
    return self._dataset_examples(self.spec.dataset, split, self._data_dir, self._manual_dir)

  def _example(self, split: str, index: int, row: Mapping[str, Any]) -> tasks.Example:
    q, a = self.spec.question_key, self.spec.answer_key
    return tasks.Example(
        id=f"{self.name}/{split}/{index}",
        prompt=self.prompt(row[q]),
        answer=row[a],
        meta={k: v for k, v in row.items() if k not in (q, a)} | {"question": row[q]},
    )

  def _prepare(self, example: tasks.Example, completion: str) -> tuple[str, Any]:
    """(completion, reference answer): every completion goes to the verifier."""
    return completion, example.answer

  def _verify(self, verifier, jobs: list[tuple[str, Any]]) -> list[Verdict]:
    return list(verifier.score([c for c, _ in jobs], [a for _, a in jobs]))

  def _make_verifier(self):
    from si_jax.verify.math import MathVerifier  # pylint: disable=g-import-not-at-top
    return MathVerifier(**self._verifier_kwargs)


def _factory(name: str):
  def make(**kwargs) -> MathTask:
    return MathTask(name, SPECS[name], **kwargs)
  make.__name__ = f"make_{name}"
  make.__doc__ = f"The {name!r} math task; kwargs as in MathTask."
  return make


def _options() -> dict[str, Any]:
  """MathTask's keyword options (the config's task.kwargs); `verifier` is for tests only."""
  opts = tasks.signature_options(MathTask)
  opts.pop("verifier")
  return opts


for _name in SPECS:
  tasks.register(_name, options=_options)(_factory(_name))
