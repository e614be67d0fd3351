"""si-launch: the exact commands of the slurm and tpu_pod launchers for a 2-host and a 16-host
slice, arguments that survive every shell they cross, mistakes named by their flag, and real
runs: local processes (prefixed output, a failure stops the others, a 2-process
jax.distributed run), the sbatch script under a fake srun, a TPU pod launch against a fake
gcloud whose workers are directories here."""

from __future__ import annotations

import difflib
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from si_jax.tools import launch
from si_jax.tools.launch import slurm as launch_slurm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Arguments that break naive quoting: spaces, both quotes, $ and a glob.
AWKWARD = ["--config", "experiments/my configs/x.py:a b", "--workdir", "gs://b/run 1",
           "--config.task.kwargs.note=it's \"quoted\" $HOME *", "--config.x=a b"]


def _main(capsys, *argv):
  rc = launch.main(list(argv))
  out = capsys.readouterr()
  return rc, out.out, out.err


def _commands(script: str) -> list[list[str]]:
  """The non-comment lines of a --dry_run script, each as its argv."""
  return [shlex.split(line) for line in script.splitlines() if not line.startswith("#")]


def _executable(path, text: str) -> str:
  path.write_text(text)
  path.chmod(0o755)
  return str(path)


# ----------------------------------------------------------------------------- tpu_pod


@pytest.mark.parametrize("kind, hosts", [
    ("v5p-8", 1), ("v5p-16", 2), ("v5p-128", 16), ("v4-32", 4), ("v3-8", 1), ("v2-32", 4),
    ("v5litepod-8", 1), ("v5litepod-16", 4), ("v6e-4", 1), ("v6e-256", 64)])
def test_tpu_hosts_follow_from_the_accelerator_type(kind, hosts):
  assert launch.tpu_hosts(kind) == hosts


@pytest.mark.parametrize("kind, message", [
    ("v5p-12", "--accelerator_type v5p-12: 12 cores is not a slice size (8, or a multiple of 8 "
               "above)"),
    ("v6e-6", "--accelerator_type v6e-6: 6 chips is not a slice size (1, 4, 8, or a multiple "
              "of 4 above)"),
    ("v9-8", "--accelerator_type 'v9-8': unknown; expected <family>-<size> with family one of "
             "['v2', 'v3', 'v4', 'v5p', 'v5litepod', 'v6e'] (v5p-16, v5litepod-16, v6e-32, ...)"),
])
def test_an_unknown_accelerator_type_is_refused_by_name(kind, message):
  with pytest.raises(launch.LaunchError) as e:
    launch.tpu_hosts(kind)
  assert str(e.value) == message


@pytest.mark.parametrize("kind, hosts", [("v5p-16", 2), ("v5p-128", 16)])
def test_tpu_pod_dry_run_prints_every_gcloud_command(capsys, kind, hosts):
  rc, out, err = _main(capsys, "tpu_pod", "--tpu", "my-pod", "--zone", "us-east5-a",
                       "--accelerator_type", kind, "--project", "proj",
                       "--create_args=--spot", "--repo", "/src/si jax", "--delete", "--dry_run",
                       "--", *AWKWARD)
  assert (rc, err) == (0, "")
  assert out.splitlines()[0] == (f"# si-launch tpu_pod: my-pod, {kind} = {hosts} hosts (one "
                                 f"si-train process each)")
  tar = os.path.join(tempfile.gettempdir(), "si-launch-my-pod.tar.gz")
  tpu = ["gcloud", "compute", "tpus", "tpu-vm"]
  where = ["my-pod", "--zone=us-east5-a", "--project=proj"]
  cmds = _commands(out)
  assert cmds == [
      tpu + ["describe", *where, "--format=value(state,acceleratorType)"],
      tpu + ["create", *where, f"--accelerator-type={kind}", "--version=v2-alpha-tpuv5",
             "--spot"],
      tpu + ["start", *where],
      ["git", "-C", "/src/si jax", "status", "--porcelain"],
      ["git", "-C", "/src/si jax", "archive", "--format=tar.gz", f"--output={tar}", "HEAD"],
      tpu + ["scp", tar, "my-pod:si-launch-src.tar.gz", "--zone=us-east5-a", "--project=proj",
             "--worker=all"],
      tpu + ["ssh", *where, "--worker=all", "--command",
             launch.python_check("python3") + " && mkdir -p ~/si_jax && tar -xzf "
             "~/si-launch-src.tar.gz -C ~/si_jax && cd ~/si_jax && python3 -m pip install -q "
             "-e . 'jax[tpu]'"],
      tpu + ["ssh", *where, "--worker=all", "--command",
             "cd ~/si_jax && SI_MULTIHOST=1 SI_PLATFORM=tpu python3 -m si_jax.cli.train "
             + shlex.join(AWKWARD)],
      tpu + ["delete", *where, "--quiet"]]
  remote = shlex.split(cmds[7][-1])  # what the worker's shell reads: the arguments, unchanged
  assert remote[:8] == ["cd", "~/si_jax", "&&", "SI_MULTIHOST=1", "SI_PLATFORM=tpu", "python3",
                        "-m", "si_jax.cli.train"]
  assert remote[8:] == AWKWARD


