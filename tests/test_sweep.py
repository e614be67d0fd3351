"""si-sweep: values read like si-train's flags, the grid's runs and names, validation before any
run, launcher command lines, the mean ± std table over seeds, and an end-to-end sweep of the
smoke config that is interrupted and resumed without redoing finished runs."""

from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys

import jax
import pytest

from si_jax.tools import launch
from si_jax.tools import sweep as sweep_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = "experiments/configs/arith_grpo.py:smoke"
# Each smoke run a few seconds of work: 2 SFT steps, 1 RL step, 4 held-out problems x 4 samples
# (the RL step's 4 prompts x 4 rollouts: evaluation and RL share their sampling programs).
FAST = ["--set", "rl.steps=1", "--set", "sft.steps=2", "--set", "eval.num_examples=4",
        "--set", "eval.k=4", "--set", "log.tensorboard=false", "--set", "checkpoint.every=0"]


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
  monkeypatch.chdir(REPO)  # config paths are relative to the repository, as for si-train


def _main(capsys, *argv):
  rc = sweep_lib.main(list(argv))
  out = capsys.readouterr()
  return rc, out.out, out.err


# ----------------------------------------------------------------------------- values, grid


def test_values_are_read_like_the_command_line():
  assert sweep_lib.split_values("grpo,gspo") == ["grpo", "gspo"]
  assert sweep_lib.split_values("(1,2),(2, 4),'a,b'") == ["(1,2)", "(2, 4)", "'a,b'"]
  parsed = [sweep_lib.parse_value(v) for v in ("3", "1e-4", "true", "False", "gspo", "(1,2)",
                                               "gs://b/x", "'a,b'")]
  assert parsed == [3, 1e-4, True, False, "gspo", (1, 2), "gs://b/x", "a,b"]
  assert [type(v) for v in parsed[:3]] == [int, float, bool]
  for v in parsed:  # format_value writes what parse_value reads back
    assert sweep_lib.parse_value(sweep_lib.format_value(v)) == v
  assert [sweep_lib.value_token(v) for v in (True, 0.001, (1, 2), "a/b c")] == [
      "true", "0.001", "1_2", "a_b_c"]


def test_runs_are_the_product_of_the_axes_first_axis_slowest():
  s = sweep_lib.make_sweep(SMOKE, None, ["rl.loss=grpo,gspo", "seed=0,1,2"],
                           ["rl.steps=10"])
  runs = s.runs()
  assert [r.name for r in runs] == [f"rl.loss={l},seed={k}" for l in ("grpo", "gspo")
                                    for k in range(3)]
  assert runs[4].values == {"rl.loss": "gspo", "seed": 1}
  assert sweep_lib.train_args(s, runs[4], "root") == [
      "--config", SMOKE, "--workdir", os.path.join("root", "rl.loss=gspo,seed=1"),
      "--config.rl.steps=10", "--config.rl.loss=gspo", "--config.seed=1"]
  # two values that look alike in a directory name get a hash each, stable across calls
  s = sweep_lib.make_sweep(SMOKE, None, ["tokenizer.path=a/b,a_b"])
  names = [r.name for r in s.runs()]
  assert len(set(names)) == 2 and all(n.startswith("tokenizer.path=a_b-") for n in names)
  assert names == [r.name for r in s.runs()]
  assert [r.name for r in sweep_lib.make_sweep(SMOKE, None).runs()] == ["base"]


def test_configs_are_built_as_si_train_builds_them():
  c = sweep_lib.load_config(SMOKE, [("rl.loss", "gspo"), ("seed", 2),
                                    ("task.kwargs.num_steps", (2, 3)),
                                    ("rl.normalize_std", False), ("rl.optim.lr", 1)])
  assert (c.rl.loss, c.seed, c.task.kwargs.num_steps, c.rl.normalize_std) == (
      "gspo", 2, (2, 3), False)
  assert isinstance(c.rl.optim.lr, float) and c.rl.optim.lr == 1.0


