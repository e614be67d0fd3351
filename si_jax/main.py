"""si-train: the main job. `si-train --config experiments/configs/arith_grpo.py --workdir DIR`.

Any config field can be overridden (`--config.rl.loss=gspo`, `--config.rl.group_size=16`);
an unknown field is an error. Running again on an existing workdir resumes the run.
"""

from __future__ import annotations

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "experiment config file, optionally with :variant", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (created; resumed if it exists)")


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # keep Orbax's INFO chatter out; -v 0 restores it
    logging.set_verbosity(logging.WARNING)
  import jax
  if os.environ.get("SI_MULTIHOST") == "1":
    jax.distributed.initialize()  # multi-host: launch/ sets SI_MULTIHOST; topology auto-detected
  from si_jax.rl import trainer
  trainer.train(_CONFIG.value, _WORKDIR.value)


def run():
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(_main)


if __name__ == "__main__":
  sys.exit(run())
