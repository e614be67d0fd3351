"""si-train: the main job. `si-train --config experiments/configs/arith_si.py --workdir DIR`.

Any config field can be overridden (`--config.rl.loss=gspo`, `--config.rl.group_size=16`,
`--config.task.kwargs.manual_dir=data/gsm8k`). Running again on an existing workdir resumes
the run.

Compiled programs are kept in a persistent cache (`--compile_cache_dir`, default
~/.cache/si_jax/xla; `--compile_cache_dir=off` turns it off), so a resumed run, another seed or
a sweep on the same machine reads them back instead of compiling them again.

Mistakes in the command or the config stop the run before any work with one line on stderr and
exit code 2: an unknown field (`unknown config field config.rl.grop_size; did you mean
config.rl.group_size?`), a bad value, a missing data file or column. So do, once the run has
started, a full disk (`no space left on device while saving checkpoint N to PATH (needed about
X MB)`; the checkpoints already saved are kept) and a checkpoint that does not verify where no
fall-back is possible or wanted (README, Reliability). Set SI_TRACEBACK=1 to see the traceback
instead. Other errors after the run has started keep their traceback.

SIGTERM (a preemption notice) stops the run at the next step boundary: every process saves that
step and si-train exits with code 75 (`si_jax.preemption.EXIT_CODE`), "resume me"; run the same
command again to continue.
"""

from __future__ import annotations

import errno
import os
import re
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "experiment config file, optionally with :variant", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (created; resumed if it exists)")
_COMPILE_CACHE = flags.DEFINE_string(
    "compile_cache_dir", None,
    "persistent compilation cache: compiled programs are kept here and read back by any later "
    "run on this machine (a resume, another seed, a sweep). Default $SI_COMPILE_CACHE_DIR or "
    "~/.cache/si_jax/xla; 'off' turns it off")

_OVERRIDE_RE = re.compile(r"^--config\.([A-Za-z0-9_.]+)(=.*)?$")


def _fail(msg: str) -> None:
  print(f"si-train: error: {msg}", file=sys.stderr, flush=True)
  raise SystemExit(2)


def _no_space(e: BaseException) -> bool:
  return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def _load_config_file(spec: str):
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    _fail(f"--config: no such file {path!r}")
  from si_jax import configs  # local: si-train sets up the platform before JAX is imported
  return configs.load_file(path, "_si_config").get_config(arg or None)


def check_overrides(argv: list[str]) -> None:
  """Refuses `--config.<path>` overrides of fields the config does not have, in one line."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None and "--config" in argv[:-1]:
    spec = argv[argv.index("--config") + 1]
  paths = [m.group(1) for a in argv if (m := _OVERRIDE_RE.match(a))]
  if spec is None or not paths:
    return
  from si_jax import configs
  try:
    config = _load_config_file(spec)
  except ValueError as e:
    _fail(f"--config={spec}: {e}")
  for path in paths:
    msg = configs.unknown_field_message(config, path)
    if msg:
      _fail(msg)


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # keep Orbax's INFO chatter out; -v 0 restores it
    logging.set_verbosity(logging.WARNING)
  from si_jax import multihost
  try:  # SI_MULTIHOST=1 (set by launch/): one process per host, before anything touches JAX
    multihost.initialize_from_env()
  except ValueError as e:
    _fail(str(e))
  from si_jax import compilation
  cache = compilation.enable_cache(_COMPILE_CACHE.value or compilation.default_cache_dir())
  logging.info("persistent compilation cache: %s", cache or "off")
  from si_jax.train import trainer
  from si_jax import checkpoint as ckpt_lib
  from si_jax import preemption
  traceback = os.environ.get("SI_TRACEBACK") == "1"
  try:
    run = trainer.Run(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FileNotFoundError, KeyError) as e:
    if traceback:
      raise
    _fail(str(e).strip("'\""))
  except OSError as e:
    if traceback or not _no_space(e):
      raise
    _fail(f"no space left on device: {e}")
  try:
    trainer.train(_CONFIG.value, _WORKDIR.value, run=run)
  except preemption.Preempted as e:  # every process saved the same step
    print(f"si-train: {e}", file=sys.stderr, flush=True)
    raise SystemExit(preemption.EXIT_CODE) from None
  except (ckpt_lib.NoSpaceError, ckpt_lib.CheckpointCorruptError) as e:
    if traceback:
      raise
    _fail(str(e))
  except OSError as e:  # a full disk elsewhere (metrics, samples, the KL reference)
    if traceback or not _no_space(e):
      raise
    _fail(f"no space left on device: {e}")


def run():
  from si_jax import allocator
  from si_jax.tools import launch
  allocator.reexec_if_needed()  # SI_ALLOCATOR: a retaining malloc, chosen before anything runs
  # GPU memory JAX preallocates: si-plan's verdict assumes this fraction (JAX's default 0.75)
  os.environ.setdefault(launch.MEM_FRACTION_ENV, str(launch.GPU_MEM_FRACTION))
  if os.environ.get("SI_TRACEBACK") != "1":
    check_overrides(sys.argv[1:])
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(_main)


if __name__ == "__main__":
  sys.exit(run())
