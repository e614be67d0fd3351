"""The RL step as stages: a credit function plugs in by name, rows are bucketed and split per
term, old log-probs are recomputed where they must be, the compile cache keys on the terms,
the success threshold splits correct from failed; SFT-only runs and real-data configs."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from si_jax import shapes
from si_jax.train import workdir as workdir_lib
from si_jax.rl import batching
from si_jax.rl import credit as credit_lib
from si_jax.rl import rollout
from si_jax.train import trainer
from si_jax.rl import update as update_lib

import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name="arith_grpo.py", variant="smoke"):
  spec = importlib.util.spec_from_file_location(
      "cfg", os.path.join(REPO, "experiments", "configs", name))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(variant)


def test_shape_ladders_bound_compilations():
  assert [shapes.rung(n, 1) for n in (1, 2, 3, 4, 5, 7, 9, 13, 17, 25)] == \
      [1, 2, 3, 4, 6, 8, 12, 16, 24, 32]
  assert shapes.rung(256, 16) == 256 and shapes.rung(257, 16) == 384
  sizes = {shapes.rung(n, 16) for n in range(1, 1025)}
  assert len(sizes) == 12  # 1024 row counts, 12 shapes
  assert all(shapes.rung(n, 16) < 1.5 * n + 16 for n in range(1, 1025))
  # widths: the floor while the input fits, then the ladder
  assert [shapes.fit(n, 48) for n in (1, 30, 48, 49, 65, 100)] == [48, 48, 48, 64, 96, 128]
  assert shapes.fit(20) == 32 and shapes.fit(20, 0, quantum=8) == 24
  # update calls: a small term's calls are no larger than its share of a mini-batch
  assert batching.call_rows(128, None, 2, 8) == 128
  assert batching.call_rows(128, 64, 2, 8) == 32 and batching.call_rows(128, 60, 2, 8) == 32
  assert batching.call_rows(128, 1000, 2, 8) == 128 and batching.call_rows(12, None, 2, 8) == 16


def test_pad_rows_and_minibatches_split_each_term():
  rows = credit_lib.rollout_rows([[5, 6], [7]], [[1, 2, 3], [4]], prompt_len=4,
                                 completion_len=4, pad_id=0, advantages=[1.0, -2.0],
                                 old_logprobs=[np.zeros(3), np.zeros(1)])
  assert rows["loss_mask"].tolist() == [[0] * 4 + [1, 1, 1, 0], [0] * 4 + [1, 0, 0, 0]]
  assert rows["advantages"][1].tolist() == [0] * 4 + [-2.0, 0, 0, 0]
  padded = batching.pad_rows(rows, 6)
  assert padded["seq_mask"].tolist() == [1, 1, 0, 0, 0, 0]
  assert padded["loss_mask"][2:].sum() == 0 and padded["input_mask"][2:, -1].all()
  nll = {k: rows[k] for k in ("tokens", "input_mask", "loss_mask")}
  terms = [credit_lib.TermRows(_term(), padded),
           credit_lib.TermRows(update_lib.NLLTerm(name="rep"), batching.pad_rows(nll, 4))]
  mbs = list(batching.minibatches(terms, 2, np.random.default_rng(0)))
  assert len(mbs) == 2
  for mb in mbs:
    assert mb["policy"]["tokens"].shape == (3, 8) and mb["rep"]["tokens"].shape == (2, 8)
  seen = np.concatenate([mb["policy"]["seq_mask"] for mb in mbs])
  assert sorted(seen.tolist()) == [0, 0, 0, 0, 1, 1]  # every row once


def test_padding_note_says_when_the_batch_shards_multiply_the_rows():
  """The paper configs' 256 rollouts in 4 mini-batches x 4 micro-batches: whole on 64 batch
  shards, 16x on 1,024 (every device needs a row of every update call)."""
  for shards, want in ((64, None), (1024, 4096)):
    per_call = batching.call_rows(256 // 16, None, 4, shards)
    note = batching.padding_note(256, 4, per_call, shards)
    if want is None:
      assert note is None
    else:
      assert note.startswith(f"the trainer pads 256 rollout rows a step to {want} (16.0x: 4 "
                             f"mini-batches x 1024 rows per update call, a multiple of the "
                             f"1024 batch shards)"), note


def _term(**kw):
  base = dict(ratio="token", eps_low=0.2, eps_high=0.2, aggregation="token_mean", max_len=8,
              kl_beta=0.0, kl_estimator="k3", temperature=1.0)
  return update_lib.PolicyTerm(**{**base, **kw})


def test_recompute_defaults():
  assert batching.needs_recompute(None, "sequence", np.float32)  # GSPO
  assert batching.needs_recompute(None, "gated_sequence", np.float32)  # SI
  assert batching.needs_recompute(None, "token", "bfloat16")
  assert not batching.needs_recompute(None, "token", np.float32)
  assert not batching.needs_recompute(False, "sequence", np.float32)  # an explicit choice wins


def test_prepare_recomputes_rows_without_own_logprobs():
  rows = credit_lib.rollout_rows([[5], [6]], [[1, 2], [3, 4]], prompt_len=2, completion_len=2,
                                 pad_id=0, advantages=[1.0, 1.0],
                                 old_logprobs=[np.full(2, -1.0), np.full(2, -1.0)])
  rows["has_old"] = np.array([True, False])
  fn = lambda params, tokens, mask: np.full(tokens.shape, -3.0, np.float32)
  kw = dict(rows_per_call={"policy": 1}, minibatches=2, params=None, ref_params=None,
            logprob_fn=fn)
  (tr,), m = batching.prepare([credit_lib.TermRows(_term(), rows)], recompute=False, **kw)
  assert tr.rows["old_logprobs"][:, 2:].tolist() == [[-1, -1], [-3, -3]]
  assert m["policy/sampler_logprob_gap"] == pytest.approx(2.0)  # only rows with their own
  assert (m["tokens/policy_positive"], m["tokens/policy_negative"]) == (4, 0)
  (tr,), _ = batching.prepare([credit_lib.TermRows(_term(), rows)], recompute=True, **kw)
  assert tr.rows["old_logprobs"][:, 2:].tolist() == [[-3, -3], [-3, -3]]
  empty = {k: v[:0] for k, v in rows.items()}
  assert batching.prepare([credit_lib.TermRows(_term(), empty)], recompute=True, **kw)[0] == []
  # rows are padded to whole calls per mini-batch: 2 rows, 3 per call, 2 mini-batches -> 6
  kw["rows_per_call"] = {"policy": 3}
  (tr,), _ = batching.prepare([credit_lib.TermRows(_term(), rows)], recompute=True, **kw)
  assert tr.rows["tokens"].shape[0] == 6 and tr.rows["seq_mask"].tolist() == [1, 1, 0, 0, 0, 0]


def test_logprobs_in_several_calls_equal_one_call():
  """The pack stage's pass over all rows in calls of a fixed number of rows (any row count,
  the last call filled with masked rows) equals one call over every row."""
  import jax
  from si_jax import sharding as shd
  from si_jax.models import config as model_config, transformer
  cfg = model_config.preset("tiny", vocab_size=64, num_layers=1)
  mesh = shd.make_mesh(data=len(jax.devices()))
  params = shd.init_sharded_params(cfg, mesh, jax.random.key(0))
  sh = shd.param_shardings(cfg, mesh)
  rng = np.random.default_rng(0)
  rows = 4 * len(jax.devices())
  tokens = rng.integers(1, 64, (rows, 12)).astype(np.int32)
  mask = np.ones((rows, 12), bool)
  mask[::3, :4] = False  # left padding on some rows
  one = batching.make_logprob_fn(cfg, mesh, sh, temperature=1.0, chunk_size=4,
                                 rows_per_call=rows)
  quarter = batching.make_logprob_fn(cfg, mesh, sh, temperature=1.0, chunk_size=4,
                                     rows_per_call=rows // 4)
  full = one(params, tokens, mask)
  np.testing.assert_allclose(quarter(params, tokens, mask), full, atol=1e-6)
  # a row count that is not a multiple of the call: the last call is filled, its filler dropped
  odd = rows // 4 * 3 - 1
  np.testing.assert_allclose(quarter(params, tokens[:odd], mask[:odd]), full[:odd], atol=1e-6)


CALLS = []


@credit_lib.register("test_dummy")
def dummy_credit(ctx, scored):
  """Advantage +0.5 on every response token of the failed rollouts only."""
  CALLS.append(ctx.step)
  ro = scored.rollouts
  failed = ~scored.success.reshape(-1)
  idx = np.flatnonzero(failed)
  rows = credit_lib.rollout_rows(
      [ro.row_prompt_ids()[i] for i in idx], [ro.response_ids[i] for i in idx],
      prompt_len=scored.prompt_len, completion_len=ctx.config.rl.max_new_tokens,
      pad_id=ctx.tokenizer.pad_id, advantages=[0.5] * len(idx),
      old_logprobs=[ro.logprobs[i] for i in idx])
  return credit_lib.Credit(terms=[credit_lib.TermRows(ctx.policy_term, rows)],
                           metrics={"dummy/rows": float(len(idx))})


@pytest.fixture(scope="module")
def dummy_run(tmp_path_factory):
  c = _config()
  c.rl.credit = "test_dummy"
  c.rl.steps = 2
  c.eval.every = 0
  c.checkpoint.every = 0
  workdir = str(tmp_path_factory.mktemp("dummy"))
  summary = trainer.train(c, workdir)
  return c, workdir, summary


def test_a_registered_credit_function_plugs_in_by_name(dummy_run):
  c, workdir, summary = dummy_run
  assert CALLS == [6, 7] and summary["steps"] == 8
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  rl = [r for r in rows if r["phase"] == 1]
  assert [r["dummy/rows"] for r in rl] == [16.0, 16.0]  # the smoke policy fails everything
  assert all(r["policy/advantage"] == pytest.approx(0.5) for r in rl)
  assert all(r["time/credit"] > 0 for r in rl)


def test_success_threshold_splits_correct_from_failed(tmp_path):
  c = _config()
  c.checkpoint.every = 0
  run = trainer.Run(c, str(tmp_path))
  try:
    # the success threshold splits correct from failed
    ro = rollout.Rollouts(examples=[None], group_size=2, prompt_ids=[[1]],
                          response_ids=[[2], [3]], logprobs=[np.zeros(1)] * 2, texts=["", ""],
                          verdicts=[], rewards=np.array([[0.5, 1.0]], np.float32),
                          finished=np.ones(2, bool), timing={})
    assert run.score(ro, np.ones(1, bool)).success.tolist() == [[False, True]]
    with c.unlocked():
      c.rl.success_threshold = 0.5
    assert run.score(ro, np.ones(1, bool)).success.tolist() == [[True, True]]
  finally:
    run.close()


def test_sft_only_run_saves_its_last_step(tmp_path):
  c = _config()
  c.rl.steps = 0
  c.checkpoint.every = 4
  summary = trainer.train(c, str(tmp_path))
  assert summary["steps"] == 6
  assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()) == [4, 6]
  assert workdir_lib.load_run(str(tmp_path))["step"] == 6


_GSM8K = [{"question": f"Tom has {i} apples and buys 2. How many?",
           "answer": f"{i} + 2 = {i + 2}\n#### {i + 2}"} for i in range(6)]


def test_gsm8k_config_runs_with_task_options_overridden_field_by_field(tmp_path):
  manual = tmp_path / "gsm8k"
  manual.mkdir()
  for split in ("train", "test"):
    (manual / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _GSM8K))
  env = dict(os.environ, XLA_FLAGS="")
  cmd = [sys.executable, "-m", "si_jax.cli.train",
         f"--config={os.path.join(REPO, 'experiments', 'configs', 'gsm8k_grpo.py')}:smoke",
         f"--workdir={tmp_path / 'run'}", f"--config.task.kwargs.manual_dir={manual}",
         f"--config.task.kwargs.data_dir={tmp_path / 'tfds'}"]
  p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
  assert p.returncode == 0, p.stdout + p.stderr
  assert json.load(open(tmp_path / "run" / "summary.json"))["steps"] == 2
  samples = [json.loads(l) for l in open(tmp_path / "run" / "samples.jsonl")]
  assert samples and samples[0]["prompt"].startswith("Tom has 0 apples")
  assert {"completion", "reward", "verdict", "step"} <= set(samples[0])
  assert "Downloading and preparing" not in p.stdout + p.stderr
  # a missing data column is one line naming file, line and column
  (manual / "train.jsonl").write_text(json.dumps({"question": "q"}) + "\n")
  p = subprocess.run(cmd[:4] + [f"--workdir={tmp_path / 'run2'}"] + cmd[5:], env=env,
                     capture_output=True, text=True, timeout=600, cwd=REPO)
  last = p.stderr.strip().splitlines()[-1]
  assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
  assert last.startswith("si-train: error: ") and "train.jsonl" in last and "answer" in last, last


def test_a_mistyped_manual_dir_after_the_build_stops_si_train_and_si_eval_in_one_line(
    tmp_path, capsys):
  """Issue #19: once GSM8K was built, a mistyped task.kwargs.manual_dir trained on the earlier
  build (rc 0), and si-eval's option mistakes ended in a 17-line traceback."""
  from si_jax.cli import eval as eval_cli
  from si_jax.data import sources
  manual, tfds_dir, typo = tmp_path / "gsm8k", tmp_path / "tfds", tmp_path / "gsm8kk"
  manual.mkdir()
  for split in ("train", "test"):
    (manual / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _GSM8K))
  assert len(sources.load_split("gsm8k", "train", tfds_dir, manual)) == len(_GSM8K)  # built
  env = dict(os.environ, XLA_FLAGS="")
  p = subprocess.run(
      [sys.executable, "-m", "si_jax.cli.train",
       f"--config={os.path.join(REPO, 'experiments', 'configs', 'gsm8k_grpo.py')}:smoke",
       f"--workdir={tmp_path / 'run'}", f"--config.task.kwargs.manual_dir={typo}",
       f"--config.task.kwargs.data_dir={tfds_dir}"],
      env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
  wanted = (f"si_gsm8k: manual_dir {typo} does not exist (the dataset built in {tfds_dir}/"
            f"si_gsm8k/1.0.0 from {manual} is not used in place of the files you name; ")
  assert p.returncode == 2, p.stdout + p.stderr
  assert p.stderr.splitlines() == [p.stderr.strip()], p.stderr
  assert p.stderr.startswith("si-train: error: " + wanted), p.stderr
  assert not os.path.exists(tmp_path / "run" / "checkpoints")

  model_dir = tiny.char_hf_model(tmp_path, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                                 max_position_embeddings=256)
  capsys.readouterr()
  for kwargs, message in [
      ({"num_worker": 2}, "--task_kwargs: task 'gsm8k' has no option 'num_worker'; did you "
                          "mean 'num_workers'? (its options: data_dir, manual_dir, num_workers, "
                          "prompt_template, system_prompt, timeout_s)"),
      ({"manual_dir": str(typo), "data_dir": str(tfds_dir)}, wanted)]:
    rc = eval_cli.main(["--hf_dir", model_dir, "--task", "gsm8k", "--task_kwargs",
                        json.dumps(kwargs), "--out", str(tmp_path / "ev")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith("si-eval: error: " + message), err
  rc = eval_cli.main(["--hf_dir", model_dir, "--task", "gsm8k", "--task_kwargs", "{num"])
  assert rc == 2 and capsys.readouterr().err.startswith(
      "si-eval: error: --task_kwargs is not valid JSON")