def test_tpu_pod_source_none_and_local_workdir(capsys):
  rc, out, _ = _main(capsys, "tpu_pod", "--tpu", "p", "--zone", "z", "--accelerator_type",
                     "v5litepod-16", "--source", "none", "--remote_dir", "/opt/my si",
                     "--python", "~/venv/bin/python", "--env", "JAX_COMPILATION_CACHE_DIR=gs://c",
                     "--log_dir", "logs", "--dry_run", "--",
                     "--config", "c.py", "--workdir", "/tmp/w")
  assert rc == 0
  assert "# note: --workdir /tmp/w is not on gs://: every host must see the same workdir" in out
  cmds = _commands(out)
  assert [c[4] for c in cmds] == ["describe", "create", "start", "ssh"]  # no copy, no install
  assert cmds[1][-1] == "--version=v2-alpha-tpuv5-lite"
  assert cmds[3][-3:] == [
      "--output-directory=logs", "--command",
      launch.python_check("~/venv/bin/python") + " && cd '/opt/my si' && SI_MULTIHOST=1 SI_PLATFORM=tpu JAX_COMPILATION_CACHE_DIR=gs://c "
      "~/venv/bin/python "
      "-m si_jax.cli.train --config c.py --workdir /tmp/w"]


def _git_repo(path) -> str:
  """A one-commit git repository with a file in a folder."""
  env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
             GIT_COMMITTER_EMAIL="t@t")
  (path / "experiments").mkdir(parents=True)
  (path / "experiments" / "c.py").write_text("config = 1\n")
  for cmd in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "init"]):
    subprocess.run(["git", "-C", str(path), *cmd], check=True, env=env, capture_output=True)
  return str(path)


def _fake_pod(tmp_path, workers: int = 2) -> tuple[dict, object]:
  """PATH with a fake gcloud: the TPU is absent until created; `scp` copies into each worker's
  home (tmp_path/w<i>); `ssh --worker=all --command C` runs `bash -c C` in each home and fails
  if one fails. Every call is appended to tmp_path/calls as a JSON list. Also a fake python for
  the workers: `-m pip` is recorded, `-m si_jax.cli.train` prints its arguments and environment."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  homes = [tmp_path / f"w{i}" for i in range(workers)]
  for h in homes:
    h.mkdir()
  _executable(bin_dir / "gcloud", f"""#!{sys.executable}
import json, os, shutil, subprocess, sys
args = sys.argv[1:]
with open({str(tmp_path / "calls")!r}, "a") as f:
  f.write(json.dumps(args) + "\\n")
state = {str(tmp_path / "state")!r}
homes = {[str(h) for h in homes]!r}
verb = args[3]
if verb == "describe":
  if not os.path.exists(state):
    sys.exit("ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND: node not found")
  print(open(state).read() + "\\tv5p-16")
elif verb in ("create", "start", "stop"):
  open(state, "w").write({{"stop": "STOPPED"}}.get(verb, "READY"))
elif verb == "scp":
  for h in homes:
    shutil.copy(args[4], os.path.join(h, args[5].split(":", 1)[1]))
elif verb == "ssh":
  command = args[args.index("--command") + 1]
  rcs = [subprocess.run(["bash", "-c", command], cwd=h, env=dict(os.environ, HOME=h,
                                                                 WORKER=str(i))).returncode
         for i, h in enumerate(homes)]
  sys.exit(max(rcs))
""")
  python = _executable(tmp_path / "fake python", f"""#!{sys.executable}
import json, os, sys
old = os.environ["WORKER"] in os.environ.get("OLD_PYTHON_WORKERS", "").split(",")
if sys.argv[1] == "--version":
  print("Python 3.10.12" if old else "Python 3.11.7")
elif sys.argv[1] == "-c":  # the launcher's version check
  sys.exit(1 if old else 0)
elif sys.argv[1:3] == ["-m", "pip"]:
  open(os.path.join(os.environ["HOME"], "pip"), "w").write(json.dumps(sys.argv[3:]))
else:
  print(json.dumps(dict(worker=os.environ["WORKER"], cwd=os.getcwd(), argv=sys.argv[3:],
                        multihost=os.environ.get("SI_MULTIHOST"))), flush=True)
  if "--config.preempted=1" in sys.argv:
    sys.exit(75)
  sys.exit(3 if "--config.fail=1" in sys.argv and os.environ["WORKER"] == "1" else 0)
