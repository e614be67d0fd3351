"""A process pool for work on untrusted input: per-call timeouts, crash recovery, recycling.

`WorkerPool.map(fn, items, timeout_s)` runs the picklable `fn` on every item in worker
processes and returns one `(ok, value_or_reason)` per item, in order:

  (True, fn(item))           the call returned;
  (False, "timeout")         it ran past `timeout_s`; its worker was KILLED (SIGKILL) and replaced;
  (False, "crashed")         its worker died under it (segfault, OOM kill, os._exit);
  (False, "error: T: msg")   fn raised T (the worker survives).

Guarantees: a call never blocks `map` for more than `timeout_s` (plus the time to kill and
replace its worker); the pool survives any item; workers are replaced after
`max_tasks_per_worker` calls (sympy's caches grow); `close()` leaves no child process behind.

Two timeouts: the parent's deadline is the hard guarantee. Inside the worker an optional soft
timer (SIGALRM at `soft_timeout_fraction * timeout_s`) interrupts slow *Python* code with a
BaseException, so the common slow case ends as "timeout" without paying for a new worker; code
stuck in C (a huge integer power) ignores it and is killed at the hard deadline.

Processes come from the 'forkserver' context by default: the fork server is a fresh
single-threaded process (safe next to a multithreaded JAX parent), and modules named in
`preload` are imported there once, so replacing a killed worker costs a fork, not an import.

Why not pebble (`pebble.ProcessPool`, 5.2.3, evaluated as a replacement): with a thin layer
(an initializer that installs the soft timer and resets SIGTERM to its default action, a
wrapper that turns exceptions into reasons in the worker, pids read from pebble's private
`_pool_manager.worker_manager.workers`) it passed every pool test in test_verify_math.py, at the
same answers/s (within the noise of a shared 2-core machine). It was not adopted, because these
guarantees of this module cannot be had from it without re-implementing what it would replace:
  * A worker that dies while idle (the OOM killer, which sympy's growing caches invite) puts
    pebble's pool into an error state when no call is running: every later `schedule` raises
    RuntimeError("Unexpected error within the Pool") and the pool must be rebuilt. Here the
    dead worker is replaced and the next call runs normally (tests/test_pool.py).
  * A call whose worker exits with code 0 (`os._exit(0)`) is not seen as a crash by pebble
    (only nonzero exit codes are): it is reported as a timeout after the full `timeout_s`,
    instead of "crashed" at once.
  * pebble's workers share one task pipe and one result pipe guarded by process-shared locks;
    a worker killed inside its receive-and-acknowledge step leaves the lock held and the pool
    stalls (pebble issue #163; 5.2.3 still takes the lock there). Here every worker has its
    own pipe and nothing is shared between workers.
  * A worker that hangs while starting (initializer, import) holds its call forever: pebble's
    clock starts when a worker acknowledges the call. Here `start_timeout_s` bounds it.
Smaller costs: three polling threads in the (JAX) parent with 0.1 s granularity; a stuck worker
gets SIGTERM and a 3 s grace before SIGKILL, one worker at a time (two calls stuck in C, in
`hashlib.pbkdf2_hmac`, with a 1 s timeout: 7.2 s, against 1.05 s here and 1.1 s once the
initializer resets SIGTERM to its default); a value that fails to pickle with AttributeError
(a local function) kills pebble's worker ("crashed"; here: an "error: ..." and the worker
stays); no public worker pids or readiness wait (`pids`, `wait_ready` are used by tests and
benchmarks).
"""

from __future__ import annotations

import collections
import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from typing import Any, Callable, Sequence

__all__ = ["WorkerPool"]

_EXIT = None  # message that asks a worker to exit


class _SoftTimeout(BaseException):
  """Raised in a worker by its soft timer. BaseException, so `except Exception` in libraries
  (math_verify catches Exception everywhere) does not swallow it."""


class _TimerState:
  armed = False


def _on_alarm(signum, frame):
  del signum, frame
  if _TimerState.armed:
    _TimerState.armed = False
    raise _SoftTimeout()


def _error_reason(e: BaseException) -> str:
  try:
    msg = str(e)[:300]
  except Exception:  # pylint: disable=broad-except
    msg = "<unprintable>"
  return f"error: {type(e).__name__}: {msg}"


def _worker_main(conn, initializer, initargs) -> None:
  """Worker loop: receive (index, fn, item, soft_s), answer ("done", index, ok, value)."""
  # Ctrl-C goes to the whole foreground process group; the parent decides what to do.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGALRM, _on_alarm)
  if initializer is not None:
    initializer(*initargs)
  conn.send(("ready", os.getpid()))
  while True:
    try:
      msg = conn.recv()
    except (EOFError, OSError):  # parent is gone
      return
    if msg is _EXIT:
      return
    index, fn, item, soft_s = msg
    fired = False
    try:
      if soft_s:
        _TimerState.armed = True
        signal.setitimer(signal.ITIMER_REAL, soft_s)
      value = fn(item)
      _TimerState.armed = False
      signal.setitimer(signal.ITIMER_REAL, 0)
      reply = ("done", index, True, value)
    except _SoftTimeout:
      fired = True
    except Exception as e:  # pylint: disable=broad-except
      reply = ("done", index, False, _error_reason(e))
    finally:
      _TimerState.armed = False
      signal.setitimer(signal.ITIMER_REAL, 0)
    if fired:
      reply = ("done", index, False, "timeout")
    try:
      conn.send(reply)
    except (EOFError, OSError):
      return
    except Exception as e:  # pylint: disable=broad-except  # value did not pickle
      conn.send(("done", index, False, _error_reason(e)))


