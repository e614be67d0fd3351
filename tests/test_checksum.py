"""Checksums of arrays' bytes (si_jax/checksum.py): the same number on the host and on devices
whatever the sharding, and any changed element, swap or bit flip changes it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from si_jax import checksum


def _x(dtype=np.float32, shape=(16, 24)):
  return (np.random.default_rng(0).standard_normal(shape) * 50).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int8, np.int32, np.uint16,
                                   np.bool_, jnp.bfloat16])
def test_host_and_device_agree_for_every_dtype(dtype):
  x = _x(dtype)
  want = checksum.array_checksum(x)
  assert len(want) == 8 and int(want, 16) >= 0
  assert checksum.tree_checksums({"x": jnp.asarray(x)}) == {"x": want}


@pytest.mark.parametrize("spec", [P(), P("a"), P("a", "b"), P(None, "b"), P("b", "a")])
def test_a_sharded_array_has_the_checksum_of_the_whole(spec):
  if jax.device_count() < 8:
    pytest.fail("needs 8 simulated devices (tests/conftest.py)")
  mesh = jax.make_mesh((2, 4), ("a", "b"), devices=jax.devices()[:8])
  x = _x()
  sharded = jax.device_put(x, NamedSharding(mesh, spec))
  assert checksum.tree_checksums(sharded) == {"<root>": checksum.array_checksum(x)}


def test_changes_that_keep_the_values_but_not_their_places_or_bits_are_seen():
  x = _x()
  base = checksum.array_checksum(x)
  one = x.copy()
  one[3, 5] = np.nextafter(one[3, 5], np.inf)  # the last bit of one element
  swapped = x.copy()
  swapped[[0, 1]] = swapped[[1, 0]]  # two rows trade places: same multiset of values
  same_bit = x.view(np.uint32).copy()
  same_bit[0, 0] ^= 1 << 7  # the same bit flipped in two elements
  same_bit[0, 1] ^= 1 << 7
  transposed = np.ascontiguousarray(x.reshape(24, 16))  # same bytes, another shape: same sum
  sums = {checksum.array_checksum(v) for v in (one, swapped, same_bit.view(np.float32))}
  assert base not in sums and len(sums) == 3
  assert checksum.array_checksum(transposed) == base  # bytes and positions, not the shape


def test_tree_checksums_name_leaves_by_key_path_and_mix_host_and_device_leaves():
  tree = {"params": {"w": jnp.ones((2, 3)), "b": np.arange(3, dtype=np.int64)},
          "step": np.int32(7), "opt": (jnp.zeros(2, jnp.bfloat16),)}
  out = checksum.tree_checksums(tree)
  assert list(out) == ["opt/0", "params/b", "params/w", "step"]
  assert out["step"] == checksum.tree_checksums(jnp.asarray(7, jnp.int32))["<root>"]
  assert out["params/b"] == checksum.array_checksum(np.arange(3, dtype=np.int64))


def test_json_digest_ignores_key_order_only():
  assert checksum.json_digest({"a": 1, "b": [1.5]}) == checksum.json_digest({"b": [1.5], "a": 1})
  assert checksum.json_digest({"a": 1}) != checksum.json_digest({"a": 2})