""")  # workers named in OLD_PYTHON_WORKERS have Python 3.10
  env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  return env, python


def _calls(tmp_path) -> list[list[str]]:
  return [json.loads(line) for line in (tmp_path / "calls").read_text().splitlines()]


def test_tpu_pod_creates_copies_installs_runs_and_stops_on_a_fake_pod(tmp_path):
  env, python = _fake_pod(tmp_path)
  repo = _git_repo(tmp_path / "repo")
  cmd = [sys.executable, "-m", "si_jax.tools.launch", "tpu_pod", "--tpu", "pod", "--zone", "z",
         "--accelerator_type", "v5p-16", "--repo", repo, "--python", python, "--stop", "--",
         *AWKWARD]
  res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
  assert res.returncode == 0, res.stderr
  assert [c[3] for c in _calls(tmp_path)] == [
      "describe", "create", "scp", "ssh", "ssh", "stop"]
  runs = sorted((json.loads(line) for line in res.stdout.splitlines()),
                key=lambda r: r["worker"])
  for i, r in enumerate(runs):  # every worker ran si-train in the copy, arguments intact
    home = tmp_path / f"w{i}"
    assert r == dict(worker=str(i), cwd=str(home / "si_jax"), argv=AWKWARD, multihost="1")
    assert (home / "si_jax" / "experiments" / "c.py").read_text() == "config = 1\n"
    assert json.loads((home / "pip").read_text()) == ["install", "-q", "-e", ".", "jax[tpu]"]
  assert (tmp_path / "state").read_text() == "STOPPED"
  assert not os.path.exists(os.path.join(tempfile.gettempdir(), "si-launch-pod.tar.gz"))

  (tmp_path / "calls").unlink()  # again: the TPU is there (STOPPED): started, not created
  res = subprocess.run(cmd[:-len(AWKWARD)] + ["--config", "c", "--workdir", "gs://w",
                                              "--config.fail=1"],
                       cwd=REPO, env=env, capture_output=True, text=True)
  assert res.returncode == 3  # worker 1 failed; the TPU is stopped all the same
  assert [c[3] for c in _calls(tmp_path)] == [
      "describe", "start", "scp", "ssh", "ssh", "stop"]
  assert "si-launch: si-train failed on at least one worker (exit code 3)" in res.stderr

  res = subprocess.run(cmd[:-len(AWKWARD)] + ["--config", "c", "--workdir", "gs://w",
                                              "--config.preempted=1"],
                       cwd=REPO, env=env, capture_output=True, text=True)
  assert res.returncode == 75
  assert res.stderr.splitlines()[-1] == (
      "si-launch: si-train was preempted and saved a checkpoint (exit code 75); run the same "
      "command again to resume")


def test_tpu_pod_detach_leaves_si_train_running_with_its_log_on_every_worker(tmp_path):
  """--detach: si-train starts in the background on every worker (setsid nohup, output to
  <remote_dir>/si-train.log, pid beside it); si-launch returns and prints how to watch the
  logs and stop the run."""
  env, python = _fake_pod(tmp_path)
  repo = _git_repo(tmp_path / "repo")
  res = subprocess.run([sys.executable, "-m", "si_jax.tools.launch", "tpu_pod", "--tpu", "pod",
                        "--zone", "z", "--accelerator_type", "v5p-16", "--repo", repo,
                        "--python", python, "--detach", "--", *AWKWARD], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
  assert res.returncode == 0, res.stderr
  for i in range(2):
    d = tmp_path / f"w{i}" / "si_jax"
    assert f"si-launch: worker {socket.gethostname()}: si-train started, pid " \
           f"{(d / 'si-train.pid').read_text().strip()}, log ~/si_jax/si-train.log" in res.stdout
    deadline = time.monotonic() + 60  # the background process writes its line soon after
    while not (d / "si-train.log").read_text() and time.monotonic() < deadline:
      time.sleep(0.1)
    assert json.loads((d / "si-train.log").read_text()) == dict(
        worker=str(i), cwd=str(d), argv=AWKWARD, multihost="1")
  err = res.stderr.splitlines()
  assert "si-launch: watch worker 0's log (Ctrl-C stops watching, not the run):" in err
  assert ("  gcloud compute tpus tpu-vm ssh pod --zone=z --worker=all --command 'kill -TERM "
          "$(cat ~/si_jax/si-train.pid)'") in err
  rc = launch.main(["tpu_pod", "--tpu", "p", "--zone", "z", "--accelerator_type", "v5p-16",
                    "--detach", "--stop", "--dry_run", "--", "--config", "c", "--workdir", "w"])
  assert rc == 2


@pytest.mark.parametrize("source", ["git", "none"])
def test_tpu_pod_checks_the_workers_python_first(tmp_path, source):
  """The pinned jax needs Python >= 3.11; a TPU VM image may have 3.10: the first command on
  the workers stops with one line naming the worker and the way out, before pip or si-train."""
  env, python = _fake_pod(tmp_path)
  env["OLD_PYTHON_WORKERS"] = "1"
  repo = _git_repo(tmp_path / "repo")
  res = subprocess.run([sys.executable, "-m", "si_jax.tools.launch", "tpu_pod", "--tpu", "pod",
                        "--zone", "z", "--accelerator_type", "v5p-16", "--repo", repo,
                        "--source", source, "--python", python, "--", "--config", "c",
                        "--workdir", "gs://b/w"], cwd=REPO, env=env, capture_output=True,
                       text=True)
  assert res.returncode == 2, res.stdout + res.stderr
  assert (f"si-launch: error: worker {socket.gethostname()}: Python 3.10.12 is not Python >= "
          f"3.11, which si_jax needs (jax, jaxlib, orbax): make a virtualenv of one on every "
          f"worker (sudo apt-get install -y python3.11-venv && python3.11 -m venv ~/si-venv) "
          f"and pass --python ~/si-venv/bin/python") in res.stderr.splitlines()
  assert not (tmp_path / "w1" / "pip").exists() and '"worker"' not in res.stdout  # no run


def test_setup_py_states_the_python_the_launcher_checks():
  text = open(os.path.join(REPO, "setup.py"), encoding="utf-8").read()
  floor = ".".join(map(str, launch.PYTHON_FLOOR))
  assert f'python_requires=">={floor}"' in text
  from importlib import metadata
  floors = {}  # what the pinned packages, as installed here, require
  for dist in ("jax", "jaxlib", "flax", "orbax-checkpoint", "transformers", "optax"):
    m = re.fullmatch(r">=(\d+)\.(\d+)(?:\.\d+)?", metadata.metadata(dist)["Requires-Python"])
    floors[dist] = (int(m.group(1)), int(m.group(2)))
  assert max(floors.values()) == launch.PYTHON_FLOOR, floors


def test_tpu_pod_refuses_uncommitted_changes_and_another_slice_type(tmp_path):
  env, python = _fake_pod(tmp_path)
  repo = _git_repo(tmp_path / "repo")
  (tmp_path / "repo" / "experiments" / "c.py").write_text("config = 2\n")
  (tmp_path / "repo" / "experiments" / "new.py").write_text("config = 3\n")
  (tmp_path / "state").write_text("READY")
  cmd = [sys.executable, "-m", "si_jax.tools.launch", "tpu_pod", "--tpu", "pod", "--zone", "z",
         "--repo", repo, "--python", python, "--", "--config", "c", "--workdir", "gs://w"]
  res = subprocess.run(cmd[:4] + ["--accelerator_type", "v5p-16"] + cmd[4:], cwd=REPO,
                       env=env, capture_output=True, text=True)
  assert res.returncode == 2
  assert res.stderr.splitlines()[-1] == (
      "si-launch: error: --source git: 2 uncommitted change(s) (experiments/c.py, "
      "experiments/new.py) would not be copied (HEAD is); commit (or ignore) them or pass "
      "--allow_dirty")
  res = subprocess.run(cmd[:4] + ["--accelerator_type", "v5p-32"] + cmd[4:], cwd=REPO,
                       env=env, capture_output=True, text=True)
  assert res.returncode == 2
  assert res.stderr.splitlines()[-1] == (
      "si-launch: error: --accelerator_type v5p-32: TPU pod is a v5p-16; use its type or "
      "another --tpu name")
  assert [c[3] for c in _calls(tmp_path)] == ["describe", "describe"]  # nothing copied


# ----------------------------------------------------------------------------- slurm


SCRIPT = """#!/bin/bash
# si-launch slurm: one si-train process per node; the first node coordinates.
#SBATCH --job-name=si-train
#SBATCH --nodes={nodes}
#SBATCH --ntasks-per-node=1
#SBATCH --requeue
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
set -euo pipefail
coordinator=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)
export SI_MULTIHOST=1
export SI_COORDINATOR="$coordinator:$((20000 + SLURM_JOB_ID % 20000))"
export SI_PLATFORM=gpu
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.9  # what si-plan planned against
echo "si-launch: job $SLURM_JOB_ID, $SLURM_JOB_NUM_NODES nodes ($SLURM_JOB_NODELIST), \
coordinator $SI_COORDINATOR"
preempted="${{TMPDIR:-/tmp}}/si-launch-preempted-$SLURM_JOB_ID"
rm -f "$preempted"
trap 'echo "si-launch: SIGTERM: si-train saves at its next step boundary"' TERM
rc=0
srun --kill-on-bad-exit=1 bash -c 'trap : TERM; SI_NUM_PROCESSES=$SLURM_NTASKS \
SI_PROCESS_ID=$SLURM_PROCID "$@"; rc=$?; if [ $rc -eq 75 ]; then if [ "$SLURM_PROCID" = 0 ]; \
then touch "$0"; fi; exit 0; fi; exit $rc' "$preempted" \\
  si-train {args} || rc=$?