@dataclasses.dataclass
class _Worker:
  proc: Any  # multiprocessing.Process
  conn: Any  # multiprocessing.connection.Connection (parent end)
  tasks_done: int = 0
  ready: bool = False
  index: int | None = None  # item being run, if any
  deadline: float = 0.0
  timeout_s: float = 0.0


class WorkerPool:
  """A fixed number of worker processes, reused across `map` calls.

  Thread-safe: concurrent `map` calls run one after another.

  Args:
    num_workers: processes running calls concurrently.
    max_tasks_per_worker: a worker is replaced after this many calls (bounds memory growth).
    initializer, initargs: run once in every new worker (must be picklable).
    context: multiprocessing start method, 'forkserver' (default) or 'spawn'. 'fork' is
      refused: forking a multithreaded (JAX) parent is unsafe.
    preload: modules the fork server imports once (forkserver only), e.g. ('math_verify',).
      The fork server is one per process: this takes effect only if it is not running yet
      (otherwise each new worker imports the modules itself: slower, same results).
    soft_timeout_fraction: the worker interrupts Python code at this fraction of the timeout;
      None disables the soft timer (fn may then use SIGALRM itself).
    start_timeout_s: how long a new worker may take to start (import, initializer) before the
      call waiting for it is given up as 'timeout'.
  """

  def __init__(self, num_workers: int = 2, *, max_tasks_per_worker: int = 500,
               initializer: Callable[..., Any] | None = None, initargs: Sequence[Any] = (),
               context: str = "forkserver", preload: Sequence[str] = (),
               soft_timeout_fraction: float | None = 0.8, start_timeout_s: float = 120.0):
    if num_workers < 1:
      raise ValueError(f"WorkerPool num_workers must be >= 1, got {num_workers}")
    if max_tasks_per_worker < 1:
      raise ValueError(f"WorkerPool max_tasks_per_worker must be >= 1, got {max_tasks_per_worker}")
    if context not in ("forkserver", "spawn"):
      raise ValueError(f"WorkerPool context must be 'forkserver' or 'spawn', got {context!r}")
    if soft_timeout_fraction is not None and not 0.0 < soft_timeout_fraction <= 1.0:
      raise ValueError(
          "WorkerPool soft_timeout_fraction must be in (0, 1] or None, got "
          f"{soft_timeout_fraction}")
    self._ctx = multiprocessing.get_context(context)
    if context == "forkserver" and preload:
      # Module-level setting of the fork server, read when it starts (first worker below).
      self._ctx.set_forkserver_preload(["__main__", *preload])
    self._num_workers = num_workers
    self._max_tasks = max_tasks_per_worker
    self._initializer = initializer
    self._initargs = tuple(initargs)
    self._soft_fraction = soft_timeout_fraction
    self._start_timeout = float(start_timeout_s)
    self._lock = threading.Lock()
    self._closed = False
    # started, timeouts (killed), soft_timeouts (interrupted), crashes, recycled, errors
    self.stats = collections.Counter()
    self._workers: list[_Worker] = [self._start_worker() for _ in range(num_workers)]

  # ---------------------------------------------------------------------------------------------
  # Worker management.

  def _start_worker(self) -> _Worker:
    parent_conn, child_conn = self._ctx.Pipe(duplex=True)
    proc = self._ctx.Process(target=_worker_main, args=(child_conn, self._initializer,
                                                        self._initargs), daemon=True)
    proc.start()
    child_conn.close()
    self.stats["started"] += 1
    return _Worker(proc=proc, conn=parent_conn)

  @staticmethod
  def _stop_worker(w: _Worker, kill: bool) -> None:
    if kill:
      w.proc.kill()
    else:
      try:
        w.conn.send(_EXIT)
      except (OSError, ValueError):
        pass
      w.proc.join(timeout=2.0)
      if w.proc.is_alive():
        w.proc.kill()
    w.proc.join()
    w.conn.close()
    w.proc.close()

  def _replace(self, slot: int, kill: bool) -> None:
    self._stop_worker(self._workers[slot], kill=kill)
    self._workers[slot] = self._start_worker()

  def pids(self) -> list[int]:
    """Process ids of the current workers (for tests and monitoring)."""
    return [w.proc.pid for w in self._workers]

  def wait_ready(self, timeout_s: float = 60.0) -> None:
    """Blocks until every worker has run its initializer (so timings exclude start-up)."""
    with self._lock:
      self._check_open()
      deadline = time.monotonic() + timeout_s
      for slot in range(self._num_workers):
        w = self._workers[slot]
        while not w.ready:
          left = deadline - time.monotonic()
          if left <= 0:
            raise TimeoutError(f"WorkerPool: worker {w.proc.pid} not ready after {timeout_s} s")
          if not w.conn.poll(left):
            continue
          try:
            msg = w.conn.recv()
          except (EOFError, OSError):
            # Dying before the first task is a set-up error (initializer, unimportable main
            # module), not bad input: retrying would loop forever.
            w.proc.join()
            raise RuntimeError(
                f"WorkerPool: worker {w.proc.pid} exited with code {w.proc.exitcode} during "
                "start-up (see its traceback above; scripts need `if __name__ == '__main__':`)"
            ) from None
          if msg[0] == "ready":
            w.ready = True

  # ---------------------------------------------------------------------------------------------
  # map.

  def map(self, fn: Callable[[Any], Any], items: Sequence[Any],
          timeout_s: float) -> list[tuple[bool, Any]]:
    """Runs fn on every item; returns [(ok, value_or_reason)] in the order of `items`."""
    if timeout_s <= 0:
      raise ValueError(f"WorkerPool.map timeout_s must be > 0, got {timeout_s}")
    with self._lock:
      self._check_open()
      return self._map(fn, list(items), float(timeout_s))

  def _map(self, fn, items, timeout_s):
    results: list[tuple[bool, Any] | None] = [None] * len(items)
    pending = collections.deque(range(len(items)))
    send_failures = collections.Counter()
    soft_s = timeout_s * self._soft_fraction if self._soft_fraction else 0.0
    n_left = len(items)
    while n_left:
      # 1. Hand out work to idle workers.
      for slot, w in enumerate(self._workers):
        if w.index is None and pending:
          index = pending.popleft()
          try:
            w.conn.send((index, fn, items[index], soft_s))
          except (OSError, ValueError):  # the idle worker died: the call never ran, retry it
            send_failures[index] += 1
            if send_failures[index] >= 3:
              results[index] = (False, "crashed")
              n_left -= 1
            else:
              pending.appendleft(index)
            self.stats["crashes"] += 1
            self._replace(slot, kill=True)
            continue
          # A worker still starting up gets `start_timeout_s` extra; its clock restarts when it
          # reports ready, so start-up never counts against the call.
          w.index, w.timeout_s = index, timeout_s
          w.deadline = time.monotonic() + timeout_s + (0.0 if w.ready else self._start_timeout)
      busy = [w for w in self._workers if w.index is not None]
      if not busy:
        continue
      # 2. Wait for an answer, a death, or the nearest deadline.
      wait_s = max(0.0, min(w.deadline for w in busy) - time.monotonic())
      waitables = [w.conn for w in busy] + [w.proc.sentinel for w in busy]
      ready = set(multiprocessing.connection.wait(waitables, timeout=wait_s))
      now = time.monotonic()
      for slot, w in enumerate(self._workers):
        if w.index is None:
          continue
        index = w.index
        outcome = None  # None: still running
        if w.conn in ready or w.proc.sentinel in ready:
          outcome = self._read_outcome(w)
        if outcome is None and now >= w.deadline:
          outcome = "timeout"
        if outcome is None:
          continue
        w.index = None
        n_left -= 1
        if outcome == "timeout":
          results[index] = (False, "timeout")
          self.stats["timeouts"] += 1
          self._replace(slot, kill=True)
        elif outcome == "crashed":
          results[index] = (False, "crashed")
          self.stats["crashes"] += 1
          self._replace(slot, kill=True)
        else:
          results[index] = outcome
          if outcome == (False, "timeout"):
            self.stats["soft_timeouts"] += 1
          elif not outcome[0]:
            self.stats["errors"] += 1
          w.tasks_done += 1
          if w.tasks_done >= self._max_tasks:
            self.stats["recycled"] += 1
            self._replace(slot, kill=False)
    return results  # type: ignore[return-value]

  @staticmethod
  def _read_outcome(w: _Worker):
    """(ok, value) when the worker answered, 'crashed' when it died, None when not done yet."""
    while True:
      try:
        if not w.conn.poll():
          break
        msg = w.conn.recv()
      except (EOFError, OSError):
        return "crashed"
      if msg[0] == "ready":
        w.ready = True
        if w.index is not None:
          w.deadline = time.monotonic() + w.timeout_s
        continue
      _, index, ok, value = msg
      if index == w.index:
        return (ok, value)
    if not w.proc.is_alive():
      return "crashed"
    return None

  # ---------------------------------------------------------------------------------------------
  # Life cycle.

  def _check_open(self) -> None:
    if self._closed:
      raise RuntimeError("WorkerPool is closed")

  def close(self) -> None:
    """Stops every worker (politely, then SIGKILL) and reaps it. Idempotent."""
    with self._lock:
      if self._closed:
        return
      self._closed = True
      for w in self._workers:
        self._stop_worker(w, kill=w.index is not None)
      self._workers = []

  def __enter__(self) -> "WorkerPool":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __del__(self):
    try:
      if not self._closed:
        self.close()
    except Exception:  # pylint: disable=broad-except  # interpreter shutdown
      pass