def test_the_example_sweep_file_loads():
  path = "experiments/sweeps/arith_losses.py"
  s = sweep_lib.make_sweep(None, path)
  runs = sweep_lib.validate(s)
  assert s.config == "experiments/configs/arith_si.py" and s.name == "arith_losses"
  assert s.grid == {"rl.loss": ["grpo", "gspo"], "seed": [0, 1, 2]}
  assert len(runs) == 6 and runs[0].name == "rl.loss=grpo,seed=0"
  c = sweep_lib.load_config(s.config, s.overrides(runs[-1]))
  assert (c.rl.credit, c.rl.loss, c.seed) == ("outcome", "gspo", 2)
  # the command line adds to a sweep file: --set, and a --grid that replaces its axis
  s = sweep_lib.make_sweep(None, path, ["seed=5"], ["rl.steps=1"])
  assert [r.name for r in s.runs()] == ["rl.loss=grpo,seed=5", "rl.loss=gspo,seed=5"]
  assert s.set == {"rl.credit": "outcome", "rl.steps": 1}


# ----------------------------------------------------------------------------- validation


def test_an_unknown_grid_field_is_one_error_line_with_exit_code_2(tmp_path):
  root = tmp_path / "sweep"
  res = subprocess.run(
      [sys.executable, "-m", "si_jax.tools.sweep", "--config", SMOKE, "--root", str(root),
       "--grid", "rl.lso=grpo,gspo", "--grid", "seed=0,1"],
      cwd=REPO, capture_output=True, text=True, env=dict(os.environ, XLA_FLAGS=""))
  assert res.returncode == 2, res.stderr
  assert res.stderr.splitlines() == [
      "si-sweep: error: --grid rl.lso: unknown config field config.rl.lso; did you mean "
      "config.rl.loss?"]
  assert res.stdout == "" and not root.exists()


@pytest.mark.parametrize("argv, message", [
    (["--grid", "rl.loss=grpo,foo"],
     "--grid rl.loss=foo: config.rl.loss must be one of ['grpo', 'dr_grpo', 'dapo', 'gspo'], "
     "got 'foo'"),
    (["--grid", "rl.group_size=2,x"],
     "--grid rl.group_size=x: invalid literal for int() with base 10: 'x'"),
    (["--set", "rl.group_size=1"],
     "--set rl.group_size=1: config.rl.group_size must be >= 2 (group-relative advantages), "
     "got 1"),
    (["--set", "task.kwargs.modulos=7"],
     "--set task.kwargs.modulos: unknown config field config.task.kwargs.modulos; did you mean "
     "config.task.kwargs.modulus?"),
    (["--grid", "seed=0,1,0"], "--grid seed: value '0' appears twice"),
    (["--grid", "seed=0,1", "--set", "seed=3"],
     "--grid seed: also fixed by --set seed; a field is an axis or fixed, not both"),
    (["--grid", "seed"], "--grid seed: expected FIELD=VALUES"),
    (["--launcher", "local", "--hosts", "2"],
     "--hosts 2: only --launcher slurm takes a host count (a TPU pod runs on every host of the "
     "slice --tpu names)"),
    (["--launcher", "tpu_pod"], "--launcher tpu_pod: needs --tpu NAME and --zone ZONE"),
    (["--launcher", "tpu_pod", "--tpu", "t", "--zone", "z"],
     "--launcher tpu_pod (si-launch): --accelerator_type: required for tpu_pod"),
    (["--launcher", "tpu_pod", "--tpu", "t", "--zone", "z",
      "--launch_args=--accelerator_type=v9-8"],
     "--launcher tpu_pod (si-launch): --accelerator_type 'v9-8': unknown; expected "
     "<family>-<size> with family one of ['v2', 'v3', 'v4', 'v5p', 'v5litepod', 'v6e'] "
     "(v5p-16, v5litepod-16, v6e-32, ...)"),
    (["--launcher", "slurm", "--launch_args=--gpus_per_node=x"],
     "--launcher slurm (si-launch): argument --gpus_per_node: invalid int value: 'x'"),
])
def test_mistakes_are_refused_before_any_run_naming_the_culprit(capsys, tmp_path, argv,
                                                                 message):
  root = tmp_path / "sweep"
  rc, out, err = _main(capsys, "--config", SMOKE, "--root", str(root), *argv)
  assert (rc, out, err) == (2, "", f"si-sweep: error: {message}\n")
  assert not root.exists()


