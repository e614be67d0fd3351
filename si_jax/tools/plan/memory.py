"""Per-device bytes: of abstract arrays (from their shardings) and of compiled programs.

Arguments are split into params / optimizer state / batch / KV cache by summing the per-device
shard sizes of their shardings (these sums equal XLA's argument size: tested). A program's
peak per device is arguments + temporaries + outputs - aliased (donated) bytes, read from its
executable's `memory_analysis()`; a phase's peak adds what stays on the device besides the
program's arguments (the optimizer state while sampling, the KL reference, a LoRA base).

What is exact and what is an estimate: argument, output and KV-cache bytes follow from shapes
and shardings and hold on any backend. Temporaries are XLA:CPU's buffer assignment of the
SPMD-partitioned program; a TPU or GPU compile fuses and schedules differently (and XLA:CPU may
upcast bfloat16 arithmetic to float32), so read them as an estimate.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import numpy as np


def itemsize(dtype) -> int:
  """Bytes per element (PRNG key arrays: their key data's)."""
  if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct((), dtype))
    return data.size * data.dtype.itemsize
  return np.dtype(dtype).itemsize


def shard_bytes(x) -> int:
  """Bytes of one device's shard of `x` (anything with shape, dtype and a sharding)."""
  return math.prod(x.sharding.shard_shape(tuple(x.shape))) * itemsize(x.dtype)


def global_bytes(x) -> int:
  return math.prod(x.shape) * itemsize(x.dtype)


def tree_bytes(tree, per_device: bool = True) -> int:
  """Sum over the leaves of `tree` of their per-device (or global) bytes."""
  fn = shard_bytes if per_device else global_bytes
  return sum(fn(x) for x in jax.tree.leaves(tree))


def abstract(tree_shapes, dtype, shardings):
  """ShapeDtypeStructs from a tree of shape tuples, one dtype, and a matching sharding tree."""
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(tuple(s), dtype, sharding=sh),
                      tree_shapes, shardings, is_leaf=lambda x: isinstance(x, tuple))


def plain(tree):
  """ShapeDtypeStructs (shape, dtype, sharding only) of a compiled program's out_info."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      tree)


@dataclasses.dataclass
class Program:
  """Per-device memory of one compiled executable, in bytes (`memory_analysis()`), its
  arguments split by role (`parts`: params, opt_state, batch, kv_cache, ...) and notable
  outputs (`out_parts`: the KV cache prefill makes)."""

  name: str
  arguments: int
  outputs: int
  aliased: int
  temp: int
  generated_code: int
  compile_s: float
  parts: dict[str, int]
  out_parts: dict[str, int] = dataclasses.field(default_factory=dict)
  # bytes that stay on the device while this program runs without being its arguments (the
  # optimizer state during the update's gradient calls), besides its phase's resident bytes
  held: dict[str, int] = dataclasses.field(default_factory=dict)

  @property
  def peak(self) -> int:
    return self.arguments + self.temp + self.outputs - self.aliased + sum(self.held.values())

  @classmethod
  def from_compiled(cls, name: str, compiled, compile_s: float, parts: dict[str, int]):
    m = compiled.memory_analysis()
    if m is None:
      raise RuntimeError(f"{name}: this backend gives no memory_analysis()")
    return cls(name=name, arguments=m.argument_size_in_bytes, outputs=m.output_size_in_bytes,
               aliased=m.alias_size_in_bytes, temp=m.temp_size_in_bytes,
               generated_code=m.generated_code_size_in_bytes, compile_s=compile_s, parts=parts)


def compile_program(name: str, fn, args: tuple, parts: dict[str, int]) -> Program:
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  return Program.from_compiled(name, compiled, time.perf_counter() - t0, parts)


@dataclasses.dataclass
class Phase:
  """Programs that run one after another while `resident` bytes stay on the device."""

  name: str
  programs: list[Program]
  resident: dict[str, int]

  @property
  def peak(self) -> int:
    return sum(self.resident.values()) + max(p.peak for p in self.programs)
