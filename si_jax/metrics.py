"""Metrics of a run: a JSONL log, TensorBoard scalars, progress (a tqdm bar on a terminal, plain
lines in logs), and a section timer.

Files under a workdir:
  metrics.jsonl   one JSON object per line, `{"step": s, "name": value, ...}`, flushed per write;
  tb/             TensorBoard event files, written with tensorboardX (no TensorFlow).

Resume: the run replays every step after the checkpoint it restores, so `truncate_after(step)`
drops the JSONL lines of later steps (the file stays one line per step) and reopens the
TensorBoard writer with `purge_step=step + 1`, which tells TensorBoard to hide the earlier
events of the replayed steps.

Note: tensorboardX imports torch when torch is installed (seconds); it is imported only when a
MetricsWriter with tensorboard=True is created.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import sys
import time
import uuid
from typing import Any, Callable, Iterator, Mapping, TextIO

import numpy as np
from etils import epath

from si_jax import jsonl

__all__ = ["MetricsWriter", "read_metrics", "Progress", "Timer", "METRICS_FILE", "TB_DIR"]

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tb"


def _scalar(name: str, value: Any, step: int) -> float | int:
  """A Python int/float from a Python, numpy or jax scalar; TypeError naming the key otherwise."""
  if isinstance(value, bool):
    return int(value)
  if isinstance(value, numbers.Integral):
    return int(value)
  if isinstance(value, numbers.Real):
    return float(value)
  shape = getattr(value, "shape", None)
  if shape == () and hasattr(value, "dtype"):
    arr = np.asarray(value)
    if arr.dtype.kind in "biu":
      return int(arr)
    if arr.dtype.kind == "f":
      return float(arr)
  shape_str = "" if shape is None else f" of shape {tuple(shape)}"
  raise TypeError(
      f"MetricsWriter.write(step={step}): metric {name!r} must be a real scalar, got "
      f"{type(value).__name__}{shape_str}: {value!r:.80}")


def is_remote(path: str | os.PathLike) -> bool:
  """A path of a filesystem reached through `etils.epath` (gs://, s3://, ...)."""
  return "://" in os.fspath(path)


class _RemoteLog:
  """An append-only text file on an object store (which cannot append): the lines are kept in
  memory and the whole object is rewritten at every flush. Fine for a metrics log (kilobytes
  per step); local workdirs use a real file."""

  def __init__(self, path: str):
    self._path = epath.Path(path)
    text = self._path.read_text() if self._path.exists() else ""
    self._text = text[:text.rfind("\n") + 1]  # a partial last line (killed mid-write) is dropped

  def write(self, s: str) -> None:
    self._text += s

  def flush(self) -> None:
    self._path.write_text(self._text)

  def close(self) -> None:
    self.flush()


def append_text(path: str | os.PathLike, text: str) -> None:
  """Appends `text` to a file, local or remote (read and rewritten: use for small files)."""
  if not is_remote(path):
    with open(path, "a", encoding="utf-8") as f:
      f.write(text)
    return
  p = epath.Path(path)
  p.write_text((p.read_text() if p.exists() else "") + text)


def _repair_tail(path: str) -> None:
  """Drops a trailing partial line (a process killed mid-write) so appends start on a new line."""
  if not os.path.exists(path):
    return
  with open(path, "rb+") as f:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    if size == 0:
      return
    f.seek(size - 1)
    if f.read(1) == b"\n":
      return
    f.seek(0)
    data = f.read()
    f.truncate(data.rfind(b"\n") + 1)


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
  """All records of `workdir/metrics.jsonl`, in file order ([] if there is no file).

  A trailing partial line (writer killed mid-line) is ignored; a malformed line anywhere else is
  an error naming the file and line.
  """
  path = epath.Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  return jsonl.read(path, {"step": object}, drop_partial_tail=True)


class MetricsWriter:
  """Appends `{"step": s, **metrics}` to workdir/metrics.jsonl and scalars to workdir/tb/.

  Non-finite floats are written as the JSON extensions NaN / Infinity (Python's json reads them).

  Args:
    workdir: run directory (created if missing).
    tensorboard: also write TensorBoard event files under workdir/tb/.
    enabled: write at all; default (None) is True only on JAX process 0, so a multi-host run
      logs once. Disabled writers accept and drop every call.
  """

  def __init__(self, workdir: str | os.PathLike, *, tensorboard: bool = True,
               enabled: bool | None = None):
    if enabled is None:
      import jax  # only to know the process index; cheap once jax is imported
      enabled = jax.process_index() == 0
    self._enabled = bool(enabled)
    self._workdir = os.fspath(workdir)
    self._path = os.path.join(self._workdir, METRICS_FILE)
    self._tensorboard = tensorboard
    self._file: TextIO | None = None
    self._tb = None  # opened at the first write, so a resumed run makes no empty event file
    self._purge_step: int | None = None
    if self._enabled:
      epath.Path(self._workdir).mkdir(parents=True, exist_ok=True)
      self._file = self._open_log()

  def _open_log(self):
    if is_remote(self._path):
      return _RemoteLog(self._path)
    _repair_tail(self._path)
    return open(self._path, "a", encoding="utf-8")

  @property
  def path(self) -> str:
    """The JSONL file."""
    return self._path

  def _open_tb(self):
    from tensorboardX import SummaryWriter  # imports torch if installed: only when needed
    # tensorboardX names files events.out.tfevents.<unix second>.<host><suffix>; two writers
    # opened in the same second would share (and clobber) a file without a unique suffix.
    return SummaryWriter(logdir=os.path.join(self._workdir, TB_DIR), purge_step=self._purge_step,
                         flush_secs=30, filename_suffix=f".{os.getpid()}.{uuid.uuid4().hex[:8]}")

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Logs `metrics` (name -> real scalar) at `step`; flushes both outputs."""
    if not self._enabled:
      return
    if self._file is None:
      raise RuntimeError(f"MetricsWriter({self._workdir!r}).write(step={step}) after close()")
    step = int(step)
    values = {}
    for name, value in metrics.items():
      if not isinstance(name, str) or name == "step":
        raise ValueError(
            f"MetricsWriter.write(step={step}): metric names must be strings other than 'step', "
            f"got {name!r}")
      values[name] = _scalar(name, value, step)
    self._file.write(json.dumps({"step": step, **values}) + "\n")
    self._file.flush()
    if self._tensorboard:
      if self._tb is None:
        self._tb = self._open_tb()
      for name, value in values.items():
        self._tb.add_scalar(name, value, global_step=step)
      self._tb.flush()

  def write_text(self, step: int, tag: str, text: str) -> None:
    """Logs markdown `text` under `tag` at `step` to TensorBoard (no-op without it)."""
    if not self._enabled or not self._tensorboard:
      return
    if self._tb is None:
      self._tb = self._open_tb()
    self._tb.add_text(tag, text, global_step=int(step))
    self._tb.flush()

  def truncate_after(self, step: int) -> int:
    """Drops JSONL records with record step > `step` (before replaying those steps on resume).

    The file is rewritten atomically (tmp file + rename). TensorBoard events cannot be deleted
    from event files; the next write opens a new event file with purge_step=step + 1 instead,
    which makes TensorBoard hide the earlier events of steps > `step`. Returns the number of
    records dropped.
    """
    if not self._enabled:
      return 0
    step = int(step)
    if self._file is None:
      raise RuntimeError(f"MetricsWriter({self._workdir!r}).truncate_after({step}) after close()")
    self._file.close()
    records = read_metrics(self._workdir)
    kept = [r for r in records if r["step"] <= step]
    if is_remote(self._path):  # an object is replaced whole by a write
      epath.Path(self._path).write_text("".join(json.dumps(r) + "\n" for r in kept))
    else:
      tmp = self._path + ".tmp"
      with open(tmp, "w", encoding="utf-8") as f:
        for r in kept:
          f.write(json.dumps(r) + "\n")
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, self._path)
    self._file = self._open_log()
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    self._purge_step = step + 1
    return len(records) - len(kept)

  def close(self) -> None:
    """Flushes and closes both outputs. Idempotent."""
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def __enter__(self) -> "MetricsWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _format_duration(seconds: float) -> str:
  if not math.isfinite(seconds) or seconds < 0:
    return "?"
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}:{m:02d}:{s:02d}"


def _format_value(v: Any) -> str:
  if isinstance(v, bool) or isinstance(v, numbers.Integral):
    return str(int(v))
  try:
    f = float(v)
  except (TypeError, ValueError):
    return str(v)
  return f"{f:.4g}"


def _values_text(values: Mapping[str, Any]) -> str:
  return " ".join(f"{k}={_format_value(v)}" for k, v in values.items())


class Progress:
  """Progress of a run on stderr.

  On a terminal: a tqdm bar, redrawn at every update and ended by `close()` or the last step:
  `step:  40%|####      | 40/100 [00:17<00:26,  2.31step/s, reward=0.4375]`.
  Otherwise (CI logs, files): a plain line every `every` steps, on the first update and on the
  last step: `step 40/100 | 2.31 steps/s | ETA 0:00:26 | reward=0.4375`.
  Both count the rate only over the steps done since `start_step` (a resumed run).

  Args:
    total_steps: the step count of the whole run.
    start_step: the step the run (re)starts from; the rate counts only steps done since then.
    every: print interval in steps when the stream is not a terminal.
    stream: where to print (default sys.stderr, looked up when a line is printed or the bar is
      created).
    clock: seconds clock of the plain lines (tests pass a fake one); the bar keeps tqdm's.
  """

  def __init__(self, total_steps: int, *, start_step: int = 0, every: int = 10,
               stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic):
    if total_steps < 1:
      raise ValueError(f"Progress: total_steps must be >= 1, got {total_steps}")
    if every < 1:
      raise ValueError(f"Progress: every must be >= 1, got {every}")
    self.total_steps = int(total_steps)
    self._start_step = int(start_step)
    self._every = int(every)
    self._stream = stream
    self._clock = clock
    self._t0 = clock()
    self._bar = None  # the tqdm bar, created at the first update on a terminal
    self._printed_any = False

  @property
  def stream(self) -> TextIO:
    return self._stream if self._stream is not None else sys.stderr

  def _is_tty(self) -> bool:
    isatty = getattr(self.stream, "isatty", None)
    try:
      return bool(isatty and isatty())
    except ValueError:  # closed stream
      return False

  def line(self, step: int, **values: Any) -> str:
    """The plain progress line at `step` (no newline)."""
    done = step - self._start_step
    elapsed = self._clock() - self._t0
    rate = done / elapsed if elapsed > 0 and done > 0 else float("nan")
    eta = (self.total_steps - step) / rate if not math.isnan(rate) else float("nan")
    parts = [f"step {step}/{self.total_steps}",
             "? steps/s" if math.isnan(rate) else f"{rate:.3g} steps/s",
             f"ETA {_format_duration(eta)}"]
    if values:
      parts.append(_values_text(values))
    return " | ".join(parts)

  def update(self, step: int, **values: Any) -> None:
    """Shows progress after `step`; `values` (e.g. reward=..., accuracy=...) are appended."""
    step = int(step)
    last = step >= self.total_steps
    if self._bar is not None or self._is_tty():
      self._update_bar(step, values)
      if last:
        self.close()
      return
    if last or not self._printed_any or step % self._every == 0:
      out = self.stream
      out.write(self.line(step, **values) + "\n")
      out.flush()
      self._printed_any = True

  def _update_bar(self, step: int, values: Mapping[str, Any]) -> None:
    if self._bar is None:
      import tqdm  # only on a terminal
      # smoothing=0: the rate is the average since start_step, as in the plain lines;
      # mininterval=0, miniters=1: redraw at every update (one per training step).
      self._bar = tqdm.tqdm(total=self.total_steps, initial=self._start_step, desc="step",
                            unit="step", file=self.stream, dynamic_ncols=True, smoothing=0,
                            mininterval=0, miniters=1, leave=True)
    self._bar.set_postfix_str(_values_text(values), refresh=False)
    if step > self._bar.n:
      self._bar.update(step - self._bar.n)
    else:
      self._bar.n = step
      self._bar.refresh()

  def close(self) -> None:
    """Ends the terminal bar with a newline, so later output starts on its own line. Idempotent."""
    if self._bar is not None:
      self._bar.close()
      self._bar = None


class Timer:
  """Accumulates wall time per named section.

    timer = Timer()
    with timer("rollout"):
      out = jax.block_until_ready(sample(...))   # block: jax dispatch is asynchronous
    with timer("update"):
      ...
    timer.summary()  # {"rollout": 1.93, "update": 0.41}

  Sections may nest; each one counts its own wall time. `summary()` lists sections in the order
  they were first entered. `clock`: seconds clock (default `time.perf_counter`).
  """

  def __init__(self, clock: Callable[[], float] | None = None):
    self._clock = clock if clock is not None else time.perf_counter
    self._seconds: dict[str, float] = {}
    self._counts: dict[str, int] = {}

  @contextlib.contextmanager
  def __call__(self, name: str) -> Iterator[None]:
    self._seconds.setdefault(name, 0.0)  # order of first entry, also for nested sections
    start = self._clock()
    try:
      yield
    finally:
      self._seconds[name] = self._seconds.get(name, 0.0) + (self._clock() - start)
      self._counts[name] = self._counts.get(name, 0) + 1

  def summary(self, prefix: str = "") -> dict[str, float]:
    """Seconds per section since creation or the last reset(), keys prefixed by `prefix`."""
    return {prefix + k: v for k, v in self._seconds.items()}

  def counts(self) -> dict[str, int]:
    """How many times each section was entered."""
    return dict(self._counts)

  def reset(self) -> None:
    self._seconds.clear()
    self._counts.clear()