def test_a_sweep_file_with_an_unknown_key_is_refused(capsys, tmp_path):
  path = tmp_path / "bad.py"
  path.write_text("def get_sweep():\n  return dict(config='x.py', grids={'seed': [0]})\n")
  rc, _, err = _main(capsys, "--sweep", str(path), "--root", str(tmp_path / "r"))
  assert rc == 2 and err == f"si-sweep: error: --sweep {path}: unknown key 'grids'; did you " \
                            f"mean 'grid'?\n"


def test_a_different_sweep_on_the_same_root_is_refused_naming_the_difference(capsys, tmp_path):
  root = tmp_path / "sweep"
  s = sweep_lib.make_sweep(SMOKE, None, ["seed=0,1"], ["rl.steps=1"])
  root.mkdir()
  (root / "sweep.json").write_text(json.dumps(sweep_lib.check_root(str(root), s, s.runs())))
  rc, out, err = _main(capsys, "--config", SMOKE, "--root", str(root), "--grid", "seed=0,1,2",
                       "--set", "rl.steps=1")
  assert rc == 2 and out == ""
  assert err == (f"si-sweep: error: --root {root} holds a different sweep ({root}/sweep.json): "
                 f"grid: {{\"seed\": [0, 1]}} -> {{\"seed\": [0, 1, 2]}}; use a new --root\n")
  assert sorted(os.listdir(root)) == ["sweep.json"]


# ----------------------------------------------------------------------------- launchers


def _srun_command(script: str) -> list[str]:
  """The si-train command a generated sbatch script runs on every node (its `srun` line is
  continued onto the next: `  si-train ... || rc=$?`)."""
  line = next(l for l in script.splitlines() if l.startswith("  si-train "))
  return shlex.split(line.rsplit(" || ", 1)[0])


def test_dry_run_prints_one_copy_pasteable_command_per_run(capsys, tmp_path):
  root = str(tmp_path / "my sweep")  # a space: the printed lines must quote it
  common = ["--config", SMOKE, "--root", root, "--grid", "rl.loss=grpo,gspo",
            "--grid", "task.kwargs.num_steps=(1,2)", "--set", "rl.steps=3", "--dry_run"]
  workdir = os.path.join(root, "rl.loss=gspo,task.kwargs.num_steps=1_2")
  train = ["--config", SMOKE, "--workdir", workdir, "--config.rl.steps=3",
           "--config.rl.loss=gspo", "--config.task.kwargs.num_steps=(1, 2)"]

  rc, out, _ = _main(capsys, *common)
  lines = out.splitlines()
  assert rc == 0 and len(lines) == 2
  assert shlex.split(lines[1]) == ["si-train", *train]

  for hosts in (2, 16):  # one si-launch line per run; si-launch builds the sbatch job
    rc, out, _ = _main(capsys, *common, "--launcher", "slurm", "--hosts", str(hosts),
                       "--sbatch_args", "--partition=gpu --time=4:00:00")
    assert rc == 0
    argv = shlex.split(out.splitlines()[1])
    assert argv == [
        "si-launch", "slurm", f"--nodes={hosts}",
        "--job_name=si-sweep:rl.loss=gspo,task.kwargs.num_steps=1_2",
        "--sbatch_args=--partition=gpu --time=4:00:00", "--", *train]
    _, _, (mkdir, sbatch) = launch.plan(argv[1:])
    assert sbatch.argv == ["sbatch", f"--output={workdir}/slurm-%j.log", "--partition=gpu",
                           "--time=4:00:00"]
    assert f"#SBATCH --nodes={hosts}\n" in sbatch.stdin
    assert _srun_command(sbatch.stdin) == ["si-train", *train]

  rc, out, _ = _main(capsys, *common, "--launcher", "tpu_pod", "--tpu", "v5p-32",
                     "--zone", "us-east5-a", "--launch_args=--accelerator_type=v5p-32")
  assert rc == 0
  argv = shlex.split(out.splitlines()[1])
  assert argv == ["si-launch", "tpu_pod", "--tpu=v5p-32", "--zone=us-east5-a",
                  "--accelerator_type=v5p-32", "--", *train]
  assert launch.plan(argv[1:])[2].hosts == 4
  assert not os.path.exists(root)  # a dry run writes nothing


