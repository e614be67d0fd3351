"""Compilation: how many XLA programs a run compiles, how long that takes, and a disk cache.

`CompileCounter` listens to JAX's monitoring events, which fire for every program any `jax.jit`
(or eager op) hands to the backend: the sampler's prefill and decode loop, the log-prob pass,
each loss term's update, evaluation. Per event it counts

  compiles      programs XLA compiled (backend compile requests that the persistent cache did
                not answer)
  cache_hits    programs read from the persistent compilation cache instead
  compile_s     seconds in the backend step of both (compiling, or reading the cache)
  trace_s       seconds tracing and lowering to MLIR (paid on every miss of jit's in-memory
                cache, whether or not the disk cache then answers)

The in-memory cache of a `jax.jit` object (a program already compiled in this process) fires no
event: a steady run whose shapes repeat shows zeros. The trainer logs the counters per stage of
every step (`compile/*` in metrics.jsonl and TensorBoard) and their totals in the summary.

`enable_cache(directory)` turns on JAX's persistent compilation cache for this process: a
resumed run, a second seed or every run of a sweep on the same machine then reads compiled
programs instead of compiling them (keyed by the program, its shardings, the JAX / XLA
versions and the devices, so a stale entry is never used). Every program is cached, however
fast it compiled. The cache is trusted code: keep it in a directory only you can write.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from typing import Iterator

import jax
from jax import monitoring

__all__ = ["CompileStats", "CompileCounter", "counter", "enable_cache", "default_cache_dir",
           "stage_metrics", "CACHE_ENV"]

# JAX's monitoring events (jax/_src/dispatch.py, jax/_src/compiler.py).
_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
_TRACE = "/jax/core/compile/jaxpr_trace_duration"
_LOWER = "/jax/core/compile/jaxpr_to_mlir_module_duration"
_CACHE_HIT = "/jax/compilation_cache/cache_hits"

# Where the persistent cache lives unless si-train's --compile_cache_dir says otherwise;
# "off" (or --nocompile_cache) turns it off.
CACHE_ENV = "SI_COMPILE_CACHE_DIR"


@dataclasses.dataclass(frozen=True)
class CompileStats:
  """Counters since some moment (see `CompileCounter.since`)."""

  compiles: int = 0
  cache_hits: int = 0
  compile_s: float = 0.0
  trace_s: float = 0.0

  def __sub__(self, other: "CompileStats") -> "CompileStats":
    return CompileStats(self.compiles - other.compiles, self.cache_hits - other.cache_hits,
                        self.compile_s - other.compile_s, self.trace_s - other.trace_s)

  def __add__(self, other: "CompileStats") -> "CompileStats":
    return CompileStats(self.compiles + other.compiles, self.cache_hits + other.cache_hits,
                        self.compile_s + other.compile_s, self.trace_s + other.trace_s)

  @property
  def requests(self) -> int:
    """Programs the backend was asked for (compiled or read from the cache)."""
    return self.compiles + self.cache_hits

  @property
  def seconds(self) -> float:
    """Seconds spent making programs: tracing, lowering and the backend (compile or read)."""
    return self.compile_s + self.trace_s


class CompileCounter:
  """Process-wide counters of compilation events (module docstring). Thread-safe; made once
  per process by `counter()`, since JAX's listeners cannot be removed one by one."""

  def __init__(self):
    self._lock = threading.Lock()
    self._requests = 0
    self._hits = 0
    self._compile_s = 0.0
    self._trace_s = 0.0
    monitoring.register_event_duration_secs_listener(self._on_duration)
    monitoring.register_event_listener(self._on_event)

  def _on_duration(self, event: str, duration: float, **_) -> None:
    if event == _BACKEND_COMPILE:
      with self._lock:
        self._requests += 1
        self._compile_s += duration
    elif event in (_TRACE, _LOWER):
      with self._lock:
        self._trace_s += duration

  def _on_event(self, event: str, **_) -> None:
    if event == _CACHE_HIT:
      with self._lock:
        self._hits += 1

  def now(self) -> CompileStats:
    with self._lock:
      return CompileStats(self._requests - self._hits, self._hits, self._compile_s,
                          self._trace_s)

  @contextlib.contextmanager
  def since(self) -> Iterator[list[CompileStats]]:
    """`with counter().since() as out:` ... `out[0]` is what the block compiled."""
    out: list[CompileStats] = []
    start = self.now()
    try:
      yield out
    finally:
      out.append(self.now() - start)


def stage_metrics(stages: dict[str, CompileStats]) -> dict[str, float | int]:
  """A step's log entries from its stages' counts: 'compile/compiles', 'compile/cache_hits',
  'compile/seconds' over all stages, and 'compile/compiles_<stage>' per stage."""
  total = sum(stages.values(), CompileStats())
  out: dict[str, float | int] = {"compile/compiles": total.compiles,
                                 "compile/cache_hits": total.cache_hits,
                                 "compile/seconds": total.seconds}
  out.update({f"compile/compiles_{k}": v.compiles for k, v in stages.items()})
  return out


_COUNTER: CompileCounter | None = None
_COUNTER_LOCK = threading.Lock()


def counter() -> CompileCounter:
  """The process's one `CompileCounter` (made, and its listeners registered, on first use)."""
  global _COUNTER
  with _COUNTER_LOCK:
    if _COUNTER is None:
      _COUNTER = CompileCounter()
    return _COUNTER


def default_cache_dir() -> str:
  """$SI_COMPILE_CACHE_DIR, else <$XDG_CACHE_HOME or ~/.cache>/si_jax/xla."""
  if os.environ.get(CACHE_ENV):
    return os.environ[CACHE_ENV]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "si_jax", "xla")


def enable_cache(directory: str | None) -> str | None:
  """Turns on the persistent compilation cache in `directory` (created; None or "off": leaves
  it off). Call before the first compilation. Returns the directory in use (None: off). A
  directory JAX was already given (JAX_COMPILATION_CACHE_DIR) is kept."""
  current = jax.config.jax_compilation_cache_dir
  if current:
    directory = current
  elif directory in (None, "", "off"):
    return None
  if "://" not in directory:
    directory = os.path.abspath(os.path.expanduser(directory))
    os.makedirs(directory, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", directory)
  # cache every program: the tiny CPU models compile in under the default 1 s threshold, and a
  # second identical run should compile nothing at all
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  counter()  # count from the first compile on
  return directory