if [ "$rc" -eq 0 ] && [ -e "$preempted" ]; then
  rm -f "$preempted"
  echo "si-launch: si-train was preempted and saved a checkpoint (exit code 75); requeueing \
job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID" || exit 75
fi
exit "$rc"
"""


@pytest.mark.parametrize("nodes", [2, 16])
def test_slurm_dry_run_prints_sbatch_and_its_script(capsys, nodes):
  args = ["--config", "c.py", "--workdir", "/shared/my runs/a", "--config.x=a b",
          "--config.y=it's"]
  rc, out, err = _main(capsys, "slurm", "--nodes", str(nodes), "--sbatch_args",
                       "--partition=gpu --time=4:00:00", "--dry_run", "--", *args)
  assert (rc, err) == (0, "")
  lines = out.splitlines()
  assert shlex.split(lines[0]) == ["mkdir", "-p", "/shared/my runs/a"]
  assert shlex.split(lines[1]) == ["sbatch", "--output=/shared/my runs/a/slurm-%j.log",
                                   "--partition=gpu", "--time=4:00:00", "<<SI_LAUNCH_EOF"]
  assert lines[-1] == "SI_LAUNCH_EOF"
  script = "\n".join(lines[2:-1]) + "\n"
  assert script == SCRIPT.format(nodes=nodes, args=shlex.join(args))
  run_line = next(l for l in script.splitlines() if l.startswith("  si-train "))
  assert shlex.split(run_line) == ["si-train", *args, "||", "rc=$?"]
  # the printed text is a shell command that feeds sbatch exactly this script
  heredoc = out[out.index(" <<'SI_LAUNCH_EOF'"):]
  res = subprocess.run(["bash", "-c", "cat" + heredoc], capture_output=True, text=True)
  assert res.stdout == script


def test_slurm_script_starts_one_process_per_node_with_its_index(tmp_path):
  """The script run by bash under a fake scontrol / srun (2 tasks, as srun would start)."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  _executable(bin_dir / "scontrol", "#!/bin/sh\nprintf 'gpu-a\\ngpu-b\\n'\n")
  _executable(bin_dir / "srun", '#!/bin/bash\n[ "$1" = --kill-on-bad-exit=1 ] || exit 9\nshift\n'
                                'for i in 0 1; do SLURM_PROCID=$i SLURM_NTASKS=2 "$@" & done\n'
                                'wait\n')
  stand_in = _executable(tmp_path / "si train", f"""#!{sys.executable}
import json, os, sys
keys = ("SI_MULTIHOST", "SI_COORDINATOR", "SI_NUM_PROCESSES", "SI_PROCESS_ID", "SI_PLATFORM",
        "RUN_TAG")
line = json.dumps(dict(argv=sys.argv[1:], **{{k: os.environ.get(k) for k in keys}}))
sys.stdout.write(line + "\\n")  # one write: the two tasks share the pipe
""")
  script = launch.slurm_script(AWKWARD, nodes=2, program=[stand_in], env={"RUN_TAG": "a b"})
  env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
             SLURM_JOB_NODELIST="gpu-[a-b]", SLURM_JOB_ID="123456", SLURM_JOB_NUM_NODES="2")
  res = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
  assert res.returncode == 0, res.stderr
  lines = res.stdout.splitlines()
  assert lines[0] == ("si-launch: job 123456, 2 nodes (gpu-[a-b]), coordinator "
                      "gpu-a:23456")
  tasks = sorted((json.loads(line) for line in lines[1:]), key=lambda t: t["SI_PROCESS_ID"])
  assert tasks == [dict(argv=AWKWARD, SI_MULTIHOST="1", SI_COORDINATOR="gpu-a:23456",
                        SI_NUM_PROCESSES="2", SI_PROCESS_ID=str(i), SI_PLATFORM="gpu",
                        RUN_TAG="a b")
                   for i in range(2)]


