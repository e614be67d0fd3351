"""Child process for the checkpoint kill test (tests/test_checkpoint.py).

Saves step 1 (small state), then writes `<signal_dir>/saving_2` and saves a large step 2. The
parent SIGKILLs it in the middle of that save. Step 2's save never completes on its own: the
process stops right before Orbax's final atomic rename and sleeps there, so the kill lands
before the save is complete however slowly the parent (on a loaded machine) reacts. Modes:
  write:  the parent kills as soon as `<ckpt_dir>/2.orbax-checkpoint-tmp*` appears, i.e.
          (unless it reacts late) while array data is being written.
  commit: every byte of step 2 is written, including commit_success.txt, then the process
          writes `<signal_dir>/committing` before sleeping: the parent kills it there, the
          last moment at which the save is incomplete.

Usage: python tests/ckpt_child.py CKPT_DIR SIGNAL_DIR MODE [STEP2_MB]
"""

import os
import sys
import time

import numpy as np

SMALL = 1000  # elements of the step-1 state


def make_state(step: int, n: int) -> dict:
  """A deterministic state whose values identify the step: w = arange(n) * step."""
  return {
      "params": {"w": np.arange(n, dtype=np.float32) * step,
                 "b": np.full((7,), step, dtype=np.int32)},
      "step": np.asarray(step, dtype=np.int32),
  }


def make_meta(step: int) -> dict:
  return {"step": step, "data_position": 10 * step, "seed": 1234}


def _touch(path: str) -> None:
  with open(path, "w") as f:
    f.write(str(os.getpid()))
    f.flush()
    os.fsync(f.fileno())


def main(argv):
  ckpt_dir, signal_dir, mode = argv[1], argv[2], argv[3]
  step2_mb = int(argv[4]) if len(argv) > 4 else 64
  if mode not in ("write", "commit"):
    raise SystemExit(f"{argv[0]}: MODE must be 'write' or 'commit', got {mode!r}")
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
  from si_jax.checkpoint import Checkpointer

  ckpt = Checkpointer(ckpt_dir, max_to_keep=3, save_every=1, async_save=False)
  ckpt.save(1, make_state(1, SMALL), make_meta(1))
  # Orbax finalizes a step by writing commit_success.txt into the tmp folder and then renaming
  # `2.orbax-checkpoint-tmp` to `2`: stop right before that rename, until killed.
  from orbax.checkpoint._src.path import async_path
  real_rename = async_path.rename

  async def rename_or_hang(src, dst):
    if os.path.basename(os.fspath(dst)) == "2":
      if mode == "commit":
        _touch(os.path.join(signal_dir, "committing"))
      while True:
        time.sleep(1)
    return await real_rename(src, dst)

  async_path.rename = rename_or_hang
  _touch(os.path.join(signal_dir, "saving_2"))
  ckpt.save(2, make_state(2, step2_mb * 2**20 // 4), make_meta(2))
  ckpt.wait()
  _touch(os.path.join(signal_dir, "saved_2"))  # the parent treats this as a failed kill


if __name__ == "__main__":
  main(sys.argv)
