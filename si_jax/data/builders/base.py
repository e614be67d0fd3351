"""The shared shape of the manual-dir builders: split files in, one example per row out.

A subclass declares its features (`_features`), how one row becomes one example (`_convert`),
and what files it expects (`EXPECTED_FILES`, shown in errors and in the manual-download
instructions). Building needs no TensorFlow: features are encoded to numpy/bytes and written
as array_record when `file_format="array_record"` is passed (what `sources.load_split` does).

Recorded in the dataset's metadata at build time, so that a reader can check them:
  manual_dir: the absolute path of the directory the files were read from;
  source_fingerprint: digest of the input files' names, sizes and mtimes (staleness check);
  rows_in: {split: rows in the input files}; equal to the split's num_examples, since no row is
    ever dropped (a bad row is an error naming file, line and column);
  source_files: {split: [file names]}.
"""

from __future__ import annotations

import abc
import inspect
import os
from typing import Any, Iterator, Mapping

from etils import epath
import tensorflow_datasets as tfds

from si_jax.data.builders import quiet
from si_jax.data.builders import records

__all__ = ["ManualBuilder"]


class ManualBuilder(quiet.QuietBuild, tfds.core.GeneratorBasedBuilder,
                    skip_registration=True):
  """Reads `<split>.jsonl|parquet` files from the manual dir; rows keep file order."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  # Subclasses: what files and columns the manual dir must hold (one sentence).
  EXPECTED_FILES: str = ""
  HOMEPAGE: str = ""

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    if cls.EXPECTED_FILES:
      cls.MANUAL_DOWNLOAD_INSTRUCTIONS = (
          f"Put the data files in the manual dir: {cls.EXPECTED_FILES} Split files are named "
          "<split>.jsonl, <split>.parquet or <split>-<shard>.jsonl|parquet (e.g. train.jsonl, "
          "test-00000-of-00001.parquet). Nothing is downloaded.")

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # tfds 4.9.10 resolves this through the `importlib_resources` backport, which it does not
    # declare as a dependency, for any builder defined inside a package (ModuleNotFoundError).
    # The builder's source file is all it needs (to look for a checksums file beside it).
    return epath.Path(inspect.getfile(cls))

  @abc.abstractmethod
  def _features(self) -> Mapping[str, Any]:
    """tfds feature spec of one example, without 'source' (added here)."""

  @abc.abstractmethod
  def _convert(self, row: records.Row) -> dict[str, Any]:
    """One row -> one example (python values matching `_features`); RecordError if malformed."""

  def _info(self) -> tfds.core.DatasetInfo:
    features = {"source": tfds.features.Text(doc="file:line (or file:row) it came from")}
    features.update(self._features())
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__class__.__doc__,
        features=tfds.features.FeaturesDict(features),
        homepage=self.HOMEPAGE or None,
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,  # index i = i-th row of the split's files, in order
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    try:
      manual_dir = dl_manager.manual_dir
    except AssertionError as e:  # tfds: missing or empty manual dir
      raise FileNotFoundError(f"{self.name}: {e}") from None
    split_files = records.find_split_files(
        manual_dir, dataset=self.name, expected=self.EXPECTED_FILES)
    all_files = [f for files in split_files.values() for f in files]
    path = os.fspath(manual_dir)
    self.info.metadata["manual_dir"] = path if "://" in path else os.path.abspath(path)
    self.info.metadata["source_fingerprint"] = records.fingerprint(all_files)
    self.info.metadata["rows_in"] = {
        split: sum(records.count_rows(f) for f in files) for split, files in split_files.items()}
    self.info.metadata["source_files"] = {
        split: [f.name for f in files] for split, files in split_files.items()}
    return {split: self._generate_examples(files) for split, files in split_files.items()}

  def _generate_examples(self, files: list[epath.Path]) -> Iterator[tuple[int, dict]]:
    index = 0
    for path in files:
      for row in records.read_rows(path):
        example = self._convert(row)
        example["source"] = row.source
        yield index, example
        index += 1