@pytest.mark.parametrize("codes, rc, requeued", [((75, 75), 0, True), ((0, 0), 0, False),
                                                  ((3, 0), 3, False)])
def test_slurm_script_requeues_the_job_when_si_train_was_preempted(tmp_path, codes, rc,
                                                                  requeued):
  """Both tasks exit 75 (each saved the same step): no task counts as failed, so
  --kill-on-bad-exit kills none mid-way, and the batch shell requeues the job."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  calls = tmp_path / "scontrol_calls"
  _executable(bin_dir / "scontrol", f"#!/bin/sh\necho \"$@\" >> {calls}\n"
                                    "[ \"$1\" = show ] && printf 'gpu-a\\ngpu-b\\n'\nexit 0\n")
  _executable(bin_dir / "srun",  # the tasks' highest exit code, as srun reports it
              '#!/bin/bash\nshift\nrc=0\nfor i in 0 1; do SLURM_PROCID=$i SLURM_NTASKS=2 '
              '"$@" & pids[$i]=$!; done\nfor p in "${pids[@]}"; do wait $p || { c=$?; '
              '[ $c -gt $rc ] && rc=$c; }; done\nexit $rc\n')
  stand_in = _executable(tmp_path / "si-train", f"""#!{sys.executable}
import os, sys
sys.exit({list(codes)!r}[int(os.environ["SI_PROCESS_ID"])])
""")
  script = launch.slurm_script(["--config", "c", "--workdir", "w"], nodes=2, program=[stand_in])
  env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
             SLURM_JOB_NODELIST="gpu-[a-b]", SLURM_JOB_ID="123456", SLURM_JOB_NUM_NODES="2",
             TMPDIR=str(tmp_path))
  res = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
  assert res.returncode == rc, res.stdout + res.stderr
  lines = calls.read_text().splitlines()
  assert ("requeue 123456" in lines) == requeued, lines
  if requeued:
    assert res.stdout.splitlines()[-1] == (
        "si-launch: si-train was preempted and saved a checkpoint (exit code 75); requeueing "
        "job 123456")
  assert not os.path.exists(tmp_path / "si-launch-preempted-123456")


def test_slurm_submits_and_follows_the_log_until_the_job_ends(capsys, tmp_path, monkeypatch):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  workdir, polls = tmp_path / "run", tmp_path / "polls"
  _executable(bin_dir / "sbatch", f"#!/bin/sh\ncat > {tmp_path}/script\n"
                                  f"echo step 1 > {workdir}/slurm-42.log\n"
                                  "echo Submitted batch job 42\n")
  _executable(bin_dir / "squeue",  # queued for two looks, then gone; the log grows meanwhile
              f"#!/bin/sh\necho x >> {polls}\nn=$(wc -l < {polls})\n"
              f"[ $n -le 2 ] && echo step $((n + 1)) >> {workdir}/slurm-42.log && echo 42\n"
              "exit 0\n")
  _executable(bin_dir / "sacct", "#!/bin/sh\necho FAILED\n")
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  monkeypatch.setattr(launch_slurm, "FOLLOW_POLL_S", 0.0)  # where follow_job reads it
  rc, out, err = _main(capsys, "slurm", "--nodes", "2", "--follow", "--", "--config", "c",
                       "--workdir", str(workdir))
  assert rc == 1  # sacct: FAILED
  assert out == "Submitted batch job 42\nstep 1\nstep 2\nstep 3\n"
  assert err.splitlines()[-1] == "si-launch: job 42 left the queue: FAILED"
  assert "#SBATCH --nodes=2" in (tmp_path / "script").read_text()


# ----------------------------------------------------------------------------- local


def test_local_dry_run_prints_each_process_with_its_environment(capsys, monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=8")
  rc, out, _ = _main(capsys, "local", "--processes", "2", "--devices_per_process", "4",
                     "--port", "1234", "--dry_run", "--", *AWKWARD)
  assert rc == 0
  py = shlex.join([sys.executable, "-m", "si_jax.cli.train"])
  assert out.splitlines() == [
      f"SI_MULTIHOST=1 SI_COORDINATOR=localhost:1234 SI_NUM_PROCESSES=2 SI_PROCESS_ID={i} "
      f"JAX_PLATFORMS=cpu JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo XLA_FLAGS='--xla_dump_to=/tmp/x "
      f"--xla_force_host_platform_device_count=4' {py} {shlex.join(AWKWARD)}" for i in range(2)]
  rc, out, _ = _main(capsys, "local", "--dry_run", "--", *AWKWARD)  # one process: si-train
  assert (rc, out) == (0, f"{py} {shlex.join(AWKWARD)}\n")
  assert launch.local_commands(["a"], processes=2)[0].env["SI_COORDINATOR"] != "localhost:0"


STAND_IN = """import os, sys, time
i = os.environ["SI_PROCESS_ID"]
print(f"process {i} of {os.environ['SI_NUM_PROCESSES']} at {os.environ['SI_COORDINATOR']}, "
      f"{os.environ['XLA_FLAGS']}, args {sys.argv[1:]}", flush=True)
