"""VerifiedTask: a task scored by a verifier that holds resources (a process pool, a thread
pool), the part the math, code and humaneval tasks share.

The verifier is built on first use (`_make_verifier`), so making a task (to read its examples
or its options) starts nothing, and `close()` releases it (idempotent); a verifier passed in
(a test's fake) is used as it is and never closed. `score` checks that there is one completion
per example, asks `_prepare` about each pair for either a Verdict that needs no verifier
("no_code", "no_tests") or a job for it, and gives the jobs to `_verify` in one batch; without
a job the verifier is not built.
"""

from __future__ import annotations

import abc
from typing import Any, Mapping, Sequence

from etils import epath

from si_jax.data import tasks
from si_jax.verify.types import Verdict

__all__ = ["VerifiedTask"]


class VerifiedTask(tasks.Task):
  """A task whose verifier is built lazily and released by `close()`.

  Subclasses define `_make_verifier` (build one), `_prepare` (one completion -> a Verdict or a
  job) and `_verify` (jobs -> Verdicts), and `_release_verifier` where a verifier is not freed
  by its `.close()`.
  """

  def __init__(self, name: str, *, system_prompt: str | None = None, verifier: Any = None):
    """verifier: a ready verifier, used and never closed; None builds one with `_make_verifier`
    on first use (and `close` releases it)."""
    self.name = name
    self.system_prompt = system_prompt
    self._verifier = verifier
    self._owns_verifier = verifier is None
    self._dataset_splits: dict[str, Sequence[tasks.Example]] = {}

  @abc.abstractmethod
  def _make_verifier(self) -> Any:
    """A new verifier (called on first use, and again after `close`)."""

  @abc.abstractmethod
  def _prepare(self, example: tasks.Example, completion: str) -> Verdict | Any:
    """The Verdict of a completion that needs no verifier (no code, no tests), else the job
    `_verify` takes for it."""

  @abc.abstractmethod
  def _verify(self, verifier: Any, jobs: list[Any]) -> Sequence[Verdict]:
    """The Verdicts of `jobs` (from `_prepare`; at least one), in order."""

  def _release_verifier(self, verifier: Any) -> None:
    """Frees a verifier this task built: `verifier.close()`."""
    verifier.close()

  def _get_verifier(self) -> Any:
    if self._verifier is None:
      self._verifier = self._make_verifier()
    return self._verifier

  def close(self) -> None:
    if self._verifier is not None and self._owns_verifier:
      self._release_verifier(self._verifier)
      self._verifier = None

  def score(self, examples: Sequence[tasks.Example],
            completions: Sequence[str]) -> list[Verdict]:
    self._check_lengths(examples, completions)
    verdicts: list[Verdict | None] = [None] * len(completions)
    jobs, where = [], []
    for i, (ex, completion) in enumerate(zip(examples, completions)):
      job = self._prepare(ex, completion)
      if isinstance(job, Verdict):
        verdicts[i] = job
      else:
        jobs.append(job)
        where.append(i)
    if jobs:
      for i, v in zip(where, self._verify(self._get_verifier(), jobs)):
        verdicts[i] = v
    return verdicts  # type: ignore[return-value]

  def _check_lengths(self, examples: Sequence[tasks.Example],
                     completions: Sequence[str]) -> None:
    if len(examples) != len(completions):
      raise ValueError(f"{self.name}.score: {len(examples)} examples but {len(completions)} "
                       "completions")

  @staticmethod
  def _check_template(name: str, key: str, template: str, placeholder: str = "{question}"):
    """ValueError unless option `key` of task `name`, a prompt template, has `placeholder`."""
    if placeholder not in template:
      raise ValueError(f"{name}: {key} must contain '{placeholder}', got {template!r}")

  def _dataset_examples(self, dataset: str, split: str, data_dir: epath.PathLike | None,
                        manual_dir: epath.PathLike | None) -> Sequence[tasks.Example]:
    """Split `split` of the tfds builder `dataset` (see sources.load_split), row i read as
    `self._example(split, i, row)` when indexed; opened once per split."""
    from si_jax.data import sources  # pylint: disable=g-import-not-at-top  # tfds: not for all
    if split not in self._dataset_splits:
      rows = sources.load_split(dataset, split, data_dir, manual_dir)
      self._dataset_splits[split] = sources.MappedSequence(
          rows, lambda i, row, split=split: self._example(split, i, row))
    return self._dataset_splits[split]
