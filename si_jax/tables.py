"""The one markdown-table and JSON writer every report, benchmark and CLI uses.

Callers format their own cells (each table knows its units); this module only lays them out:

  print(tables.markdown_table(["model", "avg@4"], [["base", "0.41"], ["rl", "0.64"]]))
  tables.write_json(os.path.join(out, "summary.json"), summary)
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Sequence

__all__ = ["markdown_table", "write_json"]


def _cell(value: Any) -> str:
  return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[Any], rows: Iterable[Sequence[Any]]) -> str:
  """A GitHub markdown table: one header line, a rule, one line per row. Cells are `str()`-ed,
  `|` escaped, newlines flattened. Raises ValueError naming the row whose width differs."""
  header = [_cell(h) for h in header]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for i, row in enumerate(rows):
    cells = [_cell(c) for c in row]
    if len(cells) != len(header):
      raise ValueError(f"markdown_table: row {i} has {len(cells)} cells, the header "
                       f"{len(header)} ({header})")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_json(path: str, obj: Any, *, indent: int = 1, sort_keys: bool = False) -> None:
  """Writes `obj` as JSON (newline-terminated) through a temporary file and a rename, so a
  reader never sees half a file and a crash keeps the previous one."""
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(obj, f, indent=indent, sort_keys=sort_keys)
      f.write("\n")
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