if "fail" in sys.argv and i == "1":
  print("boom", file=sys.stderr, flush=True)
  sys.exit(3)
if "split" in sys.argv:  # a library writing half a line to stderr, unbuffered (gloo does)
  os.write(2, b"[lib] half ")
  print(f"whole line {i}", flush=True)
  os.write(2, b"and the rest\\n")
if "fail" in sys.argv:
  # Until the launcher stops it: it must still be running when process 1's failure is seen,
  # however slowly a loaded machine starts process 1, hence far longer than any start-up.
  time.sleep(600)
  print("never printed", flush=True)
"""


def _local(tmp_path, *args):
  (tmp_path / "stand_in.py").write_text(STAND_IN)
  program = shlex.join([sys.executable, str(tmp_path / "stand_in.py")])
  cmd = [sys.executable, "-m", "si_jax.tools.launch", "local", "--processes", "2",
         "--devices_per_process", "3", "--port", "4321", "--program", program, "--", *args]
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)


def test_local_runs_each_process_with_its_environment_and_prefixed_output(tmp_path):
  res = _local(tmp_path, "--config.x=a b")
  assert (res.returncode, res.stderr) == (0, "")
  assert sorted(res.stdout.splitlines()) == [
      f"[p{i}] process {i} of 2 at localhost:4321, "
      f"--xla_force_host_platform_device_count=3, args ['--config.x=a b']" for i in range(2)]


def test_local_keeps_stdout_lines_whole_when_stderr_writes_half_lines(tmp_path):
  """stdout and stderr are separate pipes: a half line on stderr cannot split a stdout line
  (CI once saw '[p0] [Gloo] Rank 0 2 4 [0, 10]' from one shared pipe)."""
  res = _local(tmp_path, "split")
  assert res.returncode == 0, res.stderr
  assert sorted(l for l in res.stdout.splitlines() if "whole" in l) == [
      "[p0] whole line 0", "[p1] whole line 1"]
  assert sorted(res.stderr.splitlines()) == [
      "[p0] [lib] half and the rest", "[p1] [lib] half and the rest"]


def test_local_stops_the_others_when_one_process_fails(tmp_path):
  res = _local(tmp_path, "fail")
  assert res.returncode == 3
  assert res.stderr == ("[p1] boom\n"
                        "si-launch: process 1 of 2 exited with code 3; stopped process 0\n")
  assert "never printed" not in res.stdout


PREEMPTED_STAND_IN = """import os, signal, sys, time
i, d = os.environ["SI_PROCESS_ID"], sys.argv[1]
runs = sum(name.endswith(f"-p{i}") for name in os.listdir(d))  # this process's launches
open(os.path.join(d, f"run{runs}-p{i}"), "w").close()
if runs:  # the restart: the run resumes and ends
  print(f"process {i} resumed", flush=True)
  sys.exit(0)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stopped by the launcher: a failure
