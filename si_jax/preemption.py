"""Preemption: SIGTERM (or the platform's notice) -> save at the next step boundary, exit 75.

Spot / preemptible VMs and SLURM send SIGTERM some time before they kill a job. si-train then
finishes the step it is in, and every process saves a checkpoint of the same step and exits
with `EXIT_CODE` (75, EX_TEMPFAIL of sysexits.h: "temporary failure, try again"), which the
launchers read as "resume me" (si_jax/tools/launch/). A second SIGTERM changes nothing; SIGKILL
still kills (the last complete checkpoint stays, as always).

How the processes agree (multi-process runs): only some processes may get the signal. At every
step boundary, `Monitor.reached(step)` is a collective: an all-gather of each process's flag
(`multihost.any_true`), so all of them see it at the same boundary, and also JAX's preemption
sync point (`multihost_utils.reached_preemption_sync_point`), which returns True on every
process at the same step once the distributed runtime has a preemption notice of its own.
The Python SIGTERM handler installed here replaces the one JAX's notifier installs at
`jax.distributed.initialize` (one handler per signal): the notifier waits for its step count
to come round, the all-gather stops the run at the very next boundary.
"""

from __future__ import annotations

import signal
import threading

import jax

from si_jax import multihost

__all__ = ["EXIT_CODE", "Monitor", "Preempted"]

EXIT_CODE = 75


class Preempted(Exception):
  """The run stopped at a step boundary after a preemption notice; checkpoint `step` holds it."""

  def __init__(self, step: int, directory: str, local: bool):
    self.step, self.directory, self.local = step, directory, local
    how = ("SIGTERM" if local else
           "a SIGTERM or preemption notice on another process")
    super().__init__(f"preempted ({how}): saved checkpoint {step} to {directory}; exit code "
                     f"{EXIT_CODE} means 'resume me': run the same command again")


class Monitor:
  """Catches SIGTERM while installed and tells every process at the same step boundary.

  Usage (what the trainer does):
    mon = Monitor(); mon.install()
    ... after each step: if mon.reached(step): save(step); raise Preempted(...)
    mon.uninstall()
  """

  def __init__(self):
    self.signalled = False
    self._previous = None
    self._installed = False

  def install(self) -> None:
    """Installs the SIGTERM handler (main thread only; elsewhere nothing is caught)."""
    if self._installed or threading.current_thread() is not threading.main_thread():
      return
    self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
    self._installed = True

  def uninstall(self) -> None:
    if not self._installed:
      return
    # None: the previous handler was not installed from Python (JAX's notifier); the default
    # then, which terminates as SIGTERM always did.
    signal.signal(signal.SIGTERM, self._previous if self._previous is not None
                  else signal.SIG_DFL)
    self._installed = False

  def _on_sigterm(self, signum, frame) -> None:  # pylint: disable=unused-argument
    self.signalled = True

  def reached(self, step: int) -> bool:
    """Whether to stop after `step`: True on every process at the same call. Collective in a
    multi-process run (call it at every step boundary on every process)."""
    stop = multihost.any_true(self.signalled)
    if not stop and jax.process_count() > 1:
      stop = _jax_sync_point(step)
    return stop


def _jax_sync_point(step: int) -> bool:
  """JAX's preemption sync point where its preemption service runs, else False."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  try:
    return bool(multihost_utils.reached_preemption_sync_point(step))
  except RuntimeError:  # the service is off (jax_enable_preemption_service=False)
    return False
