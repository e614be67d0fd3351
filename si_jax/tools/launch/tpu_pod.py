"""si-launch tpu_pod: si-train on every worker of a Cloud TPU VM slice, through gcloud.

One gcloud command per step: describe the TPU VM (create it if absent, start it if STOPPED; an
existing one of another type is refused), copy the project to every worker (`git archive` of
the checkout's HEAD, refused with uncommitted changes or untracked files; `--source none` when
it is there already), check the workers' Python (>= PYTHON_FLOOR) and install it (`pip install
-e .` plus `jax[tpu]`), run si-train on every worker (`gcloud ... ssh --worker=all`, output
streamed; `--detach`: in the background, outliving ssh, log and pid in the remote dir, and the
commands to watch and stop it printed), then `--stop` or `--delete` the TPU if asked (also
after a failed run). The host count follows from --accelerator_type (TPU_FAMILIES). Needs only
the Google Cloud CLI and git; run `ssh-add ~/.ssh/google_compute_engine` first (gcloud's advice
for commands on several workers).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
import tempfile
from typing import Sequence

from si_jax.tools.launch.common import ENV_ENABLE
from si_jax.tools.launch.common import ENV_PLATFORM
from si_jax.tools.launch.common import PREEMPTED
from si_jax.tools.launch.common import Command
from si_jax.tools.launch.common import LaunchError
from si_jax.tools.launch.common import check_train_args
from si_jax.tools.launch.common import echo
from si_jax.tools.launch.common import exit_code
from si_jax.tools.launch.common import flag_value
from si_jax.tools.launch.common import step

# The checkout si-launch runs from (si_jax/tools/launch/ is three levels below it): the default
# --repo, copied to the workers.
REPO_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), *[os.pardir] * 3))
TPU_TARBALL = "si-launch-src.tar.gz"  # in the remote home directory
DETACHED_LOG, DETACHED_PID = "si-train.log", "si-train.pid"  # --detach, in remote_dir
# The oldest Python the pinned jax / jaxlib / flax / orbax / transformers install on
# (setup.py's python_requires; a test keeps them in step). TPU VM images may ship an older one.
PYTHON_FLOOR = (3, 11)


@dataclasses.dataclass(frozen=True)
class TpuFamily:
  """What the number of an accelerator type `<family>-<n>` counts and how many VMs it is.

  A slice of n `unit`s is one VM when n is in `single_host`, else n / per_host VMs (each a
  JAX process). `runtime` is the default `--version` (TPU software image) for create.
  """
  unit: str
  per_host: int
  single_host: tuple[int, ...]
  runtime: str


# cloud.google.com/tpu/docs/{v4,v5p,v6e}: v2-v5p count TensorCores (8 per VM: v5p-16 is 2 VMs,
# v5p-128 16); v6e counts chips, 1/4/8 on one VM, multi-host slices on 4-chip VMs (v6e-16: 4).
# v5e (v5litepod) is taken to be laid out like v6e (1, 4 or 8 chips a VM; GKE's multi-host v5e
# machine type has 4 chips); not checked on a real slice.
TPU_FAMILIES = {
    "v2": TpuFamily("cores", 8, (8,), "tpu-ubuntu2204-base"),
    "v3": TpuFamily("cores", 8, (8,), "tpu-ubuntu2204-base"),
    "v4": TpuFamily("cores", 8, (8,), "tpu-ubuntu2204-base"),
    "v5p": TpuFamily("cores", 8, (8,), "v2-alpha-tpuv5"),
    "v5litepod": TpuFamily("chips", 4, (1, 4, 8), "v2-alpha-tpuv5-lite"),
    "v6e": TpuFamily("chips", 4, (1, 4, 8), "v2-alpha-tpuv6e"),
}


def tpu_family(accelerator_type: str) -> tuple[TpuFamily, int]:
  """(family, size) of an accelerator type: `v5p-16` -> (TPU_FAMILIES['v5p'], 16)."""
  m = re.fullmatch(r"([a-z0-9]+)-(\d+)", accelerator_type)
  if not m or m.group(1) not in TPU_FAMILIES:
    raise LaunchError(f"--accelerator_type {accelerator_type!r}: unknown; expected "
                      f"<family>-<size> with family one of {list(TPU_FAMILIES)} (v5p-16, "
                      f"v5litepod-16, v6e-32, ...)")
  return TPU_FAMILIES[m.group(1)], int(m.group(2))


def tpu_hosts(accelerator_type: str) -> int:
  """The number of TPU VMs (= JAX processes) of a slice: v5p-16 -> 2, v5p-128 -> 16,
  v5litepod-8 -> 1, v6e-16 -> 4."""
  fam, n = tpu_family(accelerator_type)
  if n in fam.single_host:
    return 1
  if n > max(fam.single_host) and n % fam.per_host == 0:
    return n // fam.per_host
  sizes = ", ".join(map(str, fam.single_host))
  raise LaunchError(f"--accelerator_type {accelerator_type}: {n} {fam.unit} is not a slice "
                    f"size ({sizes}, or a multiple of {fam.per_host} above)")


def python_check(python: str) -> str:
  """Shell text that stops a worker whose `python` is older than PYTHON_FLOOR (or missing),
  with one line naming the worker, its version and the way out, exit code 2."""
  py = _remote(python)
  floor = ".".join(map(str, PYTHON_FLOOR))
  return (f"{{ {py} -c 'import sys; sys.exit(sys.version_info < {PYTHON_FLOOR})' 2>/dev/null "
          f"|| {{ echo \"si-launch: error: worker $(hostname): $({py} --version 2>&1 | head -1) "
          f"is not Python >= {floor}, which si_jax needs (jax, jaxlib, orbax): make a "
          f"virtualenv of one on every worker (sudo apt-get install -y python{floor}-venv && "
          f"python{floor} -m venv ~/si-venv) and pass --python ~/si-venv/bin/python\" >&2; "
          f"exit 2; }}; }}")


def _remote(path: str) -> str:
  """A remote path for the remote shell: quoted, but a leading `~/` still expands."""
  if path == "~" or path.startswith("~/"):
    rest = path[2:]
    return "~/" + shlex.quote(rest) if rest else "~"
  return shlex.quote(path)


@dataclasses.dataclass
class TpuPlan:
  """The gcloud (and git) commands of a TPU pod launch, in order; see `tpu_plan`."""
  tpu: str
  accelerator_type: str
  hosts: int
  describe: Command
  create: Command
  start: Command
  clean_check: Command | None  # git status: refused when it lists changes
  copy: list[Command]  # git archive, scp to every worker
  install: Command | None
  run: Command
  after: Command | None  # stop / delete
  notes: list[str]
  log_dir: str = ""
  tarball: str = ""  # the local copy of HEAD, removed once it is on the workers
  # --detach: how to watch and stop the run that outlives this command
  follow: list[Command] = dataclasses.field(default_factory=list)

  def script(self) -> str:
    """The plan as a commented shell script (--dry_run)."""
    lines = [f"# si-launch tpu_pod: {self.tpu}, {self.accelerator_type} = {self.hosts} "
             f"host{'s' if self.hosts > 1 else ''} (one si-train process each)"]
    lines += [f"# note: {n}" for n in self.notes]
    lines += [f"# {self.describe.note}", self.describe.shell()]
    lines += [f"# {self.create.note}", self.create.shell()]
    lines += [f"# {self.start.note}", self.start.shell()]
    if self.clean_check:
      lines += [f"# {self.clean_check.note}", self.clean_check.shell()]
    for c in self.copy + [c for c in (self.install, self.run, self.after) if c]:
      lines += [f"# {c.note}", c.shell()]
    for c in self.follow:
      lines += [f"# then: {c.note}", f"#   {c.shell()}"]
    return "\n".join(lines) + "\n"


def tpu_plan(args: Sequence[str], tpu: str, zone: str, accelerator_type: str,
             version: str = "", project: str = "", create_args: Sequence[str] = (),
             source: str = "git", repo: str = REPO_DIR, remote_dir: str = "~/si_jax",
             python: str = "python3", pip: Sequence[str] = ("jax[tpu]",),
             env: dict[str, str] | None = None, log_dir: str = "", after: str = "",
             tarball: str | None = None, detach: bool = False) -> TpuPlan:
  """Every command of a TPU pod launch (see the module docstring); runs nothing.

  Args:
    args: si-train's arguments.
    tpu, zone, project: the TPU VM, its zone and (optional) project.
    accelerator_type: its type (v5p-16); sets the host count, checked against an existing TPU.
    version: TPU software for create (default: the family's, TPU_FAMILIES).
    create_args: more `gcloud ... create` flags (--spot, --network=...).
    source: 'git' (copy HEAD of `repo` as a tarball) or 'none' (already at remote_dir).
    remote_dir, python, pip: where the project lives on the workers, the interpreter that runs
      it, and what `pip install -e .` also installs.
    env: extra environment of the run. log_dir: per-worker logs (`--output-directory`) instead
      of streaming. after: '', 'stop' or 'delete'.
    detach: start si-train in the background on every worker (`setsid nohup`: it outlives the
      ssh session and this command), its output in `<remote_dir>/si-train.log` and its pid in
      `<remote_dir>/si-train.pid` on each worker; the plan's `follow` commands watch the log
      and stop the run (SIGTERM: every worker saves the step, exit 75, resumable).
  """
  for flag, value in (("--tpu", tpu), ("--zone", zone), ("--accelerator_type",
                                                         accelerator_type)):
    if not value:
      raise LaunchError(f"{flag}: required for tpu_pod")
  if source not in ("git", "none"):
    raise LaunchError(f"--source {source}: must be 'git' or 'none'")
  if after not in ("", "stop", "delete"):
    raise LaunchError(f"after the run: {after!r} must be '', 'stop' or 'delete'")
  if detach and (after or log_dir):
    raise LaunchError(f"--detach: the run outlives this command, so --{after or 'log_dir'} "
                      f"cannot wait for it (its log is <remote_dir>/si-train.log on each "
                      f"worker)")
  check_train_args(args)
  hosts = tpu_hosts(accelerator_type)
  fam, _ = tpu_family(accelerator_type)
  base = ["gcloud", "compute", "tpus", "tpu-vm"]
  where = [f"--zone={zone}"] + ([f"--project={project}"] if project else [])
  notes = []
  workdir = flag_value(args, "--workdir") or ""
  if hosts > 1 and not workdir.startswith("gs://"):
    notes.append(f"--workdir {workdir} is not on gs://: every host must see the same workdir")
  describe = Command(base + ["describe", tpu, *where, "--format=value(state,acceleratorType)"],
                     note="1. is it there? absent: create; STOPPED: start; READY: use")
  create = Command(base + ["create", tpu, *where, f"--accelerator-type={accelerator_type}",
                           f"--version={version or fam.runtime}", *create_args],
                   note="1a. if absent")
  start = Command(base + ["start", tpu, *where], note="1b. if STOPPED")
  ssh = base + ["ssh", tpu, *where, "--worker=all"]
  rdir = _remote(remote_dir)
  clean_check, copy, install = None, [], None
  if source == "git":
    tarball = tarball or os.path.join(tempfile.gettempdir(), f"si-launch-{tpu}.tar.gz")
    clean_check = Command(["git", "-C", repo, "status", "--porcelain"],
                          note="2. HEAD is what runs: refused if this lists changes or "
                               "untracked files (--allow_dirty)")
    copy = [Command(["git", "-C", repo, "archive", "--format=tar.gz", f"--output={tarball}",
                     "HEAD"], note="2a. the checkout's HEAD as a tarball"),
            Command(base + ["scp", tarball, f"{tpu}:{TPU_TARBALL}", *where, "--worker=all"],
                    note="2b. to every worker")]
    pip_words = " ".join(shlex.quote(p) for p in pip)
    install = Command(ssh + ["--command", f"{python_check(python)} && mkdir -p {rdir} && "
                                          f"tar -xzf ~/{TPU_TARBALL} -C {rdir} && cd {rdir} && "
                                          f"{_remote(python)} -m pip install -q -e . "
                                          f"{pip_words}".rstrip()],
                      note=f"3. Python >= {'.'.join(map(str, PYTHON_FLOOR))}? then unpack and "
                           f"install on every worker")
  run_env = {ENV_ENABLE: "1", ENV_PLATFORM: "tpu", **(env or {})}
  run_cmd = ((f"{python_check(python)} && " if install is None else "") + f"cd {rdir} && "
             + " ".join(f"{k}={shlex.quote(v)}" for k, v in run_env.items())
             + f" {_remote(python)} -m si_jax.cli.train " + shlex.join(args))
  logs = [f"--output-directory={log_dir}"] if log_dir else []
  where_logs = f"logs in {log_dir}/<worker>.log" if log_dir else "output streamed"
  follow = []
  if detach:
    log, pid = f"{rdir}/{DETACHED_LOG}", f"{rdir}/{DETACHED_PID}"
    head, _, rest = run_cmd.partition(f"cd {rdir} && ")
    run_cmd = (f"{head}cd {rdir} && {{ setsid nohup env {rest} > {DETACHED_LOG} 2>&1 "
               f"< /dev/null & echo $! > {DETACHED_PID}; }} && echo \"si-launch: worker "
               f"$(hostname): si-train started, pid $(cat {DETACHED_PID}), log {log}\"")
    where_logs = f"detached: log {log} on each worker"
    follow = [Command(base + ["ssh", tpu, *where, "--worker=0", "--command",
                              f"tail -n +1 -F {log}"],
                      note="watch worker 0's log (Ctrl-C stops watching, not the run)"),
              Command(ssh + ["--command", f"tail -n 5 {log}"],
                      note="the last lines of every worker's log"),
              Command(ssh + ["--command", f"kill -TERM $(cat {pid})"],
                      note="stop: every worker saves the step and exits 75; run the same "
                           "si-launch command again to resume")]
  run = Command(ssh + logs + ["--command", run_cmd],
                note=f"4. si-train on every worker ({where_logs})")
  after_cmd = None
  if after:
    after_cmd = Command(base + [after, tpu, *where] + (["--quiet"] if after == "delete" else []),
                        note=f"5. {after} the TPU (also after a failed run)")
  return TpuPlan(tpu, accelerator_type, hosts, describe, create, start, clean_check, copy,
                 install, run, after_cmd, notes, log_dir, tarball or "", follow)


def run_tpu_pod(plan: TpuPlan, allow_dirty: bool = False) -> int:
  """Runs a TpuPlan: brings the TPU up, copies and installs, runs; stop/delete at the end."""
  for n in plan.notes:
    print(f"si-launch: note: {n}", file=sys.stderr, flush=True)
  echo(plan.describe)
  try:
    res = subprocess.run(plan.describe.argv, capture_output=True, text=True,
                         stdin=subprocess.DEVNULL)
  except FileNotFoundError:
    raise LaunchError("gcloud: not found on PATH (install the Google Cloud CLI)", 127) from None
  if res.returncode != 0:
    if not re.search(r"NOT_FOUND|not found", res.stderr):
      raise LaunchError(f"gcloud describe {plan.tpu} failed (exit code {res.returncode}): "
                        f"{res.stderr.strip()}", code=1)
    step(plan.create)
  else:
    state, _, kind = res.stdout.strip().partition("\t")
    kind = kind.strip().rsplit("/", 1)[-1]
    if kind and kind != plan.accelerator_type:
      raise LaunchError(f"--accelerator_type {plan.accelerator_type}: TPU {plan.tpu} is a "
                        f"{kind}; use its type or another --tpu name")
    if state == "STOPPED":
      step(plan.start)
    elif state != "READY":
      raise LaunchError(f"--tpu {plan.tpu}: its state is {state or 'unknown'}, not READY or "
                        f"STOPPED; wait, or delete it", code=1)
  if plan.clean_check:
    changed = step(plan.clean_check, capture=True).stdout.splitlines()
    if changed and not allow_dirty:
      files = ", ".join(line[3:] for line in changed[:5]) + (", ..." if len(changed) > 5 else "")
      raise LaunchError(f"--source git: {len(changed)} uncommitted change(s) ({files}) would "
                        f"not be copied (HEAD is); commit (or ignore) them or pass "
                        f"--allow_dirty")
  try:
    for c in plan.copy:
      step(c)
  finally:
    if plan.tarball and os.path.exists(plan.tarball):
      os.remove(plan.tarball)
  if plan.install:
    step(plan.install)
  if plan.log_dir:
    os.makedirs(plan.log_dir, exist_ok=True)  # gcloud wants it to exist
  echo(plan.run)
  try:
    rc = exit_code(subprocess.run(plan.run.argv, stdin=subprocess.DEVNULL).returncode)
  finally:
    if plan.after:
      echo(plan.after)
      after_rc = subprocess.run(plan.after.argv, stdin=subprocess.DEVNULL).returncode
      if after_rc:
        print(f"si-launch: {shlex.join(plan.after.argv[:6])} failed (exit code {after_rc}): "
              f"the TPU may still be running", file=sys.stderr, flush=True)
  if plan.follow and not rc:
    for c in plan.follow:
      print(f"si-launch: {c.note}:\n  {c.shell()}", file=sys.stderr, flush=True)
  elif rc == PREEMPTED:
    print(f"si-launch: si-train was preempted and saved a checkpoint (exit code {PREEMPTED}); "
          f"run the same command again to resume", file=sys.stderr, flush=True)
  elif rc:
    print(f"si-launch: si-train failed on at least one worker (exit code {rc})",
          file=sys.stderr, flush=True)
  return rc