if i == "1":
  open(os.path.join(d, "..", "p1.tmp"), "w").write(str(os.getpid()))
  os.replace(os.path.join(d, "..", "p1.tmp"), os.path.join(d, "..", "p1.pid"))
  sys.exit(75)  # preempted: saved, first
while not os.path.exists(os.path.join(d, "..", "p1.pid")):
  time.sleep(0.01)
pid = int(open(os.path.join(d, "..", "p1.pid")).read())
while True:  # still saving until process 1 is gone (reaped by the launcher)
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    break
  time.sleep(0.01)
print(f"process {i} saved", flush=True)
sys.exit(75)
"""


def _preempted_launch(tmp_path, *options):
  (tmp_path / "stand_in.py").write_text(PREEMPTED_STAND_IN)
  runs = tmp_path / "runs"
  runs.mkdir()
  program = shlex.join([sys.executable, str(tmp_path / "stand_in.py"), str(runs)])
  return subprocess.run([sys.executable, "-m", "si_jax.tools.launch", "local", "--processes", "2",
                         *options, "--program", program, "--"],
                        cwd=REPO, capture_output=True, text=True)


def test_local_waits_for_every_process_of_a_preempted_run_and_says_to_resume(tmp_path):
  res = _preempted_launch(tmp_path)
  assert res.returncode == 75, res.stdout + res.stderr
  assert res.stdout.splitlines() == ["[p0] process 0 saved"]  # not stopped: it finished
  assert res.stderr.splitlines() == [
      "si-launch: si-train was preempted and saved a checkpoint (exit code 75); run the same "
      "command again to resume"]


def test_local_restarts_a_preempted_run_with_max_restarts(tmp_path):
  res = _preempted_launch(tmp_path, "--max_restarts", "2")
  assert res.returncode == 0, res.stdout + res.stderr
  assert sorted(res.stdout.splitlines()) == ["[p0] process 0 resumed", "[p0] process 0 saved",
                                             "[p1] process 1 resumed"]
  assert res.stderr.splitlines() == [
      "si-launch: si-train was preempted and saved a checkpoint; restart 1 of 2"]
  assert sorted(os.listdir(tmp_path / "runs")) == ["run0-p0", "run0-p1", "run1-p0", "run1-p1"]


def test_the_preempted_exit_code_is_the_one_si_train_uses():
  from si_jax import preemption
  assert launch.PREEMPTED == preemption.EXIT_CODE == 75


def test_local_processes_form_one_jax_distributed_run(tmp_path):
  """The environment si-launch sets is what si_jax.multihost needs: 2 processes x 2 CPU
  devices make one 4-device run whose processes see each other's values."""
  (tmp_path / "two_hosts.py").write_text(
      "from si_jax import multihost\n"
      "assert multihost.initialize_from_env()\n"
      "import jax, jax.numpy as jnp\n"
      "from jax.experimental import multihost_utils\n"
      "x = multihost_utils.process_allgather(jnp.array([jax.process_index() * 10]))\n"
      "print(jax.process_index(), jax.process_count(), jax.device_count(), x.ravel().tolist(),"
      " flush=True)\n")
  program = shlex.join([sys.executable, str(tmp_path / "two_hosts.py")])
  env = dict(os.environ, PYTHONPATH=REPO)  # the stand-in imports si_jax from this checkout
  res = subprocess.run([sys.executable, "-m", "si_jax.tools.launch", "local", "--processes", "2",
                        "--devices_per_process", "2", "--program", program, "--"],
                       cwd=REPO, env=env, capture_output=True, text=True)
  assert res.returncode == 0, res.stdout + res.stderr
  results = sorted(line for line in res.stdout.splitlines() if line.endswith("[0, 10]"))
  assert results == ["[p0] 0 2 4 [0, 10]", "[p1] 1 2 4 [0, 10]"]


