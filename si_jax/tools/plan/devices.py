"""The accelerators si-plan plans against, and the simulated CPU devices it plans on.

Usable HBM is a fraction of the accelerator's nominal capacity. On GPU it is the fraction JAX
preallocates, XLA_PYTHON_CLIENT_MEM_FRACTION: the value in si-plan's environment or
`--mem_fraction`, else `launch.GPU_MEM_FRACTION` (0.9), the value si-launch exports and
si-train sets when it is unset (JAX's own default is 0.75), so the verdict is computed against
the fraction the run gets. On TPU it is `TPU_USABLE_FRACTION` (90%): the runtime, XLA's
scratch and fragmentation take the rest.

The devices are `--devices` simulated CPU devices (`device_env`: XLA_FLAGS with
--xla_force_host_platform_device_count), which si-plan sets itself before jax starts.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping

GiB = 2 ** 30
TPU_USABLE_FRACTION = 0.9
MEM_FRACTION_ENV = "XLA_PYTHON_CLIENT_MEM_FRACTION"
DEVICE_FLAG = "--xla_force_host_platform_device_count"


@dataclasses.dataclass(frozen=True)
class Accelerator:
  """A device kind: nominal HBM in GiB, the jax backend it runs (for attention="auto") and
  the fraction of HBM a run may use (on GPU, what JAX preallocates)."""

  name: str
  hbm_gib: float
  backend: str
  fraction: float = TPU_USABLE_FRACTION

  @property
  def usable_bytes(self) -> float:
    return self.hbm_gib * GiB * self.fraction


ACCELERATORS = {
    "v5e": Accelerator("TPU v5e", 16, "tpu"),
    "v5p": Accelerator("TPU v5p", 95, "tpu"),
    "h100": Accelerator("H100", 80, "gpu"),
    "h200": Accelerator("H200", 141, "gpu"),
}


def gpu_mem_fraction(environ: Mapping[str, str] | None = None,
                     mem_fraction: float | None = None) -> float:
  """The fraction of GPU memory a run gets: `mem_fraction`, else XLA_PYTHON_CLIENT_MEM_FRACTION
  of `environ`, else what si-launch and si-train set (`launch.GPU_MEM_FRACTION`)."""
  from si_jax.tools import launch  # local: launch imports no JAX, but is a command module
  env = os.environ if environ is None else environ
  value = mem_fraction if mem_fraction else env.get(MEM_FRACTION_ENV) or launch.GPU_MEM_FRACTION
  try:
    value = float(value)
  except ValueError:
    raise ValueError(f"{MEM_FRACTION_ENV}={value!r}: must be a number in (0, 1]") from None
  if not 0 < value <= 1:
    raise ValueError(f"GPU memory fraction {value}: must be in (0, 1]")
  return value


def accelerator(name: str, environ: Mapping[str, str] | None = None,
                mem_fraction: float | None = None) -> Accelerator:
  """The accelerator `name`, a GPU with the memory fraction of `gpu_mem_fraction`."""
  if name not in ACCELERATORS:
    raise ValueError(f"unknown accelerator {name!r}; known: {sorted(ACCELERATORS)}")
  acc = ACCELERATORS[name]
  if acc.backend == "gpu":
    acc = dataclasses.replace(acc, fraction=gpu_mem_fraction(environ, mem_fraction))
  return acc


def all_accelerators(acc: Accelerator) -> dict[str, Accelerator]:
  """Every accelerator, the GPUs with `acc`'s memory fraction when it is a GPU."""
  gpu = acc.fraction if acc.backend == "gpu" else None
  return {k: dataclasses.replace(a, fraction=gpu) if gpu and a.backend == "gpu" else
          accelerator(k) for k, a in ACCELERATORS.items()}


def gib(n: float) -> str:
  """Bytes as GiB with two decimals."""
  return f"{n / GiB:.2f}"


def device_env(n: int, environ: Mapping[str, str]) -> dict[str, str]:
  """The variables that give jax `n` simulated CPU devices: XLA_FLAGS with the device count
  (replacing a count already there, keeping other flags) and JAX_PLATFORMS=cpu. They must be
  in the environment before jax creates its backend."""
  if n < 1:
    raise ValueError(f"--devices must be >= 1, got {n}")
  flags = [f for f in environ.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_FLAG)]
  return {"XLA_FLAGS": " ".join(flags + [f"{DEVICE_FLAG}={n}"]), "JAX_PLATFORMS": "cpu"}
