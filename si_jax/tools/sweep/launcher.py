"""The command that starts one run of a sweep. `--launcher local` (the default) runs si-train
(`python -m si_jax.cli.train`) here; `--launcher slurm` and `--launcher tpu_pod` go through
`si-launch` (si_jax/tools/launch/, the one home of how a run is started; `--launch_args` passes it
more options, `--dry_run` prints its command line per run).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import sys

from si_jax.tools import launch
from si_jax.tools.sweep.spec import RunSpec, Sweep, SweepError
from si_jax.tools.sweep.values import format_value

LAUNCHERS = ("local", "slurm", "tpu_pod")


def train_args(sweep: Sweep, run: RunSpec, root: str) -> list[str]:
  """si-train's arguments for one run."""
  return (["--config", sweep.config, "--workdir", os.path.join(root, run.name)]
          + [f"--config.{f}={format_value(v)}" for f, v in sweep.overrides(run)])


@dataclasses.dataclass
class Launcher:
  """How a run is started (si_jax/tools/launch/ builds every command). local: si-train here;
  slurm: `si-launch slurm --nodes=hosts ... -- ARGS` (one sbatch); tpu_pod: `si-launch tpu_pod
  --tpu=TPU --zone=ZONE ... -- ARGS`. `launch_args`: more si-launch options, one string."""
  kind: str = "local"
  hosts: int = 1
  tpu: str = ""
  zone: str = ""
  sbatch_args: str = ""
  launch_args: str = ""

  def check(self) -> None:
    if self.kind not in LAUNCHERS:
      raise SweepError(f"--launcher {self.kind}: must be one of {list(LAUNCHERS)}")
    if self.hosts < 1:
      raise SweepError(f"--hosts {self.hosts}: must be >= 1")
    if self.hosts != 1 and self.kind != "slurm":
      raise SweepError(f"--hosts {self.hosts}: only --launcher slurm takes a host count (a TPU "
                       f"pod runs on every host of the slice --tpu names)")
    if self.kind == "tpu_pod" and not (self.tpu and self.zone):
      raise SweepError("--launcher tpu_pod: needs --tpu NAME and --zone ZONE")
    if self.kind != "tpu_pod" and (self.tpu or self.zone):
      raise SweepError("--tpu / --zone: only for --launcher tpu_pod")
    if self.sbatch_args and self.kind != "slurm":
      raise SweepError("--sbatch_args: only for --launcher slurm")
    if self.launch_args and self.kind == "local":
      raise SweepError("--launch_args: only for --launcher slurm or tpu_pod")
    if self.kind != "local":  # si-launch's own checks, on a stand-in run
      try:
        launch.plan(self.launch_argv(["--config", "c.py", "--workdir", "gs://w"], "check"))
      except launch.LaunchError as e:
        msg = re.sub(r"^si-launch( \w+)?: ", "", str(e))
        raise SweepError(f"--launcher {self.kind} (si-launch): {msg}") from None

  def launch_argv(self, args: list[str], job_name: str) -> list[str]:
    """si-launch's arguments for a run with si-train arguments `args`."""
    try:
      extra = shlex.split(self.launch_args)
    except ValueError as e:
      raise SweepError(f"--launch_args {self.launch_args!r}: {e}") from None
    if self.kind == "slurm":
      head = ["slurm", f"--nodes={self.hosts}", f"--job_name={job_name}"]
      head += [f"--sbatch_args={self.sbatch_args}"] if self.sbatch_args else []
    else:
      head = ["tpu_pod", f"--tpu={self.tpu}", f"--zone={self.zone}"]
    return head + extra + ["--"] + args

  def command(self, args: list[str], job_name: str, *, display: bool = False) -> list[str]:
    """The argv that starts a run with si-train arguments `args`. `display`: the command as a
    user types it (`si-train ...`, `si-launch ...`) instead of this interpreter's `-m ...`."""
    if self.kind == "local":
      argv = launch.local_commands(args)[0].argv
      return ["si-train"] + args if display else argv
    head = ["si-launch"] if display else [sys.executable, "-m", "si_jax.tools.launch"]
    return head + self.launch_argv(args, job_name)


def run_job_name(sweep: Sweep, run: RunSpec) -> str:
  """A run's job name (si-launch slurm --job_name): `<sweep name>:<run name>`."""
  return f"{sweep.name or 'si-sweep'}:{run.name}"
