"""Fault injection for si-train subprocesses in tests: import this module, then run si-train.

  python -c "import sys; sys.path.insert(0, 'tests'); import fault_boot; fault_boot.si_train()" ARGS

Environment:
  SI_FAULT_ENOSPC_STEP=N   Orbax's writes of small files (commit markers, metadata) into
      checkpoint N's temporary folder go to /dev/full, so the kernel answers ENOSPC: a genuine
      "No space left on device" at the place a real full disk hit it (a tmpfs probe failed
      there, and in tensorstore's data writes, whose error text tests/test_checkpoint.py checks).
  SI_FAULT_PAUSE_STEP=N    At the start of RL step N, process SI_FAULT_PAUSE_PROCESS (default
      0) writes its pid to SI_FAULT_READY and waits until its SIGTERM handler has run (the
      run's preemption monitor says so): the test sends SIGTERM to that pid from outside and
      knows which step it landed in. Nothing here sends a signal or depends on timing: the
      wait reads the flag the handler sets, so a signal that lands before the wait begins is
      not missed (`signal.pause()` here hung when it did, on a loaded machine).
"""

import os
import sys
import time


def _enospc(step: str) -> None:
  from orbax.checkpoint._src.path import async_path
  real = async_path.write_text
  tmp = f"{os.sep}{step}.orbax-checkpoint-tmp"

  async def write_text(path, text, **kwargs):
    if tmp in os.fspath(path):
      with open("/dev/full", "w", encoding="utf-8") as f:  # the kernel: ENOSPC on flush
        f.write(text)
    return await real(path, text, **kwargs)

  async_path.write_text = write_text


def _pause(step: int, process: int, ready: str) -> None:
  import jax
  from si_jax.train import trainer
  real = trainer.Run.rl_step

  def rl_step(self, s, stream, *args, **kwargs):
    if s == step and jax.process_index() == process:
      with open(ready + ".tmp", "w") as f:
        f.write(str(os.getpid()))
      os.replace(ready + ".tmp", ready)
      while not self.preemption.signalled:  # set by the SIGTERM handler, whenever it ran
        time.sleep(0.01)
    return real(self, s, stream, *args, **kwargs)

  trainer.Run.rl_step = rl_step


def si_train() -> None:
  env = os.environ
  if env.get("SI_FAULT_ENOSPC_STEP"):
    _enospc(env["SI_FAULT_ENOSPC_STEP"])
  if env.get("SI_FAULT_PAUSE_STEP"):
    _pause(int(env["SI_FAULT_PAUSE_STEP"]), int(env.get("SI_FAULT_PAUSE_PROCESS", "0")),
           env["SI_FAULT_READY"])
  from si_jax.cli.train import run
  sys.argv = ["si-train"] + sys.argv[1:]
  run()


BOOT = "import sys; sys.path.insert(0, 'tests'); import fault_boot; fault_boot.si_train()"
