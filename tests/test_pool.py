"""WorkerPool guarantees beyond those in test_verify_math.py: the ones that ruled out pebble.

Each test pins one promise of si_jax/verify/pool.py's docstring that a general-purpose pool
(pebble 5.2.3) does not keep: the pool outlives a worker killed while idle, `os._exit(0)` is a
crash, a worker that ignores SIGTERM is still killed at the deadline, a hung start-up is a
timeout. Functions are at module level: the workers import them by name.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from si_jax.verify.pool import WorkerPool


def _double(x):
  return 2 * x


def _exit_zero(_):
  os._exit(0)


def _deaf_sleep(x):
  """Like C code that never returns to the interpreter: no Python signal handler runs."""
  signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGTERM, signal.SIGINT})
  time.sleep(x)
  return x


def _unpicklable(_):
  return lambda: None


def _hang_forever():
  time.sleep(3600)


def _dead(pid: int) -> bool:
  """The process has exited (a zombie or gone): its pipe ends are closed."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      state = f.read().rsplit(")", 1)[1].split()[0]
  except (FileNotFoundError, ProcessLookupError, IndexError):
    return True
  return state in ("Z", "X")


def _wait_for(predicate, timeout_s: float = 10.0) -> bool:
  deadline = time.monotonic() + timeout_s
  while not predicate():
    if time.monotonic() > deadline:
      return False
    time.sleep(0.02)
  return True


@pytest.fixture()
def pool():
  with WorkerPool(2, max_tasks_per_worker=1000) as p:
    p.wait_ready()
    yield p


def test_worker_killed_while_idle_is_replaced_and_the_next_call_runs(pool):
  victim = pool.pids()[0]
  os.kill(victim, signal.SIGKILL)  # what the OOM killer does to an idle worker
  assert _wait_for(lambda: _dead(victim))
  assert pool.map(_double, [1, 2, 3, 4], timeout_s=30) == [(True, 2), (True, 4), (True, 6),
                                                          (True, 8)]
  assert victim not in pool.pids()
  assert pool.stats["crashes"] == 1  # noticed when the call was handed out, then retried


def test_exit_with_code_zero_is_a_crash_not_a_timeout(pool):
  # A long timeout: a pool that only watches for nonzero exit codes would answer "timeout".
  assert pool.map(_exit_zero, [None], timeout_s=60) == [(False, "crashed")]
  assert pool.map(_double, [5], timeout_s=30) == [(True, 10)]


def test_worker_deaf_to_signals_is_killed_at_the_deadline(pool):
  before = pool.pids()
  res = pool.map(_deaf_sleep, [3600.0, 3600.0], timeout_s=1.0)
  assert res == [(False, "timeout"), (False, "timeout")]
  assert set(pool.pids()).isdisjoint(before)
  assert all(_wait_for(lambda p=p: _dead(p)) for p in before)
  assert pool.stats["timeouts"] == 2 and pool.stats["soft_timeouts"] == 0


def test_a_value_that_does_not_pickle_is_an_error_and_the_worker_survives(pool):
  before = pool.pids()
  ((ok, reason),) = pool.map(_unpicklable, [None], timeout_s=30)
  assert not ok and reason.startswith("error: ")
  assert pool.pids() == before
  assert pool.map(_double, [6], timeout_s=30) == [(True, 12)]


def test_a_hung_start_up_is_bounded():
  with WorkerPool(1, initializer=_hang_forever, start_timeout_s=0.5) as p:
    with pytest.raises(TimeoutError, match="not ready after 0.2 s"):
      p.wait_ready(timeout_s=0.2)
    assert p.map(_double, [1], timeout_s=0.5) == [(False, "timeout")]
    assert p.stats["timeouts"] == 1
