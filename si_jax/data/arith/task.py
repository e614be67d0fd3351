"""The registered arithmetic task ('arith'): ArithTask and its options (ArithConfig's fields)."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from si_jax.data.arith.config import ArithConfig
from si_jax.data.arith.dataset import ArithDataset
from si_jax.data.arith.traces import probe_failures, repair_pairs, sft_traces
from si_jax.data.arith.verifier import STEP_MODE, _stated_answers, first_wrong_step, segment, verify
from si_jax.data.steps import Step
from si_jax.data.tasks import Example, Task, register
from si_jax.verify.types import Verdict


def options() -> dict[str, Any]:
  """ArithConfig's fields and defaults: the task's options (config task.kwargs)."""
  return {f.name: getattr(ArithConfig, f.name, None) if f.default is dataclasses.MISSING
          else f.default for f in dataclasses.fields(ArithConfig)}


@register("arith", options=options)
class ArithTask(Task):
  """The synthetic arithmetic task: `ArithTask(**ArithConfig fields)` or `ArithTask(config)`."""

  name = "arith"
  system_prompt = None
  step_mode = STEP_MODE  # how segment_steps cuts its responses

  def __init__(self, config: ArithConfig | None = None, **config_kwargs):
    if config is not None and config_kwargs:
      raise ValueError(f"ArithTask: pass a config or its fields, not both; got config and "
                       f"{sorted(config_kwargs)}")
    self.config = config if config is not None else ArithConfig(**config_kwargs)
    self._splits: dict[str, ArithDataset] = {}

  def examples(self, split: str) -> ArithDataset:
    if split not in self._splits:
      self._splits[split] = ArithDataset(self.config, split)
    return self._splits[split]

  def score(self, examples: Sequence[Example], completions: Sequence[str]) -> list[Verdict]:
    if len(examples) != len(completions):
      raise ValueError(f"ArithTask.score: {len(examples)} examples but {len(completions)} "
                       f"completions")
    return [verify(ex, c) for ex, c in zip(examples, completions)]

  def sft_pairs(self, n: int, error_rate: float, seed: int) -> list[tuple[str, str]]:
    return [(t.example.prompt, t.trace)
            for t in sft_traces(self.config, n, error_rate, seed=seed)]

  def answer_key(self, completion: str) -> str | None:
    """Single chain: the Task default (the last `Answer:` line). m parts: the m values that
    `verify` reads, as `6, 9`; None when fewer than m answer lines state a number."""
    m = self.config.parts
    if m == 1:
      return super().answer_key(completion)
    got = _stated_answers(completion, m) if isinstance(completion, str) else []
    if len(got) < m or any(v is None for v in got):
      return None
    return ", ".join(str(v) for v in got)

  def first_wrong_step(self, example: Example, completion: str) -> int | None:
    """The true first wrong step of a completion (oracle reset, localization precision); None
    when it is all right or unparseable."""
    k = first_wrong_step(example, completion)
    return k if isinstance(k, int) else None

  def trace_correct(self, example: Example, completion: str) -> bool:
    """Every line right and the answer line right (a repair that splices an anchor's values
    into a wrong trace can still state the right answer)."""
    return first_wrong_step(example, completion) == "none"

  def probe_failures(self, n: int, seed: int) -> list[dict]:
    return probe_failures(self.config, n, seed)

  def repair_pairs(self, n: int, seed: int) -> list[dict]:
    return [dict(problem=p.example.prompt, failed=p.failed, anchor=p.anchor,
                 repaired=p.repaired, first_wrong=p.first_wrong)
            for p in repair_pairs(self.config, n, seed=seed)]

  def segment(self, text: str) -> list[Step]:
    return segment(text)
