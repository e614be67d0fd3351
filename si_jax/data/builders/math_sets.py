"""Builders for math datasets in their published formats: GSM8K, MATH, MATH-500, DeepMath-103K,
AIME and HMMT. Each reads `<split>.jsonl|parquet` from the manual dir (see records.py).

Stored answers are strings (the verifier parses them). Builder names carry an `si_` prefix so
that they never collide with tfds' own catalog in a shared data_dir.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np
import tensorflow_datasets as tfds

from si_jax.data.builders import base
from si_jax.data.builders import records
from si_jax.verify.math import extract_boxed

__all__ = ["SiGsm8k", "SiMath", "SiMath500", "SiDeepmath", "SiAime", "SiHmmt",
           "gsm8k_final_answer"]

_Text = tfds.features.Text
_LEVEL_RE = re.compile(r"^\s*Level\s+(\d+|\?)\s*$")


def gsm8k_final_answer(answer: str) -> str | None:
  """The number after the last `####` of a GSM8K answer, without thousands separators."""
  if "####" not in answer:
    return None
  final = answer.rsplit("####", 1)[1].strip().replace(",", "")
  return final or None


class SiGsm8k(base.ManualBuilder):
  """GSM8K (grade-school math word problems); answers end with `#### <number>`."""

  EXPECTED_FILES = ("train.jsonl and/or test.jsonl (or .parquet) with columns 'question' and "
                    "'answer' (the worked solution, ending with '#### <number>').")
  HOMEPAGE = "https://github.com/openai/grade-school-math"

  def _features(self) -> Mapping[str, Any]:
    return {
        "question": _Text(),
        "answer": _Text(doc="the published worked solution, ending with '#### <number>'"),
        "final_answer": _Text(doc="the number after '####', commas removed"),
    }

  def _convert(self, row: records.Row) -> dict[str, Any]:
    answer = row.text("answer")
    final = gsm8k_final_answer(answer)
    if final is None:
      raise row.error(f"no final answer: expected the text to end with '#### <number>', got "
                      f"...{answer[-80:]!r}", "answer")
    return {"question": row.text("question"), "answer": answer, "final_answer": final}


class SiMath(base.ManualBuilder):
  r"""MATH (Hendrycks et al.) competition problems, five levels, seven subjects.

  Accepts the original shape {problem, solution, level: "Level 5", type} and the MATH-500 shape
  {problem, solution, answer, level: 5, subject, unique_id}. Without an 'answer' column the
  answer is the last \boxed{} of the solution. level is -1 where unknown ("Level ?" or absent);
  subject comes from 'subject' or 'type'.
  """

  EXPECTED_FILES = ("train.jsonl and/or test.jsonl (or .parquet) with columns 'problem', "
                    "'solution' and optional 'answer', 'level', 'type'/'subject', 'unique_id'.")
  HOMEPAGE = "https://github.com/hendrycks/math"

  def _features(self) -> Mapping[str, Any]:
    return {
        "problem": _Text(),
        "solution": _Text(doc="'' if the file has no solution column"),
        "answer": _Text(),
        "level": np.int32,
        "subject": _Text(),
        "unique_id": _Text(),
    }

  def _convert(self, row: records.Row) -> dict[str, Any]:
    solution = row.text("solution", default="")
    if row.has("answer"):
      answer = row.text("answer", allow_int=True)
    elif solution:
      answer = extract_boxed(solution)
      answer = answer.strip() if answer is not None else None
      if not answer:
        raise row.error("no 'answer' column and no \\boxed{...} in the solution to take it "
                        "from", "solution")
    else:
      raise row.error("missing required column 'answer' (or a 'solution' with \\boxed{...}); "
                      f"the row has columns {sorted(row.data)}", "answer")
    return {
        "problem": row.text("problem"),
        "solution": solution,
        "answer": answer,
        "level": _level(row),
        "subject": row.text("subject", "type", default=""),
        "unique_id": row.text("unique_id", default="", allow_int=True),
    }


def _level(row: records.Row) -> int:
  name, level = row.any("level", default=-1)
  if isinstance(level, int) and not isinstance(level, bool):
    return level
  if isinstance(level, str):
    m = _LEVEL_RE.match(level)
    if m:
      return -1 if m.group(1) == "?" else int(m.group(1))
  raise row.error(f"expected an integer or 'Level <n>', got {level!r:.80}", name)


class SiMath500(SiMath):
  """MATH-500: the 500-problem test subset of MATH used by PRM800K ("Let's Verify Step by
  Step"), with 'answer', 'subject', 'level' (int) and 'unique_id' columns."""

  EXPECTED_FILES = ("test.jsonl (or .parquet) with columns 'problem', 'solution', 'answer', "
                    "'subject', 'level', 'unique_id' (the original MATH shape is accepted too).")
  HOMEPAGE = "https://github.com/openai/prm800k"


class SiDeepmath(base.ManualBuilder):
  """DeepMath-103K: decontaminated, hard, verifiable math problems with up to three R1 solutions.

  r1_solutions holds the present 'r1_solution_<n>' columns in order of n (empty if none).
  """

  EXPECTED_FILES = ("train.jsonl or train-*.parquet (the published shards) with columns "
                    "'question', 'final_answer', 'difficulty' and optional 'topic', "
                    "'r1_solution_1', 'r1_solution_2', 'r1_solution_3'.")
  HOMEPAGE = "https://huggingface.co/datasets/zwhe99/DeepMath-103K"

  def _features(self) -> Mapping[str, Any]:
    return {
        "question": _Text(),
        "final_answer": _Text(),
        "difficulty": np.float64,
        "topic": _Text(),
        "r1_solutions": tfds.features.Sequence(_Text()),
    }

  def _convert(self, row: records.Row) -> dict[str, Any]:
    sol_cols = sorted((int(m.group(1)), k) for k in row.data
                      if (m := re.fullmatch(r"r1_solution_(\d+)", k)))
    return {
        "question": row.text("question"),
        "final_answer": row.text("final_answer", allow_int=True),
        "difficulty": row.number("difficulty"),
        "topic": row.text("topic", default=""),
        "r1_solutions": [row.text(k) for _, k in sol_cols if row.has(k)],
    }


class SiAime(base.ManualBuilder):
  """AIME problems (integer answers 0..999), any year: one split file per set you evaluate on.

  Columns: 'problem' (or 'question'), 'answer' (string or integer), optional id ('id',
  'problem_idx', 'unique_id' or 'ID') and 'solution'.
  """

  EXPECTED_FILES = ("one file per split, e.g. test.jsonl or aime2025.jsonl (or .parquet), with "
                    "columns 'problem' (or 'question'), 'answer' and optional 'id'/'problem_idx', "
                    "'solution'.")
  HOMEPAGE = "https://artofproblemsolving.com/wiki/index.php/AIME_Problems_and_Solutions"

  def _features(self) -> Mapping[str, Any]:
    return {
        "id": _Text(doc="'' if the file has no id column"),
        "problem": _Text(),
        "answer": _Text(),
        "solution": _Text(doc="'' if the file has no solution column"),
    }

  def _convert(self, row: records.Row) -> dict[str, Any]:
    return {
        "id": row.text("id", "problem_idx", "unique_id", "ID", default="", allow_int=True),
        "problem": row.text("problem", "question"),
        "answer": row.text("answer", allow_int=True),
        "solution": row.text("solution", default=""),
    }


class SiHmmt(SiAime):
  """HMMT (Harvard-MIT Mathematics Tournament) problems; same columns as SiAime."""

  HOMEPAGE = "https://www.hmmt.org/www/archive/problems"
