"""What a run is built from: tokenizer defaults and mismatches, model overrides with init_from,
the workdir's config rules, field-by-field task options."""

import importlib
import json
import os

import jax
import ml_collections
import pytest

from si_jax import configs
from si_jax import sharding as shd
from si_jax.train import workdir as workdir_lib
from si_jax.tokenizer import Tokenizer, build_char_tokenizer

import hf_fixtures


def _config(**tok):
  c = configs.base_config()
  c.tokenizer.update(tok)
  return c


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """A tiny Qwen3 checkpoint whose tokenizer is the synthetic task's (they belong together)."""
  root = tmp_path_factory.mktemp("hf")
  tok_dir = build_char_tokenizer(str(root / "tok"))
  tok = Tokenizer.from_dir(tok_dir)
  model_dir, _ = hf_fixtures.make_checkpoint(
      "qwen3", str(root / "model"), vocab_size=-(-tok.vocab_size // 8) * 8,
      eos_token_id=tok.eos_id, pad_token_id=tok.pad_id, bos_token_id=tok.pad_id)
  for name in os.listdir(tok_dir):
    with open(os.path.join(tok_dir, name), "rb") as src, \
        open(os.path.join(model_dir, name), "wb") as dst:
      dst.write(src.read())
  return model_dir


def test_tokenizer_defaults_to_the_init_from_directory(hf_dir, tmp_path):
  c = _config(build="arith")  # the synthetic tokenizer is NOT built when init_from has one
  c.model.init_from = hf_dir
  tok = workdir_lib.setup_tokenizer(c, str(tmp_path))
  assert tok.path == hf_dir and not os.path.exists(tmp_path / "tokenizer")
  mesh = shd.make_mesh(devices=jax.devices()[:1])
  cfg, _ = workdir_lib.setup_model(c, tok, mesh)
  assert cfg.vocab_size >= tok.vocab_size
  c.tokenizer.path = str(tmp_path / "other")  # an explicit path still wins
  build_char_tokenizer(c.tokenizer.path)
  assert workdir_lib.setup_tokenizer(c, str(tmp_path)).path == c.tokenizer.path


def test_a_tokenizer_that_does_not_belong_to_the_model_is_refused(hf_dir, tmp_path):
  other = tmp_path / "word_tok"
  hf_fixtures.make_tokenizer_files(str(other))
  c = _config(path=str(other))
  c.model.init_from = hf_dir
  tok = workdir_lib.setup_tokenizer(c, str(tmp_path))
  mesh = shd.make_mesh(devices=jax.devices()[:1])
  size = Tokenizer.from_dir(hf_dir).vocab_size  # the synthetic task's alphabet
  with pytest.raises(ValueError, match=r"word_tok.*14 tokens.*is not the tokenizer of model "
                                       rf".*{size} tokens.*do not belong together"):
    workdir_lib.setup_model(c, tok, mesh)
  # A model directory without a tokenizer: its eos id must be one the tokenizer stops on.
  bare, _ = hf_fixtures.make_checkpoint("qwen3", str(tmp_path / "bare"), eos_token_id=7)
  c.model.init_from = bare
  with pytest.raises(ValueError, match=r"word_tok.*stops on ids \[2\].*bare.*ends sequences "
                                       r"with \[7\].*do not belong together"):
    workdir_lib.setup_model(c, tok, mesh)
  big, _ = hf_fixtures.make_checkpoint("qwen3", str(tmp_path / "big"), vocab_size=8)
  c.model.init_from = big
  with pytest.raises(ValueError, match=r"has 14 tokens but model .*big.* embeds only 8"):
    workdir_lib.setup_model(c, tok, mesh)


def test_model_overrides_with_init_from_must_restate_the_checkpoint(hf_dir, tmp_path):
  c = _config(build="arith")
  c.model.init_from = hf_dir
  c.model.overrides = dict(vocab_size=0, num_layers=2)  # restates the fixture's 2 layers: ok
  tok = workdir_lib.setup_tokenizer(c, str(tmp_path))
  mesh = shd.make_mesh(devices=jax.devices()[:1])
  workdir_lib.setup_model(c, tok, mesh)
  c.model.overrides = dict(num_layers=4)
  with pytest.raises(ValueError, match=r"config.model.overrides.num_layers=4 differs from 2"):
    workdir_lib.setup_model(c, tok, mesh)


def test_a_workdir_without_checkpoint_is_taken_over(tmp_path):
  a, b = configs.base_config(), configs.base_config()
  b.rl.group_size = 4
  workdir_lib.claim(a, str(tmp_path))
  workdir_lib.claim(b, str(tmp_path))  # a start that died before its first save: no conflict
  assert json.load(open(tmp_path / "config.json"))["rl"]["group_size"] == 4
  os.makedirs(tmp_path / "checkpoints" / "3")
  workdir_lib.claim(b, str(tmp_path))  # same config: fine
  with pytest.raises(ValueError, match=r"differing fields: config.rl.group_size"):
    workdir_lib.claim(a, str(tmp_path))


def test_task_options_are_config_fields():
  c = configs.base_config()
  c.task.name = "gsm8k"
  c.task.kwargs = dict(manual_dir="x")
  c = configs.finalize(c)
  assert c.task.kwargs.manual_dir == "x" and c.task.kwargs.num_workers == 2
  c.task.kwargs.timeout_s = 5.0  # an option left at None takes a value, field by field
  with pytest.raises(AttributeError):
    c.task.kwargs.manual_dirr = "y"
  assert configs.unknown_field_message(c, "task.kwargs.manual_dirr") == (
      "unknown config field config.task.kwargs.manual_dirr; did you mean "
      "config.task.kwargs.manual_dir?")
  assert configs.unknown_field_message(c, "task.kwargs.manual_dir") is None
  bad = configs.base_config()
  bad.task.kwargs = dict(num_step=3)
  with pytest.raises(ValueError, match=r"config.task.kwargs.num_step is not an option of task "
                                       r"'arith'"):
    configs.finalize(bad)
  arith = configs.finalize(configs.base_config())
  assert arith.task.kwargs.num_steps == [2, 4] and arith.task.kwargs.modulus == 10
  assert isinstance(arith.task.kwargs, ml_collections.ConfigDict)


def test_init_from_another_runs_workdir(tmp_path):
  """Methods share one cold start: a run can start from another run's latest checkpoint."""
  import importlib.util
  import numpy as np
  from si_jax.train import trainer
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  spec = importlib.util.spec_from_file_location(
      "g", os.path.join(repo, "experiments", "configs", "arith_grpo.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  cold = mod.get_config("smoke")
  cold.rl.steps = 0
  trainer.train(cold, str(tmp_path / "cold"))
  c = mod.get_config("smoke")
  c.model.init_from = str(tmp_path / "cold")
  c.sft.steps = 0
  c.tokenizer.build = ""
  tok = workdir_lib.setup_tokenizer(c, str(tmp_path / "rl"))
  assert tok.path == str(tmp_path / "cold" / "tokenizer")
  _, params = workdir_lib.setup_model(c, tok, shd.make_mesh(devices=jax.devices()[:1]))
  want = workdir_lib.load_run(str(tmp_path / "cold"))["params"]
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_field_added_to_the_schema_later_does_not_block_a_resume():
  """A saved config without a field the schema gained since, which the new config leaves at
  its default, is the same run; the field set to another value is a difference."""
  from si_jax import configs
  new = configs.to_dict(configs.base_config())
  old = json.loads(json.dumps(new))
  del old["rl"]["logprob_microbatches"]
  del old["model"]["lora"]
  defaults = configs.to_dict(configs.base_config())
  assert workdir_lib._diff(old, new, defaults=defaults) == []
  new["rl"]["logprob_microbatches"] = 2
  assert workdir_lib._diff(old, new, defaults=defaults) == ["rl.logprob_microbatches"]


def test_the_loaded_model_and_tokenizer_are_named_in_one_line_each(hf_dir, tmp_path, capsys):
  c = _config()
  c.model.init_from = hf_dir
  tok = workdir_lib.setup_tokenizer(c, str(tmp_path))
  cfg, _ = workdir_lib.setup_model(c, tok, shd.make_mesh(devices=jax.devices()[:1]))
  lines = capsys.readouterr().out.splitlines()
  assert lines == [
      f"tokenizer: {hf_dir} (the model's own): {tok.vocab_size} tokens, eos {tok.eos_id}, "
      f"stops on {list(tok.stop_ids)}",
      f"model: {hf_dir} (HF directory, config.model.init_from): qwen3, 2 layers, d=64, vocab "
      f"{cfg.vocab_size}, {cfg.num_params() / 1e6:.2f}M params, float32"]
  c = _config(build="arith")  # no init_from: the preset, initialized from the seed
  tok = workdir_lib.setup_tokenizer(c, str(tmp_path))
  workdir_lib.setup_model(c, tok, shd.make_mesh(devices=jax.devices()[:1]))
  tokenizer_line, model_line = capsys.readouterr().out.splitlines()
  assert tokenizer_line.startswith(f"tokenizer: {tmp_path}/tokenizer (built: "
                                   f"config.tokenizer.build='arith'): ")
  assert model_line.startswith("model: new, random init from config.model.preset='tiny' "
                               "(seed 0): qwen3, ")


def test_resume_fields_may_differ_between_starts_of_a_run(tmp_path):
  a, b = configs.base_config(), configs.base_config()
  b.checkpoint.on_corrupt = "refuse"
  workdir_lib.claim(a, str(tmp_path))
  os.makedirs(tmp_path / "checkpoints" / "3")
  workdir_lib.claim(b, str(tmp_path))  # how to resume is no part of what the run is
  b.checkpoint.keep = 5
  with pytest.raises(ValueError, match=r"differing fields: config.checkpoint.keep$|"
                                       r"differing fields: config.checkpoint.keep\."):
    workdir_lib.claim(b, str(tmp_path))


def _si_config(**sft):
  c = configs.base_config()
  c.rl.credit = "si"
  c.sft.update(sft)
  return c


@pytest.mark.parametrize("sft, warned", [
    (dict(steps=0), True),
    (dict(steps=100, repair_pairs=0), True),
    (dict(steps=0, repair_pairs=64), True),  # pairs but no SFT step to learn them
    (dict(steps=100, repair_pairs=64), False),
    (dict(steps=100, repair_data_path="repairs.jsonl"), False),
])
def test_si_without_a_repair_mode_cold_start_warns(capsys, sft, warned):
  workdir_lib.warn_without_repair_cold_start(_si_config(**sft))
  err = capsys.readouterr().err
  assert (err.startswith("si-train: warning: config.rl.credit='si' repairs failures with the "
                         "model's repair mode, but it has had no cold start on repair pairs")
          == warned), err
  assert err.count("\n") == (1 if warned else 0)


def test_si_from_a_run_that_had_the_repair_cold_start_does_not_warn(tmp_path, capsys):
  cold = _si_config(steps=100, repair_pairs=64)
  (tmp_path / "cold").mkdir()
  (tmp_path / "cold" / "config.json").write_text(configs.to_json(cold))
  os.makedirs(tmp_path / "cold" / "checkpoints" / "100")
  c = _si_config(steps=0)
  c.model.init_from = str(tmp_path / "cold")
  workdir_lib.warn_without_repair_cold_start(c)
  c.rl.credit = "outcome"  # and GRPO needs no repair mode at all
  workdir_lib.warn_without_repair_cold_start(_config())
  assert capsys.readouterr().err == ""
  bare = _si_config(steps=100)
  (tmp_path / "bare").mkdir()
  (tmp_path / "bare" / "config.json").write_text(configs.to_json(bare))
  os.makedirs(tmp_path / "bare" / "checkpoints" / "100")
  c.rl.credit = "si"
  c.model.init_from = str(tmp_path / "bare")
  workdir_lib.warn_without_repair_cold_start(c)
  assert "no cold start on repair pairs" in capsys.readouterr().err


# ----------------------------------------------------------------------------- gs:// storage


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
  """gs:// served from a local directory through fsspec, as gcsfs would serve a bucket (no
  bucket is reachable here): epath (what workdir files, metrics and staging use) reaches gs://
  through fsspec when TensorFlow is not installed. Returns the directory holding the buckets."""
  import fsspec
  from etils.epath import backend
  from fsspec.implementations.local import LocalFileSystem
  root = tmp_path / "gcs"
  root.mkdir()

  class FakeGCS(LocalFileSystem):
    protocol = ("gs", "gcs")

    def __init__(self, *args, finalize_on_close=False, **kwargs):  # gcsfs's option
      super().__init__(*args, **kwargs)

    @classmethod
    def _strip_protocol(cls, path):
      path = fsspec.utils.stringify_path(path)
      if path.startswith("gs://"):
        path = f"{root}/{path[len('gs://'):]}"
      return super()._strip_protocol(path)

  registry = importlib.import_module("fsspec.registry")._registry  # pylint: disable=protected-access
  for name in ("gs", "gcs"):
    monkeypatch.setitem(registry, name, FakeGCS)
  backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
  yield root
  backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access


def test_a_gs_workdir_holds_the_config_metrics_and_samples(fake_gcs):
  from si_jax import metrics
  wd = "gs://bucket/runs/a"
  config = _config(build="arith")
  workdir_lib.claim(config, wd)
  assert workdir_lib.read_config(wd).to_dict() == configs.from_json(
      configs.to_json(config)).to_dict()
  assert not workdir_lib.has_checkpoint(wd)
  with metrics.MetricsWriter(wd, tensorboard=False, enabled=True) as w:
    w.write(1, {"loss": 1.5})
    w.write(2, {"loss": 0.5})
  metrics.append_text(f"{wd}/samples.jsonl", "a\n")
  metrics.append_text(f"{wd}/samples.jsonl", "b\n")
  run = fake_gcs / "bucket" / "runs" / "a"  # what the bucket holds
  assert sorted(os.listdir(run)) == ["config.json", "metrics.jsonl", "samples.jsonl"]
  assert [json.loads(l)["loss"] for l in open(run / "metrics.jsonl")] == [1.5, 0.5]
  assert (run / "samples.jsonl").read_text() == "a\nb\n"
  workdir_lib.claim(config, wd)  # the same run again: accepted


def test_a_gs_init_from_is_staged_once_per_host_and_loads(hf_dir, fake_gcs, tmp_path,
                                                         monkeypatch, capsys):
  """model.init_from=gs://...: this host's local copy is made once (a killed copy is never
  used: it is renamed when complete), then the model and its tokenizer load from it."""
  import shutil
  shutil.copytree(hf_dir, fake_gcs / "bucket" / "models" / "tiny")
  monkeypatch.setenv(workdir_lib.STAGE_ENV, str(tmp_path / "stage"))
  c = configs.base_config()
  c.model.init_from = "gs://bucket/models/tiny"
  tok = workdir_lib.setup_tokenizer(c, None)
  local = workdir_lib.stage(c.model.init_from)
  assert local.startswith(str(tmp_path / "stage")) and sorted(
      f for f in os.listdir(local) if f != workdir_lib.STAGED_MARK) == sorted(os.listdir(hf_dir))
  mesh = shd.make_mesh(devices=jax.devices()[:1])
  cfg, params = workdir_lib.setup_model(c, tok, mesh)
  out = capsys.readouterr().out
  assert out.count("staging gs://bucket/models/tiny") == 1  # once, by the tokenizer's look
  assert "(the model's own, staged to" in out and cfg.num_layers >= 1
  mtime = os.path.getmtime(os.path.join(local, "config.json"))
  assert workdir_lib.stage(c.model.init_from) == local  # a second start: no copy
  assert os.path.getmtime(os.path.join(local, "config.json")) == mtime
  (fake_gcs / "bucket" / "models" / "tiny" / "extra.txt").write_text("new")  # source changed
  assert os.path.exists(os.path.join(workdir_lib.stage(c.model.init_from), "extra.txt"))
  assert [n for n in os.listdir(tmp_path / "stage") if ".tmp-" in n] == []


def test_inputs_every_host_reads_are_checked_on_every_host(tmp_path, monkeypatch):
  """A multi-host run stops before any work, naming the field, the path and the processes
  that do not see it (here: 2 processes, the second without the data directory)."""
  from si_jax import multihost
  c = configs.base_config()
  c.model.init_from = str(tmp_path / "model")
  c.task.kwargs = {"manual_dir": str(tmp_path / "data")}
  c.sft.data_path = "gs://bucket/sft.jsonl"  # remote: read through epath, not checked here
  os.makedirs(tmp_path / "model")
  assert workdir_lib.inputs_to_check(c) == {"model.init_from": str(tmp_path / "model"),
                                            "task.kwargs.manual_dir": str(tmp_path / "data")}
  workdir_lib.check_inputs_on_every_host(c)  # one process: nothing to compare
  monkeypatch.setattr(multihost, "process_count", lambda: 2)
  monkeypatch.setattr(multihost, "allgather", lambda x: __import__("numpy").stack(
      [x, [os.path.exists(tmp_path / "model"), False]]))  # process 1 lacks the data
  with pytest.raises(ValueError, match=(
      r"config.task.kwargs.manual_dir='.*/data' does not exist on process\(es\) \[0, 1\] of 2 "
      r"\(one per host\): a multi-host run reads it on every host, so it must be on storage "
      r"every host sees")):
    workdir_lib.check_inputs_on_every_host(c)


def test_setup_py_declares_the_gcs_extra():
  text = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "setup.py"), encoding="utf-8").read()
  assert '"gcs": ["gcsfs' in text and "google-cloud-storage" in text
