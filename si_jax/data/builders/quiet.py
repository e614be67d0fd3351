"""Keeps a local tfds build quiet: our builders download nothing, so tfds' download talk is noise.

Building one of si_jax's datasets with plain tfds prints

    WARNING:absl:Variant folder <data_dir>/si_gsm8k/1.0.0 has no dataset_info.json   (twice)
    Downloading and preparing dataset Unknown size (download: Unknown size, ...) to ...
    Dataset si_gsm8k downloaded and prepared to ... Subsequent calls will reuse this data.

The warning comes from `is_prepared()` asked about a dataset that is not built yet (which is how
every first build starts); the two lines are `print`s of tfds' `download_and_prepare`.
`QuietBuild` answers `is_prepared()` without the warning when there is no dataset_info.json, and
says the two lines once, truthfully, at INFO level on this module's logger. Everything else
(errors, other tfds warnings, the progress bars) is left as tfds does it.

The two print hooks are tfds' private methods (`_log_download_bytes`, `_log_download_done`,
tensorflow-datasets==4.9.10); tests/test_builders.py checks a build prints neither line, so an
upgrade that renames them fails there.
"""

from __future__ import annotations

import logging

from etils import epath
from tensorflow_datasets.core import constants

__all__ = ["QuietBuild"]

_LOG = logging.getLogger(__name__)


class QuietBuild:
  """Mixin for a `tfds.core.DatasetBuilder` subclass; list it before the tfds base class."""

  def is_prepared(self) -> bool:
    """Whether the dataset is built; no warning when it is not built yet."""
    if not (epath.Path(self.data_path) / constants.DATASET_INFO_FILENAME).exists():
      return False
    return super().is_prepared()

  def _log_download_bytes(self) -> None:
    _LOG.info("%s: building into %s (nothing is downloaded)", self.name, self.data_dir)

  def _log_download_done(self) -> None:
    _LOG.info("%s: built in %s", self.name, self.data_dir)
