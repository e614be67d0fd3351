"""The process's malloc: re-execute `si-train` / `si-bench` with a retaining allocator.

XLA:CPU allocates every step's temporaries afresh (hundreds of MB for a train step), and glibc
hands blocks this large back to the kernel on free, so each step page-faults them in again
(PERF_NOTES: the main job spent a third of its wall time in the kernel). An allocator that
keeps freed memory mapped removes that cost. Allocators are chosen when a process starts
(LD_PRELOAD, GLIBC_TUNABLES), so the entry points call `reexec_if_needed()` first, which
re-executes the same command line once with the environment below.

`SI_ALLOCATOR` (environment variable):
  auto      the first installed of AUTO_ORDER (mimalloc, which pip installs with si_jax on
            Linux, then jemalloc, tcmalloc), else glibc (the default).
  mimalloc  LD_PRELOAD libmimalloc (the `cmeel-mimalloc` wheel, or a system library) with
            MIMALLOC_PURGE_DELAY=-1 (never returns freed pages); an error if not installed.
  jemalloc  LD_PRELOAD libjemalloc with MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1 (never
            returns freed pages); an error if the library is not installed.
  tcmalloc  LD_PRELOAD libtcmalloc(_minimal); an error if not installed.
  glibc     glibc tunables only, nothing to install: one arena, no mmap for large blocks, no
            trimming, so freed blocks stay mapped for the next step.
  system    the process as started.

mimalloc comes with `pip install si_jax` (Linux, glibc >= 2.28); install the others with
`apt-get install libjemalloc2` (Debian/Ubuntu; `libtcmalloc-minimal4` for tcmalloc) or
`conda install jemalloc`. A user who preloads an allocator already keeps it. README (Speed)
has the measurements behind the order.
"""

from __future__ import annotations

import os
import sys
from typing import Mapping, Sequence

ENV = "SI_ALLOCATOR"
CHOICES = ("auto", "mimalloc", "jemalloc", "tcmalloc", "glibc", "system")
# Set in the re-executed process to what `plan` installed; also stops a second re-exec.
ACTIVE_ENV = "SI_ALLOCATOR_ACTIVE"

LIBRARIES = {
    "mimalloc": ("libmimalloc.so.3", "libmimalloc.so.2", "libmimalloc.so"),
    "jemalloc": ("libjemalloc.so.2", "libjemalloc.so"),
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so",
                 "libtcmalloc.so"),
}
AUTO_ORDER = ("mimalloc", "jemalloc", "tcmalloc")


def _wheel_lib_dirs() -> tuple[str, ...]:
  """Where pip put the `cmeel-mimalloc` wheel's library (none if it is not installed)."""
  try:
    from importlib import metadata
    return (str(metadata.distribution("cmeel-mimalloc").locate_file("cmeel.prefix/lib")),)
  except Exception:  # pylint: disable=broad-except  # not installed, or an odd environment
    return ()


LIB_DIRS = _wheel_lib_dirs() + (
    "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
    "/usr/local/lib", os.path.join(sys.prefix, "lib"))
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
MIMALLOC_ENV = {"MIMALLOC_PURGE_DELAY": "-1"}
# One arena (large blocks from other arenas would be mmapped regardless), never mmap, never
# trim: glibc then keeps every freed block for reuse.
GLIBC_TUNABLES = ("glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
                  "glibc.malloc.trim_threshold=1099511627776")
INSTALL_HINT = ("install it (Debian/Ubuntu: apt-get install libjemalloc2 or "
                "libtcmalloc-minimal4; conda: conda install jemalloc) or set SI_ALLOCATOR=glibc")


def find_library(name: str, lib_dirs: Sequence[str] = LIB_DIRS) -> str | None:
  """Path of the first installed shared library of allocator `name` ('jemalloc'/'tcmalloc')."""
  for d in lib_dirs:
    for lib in LIBRARIES[name]:
      path = os.path.join(d, lib)
      if os.path.exists(path):
        return path
  return None


def preloaded(env: Mapping[str, str]) -> str | None:
  """The allocator an LD_PRELOAD in `env` already names, if any."""
  libs = env.get("LD_PRELOAD", "")
  return next((name for name in LIBRARIES if "lib" + name in libs), None)


def plan(env: Mapping[str, str], lib_dirs: Sequence[str] = LIB_DIRS
         ) -> tuple[str, dict[str, str]]:
  """(allocator, environment variables to set) for `env`; no variables = nothing to do.

  Raises ValueError naming SI_ALLOCATOR for an unknown choice or a library not installed.
  """
  choice = env.get(ENV, "auto") or "auto"
  if choice not in CHOICES:
    raise ValueError(f"{ENV} must be one of {CHOICES}, got {choice!r}")
  if choice == "system" or ACTIVE_ENV in env:
    return env.get(ACTIVE_ENV, "system"), {}
  already = preloaded(env)
  if already:
    return already, {}
  if choice == "auto":
    choice = next((n for n in AUTO_ORDER if find_library(n, lib_dirs)), "glibc")
  if choice == "glibc":
    tunables = ":".join(t for t in (env.get("GLIBC_TUNABLES", ""), GLIBC_TUNABLES) if t)
    return "glibc", {"GLIBC_TUNABLES": tunables, ACTIVE_ENV: "glibc"}
  path = find_library(choice, lib_dirs)
  if path is None:
    raise ValueError(f"{ENV}={choice}: no {' or '.join(LIBRARIES[choice])} in "
                     f"{', '.join(lib_dirs)}; {INSTALL_HINT}")
  changes = {"LD_PRELOAD": " ".join(p for p in (path, env.get("LD_PRELOAD", "")) if p),
             ACTIVE_ENV: choice}
  if choice == "jemalloc" and "MALLOC_CONF" not in env:
    changes["MALLOC_CONF"] = JEMALLOC_CONF
  if choice == "mimalloc":
    changes.update({k: v for k, v in MIMALLOC_ENV.items() if k not in env})
  return choice, changes


def loaded(maps_path: str = "/proc/self/maps") -> str:
  """The allocator this process runs with: 'mimalloc', 'jemalloc', 'tcmalloc' (mapped
  libraries), 'glibc' (tuned by `plan`) or 'system'."""
  try:
    with open(maps_path, encoding="utf-8", errors="replace") as f:
      maps = f.read()
  except OSError:
    maps = ""
  mapped = next((name for name in LIBRARIES if "lib" + name in maps), None)
  if mapped:
    return mapped
  return "glibc" if os.environ.get(ACTIVE_ENV) == "glibc" else "system"


def describe() -> str:
  """One line for logs and benchmark headers: the allocator and how it was chosen."""
  return (f"{loaded()} ({ENV}={os.environ.get(ENV, 'auto') or 'auto'}"
          + "".join(f", {k}={os.environ[k]}" for k in ("MALLOC_CONF", *MIMALLOC_ENV)
                    if k in os.environ)
          + ")")


def reexec_if_needed() -> None:
  """Re-executes this command line once with `plan`'s environment (never returns then).

  A no-op when nothing is to change, when already re-executed, and when the program came from
  standard input (it cannot be read twice).
  """
  argv = list(getattr(sys, "orig_argv", []))
  if len(argv) < 2 or argv[1] == "-":
    return
  _, changes = plan(os.environ)
  if not changes:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable] + argv[1:], {**os.environ, **changes})
