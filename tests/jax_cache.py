"""JAX's persistent compilation cache for one block of a test, in-process."""

from __future__ import annotations

import contextlib

import jax
from jax.experimental.compilation_cache import compilation_cache

from si_jax import compilation

_SETTINGS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")


@contextlib.contextmanager
def scoped(directory):
  """The persistent compilation cache in `directory` (as si-train's --compile_cache_dir) for
  this block only; yields the directory in use. The settings it changes are restored and the
  cache dropped afterwards, so later tests in this process compile as before."""
  saved = {n: getattr(jax.config, n) for n in _SETTINGS}
  compilation_cache.reset_cache()
  try:
    yield compilation.enable_cache(str(directory))
  finally:
    for n, v in saved.items():
      jax.config.update(n, v)
    compilation_cache.reset_cache()
