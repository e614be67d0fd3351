"""How a console script ends (`console`): its main()'s exit code, 130 with one line on Ctrl-C,
and quietly when the reader of its stdout goes away (`si-sweep ... --dry_run | head`)."""

from __future__ import annotations

import os
import select
import sys
from typing import Callable, NoReturn


def _stdout_is_closed() -> bool:
  """Whether stdout is a pipe (or socket) whose reader has gone: a BrokenPipeError of that and
  not of some other pipe the command writes to."""
  try:
    fd = sys.stdout.fileno()
  except (AttributeError, OSError, ValueError):  # no stdout, or one without a file (pytest's)
    return False
  if not hasattr(select, "poll"):
    return True
  poll = select.poll()
  poll.register(fd, select.POLLOUT)
  return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poll.poll(0))


def console(main: Callable[[], int | None], name: str,
            interrupted: str = "interrupted") -> NoReturn:
  """Runs a console script's `main()` and exits with its code (None: 0).

  Ctrl-C (KeyboardInterrupt) prints `<name>: <interrupted>` on stderr on a line of its own and
  exits with 130 (128 + SIGINT, as a shell reports it). A BrokenPipeError of stdout (its reader
  has gone, as `| head` does) exits with 1 without a traceback, stdout pointed at /dev/null so
  that Python's flush at exit does not fail again; one of another pipe is raised as it is."""
  try:
    code = main()
  except BrokenPipeError:
    if not _stdout_is_closed():
      raise
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    code = 1
  except KeyboardInterrupt:
    print(f"\n{name}: {interrupted}", file=sys.stderr, flush=True)
    code = 130
  sys.exit(code)
