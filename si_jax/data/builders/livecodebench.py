"""Builder for LiveCodeBench-style code generation problems with stdin/stdout or functional tests.

The published rows (livecodebench/code_generation_lite) hold test lists as JSON strings of
`[{"input": str, "output": str, "testtype": "stdin" | "functional"}]`. In the published files
'private_test_cases' is often compressed: base64 of zlib of a pickled JSON string. That form is
decoded with an unpickler that refuses every global, so only plain strings can come out of it
(a file cannot make the reader run code). Tests may also be given as JSON lists directly.

Functional (LeetCode-style) tests call `Solution().<func_name>(*args)`: func_name comes from
the 'metadata' JSON column (`{"func_name": ...}`) and is required when such a test exists.
"""

from __future__ import annotations

import base64
import datetime
import io
import json
import pickle
from typing import Any, Mapping
import zlib

import tensorflow_datasets as tfds

from si_jax.data.builders import base
from si_jax.data.builders import records

__all__ = ["SiLivecodebench", "parse_tests", "TEST_TYPES"]

_Text = tfds.features.Text
TEST_TYPES = ("stdin", "functional")


class _StringsOnlyUnpickler(pickle.Unpickler):

  def find_class(self, module, name):
    raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def _decompress(value: str) -> str:
  raw = zlib.decompress(base64.b64decode(value.encode("ascii"), validate=True))
  out = _StringsOnlyUnpickler(io.BytesIO(raw)).load()
  if not isinstance(out, str):
    raise ValueError(f"compressed payload holds {type(out).__name__}, expected a JSON string")
  return out


def parse_tests(row: records.Row, column: str, value: Any) -> list[dict[str, str]]:
  """Test cases from a JSON string, a compressed JSON string, or a list; RecordError if bad."""
  if isinstance(value, str):
    try:
      value = json.loads(value)
    except json.JSONDecodeError as json_error:
      try:
        value = json.loads(_decompress(value))
      except Exception:  # pylint: disable=broad-except
        raise row.error(f"not a JSON list of tests ({json_error.msg} at character "
                        f"{json_error.colno}) nor a compressed one", column) from None
  if not isinstance(value, list):
    raise row.error(f"expected a list of tests, got {type(value).__name__}", column)
  tests = []
  for i, t in enumerate(value):
    if not isinstance(t, dict):
      raise row.error(f"test {i}: expected an object, got {type(t).__name__}", column)
    for key in ("input", "output"):
      if not isinstance(t.get(key), str):
        raise row.error(f"test {i}: {key!r} must be a string, got {type(t.get(key)).__name__}",
                        column)
    testtype = t.get("testtype", "stdin")
    if testtype not in TEST_TYPES:
      raise row.error(f"test {i}: testtype must be one of {TEST_TYPES}, got {testtype!r}",
                      column)
    tests.append({"input": t["input"], "output": t["output"], "testtype": testtype})
  return tests


def _date_text(row: records.Row, name: str) -> str:
  col, value = row.any(name, default="")
  if isinstance(value, str):
    return value
  if isinstance(value, (datetime.date, datetime.datetime)):  # parquet timestamp columns
    return value.isoformat()
  raise row.error(f"expected a date string, got {type(value).__name__} ({value!r:.80})", col)


class SiLivecodebench(base.ManualBuilder):
  """LiveCodeBench-style code problems: statement, optional starter code, and test cases.

  public_tests / private_tests are sequences of {input, output, testtype}; a row needs at
  least one test in all. 'question' is accepted for 'question_content'; 'private_test_cases'
  may be absent (no private tests).
  """

  EXPECTED_FILES = ("test.jsonl (or .parquet, e.g. the published test6.jsonl renamed, or "
                    "shards test-*.jsonl) with columns 'question_content' (or 'question'), "
                    "'public_test_cases', 'private_test_cases' (JSON strings of "
                    "[{\"input\", \"output\", \"testtype\"}]) and optional 'question_id', "
                    "'question_title', 'starter_code', 'platform', 'difficulty', "
                    "'contest_date', 'metadata'.")
  HOMEPAGE = "https://livecodebench.github.io/"

  def _features(self) -> Mapping[str, Any]:
    test = {"input": _Text(), "output": _Text(), "testtype": _Text()}
    return {
        "question_id": _Text(),
        "question_title": _Text(),
        "question_content": _Text(),
        "starter_code": _Text(),
        "platform": _Text(),
        "difficulty": _Text(),
        "contest_date": _Text(),
        "func_name": _Text(doc="method of class Solution that functional tests call; '' if none"),
        "public_tests": tfds.features.Sequence(test),
        "private_tests": tfds.features.Sequence(test),
    }

  def _convert(self, row: records.Row) -> dict[str, Any]:
    public = parse_tests(row, *row.any("public_test_cases"))
    private = parse_tests(row, *row.any("private_test_cases", default=[]))
    if not public and not private:
      raise row.error("no test cases: a problem needs at least one test to be scored",
                      "public_test_cases")
    kinds = {t["testtype"] for t in public + private}
    if len(kinds) > 1:
      raise row.error(f"tests mix test types {sorted(kinds)}; a problem is either stdin or "
                      "functional", "private_test_cases")
    func_name = _func_name(row)
    if not func_name and "functional" in kinds:
      raise row.error("functional tests need 'metadata' with a 'func_name' (the method of "
                      "class Solution to call)", "metadata")
    return {
        "question_id": row.text("question_id", default="", allow_int=True),
        "question_title": row.text("question_title", default=""),
        "question_content": row.text("question_content", "question"),
        "starter_code": row.text("starter_code", default=""),
        "platform": row.text("platform", default=""),
        "difficulty": row.text("difficulty", default=""),
        "contest_date": _date_text(row, "contest_date"),
        "func_name": func_name,
        "public_tests": public,
        "private_tests": private,
    }


def _func_name(row: records.Row) -> str:
  col, meta = row.any("metadata", default={})
  if isinstance(meta, str):
    try:
      meta = json.loads(meta) if meta.strip() else {}
    except json.JSONDecodeError as e:
      raise row.error(f"invalid JSON ({e.msg} at character {e.colno})", col) from None
  if not isinstance(meta, dict):
    raise row.error(f"expected a JSON object, got {type(meta).__name__}", col)
  name = meta.get("func_name") or ""
  if not isinstance(name, str):
    raise row.error(f"func_name must be a string, got {type(name).__name__}", col)
  return name
