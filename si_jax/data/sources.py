"""Random-access dataset splits: build the tfds dataset on first use, then read its array_record
files (no TensorFlow at any point).

    rows = load_split("gsm8k", "test", data_dir="~/tensorflow_datasets",
                      manual_dir="~/data/gsm8k")      # holds test.jsonl
    len(rows); rows[17]["final_answer"]

Rows come back as the builder wrote them: str for text, python int/float for scalars, lists
for sequences (a sequence of records is a list of dicts). Index i is the i-th row of the
split's files, in order.

A built dataset is used only for the files it was built from: it is rebuilt when the manual dir
names another directory than the build's or its files have changed since (names, sizes,
mtimes), and a manual dir that is given but does not exist is an error, never a reason to fall
back on an earlier build. Without a manual dir (None), the default one is checked when it
exists, and a built dataset is used as it is when it does not (a shared, prebuilt data_dir).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Sequence, TypeVar

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from si_jax.data import builders
from si_jax.data.builders import records

__all__ = ["load_split", "get_builder", "default_manual_dir", "builder_names", "MappedSequence"]

FILE_FORMAT = "array_record"
_T = TypeVar("_T")


def builder_names() -> list[str]:
  return sorted(builders.BUILDERS)


def get_builder(name: str, data_dir: epath.PathLike | None = None,
                **builder_kwargs) -> tfds.core.DatasetBuilder:
  """A builder by short name ('gsm8k', ...) writing array_record files under data_dir."""
  if name not in builders.BUILDERS:
    raise ValueError(f"unknown dataset {name!r}; known datasets: {builder_names()}")
  cls = builders.BUILDERS[name]
  data_dir = os.path.expanduser(os.fspath(data_dir)) if data_dir is not None else None
  if builder_kwargs.get("config") is not None and hasattr(cls, "builder_config_for"):
    builder_kwargs["config"] = cls.builder_config_for(builder_kwargs["config"])  # ArithConfig
  return cls(data_dir=data_dir, file_format=FILE_FORMAT, **builder_kwargs)


def default_manual_dir(builder: tfds.core.DatasetBuilder) -> epath.Path:
  """`<data_dir>/downloads/manual/<builder name>`: where files go if no manual_dir is given."""
  return epath.Path(builder.data_dir_root) / "downloads" / "manual" / builder.name


def load_split(name: str, split: str, data_dir: epath.PathLike | None = None,
               manual_dir: epath.PathLike | None = None,
               **builder_kwargs) -> Sequence[dict[str, Any]]:
  """The rows of one split, random access; builds the dataset first if needed.

  Args:
    name: short dataset name, one of `builder_names()`.
    split: 'train', 'test', ... (a split is whatever files `<split>*.jsonl|parquet` exist).
    data_dir: tfds data dir (None: tfds' default, ~/tensorflow_datasets).
    manual_dir: the user's data files (None: `default_manual_dir`). Ignored by generated
      datasets (arith).
    **builder_kwargs: passed to the builder (e.g. `config=ArithConfig(...)` for arith).

  Raises:
    FileNotFoundError: the dataset is not built and its manual dir lacks the files (the message
      names the directory and the expected files).
    RecordError: a malformed row (names file, line and column).
    ValueError: unknown dataset or split.
  """
  builder = get_builder(name, data_dir, **builder_kwargs)
  if isinstance(builder, builders.ManualBuilder):
    given = bool(manual_dir)
    manual = _absolute(manual_dir) if given else default_manual_dir(builder)
    if given and builder.is_prepared() and not manual.is_dir():
      built_from = (builder.info.metadata or {}).get("manual_dir", "files not recorded")
      raise FileNotFoundError(
          f"{builder.name}: manual_dir {manual} does not exist (the dataset built in "
          f"{builder.data_dir} from {built_from} is not used in place of the files you name; "
          f"{builder.EXPECTED_FILES})")
    if _needs_build(builder, manual, given):
      if builder.is_prepared():  # stale: drop the old build (tfds cannot regenerate in place)
        epath.Path(builder.data_dir).rmtree()
        builder = get_builder(name, data_dir, **builder_kwargs)
      builder.download_and_prepare(
          file_format=FILE_FORMAT,
          download_config=tfds.download.DownloadConfig(
              manual_dir=os.fspath(manual), try_download_gcs=False))
      builder = get_builder(name, data_dir, **builder_kwargs)  # re-read the written info
  elif not builder.is_prepared():
    builder.download_and_prepare(
        file_format=FILE_FORMAT,
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    builder = get_builder(name, data_dir, **builder_kwargs)

  splits = builder.info.splits
  if split not in splits:
    raise ValueError(f"{name}: no split {split!r} in {builder.data_dir}; it has "
                     f"{sorted(splits)} (a split comes from files named {split}.jsonl, "
                     f"{split}.parquet or {split}-<shard>.jsonl|parquet in the manual dir)")
  _check_row_count(builder, split)
  return DecodedSource(builder.as_data_source(split=split), builder.info.features)


def _absolute(path: epath.PathLike) -> epath.Path:
  path = os.path.expanduser(os.fspath(path))
  return epath.Path(path if "://" in path else os.path.abspath(path))


def _needs_build(builder: builders.ManualBuilder, manual: epath.Path, given: bool) -> bool:
  """True if not built yet, or built from another manual dir than `manual` (when `given`), or
  from files in it that have changed since."""
  if not builder.is_prepared():
    # Checks the files now, so the error names the directory and what it should hold.
    records.find_split_files(manual, dataset=builder.name, expected=builder.EXPECTED_FILES)
    return True
  if not manual.is_dir():
    return False  # no manual dir named, none at the default place: a prebuilt dataset
  metadata = builder.info.metadata or {}
  built_from = metadata.get("manual_dir")
  if given and built_from is not None and built_from != os.fspath(manual):
    logging.warning("%s: %s was built from %s, not from manual_dir %s; rebuilding",
                    builder.name, builder.data_dir, built_from, manual)
    return True
  files = records.find_split_files(manual, dataset=builder.name,
                                   expected=builder.EXPECTED_FILES)
  current = records.fingerprint([f for fs in files.values() for f in fs])
  if current == metadata.get("source_fingerprint"):
    return False
  logging.warning("%s: files in %s changed since %s was built; rebuilding", builder.name,
                  manual, builder.data_dir)
  return True


def _check_row_count(builder: tfds.core.DatasetBuilder, split: str) -> None:
  rows_in = (builder.info.metadata or {}).get("rows_in")
  if not rows_in:
    return  # generated datasets record no input rows
  written = builder.info.splits[split].num_examples
  if rows_in.get(split) != written:
    raise RuntimeError(f"{builder.name}: split {split!r} has {written} examples in "
                       f"{builder.data_dir} but its source files had {rows_in.get(split)} rows; "
                       "delete that directory and rebuild")


class DecodedSource(Sequence[dict]):
  """A tfds data source whose rows are decoded to python values following the feature spec.

  [N] rows; `rows[i]` is a dict, `rows[i:j]` a list of dicts.
  """

  def __init__(self, source: Sequence[Any], features: tfds.features.FeaturesDict):
    self._source = source
    self._features = features

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    if not -len(self) <= index < len(self):
      raise IndexError(f"row {index} out of range for {len(self)} rows")
    return _decode(self._features, self._source[index % len(self)])

  def __repr__(self) -> str:
    return f"DecodedSource({self._source!r})"


def _decode(feature: tfds.features.FeatureConnector, value: Any) -> Any:
  if isinstance(feature, tfds.features.FeaturesDict):
    return {k: _decode(f, value[k]) for k, f in feature.items()}
  if isinstance(feature, tfds.features.Sequence):
    inner = feature.feature
    if isinstance(inner, tfds.features.FeaturesDict):  # stored column-wise: transpose
      columns = {k: _decode(tfds.features.Sequence(f), value[k]) for k, f in inner.items()}
      n = len(next(iter(columns.values()))) if columns else 0
      return [{k: col[i] for k, col in columns.items()} for i in range(n)]
    return [_decode(inner, v) for v in value]
  if isinstance(feature, tfds.features.Text):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
  if isinstance(value, np.ndarray) and value.ndim > 0:
    return value
  if isinstance(value, (np.generic, np.ndarray)):
    return value.item()
  return value



class MappedSequence(Sequence[_T]):
  """`fn(i, rows[i])` for every row, computed on access (random access over large splits)."""

  def __init__(self, rows: Sequence[Any], fn: Callable[[int, Any], _T]):
    self._rows = rows
    self._fn = fn

  def __len__(self) -> int:
    return len(self._rows)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    if not -len(self) <= index < len(self):
      raise IndexError(f"index {index} out of range for {len(self)} items")
    index %= len(self)
    return self._fn(index, self._rows[index])
