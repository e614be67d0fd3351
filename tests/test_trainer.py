"""The si-train job: config errors, a full smoke run, exact resume after SIGKILL."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from si_jax import configs
from si_jax.train import workdir as workdir_lib
from si_jax.train import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "experiments", "configs", "arith_grpo.py")


def _load_config(variant="smoke"):
  import importlib.util
  spec = importlib.util.spec_from_file_location("arith_grpo", CONFIG)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(variant)


# si-train's entry, run with `-c`.
_MAIN = ("import sys; from si_jax.cli.train import run; "
         "sys.argv = ['si-train'] + sys.argv[1:]; run()")


def _si_train(workdir, *overrides, cache_dir=None, wait=True, config=CONFIG,
              entry=("-m", "si_jax.cli.train")):
  env = dict(os.environ)
  env["XLA_FLAGS"] = ""  # one CPU device, as on a laptop
  if cache_dir:
    env.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  cmd = [sys.executable, *entry, f"--config={config}:smoke", f"--workdir={workdir}",
         *overrides]
  p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, cwd=REPO)
  if not wait:
    return p
  out, _ = p.communicate(timeout=600)
  return p.returncode, out


# Put before the entry of a run that `_kill_once_saved(p, .../checkpoints/8)` kills: the run
# stops at its step-9 save (after step 9's metrics row) until it is killed. Without it the run
# could finish (and write summary.json) before a parent slowed by a loaded machine sees
# checkpoint 8, so the kill would find nothing left to interrupt.
_STOP_AFTER_8 = """import time
from si_jax import checkpoint as _ckpt
_real_save = _ckpt.Checkpointer.save
def _save(self, step, *args, **kwargs):
  while step > 8:
    time.sleep(1)  # until killed
  return _real_save(self, step, *args, **kwargs)
