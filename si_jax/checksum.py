"""Checksums of arrays' bytes that add up over any split of an array (checkpoint integrity).

`tree_checksums(tree)` -> {key path: 8 hex digits} for every array leaf. An array's checksum is
the sum (mod 2^32) over its elements of a mix of the element's bytes and its flat position in
the whole array:

    checksum = sum_i fmix32(w_i + i * K)

where w_i is element i's bit pattern as a uint32 (bool, 8- and 16-bit types zero-extended;
64-bit types as two words, at positions 2i and 2i+1) and fmix32 is MurmurHash3's finalizer, a
bijection. So

  * a sum does not depend on how the array is split: a sharded jax.Array is checksummed where
    it lives, each device over its own shard and each process over its own devices, and XLA adds
    the partial sums (4 bytes per array cross the network, nothing else leaves a device). A
    checkpoint restored onto another mesh, process count or one device gets the same checksum;
  * one changed element always changes the sum (for a fixed position each term is a bijection
    of the element's bits); several changed elements go unnoticed with probability about
    2^-32, as with a CRC-32.

It is not a cryptographic hash: it detects corruption (bad disks, partial copies, storage bugs),
not tampering.

jax.Array leaves are checksummed on their devices by one jitted call per leaf (collective in
multi-process runs: every process calls it; one compile per shape, dtype and sharding, and
per-leaf calls ran 3x faster than one call over a whole train state on XLA:CPU); numpy arrays
and scalars on the host, with the same formula (every process holds them whole).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["ALGORITHM", "array_checksum", "json_digest", "key_path", "start_tree_checksums",
           "tree_checksums"]

ALGORITHM = "si_jax.checksum/fmix32-v1"
_K = 0x9E3779B1
_M1, _M2 = 0x85EBCA6B, 0xC2B2AE35


def key_path(path) -> str:
  """A jax key path as `params/layers/0/w` (dict keys, attribute names, sequence indices)."""
  return jax.tree_util.keystr(path, simple=True, separator="/") or "<root>"


def json_digest(obj: Any) -> str:
  """sha256 of a JSON object's canonical text (sorted keys): the checkpoint's meta item."""
  text = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
  return hashlib.sha256(text.encode()).hexdigest()


# ----------------------------------------------------------------------------- the formula


def _fmix(xp, h):
  h = h ^ (h >> xp.uint32(16))
  h = h * xp.uint32(_M1)
  h = h ^ (h >> xp.uint32(13))
  h = h * xp.uint32(_M2)
  return h ^ (h >> xp.uint32(16))


def _sum(xp, words, index):
  """sum_i fmix32(words_i + index_i * K) mod 2^32 of uint32 `words` at uint32 positions."""
  return xp.sum(_fmix(xp, words + index * xp.uint32(_K)), dtype=xp.uint32)


def _format(value) -> str:
  return f"{int(value) & 0xFFFFFFFF:08x}"


# ----------------------------------------------------------------------------- numpy (host)


def _np_words(x: np.ndarray) -> np.ndarray:
  """uint32 words of a host array's elements in C order (64-bit ones as low, high)."""
  x = np.ascontiguousarray(x)
  if x.dtype == np.bool_:
    return x.astype(np.uint32).reshape(-1)
  size = x.dtype.itemsize
  if size in (1, 2, 4):
    return x.view(f"u{size}").astype(np.uint32).reshape(-1)
  if size == 8:
    u = x.view(np.uint64).reshape(-1)
    words = np.stack([(u & np.uint64(0xFFFFFFFF)).astype(np.uint32),
                      (u >> np.uint64(32)).astype(np.uint32)], axis=-1)
    return words.reshape(-1)
  raise TypeError(f"no checksum for dtype {x.dtype} (itemsize {size})")


def array_checksum(x) -> str:
  """The checksum of one host array (numpy array or scalar) as 8 hex digits."""
  words = _np_words(np.asarray(x))
  index = np.arange(words.size, dtype=np.uint32)
  return _format(_sum(np, words, index))


# ----------------------------------------------------------------------------- jax (devices)


@jax.jit
def _device_sum(x):
  """The checksum of a jax array as a uint32 scalar (positions are global flat indices)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    words = x.astype(jnp.uint32)
  elif x.dtype.itemsize in (1, 2, 4):
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
    words = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
  elif x.dtype.itemsize == 8:  # only with jax_enable_x64; words at 2i (low), 2i + 1 (high)
    u = jax.lax.bitcast_convert_type(x, jnp.uint64)
    words = jnp.stack([(u & 0xFFFFFFFF).astype(jnp.uint32), (u >> 32).astype(jnp.uint32)], -1)
  else:
    raise TypeError(f"no checksum for dtype {x.dtype}")
  shape = words.shape
  index = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(len(shape))):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
    stride = (stride * shape[axis]) & 0xFFFFFFFF
  return _sum(jnp, words, index)


def _replicated_value(x) -> np.ndarray:
  """A small replicated global array's value, read from this process's own copy."""
  return np.asarray(x.addressable_data(0)) if not x.is_fully_addressable else np.asarray(x)


def start_tree_checksums(tree: Any) -> Callable[[], dict[str, str]]:
  """Starts the checksums of every leaf of `tree` (jax.Array, numpy array or scalar) and
  returns a function that waits for them: {key path: checksum}, in leaf order.

  The device work is dispatched here and runs while the caller goes on (a checkpoint's arrays
  are written meanwhile); the returned function may be called from another thread. Collective
  when the tree holds jax.Arrays of a multi-process run: every process must call it with the
  same tree structure and shardings (as Orbax's save and restore already require).
  """
  leaves = [(key_path(p), x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]]
  pending = {name: _device_sum(x) for name, x in leaves if isinstance(x, jax.Array)}
  host = {name: array_checksum(x) for name, x in leaves if name not in pending}

  def result() -> dict[str, str]:
    return {name: host[name] if name in host else _format(_replicated_value(pending[name]))
            for name, _ in leaves}
  return result


def tree_checksums(tree: Any) -> dict[str, str]:
  """{key path: checksum} for every leaf of `tree` (see `start_tree_checksums`)."""
  return start_tree_checksums(tree)()
