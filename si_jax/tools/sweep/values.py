"""si-sweep's values, read as si-train reads them: ints, floats, `true`/`false`, strings, and
`(1,2)` is one tuple value; their command-line text and their part of a run directory's name."""

from __future__ import annotations

import ast
import json
import re
from typing import Any


def split_values(text: str) -> list[str]:
  """`a,(1,2),'x,y'` -> ['a', '(1,2)', "'x,y'"]: commas inside brackets or quotes stay."""
  out, depth, quote, cur = [], 0, "", []
  for ch in text:
    if quote:
      quote = "" if ch == quote else quote
    elif ch in "'\"":
      quote = ch
    elif ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == "," and depth == 0:
      out.append("".join(cur))
      cur = []
      continue
    cur.append(ch)
  out.append("".join(cur))
  return out


def parse_value(text: str) -> Any:
  """A command-line value as si-train's flags read it: a Python literal, `true` / `false`, or
  else the string itself."""
  if text in ("true", "false"):
    return text == "true"
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def format_value(v: Any) -> str:
  """The command-line text of a value (`--config.<field>=<text>`); parse_value reads it back
  (strings that read as literals, like '1', stay strings for si-train's str fields)."""
  if isinstance(v, bool):
    return "true" if v else "false"
  if isinstance(v, str):
    return v
  return repr(v)


def value_token(v: Any) -> str:
  """A value as part of a directory name: `gspo`, `0.001`, `true`, `(1,2)` -> `1_2`."""
  if isinstance(v, (tuple, list)):
    return "_".join(value_token(x) for x in v)
  return re.sub(r"[^A-Za-z0-9._+@-]", "_", format_value(v))


def jsonable(v: Any) -> Any:
  """`v` as it reads back from JSON (tuples become lists)."""
  return json.loads(json.dumps(v))