_ckpt.Checkpointer.save = _save
"""


def _kill_once_saved(p, checkpoint, timeout_s=600):
  """SIGKILLs the si-train process `p` (no clean-up) as soon as `checkpoint` exists.
  `timeout_s` only guards against a hang."""
  deadline = time.time() + timeout_s
  while not os.path.exists(checkpoint):
    assert p.poll() is None, p.communicate()[0]
    assert time.time() < deadline
    time.sleep(0.05)
  p.send_signal(signal.SIGKILL)
  p.wait()


# Every si-train run below that trains evaluates 4 held-out problems: x eval.k=4 samples, the
# 16 rows of an RL step's rollouts (4 prompts x 4), so evaluation runs the rollouts' compiled
# programs instead of compiling its own.
SMALL_EVAL = "--config.eval.num_examples=4"


@pytest.fixture(scope="module")
def xla_cache(tmp_path_factory):
  """The persistent compilation cache of this module's si-train runs: a program any run
  compiled (of the GRPO or the SI smoke config) is read back by every later one instead of
  compiled again, as on a machine that runs si-train more than once. Nothing here checks
  compilation (tests/test_compilation.py does, with its own cache)."""
  return tmp_path_factory.mktemp("jax_cache")


def test_config_errors_are_one_line_naming_the_field(tmp_path):
  rc, out = _si_train(tmp_path / "a", "--config.rl.grop_size=4")
  assert rc == 2 and out.strip() == ("si-train: error: unknown config field config.rl.grop_size;"
                                     " did you mean config.rl.group_size?"), out
  rc, out = _si_train(tmp_path / "b", "--config.rl.group_size=1")
  assert rc == 2 and len(out.strip().splitlines()) == 1, out
  assert "config.rl.group_size must be >= 2" in out and "got 1" in out
  # a bad value found while building the run (a tokenizer that is not a directory)
  rc, out = _si_train(tmp_path / "c", f"--config.tokenizer.path={tmp_path / 'nope'}")
  assert rc == 2 and len(out.strip().splitlines()) == 1 and "nope" in out, out
  c = _load_config()
  with c.unlocked():
    c.rl.loss = "ppo"
  with pytest.raises(ValueError, match=r"config.rl.loss must be one of"):
    configs.validate(c)
  c = _load_config()
  c.rl.loss = "gspo"
  c.rl.eps_high = 1e-3
  p = configs.resolve_loss(c)
  assert (p["ratio"], p["eps_low"], p["eps_high"]) == ("sequence", 3e-4, 1e-3)


def _params(workdir, step=None):
  run = workdir_lib.load_run(str(workdir), step)
  return run["step"], jax.device_get(run["params"])


def _metrics(workdir):
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return [{k: v for k, v in r.items() if not k.startswith(("time/", "compile/"))}
          for r in rows]


def test_smoke_run_then_sigkill_resume_is_the_same_run(xla_cache, tmp_path):
  """With a KL term: the resumed run must regularize toward the policy RL started from (the
  reference saved at the hand-over), not toward the policy at the resume step."""
  a = tmp_path / "uninterrupted"
  # The smoke policy never answers right; a length penalty over the whole budget gives every
  # group a learning signal, so the policy moves away from the reference and KL matters.
  kl = ("--config.rl.kl_beta=0.5", "--config.rl.overlong=True",
        "--config.rl.overlong_buffer_frac=1.0", SMALL_EVAL)
  rc, out = _si_train(a, *kl, cache_dir=xla_cache)
  assert rc == 0, out
  summary = json.load(open(a / "summary.json"))
  assert summary["steps"] == 10 and summary["eval_before"] and summary["eval_after"]
  assert "held-out avg@4" in out
  assert os.path.exists(a / "config.json") and os.listdir(a / "tb")

  # Same run, killed (SIGKILL, no clean-up) once a checkpoint inside RL exists, then restarted.
  b = tmp_path / "killed"
  p = _si_train(b, *kl, cache_dir=xla_cache, wait=False, entry=("-c", _STOP_AFTER_8 + _MAIN))
  _kill_once_saved(p, b / "checkpoints" / "8")
  assert not os.path.exists(b / "summary.json")
  rc, out = _si_train(b, *kl, cache_dir=xla_cache)
  assert rc == 0, out
  assert "resumed" in out
  assert any(r.get("policy/kl_ref", 0) > 0 for r in _metrics(a))  # the KL term was active

  step_a, params_a = _params(a)
  step_b, params_b = _params(b)
  assert step_a == step_b == 10
  for x, y in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
    np.testing.assert_array_equal(x, y)
  assert _metrics(a) == _metrics(b)
  # si-eval on the finished run writes markdown and JSON tables.
  from si_jax.cli import eval as eval_cli
  assert eval_cli.main(["--workdir", str(a), "--k", "2", "--temperature", "1.0",
                        "--task_kwargs", '{"test_size": 5}', "--out", str(tmp_path / "ev")]) == 0
  table = json.load(open(tmp_path / "ev" / "eval.json"))
  (res,) = table.values()  # the whole test split, resized by a task option
  assert res["num_examples"] == 5 and 0 <= res["avg@2"] <= res["pass@2"] <= 1
  assert "| avg@2 |" in open(tmp_path / "ev" / "eval.md").read()
  # si-convert exports the run's checkpoint as an HF directory transformers loads.
  from si_jax.cli import convert as convert_cli
  from si_jax.models import hf
  assert convert_cli.main(["--to=hf", f"--from_workdir={a}", f"--out={tmp_path / 'hf'}"]) == 0
  import transformers
  _, info = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"),
                                                            output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"]
  _, reloaded = hf.load_hf(str(tmp_path / "hf"))
  for x, y in zip(jax.tree.leaves(params_a), jax.tree.leaves(jax.device_get(reloaded))):
    np.testing.assert_array_equal(x, y)
  assert transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf")).eos_token == "<|im_end|>"
  # A different config on the same workdir is refused, naming the field.
  rc, out = _si_train(b, *kl, "--config.rl.group_size=8", cache_dir=xla_cache)
  assert rc == 2 and "config.rl.group_size" in out


def test_pass_at_k_and_majority():
  from si_jax.train import evaluate
  assert evaluate.pass_at_k(4, 0, 1) == 0.0
  assert evaluate.pass_at_k(4, 1, 1) == 0.25
  assert evaluate.pass_at_k(4, 1, 4) == 1.0
  assert abs(evaluate.pass_at_k(5, 2, 2) - (1 - 3 / 10)) < 1e-12  # 1 - C(3,2)/C(5,2)
  with pytest.raises(ValueError, match="n >= k"):
    evaluate.pass_at_k(2, 1, 3)
  assert evaluate.majority_reward(["3", "4", "3", None], [1, 0, 1, 0]) == 1.0
  assert evaluate.majority_reward(["4", "3", "4", "3"], [0, 1, 0, 1]) == 0.0  # tie: first seen
  assert evaluate.majority_reward([None, None], [1, 1]) == 0.0


def test_dapo_with_kl_on_an_8_device_data_parallel_mesh(tmp_path):
  """The other code paths of an RL step (dynamic sampling, overlong shaping, KL to the
  reference, recomputed log-probs, micro-batches) on every simulated device at once. The smoke
  policy (6 SFT steps) never gets a reward, so dynamic sampling keeps no group: every update
  must be skipped as empty and the params must stay those of the hand-over, bitwise."""
  if jax.device_count() < 8:
    pytest.fail("needs 8 simulated devices (tests/conftest.py)")
  c = _load_config()
  c.rl.loss = "dapo"
  c.rl.kl_beta = 0.05
  c.rl.recompute_logprobs = True
  c.rl.microbatches = 2
  c.mesh.data = 8
  c.checkpoint.every = 0
  c.checkpoint.keep = 3
  c.eval.num_examples = 4  # x eval.k=4: the rollouts' 16 rows, so the same compiled programs
  summary = trainer.train(c, str(tmp_path / "dapo"))
  assert summary["steps"] == 10
  rows = [json.loads(l) for l in open(tmp_path / "dapo" / "metrics.jsonl")]
  rl = [r for r in rows if r["phase"] == 1]
  assert [r["step"] for r in rl] == [7, 8, 9, 10]
  for r in rl:
    assert r["reward"] == 0 and r["dynamic_sampling/kept_fraction"] == 0
    assert r["update_skipped_empty"] == c.rl.minibatches and r["update_skipped"] == 0
    assert r["time/pack"] > 0 and "policy/sampler_logprob_gap" in r
  assert not any("NaN" in line for line in open(tmp_path / "dapo" / "metrics.jsonl"))
  _, handover = _params(tmp_path / "dapo", 6)
  step, final = _params(tmp_path / "dapo")
  assert step == 10
  for x, y in zip(jax.tree.leaves(handover), jax.tree.leaves(final)):
    np.testing.assert_array_equal(x, y)
  assert os.listdir(tmp_path / "dapo" / "reference")  # the KL reference, saved at hand-over


SI_CONFIG = os.path.join(REPO, "experiments", "configs", "arith_si.py")
# Runs si-train with the test-only 'arith_parity' task registered (tests/test_si_credit.py):
# a random tiny model is right half the time there, so repairs are sampled, kept and trained.
_BOOT = ("import sys; sys.path.insert(0, 'tests'); import test_si_credit; "
         "from si_jax.cli.train import run; sys.argv = ['si-train'] + sys.argv[1:]; run()")


def _si_parity_train(workdir, cache_dir, wait=True, boot=_BOOT):
  return _si_train(workdir, "--config.task.name=arith_parity", "--config.si.audit=none",
                   "--config.si.repair_rl=True", "--config.rl.kl_beta=0.1", SMALL_EVAL,
                   cache_dir=cache_dir, wait=wait, config=SI_CONFIG, entry=("-c", boot))


def test_si_run_killed_and_resumed_is_the_same_run(xla_cache, tmp_path):
  cache = xla_cache  # with the programs this config shares with the GRPO runs above
  a, b = tmp_path / "a", tmp_path / "b"
  rc, out = _si_parity_train(a, cache)
  assert rc == 0, out
  rl = [r for r in _metrics(a) if r["phase"] == 1]
  assert sum(r["si/kept"] for r in rl) > 0 and all("repair_rl/loss" in r for r in rl)
  p = _si_parity_train(b, cache, wait=False, boot=_STOP_AFTER_8 + _BOOT)
  _kill_once_saved(p, b / "checkpoints" / "8")
  assert not os.path.exists(b / "summary.json")
  rc, out = _si_parity_train(b, cache)
  assert rc == 0 and "resumed" in out, out
  (sa, pa), (sb, pb) = _params(a), _params(b)
  assert sa == sb == 10
  for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
    np.testing.assert_array_equal(x, y)
  assert _metrics(a) == _metrics(b)


# ----------------------------------------------------------------------------- faults
# The fault probes of issue #19 on the GRPO smoke config (checkpoints every 2 steps, the last 2
# kept): each run ends equal, bitwise, to one run that met no fault.

import glob  # noqa: E402
import re  # noqa: E402

from fault_boot import BOOT  # noqa: E402  (tests/ is on sys.path under pytest)

_PROGRESS = re.compile(r"^step \d+/\d+ \|")


def _run(workdir, *overrides, cache_dir, env=None, wait=True):
  """si-train (with tests/fault_boot.py's faults from `env`): (rc, stdout, stderr lines
  other than the progress line) once it ends, or the Popen with wait=False."""
  e = dict(os.environ, XLA_FLAGS="", JAX_COMPILATION_CACHE_DIR=str(cache_dir),
           JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
           JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", **(env or {}))
  p = subprocess.Popen([sys.executable, "-c", BOOT, f"--config={CONFIG}:smoke",
                        f"--workdir={workdir}", SMALL_EVAL, *overrides], env=e, cwd=REPO,
                       text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  if not wait:
    return p
  return _finish(p)


def _finish(p):
  out, err = p.communicate(timeout=600)
  return p.returncode, out, [l for l in err.splitlines() if not _PROGRESS.match(l)]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, xla_cache):
  """The workdir of one smoke run that met no fault."""
  w = tmp_path_factory.mktemp("smoke") / "run"
  rc, out, err = _run(w, cache_dir=xla_cache)
  assert rc == 0, out + "\n".join(err)
  return w


def _same_run(a, b):
  """b ended where a did, with bitwise the same params and the same non-timing metrics."""
  (sa, pa), (sb, pb) = _params(a), _params(b)
  assert sa == sb == 10
  for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
    np.testing.assert_array_equal(x, y)
  assert _metrics(a) == _metrics(b)


def test_a_full_disk_is_one_line_exit_2_and_the_run_resumes_where_it_was(smoke_run, xla_cache,
                                                                          tmp_path):
  w, cache = tmp_path / "run", xla_cache
  rc, _, err = _run(w, cache_dir=cache, env={"SI_FAULT_ENOSPC_STEP": "4"})
  assert rc == 2, err
  assert len(err) == 1 and re.fullmatch(
      rf"si-train: error: no space left on device while saving checkpoint 4 to "
      rf"{re.escape(str(w))}/checkpoints \(needed about \d+\.\d+ MB\)", err[0]), err
  assert os.listdir(w / "checkpoints") == ["2"]  # no 4.orbax-checkpoint-tmp, 2 intact
  rc, out, err = _run(w, cache_dir=cache)  # room made
  assert rc == 0 and f"resumed {w} at step 2/10" in out, err
  _same_run(smoke_run, w)


def test_sigterm_saves_the_step_exits_75_and_the_restart_is_the_same_run(smoke_run, xla_cache,
                                                                          tmp_path):
  w, cache, ready = tmp_path / "run", xla_cache, tmp_path / "ready"
  # Paused at the start of RL step 8 (tests/fault_boot.py), SIGTERM from outside.
  p = _run(w, cache_dir=cache, wait=False,
           env={"SI_FAULT_PAUSE_STEP": "8", "SI_FAULT_READY": str(ready)})
  while not ready.exists():
    assert p.poll() is None, p.communicate()
    time.sleep(0.05)
  os.kill(int(ready.read_text()), signal.SIGTERM)
  rc, out, err = _finish(p)
  # Step 8 finished, checkpoint 9 saved (not a multiple of checkpoint.every), exit 75.
  assert rc == 75, err
  assert err == [f"si-train: preempted (SIGTERM): saved checkpoint 9 to {w}/checkpoints; exit "
                 f"code 75 means 'resume me': run the same command again"], err
  assert workdir_lib.load_run(str(w))["step"] == 9
  assert not os.path.exists(w / "summary.json")
  rc, out, err = _run(w, cache_dir=cache)
  assert rc == 0 and f"resumed {w} at step 9/10" in out, err
  _same_run(smoke_run, w)


def _flip_bytes(path, n: int = 64) -> None:
  data = bytearray(open(path, "rb").read())
  mid = len(data) // 2
  data[mid:mid + n] = bytes(b ^ 0xFF for b in data[mid:mid + n])
  open(path, "wb").write(data)


def test_a_corrupt_checkpoint_is_refused_by_eval_and_convert_and_resume_falls_back(
    smoke_run, xla_cache, tmp_path, capsys):
  w, cache = tmp_path / "run", xla_cache
  shutil.copytree(smoke_run, w)
  data = max(glob.glob(str(w / "checkpoints" / "10" / "state" / "ocdbt.process_*" / "d" / "*")),
             key=os.path.getsize)
  _flip_bytes(data)  # 64 bytes, as a bad disk or a partial copy leaves them
  named = (rf"checkpoint {re.escape(str(w))}/checkpoints/10 does not verify: array "
           rf"'[a-z_/0-9]+' has checksum [0-9a-f]{{8}} but the checkpoint recorded [0-9a-f]{{8}} "
           rf"\(its data is in {re.escape(os.path.relpath(data, w / 'checkpoints' / '10'))}\)")
  from si_jax.cli import eval as eval_cli
  from si_jax.cli import convert as convert_cli
  capsys.readouterr()
  assert eval_cli.main(["--workdir", str(w), "--out", str(tmp_path / "ev")]) == 2
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 1 and re.fullmatch(r"si-eval: error: " + named + ".*", err[0]), err
  assert convert_cli.main(["--to=hf", f"--from_workdir={w}", f"--out={tmp_path / 'hf'}"]) == 2
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 1 and re.fullmatch(r"si-convert: error: " + named + ".*", err[0]), err
  assert not os.path.exists(tmp_path / "ev") and not os.path.exists(tmp_path / "hf")
  # A resume that may not fall back stops, naming it, and moves nothing.
  rc, _, err = _run(w, "--config.checkpoint.on_corrupt=refuse", cache_dir=cache)
  assert rc == 2 and len(err) == 1 and re.fullmatch(r"si-train: error: " + named + ".*",
                                                    err[0]), err
  assert sorted(os.listdir(w / "checkpoints")) == ["10", "8"]
  # By default it says so, keeps the bad one aside and redoes steps 9 and 10 from checkpoint 8.
  rc, out, err = _run(w, cache_dir=cache)
  assert rc == 0 and f"resumed {w} at step 8/10" in out, err
  assert len(err) == 1 and re.fullmatch(
      r"si-train: warning: " + named + rf".*; moved it to {re.escape(str(w))}/checkpoints/"
      r"10\.corrupt and resuming from checkpoint 8 \(with config\.checkpoint\.on_corrupt="
      r"refuse the run would stop instead\)", err[0]), err
  assert sorted(os.listdir(w / "checkpoints")) == ["10", "10.corrupt", "8"]
  _same_run(smoke_run, w)
