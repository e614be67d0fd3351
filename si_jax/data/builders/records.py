"""Reading the user's local data files (jsonl, parquet) row by row, with precise errors.

Every row comes with its location (`path:line N` for jsonl, `path:row N` for parquet, both
1-based), and every column is read through `Row`, so a bad value is reported as
`<file>:<line>: column 'answer': expected a string, got list`. Nothing is dropped: a row is
either returned or an error is raised. Whitespace-only jsonl lines are not rows (a trailing
newline is common) and are skipped; everything else must be a JSON object.

Split files in a manual dir are named for their split:
  `<split>.jsonl`, `<split>.parquet`, or shards `<split>-<anything>.jsonl|parquet`
(e.g. `train.jsonl`, `test-00000-of-00001.parquet`). Shards are read in sorted name order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from typing import Any, Iterator, Mapping, Sequence

from etils import epath

__all__ = [
    "RecordError", "Row", "REQUIRED", "find_split_files", "read_rows", "count_rows",
    "fingerprint",
]

_SPLIT_FILE_RE = re.compile(r"^(?P<split>[A-Za-z0-9_]+)(?:-[^/]*)?\.(?P<ext>jsonl|parquet)$")
_PARQUET_BATCH = 1024


class RecordError(ValueError):
  """A malformed row: names the file, the line (or parquet row) and the column."""

  def __init__(self, where: str, message: str, column: str | None = None):
    self.where = where
    self.column = column
    col = f"column {column!r}: " if column is not None else ""
    super().__init__(f"{where}: {col}{message}")


class _Required:

  def __repr__(self):
    return "REQUIRED"


REQUIRED = _Required()


def _type_name(value: Any) -> str:
  return type(value).__name__


@dataclasses.dataclass(frozen=True)
class Row:
  """One record and where it came from; typed column access that raises RecordError.

  Each getter takes one or more accepted column names (aliases: the first present is used)
  and a default; `REQUIRED` (the default) makes a missing column an error. A column that is
  present with JSON null counts as missing.
  """

  path: epath.Path
  pos: str  # "line 12" (jsonl) or "row 12" (parquet), 1-based
  data: Mapping[str, Any]

  @property
  def where(self) -> str:
    """Full location for error messages: `<path>:line 12`."""
    return f"{self.path}:{self.pos}"

  @property
  def source(self) -> str:
    """Short location stored with the example: `<file name>:line 12`."""
    return f"{self.path.name}:{self.pos}"

  def error(self, message: str, column: str | None = None) -> RecordError:
    return RecordError(self.where, message, column)

  def has(self, *names: str) -> bool:
    return any(self.data.get(n) is not None for n in names)

  def _get(self, names: Sequence[str], default: Any) -> tuple[str, Any]:
    for n in names:
      if self.data.get(n) is not None:
        return n, self.data[n]
    if default is REQUIRED:
      alts = " or ".join(repr(n) for n in names)
      raise RecordError(
          self.where, f"missing required column {alts}; the row has columns "
          f"{sorted(self.data)}", names[0])
    return names[0], default

  def text(self, *names: str, default: Any = REQUIRED, allow_int: bool = False) -> str:
    """A string column. allow_int: an integer value (e.g. an AIME answer) becomes its str."""
    name, value = self._get(names, default)
    if isinstance(value, str):
      return value
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
      return str(value)
    want = "a string or an integer" if allow_int else "a string"
    raise self.error(f"expected {want}, got {_type_name(value)} ({value!r:.80})", name)

  def number(self, *names: str, default: Any = REQUIRED) -> float:
    name, value = self._get(names, default)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
    raise self.error(f"expected a number, got {_type_name(value)} ({value!r:.80})", name)

  def integer(self, *names: str, default: Any = REQUIRED) -> int:
    name, value = self._get(names, default)
    if isinstance(value, int) and not isinstance(value, bool):
      return value
    raise self.error(f"expected an integer, got {_type_name(value)} ({value!r:.80})", name)

  def any(self, *names: str, default: Any = REQUIRED) -> tuple[str, Any]:
    """(the column name used, its raw value)."""
    return self._get(names, default)


def find_split_files(manual_dir: epath.PathLike, *, dataset: str,
                     expected: str) -> dict[str, list[epath.Path]]:
  """{split: [files in read order]} for the split files in manual_dir (see module doc).

  dataset and expected are only for the error message: the dataset's name and a description
  of the files it expects (e.g. "train.jsonl and/or test.jsonl with columns ...").
  """
  manual_dir = epath.Path(manual_dir)
  if not manual_dir.is_dir():
    raise FileNotFoundError(
        f"{dataset}: manual dir {manual_dir} does not exist. Put the data files there: "
        f"{expected}")
  splits: dict[str, list[epath.Path]] = {}
  for path in sorted(manual_dir.iterdir(), key=lambda p: p.name):
    m = _SPLIT_FILE_RE.match(path.name)
    if m and path.is_file():
      splits.setdefault(m["split"], []).append(path)
  if not splits:
    present = sorted(p.name for p in manual_dir.iterdir())
    raise FileNotFoundError(
        f"{dataset}: no split files in manual dir {manual_dir} (it holds {present[:20]}). "
        f"Expected {expected}. Files are named <split>.jsonl, <split>.parquet or "
        f"<split>-<shard>.jsonl|parquet.")
  for split, files in splits.items():
    exts = {f.suffix for f in files}
    if len(exts) > 1:
      raise ValueError(f"{dataset}: split {split!r} in {manual_dir} mixes file types "
                       f"{[f.name for f in files]}; keep one format per split")
  return splits


def read_rows(path: epath.PathLike) -> Iterator[Row]:
  """Yields every row of a .jsonl or .parquet file, in file order."""
  path = epath.Path(path)
  if path.suffix == ".jsonl":
    yield from _read_jsonl(path)
  elif path.suffix == ".parquet":
    yield from _read_parquet(path)
  else:
    raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use .jsonl or .parquet")


def _read_jsonl(path: epath.Path) -> Iterator[Row]:
  with path.open("r", encoding="utf-8") as f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      pos = f"line {lineno}"
      try:
        data = json.loads(line)
      except json.JSONDecodeError as e:
        raise RecordError(f"{path}:{pos}",
                          f"invalid JSON ({e.msg} at character {e.colno})") from None
      if not isinstance(data, dict):
        raise RecordError(f"{path}:{pos}", f"expected a JSON object, got {_type_name(data)}")
      yield Row(path, pos, data)


def _read_parquet(path: epath.Path) -> Iterator[Row]:
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  with path.open("rb") as f:
    pf = pq.ParquetFile(f)
    rownum = 0
    for batch in pf.iter_batches(batch_size=_PARQUET_BATCH):
      for data in batch.to_pylist():
        rownum += 1
        yield Row(path, f"row {rownum}", data)


def count_rows(path: epath.PathLike) -> int:
  """Rows in a file as `read_rows` would yield them, counted without parsing them."""
  path = epath.Path(path)
  if path.suffix == ".parquet":
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    with path.open("rb") as f:
      return pq.ParquetFile(f).metadata.num_rows
  with path.open("r", encoding="utf-8") as f:
    return sum(1 for line in f if line.strip())


def fingerprint(files: Sequence[epath.Path]) -> str:
  """A digest of file names, sizes and modification times: changes when the inputs change."""
  h = hashlib.sha256()
  for f in sorted(files, key=lambda p: p.name):
    if "://" in str(f):  # remote (gs://...): the backend's stat, mtime in seconds
      st = f.stat()
      size, mtime = st.length, st.mtime
    else:
      st = os.stat(f)
      size, mtime = st.st_size, st.st_mtime_ns
    h.update(f"{f.name}\0{size}\0{mtime}\n".encode())
  return h.hexdigest()[:16]
