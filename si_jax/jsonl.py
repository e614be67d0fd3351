"""The one JSONL reader: a file of one JSON object per line, local or remote (`etils.epath`).

  rows = jsonl.read(path, fields={"prompt": str, "response": str})

A bad line is a ValueError naming `file:line` (and the key, for a missing or mistyped field).
Whitespace-only lines are not rows. Used for the run's metrics.jsonl (`metrics.read_metrics`)
and the SFT data files (`train.sft`).
"""

from __future__ import annotations

import json
import os
from typing import Mapping

from etils import epath

__all__ = ["read"]


def _types(spec: type | tuple[type, ...]) -> tuple[type, ...]:
  return spec if isinstance(spec, tuple) else (spec,)


def read(path: str | os.PathLike, fields: Mapping[str, type | tuple[type, ...]] | None = None,
         *, drop_partial_tail: bool = False) -> list[dict]:
  """The objects of a JSONL file, in file order; whitespace-only lines are skipped.

  Args:
    path: the file (FileNotFoundError if it does not exist).
    fields: required keys, each with its allowed type(s) (`isinstance`; `object` for any). A key
      whose types include `type(None)` may be null or absent.
    drop_partial_tail: ignore the text after the last newline (a writer killed mid-line)
      instead of reading it as the last line.

  Raises:
    ValueError `<path>:<line>: ...` for a line that is not JSON, not an object, lacks a key of
    `fields` or holds a value of another type there.
  """
  lines = epath.Path(path).read_text().split("\n")
  if drop_partial_tail:
    lines = lines[:-1]  # the text after the last newline ("" in a complete file)
  fields = {k: _types(v) for k, v in (fields or {}).items()}
  rows = []
  for lineno, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    where = f"{path}:{lineno}"
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{where}: not a JSON line ({e.msg}): {line[:120]!r}") from None
    if not isinstance(row, dict):
      raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}: "
                       f"{line[:120]!r}")
    for key, types in fields.items():
      if key not in row and type(None) not in types:
        raise ValueError(f"{where}: expected an object with a {key!r} key, got {line[:120]!r}")
      if not isinstance(row.get(key), types):
        raise ValueError(f"{where}: field {key!r} must be "
                         f"{' or '.join(t.__name__ for t in types)}, got "
                         f"{type(row.get(key)).__name__}")
    rows.append(row)
  return rows