def test_slurm_submits_one_job_per_unfinished_run_and_not_twice(capsys, tmp_path, monkeypatch):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  log, scripts, queue = tmp_path / "sbatch.log", tmp_path / "scripts", tmp_path / "queue"
  for name, body in (  # sbatch records its arguments and script; squeue lists `queue`
      ("sbatch", f"printf '%s\\n' \"$@\" >> {log}\ncat >> {scripts}\n"
                 f"echo Submitted batch job 7"),
      ("squeue", f"grep -x \"$3\" {queue} || true")):
    (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
    (bin_dir / name).chmod(0o755)
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  root = tmp_path / "sweep"
  (root / "seed=0").mkdir(parents=True)
  (root / "seed=0" / "summary.json").write_text("{}")  # finished: not submitted
  argv = ["--config", SMOKE, "--root", str(root), "--grid", "seed=0,1", "--launcher", "slurm",
          "--hosts", "2"]
  rc, out, _ = _main(capsys, *argv)
  assert rc == 0
  assert out.splitlines()[1:3] == ["[1/2] seed=0: finished, skipped",
                                   "[2/2] seed=1: submitted: Submitted batch job 7"]
  submitted = [f"--output={root}/seed=1/slurm-%j.log"]  # one argument a line
  assert log.read_text().splitlines() == submitted
  script = scripts.read_text()
  assert "#SBATCH --nodes=2\n" in script and "#SBATCH --job-name=si-sweep:seed=1\n" in script
  assert _srun_command(script) == [
      "si-train", "--config", SMOKE, "--workdir", str(root / "seed=1"), "--config.seed=1"]
  assert (root / "seed=1" / "slurm_job").read_text() == "7\n"

  queue.write_text("7\n")  # job 7 still queued: the same sweep again submits nothing
  rc, out, _ = _main(capsys, *argv)
  assert rc == 0 and out.splitlines()[2].startswith("[2/2] seed=1: job 7 is still queued")
  assert log.read_text().splitlines() == submitted
  queue.write_text("")  # job 7 ended without a summary (failed, preempted): submitted again
  rc, out, _ = _main(capsys, *argv)
  assert rc == 0 and out.splitlines()[2] == "[2/2] seed=1: submitted: Submitted batch job 7"
  assert log.read_text().splitlines() == submitted * 2


def test_tpu_pod_passes_the_si_train_arguments_through_to_every_host(capsys, tmp_path,
                                                                     monkeypatch):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  calls = tmp_path / "gcloud.log"
  (bin_dir / "gcloud").write_text(  # an existing, READY v5p-8; records the other calls
      f"#!/bin/sh\nif [ \"$4\" = describe ]; then printf 'READY\\tv5p-8\\n'; exit 0; fi\n"
      f"printf '%s\\n' \"$@\" > {calls}\n")
  (bin_dir / "gcloud").chmod(0o755)
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  root = tmp_path / "sweep"
  rc, out, _ = _main(capsys, "--config", SMOKE, "--root", str(root), "--grid",
                     "task.kwargs.num_steps=(1,2)", "--launcher", "tpu_pod", "--tpu", "pod",
                     "--zone", "z", "--launch_args=--accelerator_type=v5p-8 --source=none")
  assert rc == 1  # the fake pod wrote no summary.json: the run counts as failed
  assert "FAILED (exit code 0)" in out
  workdir = root / "task.kwargs.num_steps=1_2"
  assert "si-launch: + gcloud compute tpus tpu-vm ssh pod" in (workdir / "train.log").read_text()
  argv = calls.read_text().splitlines()
  assert argv[:7] == ["compute", "tpus", "tpu-vm", "ssh", "pod", "--zone=z", "--worker=all"]
  remote = shlex.split(argv[argv.index("--command") + 1])
  assert any("sys.version_info" in w for w in remote[:remote.index("cd")])  # Python checked first
  remote = remote[remote.index("cd"):]
  assert remote[:8] == ["cd", "~/si_jax", "&&", "SI_MULTIHOST=1", "SI_PLATFORM=tpu", "python3",
                        "-m", "si_jax.cli.train"]
  assert remote[8:] == ["--config", SMOKE, "--workdir", str(workdir),
                        "--config.task.kwargs.num_steps=(1, 2)"]


def test_a_failed_run_is_reported_and_the_sweep_goes_on(capsys, tmp_path, monkeypatch):
  def command(self, args, job_name, *, display=False):  # seed=0 fails, seed=1 finishes
    workdir = args[args.index("--workdir") + 1]
    if workdir.endswith("seed=0"):
      return [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]
    return [sys.executable, "-c", f"open({os.path.join(workdir, 'summary.json')!r}, 'w')"
                                  f".write('{{\"steps\": 5}}')"]
  monkeypatch.setattr(sweep_lib.Launcher, "command", command)
  root = tmp_path / "sweep"
  rc, out, err = _main(capsys, "--config", SMOKE, "--root", str(root), "--grid", "seed=0,1")
  assert rc == 1 and err == "si-sweep: 1 of 2 runs failed\n"
  lines = out.splitlines()
  assert lines[1].startswith("[1/2] seed=0: running ... FAILED (exit code 3) after ")
  assert lines[1].endswith(f"; see {root}/seed=0/train.log")
  assert lines[2].startswith("[2/2] seed=1: running ... done in ")
  assert "boom" in (root / "seed=0" / "train.log").read_text()
  assert "| 1/2 | 5 (1) | - |" in out  # the finished run in the table (one row: no other axis)


# ----------------------------------------------------------------------------- the table


def _record(name, values, avg=None, wall=None, si=None, reward=None):
  summary = None if avg is None else dict(
      steps=10, wall_s=wall, eval_before={"avg@4": 0.1}, eval_after={"avg@4": avg,
                                                                      "pass@4": 1.0},
      credit_last={"si/repair_success": si} if si is not None else {})
  return dict(name=name, values=values, summary=summary,
              last=None if reward is None else {"step": 10, "reward": reward})


def test_the_table_is_mean_and_std_over_seeds():
  records = [
      _record("a0", {"rl.loss": "grpo", "seed": 0}, avg=0.5, wall=100.0, si=0.2, reward=1.0),
      _record("a1", {"rl.loss": "grpo", "seed": 1}, avg=0.6, wall=110.0, si=0.4, reward=2.0),
      _record("a2", {"rl.loss": "grpo", "seed": 2}, avg=0.7, wall=120.0, si=0.9, reward=6.0),
      _record("b0", {"rl.loss": "gspo", "seed": 0}, avg=0.25, wall=90.0),
      _record("b1", {"rl.loss": "gspo", "seed": 1}),  # not finished
  ]
  assert sweep_lib.default_metrics(records) == [
      "eval_after.avg@4", "eval_after.pass@4", "eval_after.maj@4", "eval_before.avg@4", "steps",
      "wall_s", "credit_last.si/repair_success"]
  table = sweep_lib.summary_table(records, ["rl.loss", "seed"], "seed",
                                  sweep_lib.default_metrics(records) + ["last.reward"])
  grpo, gspo = table["rows"]
  assert grpo["setting"] == {"rl.loss": "grpo"} and grpo["finished"] == 3
  cell = grpo["cells"]["eval_after.avg@4"]
  assert cell["n"] == 3 and cell["mean"] == pytest.approx(0.6)
  assert cell["std"] == pytest.approx(0.1)  # ddof=1: sqrt((0.01 + 0 + 0.01) / 2)
  assert grpo["cells"]["wall_s"]["std"] == pytest.approx(10.0)
  assert grpo["cells"]["last.reward"]["mean"] == pytest.approx(3.0)
  assert grpo["cells"]["last.reward"]["std"] == pytest.approx(statistics.stdev([1.0, 2.0, 6.0]))
  assert gspo["cells"]["eval_after.avg@4"] == dict(mean=0.25, std=None, n=1, values=[0.25])
  assert gspo["cells"]["credit_last.si/repair_success"]["n"] == 0
  assert sweep_lib.markdown_table(table).splitlines() == [
      "| rl.loss | runs | eval_after.avg@4 | eval_after.pass@4 | eval_after.maj@4 | "
      "eval_before.avg@4 | steps | wall_s | credit_last.si/repair_success | last.reward |",
      "|---|---|---|---|---|---|---|---|---|---|",
      "| grpo | 3/3 | 0.6 ± 0.1 (3) | 1 ± 0 (3) | - | 0.1 ± 0 (3) | 10 ± 0 (3) | 110 ± 10 (3) "
      "| 0.5 ± 0.3606 (3) | 3 ± 2.646 (3) |",
      "| gspo | 1/2 | 0.25 (1) | 1 (1) | - | 0.1 (1) | 10 (1) | 90 (1) | - | - |"]


def test_summarize_reads_hand_made_run_files(capsys, tmp_path):
  root = tmp_path / "sweep"
  s = sweep_lib.make_sweep(SMOKE, None, ["eval.k=1,4", "seed=0,1"])
  root.mkdir()
  (root / "sweep.json").write_text(json.dumps(sweep_lib.check_root(str(root), s, s.runs())))
  for run, acc in zip(s.runs(), (0.2, 0.4, 0.5, 0.9)):
    k = run.values["eval.k"]
    (root / run.name).mkdir()
    (root / run.name / "summary.json").write_text(json.dumps(
        dict(steps=3, wall_s=1.0, eval_after={f"avg@{k}": acc})))
    (root / run.name / "metrics.jsonl").write_text(
        json.dumps(dict(step=2, reward=0.0)) + "\n" + json.dumps(dict(step=3, reward=acc)) + "\n")
  rc, out, _ = _main(capsys, "--root", str(root), "--summarize", "--metric", "last.reward")
  assert rc == 0 and out == (root / "summary.md").read_text()
  rows = [l for l in out.splitlines() if l.startswith("| ")]
  assert rows == [
      "| eval.k | runs | eval_after.avg@1 | eval_after.pass@1 | eval_after.maj@1 | "
      "eval_after.avg@4 | eval_after.pass@4 | eval_after.maj@4 | eval_before.avg@1 | "
      "eval_before.avg@4 | steps | wall_s | last.reward |",
      "| 1 | 2/2 | 0.3 ± 0.1414 (2) | - | - | - | - | - | - | - | 3 ± 0 (2) | 1 ± 0 (2) "
      "| 0.3 ± 0.1414 (2) |",
      "| 4 | 2/2 | - | - | - | 0.7 ± 0.2828 (2) | - | - | - | - | 3 ± 0 (2) | 1 ± 0 (2) "
      "| 0.7 ± 0.2828 (2) |"]
  saved = json.loads((root / "summary.json").read_text())
  assert saved["axes"] == ["eval.k"] and [r["setting"] for r in saved["rows"]] == [
      {"eval.k": 1}, {"eval.k": 4}]
  assert saved["rows"][1]["cells"]["eval_after.avg@4"]["values"] == [0.5, 0.9]
  assert [r["last"]["reward"] for r in saved["runs"]] == [0.2, 0.4, 0.5, 0.9]


# ----------------------------------------------------------------------------- end to end


def _files(workdir):
  """(mtime, size) of what a finished run wrote; a rerun would change them."""
  return {n: (os.stat(os.path.join(workdir, n)).st_mtime_ns,
              os.path.getsize(os.path.join(workdir, n)))
          for n in ("metrics.jsonl", "summary.json", "train.log", "config.json")}


def test_a_sweep_runs_every_setting_then_resumes_without_redoing_finished_runs(
    capsys, tmp_path, monkeypatch):
  root = tmp_path / "sweep"
  # The sweep runs in this process (its command line is tested above); its runs are si-train
  # processes with its environment: XLA_FLAGS="", one CPU device per run, and a compilation
  # cache, so that runs with the same shapes share compilations. This process's own backend
  # starts first, with the test session's XLA_FLAGS (tests/conftest.py).
  jax.devices()
  for name, value in (("XLA_FLAGS", ""), ("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax")),
                      ("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0"),
                      ("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")):
    monkeypatch.setenv(name, value)
  argv = ["--config", SMOKE, "--root", str(root), "--grid", "sft.error_rate=0.3,0.5",
          "--grid", "seed=0,1", *FAST]
  rc, out, err = _main(capsys, *argv)
  assert rc == 0, out + err
  settings = [(rate, seed) for rate in (0.3, 0.5) for seed in (0, 1)]
  names = [f"sft.error_rate={rate},seed={seed}" for rate, seed in settings]
  progress = [l for l in out.splitlines() if l.startswith("[")]
  assert [l.split(":")[0] for l in progress] == [f"[{i}/4] {n}" for i, n in enumerate(names, 1)]
  assert all(" done in " in l for l in progress)
  record = json.loads((root / "sweep.json").read_text())
  assert record["grid"] == {"sft.error_rate": [0.3, 0.5], "seed": [0, 1]}
  assert [r["name"] for r in record["runs"]] == names
  summaries = {}
  for n, setting in zip(names, settings):
    summaries[n] = json.loads((root / n / "summary.json").read_text())
    assert summaries[n]["steps"] == 3  # 2 SFT + 1 RL
    config = json.loads((root / n / "config.json").read_text())
    assert (config["sft"]["error_rate"], config["seed"]) == setting

  table = json.loads((root / "summary.json").read_text())
  assert table["axes"] == ["sft.error_rate"]
  for row, rate in zip(table["rows"], (0.3, 0.5)):
    members = [summaries[f"sft.error_rate={rate},seed={s}"] for s in (0, 1)]
    assert row["setting"] == {"sft.error_rate": rate} and row["finished"] == 2
    for key in ("wall_s", "eval_after.avg@4"):
      vals = [sweep_lib.lookup(dict(summary=m), key) for m in members]
      cell = row["cells"][key]
      assert cell["n"] == 2 and cell["mean"] == pytest.approx(statistics.fmean(vals))
      assert cell["std"] == pytest.approx(statistics.stdev(vals))
  md = (root / "summary.md").read_text()
  assert md in out
  rows = [l for l in md.splitlines() if l.startswith("| 0.")]
  assert len(rows) == 2 and all("| 2/2 | " in r and " ± " in r and "(2) |" in r for r in rows)

  # Interrupt one run after its hand-over checkpoint: no summary, no final checkpoint.
  victim = root / names[3]
  os.remove(victim / "summary.json")
  ckpts = sorted(int(n) for n in os.listdir(victim / "checkpoints") if n.isdigit())
  assert ckpts == [2, 3]
  subprocess.run(["rm", "-r", str(victim / "checkpoints" / "3")], check=True)
  before = {n: _files(root / n) for n in names[:3]}
  log_before = (victim / "train.log").read_text()

  rc, out, err = _main(capsys, *argv)
  assert rc == 0, out + err
  progress = [l for l in out.splitlines() if l.startswith("[")]
  assert progress[:3] == [f"[{i}/4] {n}: finished, skipped" for i, n in enumerate(names[:3], 1)]
  assert progress[3].startswith(f"[4/4] {names[3]}: resuming from step 2 ... done in ")
  assert {n: _files(root / n) for n in names[:3]} == before  # finished runs untouched
  log = (victim / "train.log").read_text()
  assert log.startswith(log_before) and f"resumed {victim} at step 2/3" in log[len(log_before):]
  resumed = json.loads((victim / "summary.json").read_text())
  assert resumed["resumed"] is True and resumed["steps"] == 3
