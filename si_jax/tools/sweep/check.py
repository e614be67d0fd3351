"""Checks a sweep before anything runs: every run's config is built and validated exactly as
si-train builds it (ml_collections' own flag parsing, then `configs.validate`); a mistake is one
line on stderr, exit code 2, naming the culprit (`--grid rl.lso: unknown config field
config.rl.lso; did you mean config.rl.loss?`).
"""

from __future__ import annotations

import os
import re
import warnings
from typing import Any, Sequence

from si_jax.tools.sweep.spec import RunSpec, Sweep, SweepError
from si_jax.tools.sweep.values import format_value


def load_config(spec: str, overrides: Sequence[tuple[str, Any]] = ()):
  """The config si-train would run: `spec` (file[:arg]) with `--config.<field>=<value>`
  overrides, parsed by ml_collections' own flags (same types, same errors), not validated."""
  from absl import flags
  from ml_collections import config_flags
  fv = flags.FlagValues()
  argv = ["si-train", f"--config={spec}"] + [f"--config.{f}={format_value(v)}"
                                             for f, v in overrides]
  holder = config_flags.DEFINE_config_file("config", None, flag_values=fv, lock_config=True,
                                           sys_argv=argv)
  with warnings.catch_warnings():  # ml_collections loads the file with load_module()
    warnings.simplefilter("ignore", DeprecationWarning)
    fv(argv)
  return holder.value


def _culprit(sweep: Sweep, run: RunSpec, message: str) -> str:
  """Who a failed run's error is about: an override whose field the message names, else the
  run."""
  for field, value in reversed(sweep.overrides(run)):
    if re.search(rf"(--)?config\.{re.escape(field)}\b", message):
      kind = "grid" if field in sweep.grid else "set"
      return f"{sweep.label(field, kind)}={format_value(value)}"
  return f"run {run.name}"


def validate(sweep: Sweep) -> list[RunSpec]:
  """Checks every field and every run's config before anything runs; returns the runs."""
  from absl import flags
  from ml_collections.config_flags import config_flags
  from si_jax import configs
  path = sweep.config.partition(":")[0]
  label = sweep.labels.get("config", "--config")
  if not os.path.exists(path):
    raise SweepError(f"{label}: no such file {path!r} (relative to {os.getcwd()})")
  try:
    base = load_config(sweep.config)
  except (ValueError, flags.Error) as e:
    raise SweepError(f"{label} {sweep.config}: {e}") from None
  for kind, fields in (("set", sweep.set), ("grid", sweep.grid)):
    for field in fields:
      msg = configs.unknown_field_message(base, field)
      if msg:
        raise SweepError(f"{sweep.label(field, kind)}: {msg}")
  if sweep.seed_axis not in sweep.grid and sweep.seed_axis != "seed":
    raise SweepError(f"--seed_axis {sweep.seed_axis}: not an axis of the grid "
                     f"({', '.join(sweep.grid) or 'none'})")
  runs = sweep.runs()
  for run in runs:
    try:
      configs.validate(load_config(sweep.config, sweep.overrides(run)))
    except (ValueError, TypeError, KeyError, flags.Error,
            config_flags.UnsupportedOperationError) as e:
      msg = (e.args[0] if isinstance(e, KeyError) else str(e)).split(". (Note")[0]
      msg = re.sub(r"^flag --config\.[^:]*: ", "", msg)
      raise SweepError(f"{_culprit(sweep, run, str(e))}: {msg}") from None
  return runs
