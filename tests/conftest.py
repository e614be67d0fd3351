"""Test-session setup: 8 simulated CPU devices for the sharding tests.

XLA reads the flag when jax initializes its backend, so it is set before any test imports jax.
Single-device tests build their meshes from `jax.devices()[:1]`.
"""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