def test_env_names_are_the_ones_multihost_reads():
  from si_jax import multihost
  assert (launch.ENV_ENABLE, launch.ENV_COORDINATOR, launch.ENV_NUM_PROCESSES,
          launch.ENV_PROCESS_ID) == (multihost.ENV_ENABLE, multihost.ENV_COORDINATOR,
                                     multihost.ENV_NUM_PROCESSES, multihost.ENV_PROCESS_ID)


# ----------------------------------------------------------------------------- mistakes


WD = ["--", "--config", "c", "--workdir", "w"]


@pytest.mark.parametrize("argv, message", [
    (["local", "--processes", "0", *WD], "--processes 0: must be >= 1"),
    (["local", "--port", "70000", *WD], "--port 70000: must be in 0..65535 (0: a free one)"),
    (["local", "--env", "1X=y", *WD], "--env 1X=y: expected KEY=VALUE with KEY a variable name"),
    (["local", "--program", "python 'x", *WD], "--program \"python 'x\": No closing quotation"),
    (["local", "--config", "c"],
     "no si-train arguments: give them after `--` (si-launch local [options] -- --config FILE "
     "--workdir DIR)"),
    ([], "si-launch: the following arguments are required: {local,slurm,tpu_pod}"),
    (["lokal", *WD], "si-launch: argument {local,slurm,tpu_pod}: invalid choice: 'lokal' "
                     "(choose from 'local', 'slurm', 'tpu_pod')"),
    (["slurm", *WD], "si-launch slurm: the following arguments are required: --nodes"),
    (["slurm", "--nodes", "0", *WD], "--nodes 0: must be >= 1"),
    (["slurm", "--nodes", "2", "--port", "80", *WD],
     "--port 80: must be in 1024..65535 (0: derived from the job id)"),
    (["slurm", "--nodes", "2", "--job_name", "my run", *WD],
     "--job_name 'my run': must be non-empty, without spaces, quotes, $ or backslashes (it is "
     "an #SBATCH line)"),
    (["slurm", "--nodes", "2", "--follow", "--log", "x-%N.log", *WD],
     "--follow: cannot follow the log 'x-%N.log': only %j and %x are filled in, not %N"),
    (["slurm", "--nodes", "2", "--", "--config", "c"],
     "si-train arguments (after --): no --workdir"),
    (["slurm", "--nodes", "2", "--gpus", "8", *WD],
     "si-launch slurm: unrecognized arguments: --gpus 8"),
    (["tpu_pod", "--tpu", "t", "--accelerator_type", "v5p-16", *WD],
     "--zone: required for tpu_pod"),
    (["tpu_pod", "--tpu", "t", "--zone", "z", *WD], "--accelerator_type: required for tpu_pod"),
    (["tpu_pod", "--tpu", "t", "--zone", "z", "--accelerator_type", "v5p-16", "--stop",
      "--delete", *WD], "si-launch tpu_pod: argument --delete: not allowed with argument --stop"),
    (["tpu_pod", "--tpu", "t", "--zone", "z", "--accelerator_type", "v5p-16", "--source",
      "pip", *WD],
     "si-launch tpu_pod: argument --source: invalid choice: 'pip' (choose from 'git', 'none')"),
])
def test_mistakes_are_one_line_naming_the_flag(capsys, monkeypatch, tmp_path, argv, message):
  monkeypatch.chdir(tmp_path)  # were one accepted, its workdir `w` would land here
  rc, out, err = _main(capsys, *argv)
  assert (rc, out, err) == (2, "", f"si-launch: error: {message}\n")


# ----------------------------------------------------------------------------- the runbooks


def _doc_dry_runs(path: str) -> list[tuple[list[str], str]]:
  """(argv, the block's text after the command) of every fenced block of `path` that starts
  with `$ si-launch ... --dry_run`."""
  text = open(path, encoding="utf-8").read()
  out = []
  for block in re.findall(r"^```\n(\$ si-launch .*?)^```$", text, re.S | re.M):
    command, _, printed = block.partition("\n")
    argv = shlex.split(command)[2:]
    assert "--dry_run" in argv, command
    out.append((argv, printed))
  return out


def test_the_runbooks_show_what_the_dry_runs_print(capsys, monkeypatch):
  """launch/README.md's slurm and tpu_pod runbooks show the whole dry-run output of their
  commands: it must be what si-launch prints now."""
  monkeypatch.setattr(tempfile, "tempdir", "/tmp")  # the tarball's path in the tpu_pod plan
  runs = _doc_dry_runs(os.path.join(REPO, "launch", "README.md"))
  assert sorted(argv[0] for argv, _ in runs) == ["slurm", "tpu_pod"]
  for argv, printed in runs:
    rc, out, err = _main(capsys, *argv)
    assert (rc, err) == (0, ""), argv
    assert out == printed, f"launch/README.md shows another dry run of {argv[0]}: " + "".join(
        difflib.unified_diff(printed.splitlines(True), out.splitlines(True), "README", "now"))
