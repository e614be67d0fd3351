"""The machine an si-bench run measured, and whether it was quiet enough to compare.

The header names the machine (lscpu model name), the load average, the allocator (si-bench
re-executes itself with the allocator SI_ALLOCATOR selects, `si_jax/allocator.py`) and
XLA_FLAGS, and warns when the load makes the numbers incomparable; `--json` records all of it.
"""

from __future__ import annotations

import os
import platform
import subprocess
from typing import Any


def cpu_model() -> str:
  """The CPU's model name (`lscpu`, else /proc/cpuinfo, else the platform's machine type)."""
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
  except (OSError, subprocess.SubprocessError):
    out = ""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      out += "\n" + f.read()
  except OSError:
    pass
  for line in out.splitlines():
    key, _, value = line.partition(":")
    if key.strip().lower() == "model name" and value.strip():
      return value.strip()
  return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
  """The machine, its load, the allocator, XLA_FLAGS and the versions of both sides."""
  import jax
  import jaxlib
  import torch
  import transformers

  from si_jax import allocator

  return dict(cpu_model=cpu_model(), cpu_count=os.cpu_count(),
              torch_threads=torch.get_num_threads(),
              processor=platform.processor() or platform.machine(),
              allocator=allocator.loaded(), allocator_detail=allocator.describe(),
              xla_flags=os.environ.get("XLA_FLAGS", ""),
              python=platform.python_version(), jax=jax.__version__, jaxlib=jaxlib.__version__,
              jax_backend=jax.default_backend(), torch=torch.__version__,
              transformers=transformers.__version__, loadavg=list(os.getloadavg()))


def header(env: dict[str, Any]) -> str:
  """The lines printed before any measurement: machine, load, allocator, XLA flags, versions."""
  load = " ".join(f"{x:.2f}" for x in env["loadavg"])
  return "\n".join([
      f"machine: {env['cpu_model']} ({env['cpu_count']} CPUs, torch threads "
      f"{env['torch_threads']})",
      f"load average (1/5/15 min): {load}",
      f"allocator: {env['allocator_detail']}",
      f"XLA_FLAGS: {env['xla_flags'] or '(none)'}",
      f"versions: python {env['python']}, jax {env['jax']} ({env['jax_backend']}), torch "
      f"{env['torch']}, transformers {env['transformers']}",
  ])


def load_warning(load: float, cpus: int, when: str) -> str:
  """A loud banner saying the timings are not comparable (empty when the load is fine)."""
  if load <= cpus:
    return ""
  bar = "!" * 78
  return (f"{bar}\nWARNING: load average {load:.1f} {when} on {cpus} CPUs: other processes are "
          "using the CPU.\nThese timings are NOT comparable with an idle machine's; torch's "
          "OpenMP threads slow\ndown far more than XLA's under contention, so ratios overstate "
          f"si_jax. Rerun when idle.\n{bar}")


def contended(load_start: float, load_end: float, cpus: int) -> bool:
  """Heuristic: did other processes compete for the CPU? (1-minute load averages; the
  benchmark itself keeps about `cpus` threads busy, so the end value counts it.)"""
  return load_start > cpus or load_end > cpus + 1
