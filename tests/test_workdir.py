"""What a run is built from: tokenizer defaults and mismatches, model overrides with init_from,
the workdir's config rules, field-by-field task options."""

import json
import os

import jax
import ml_collections
import pytest

from si_jax import configs
from si_jax import sharding as shd
from si_jax import workdir as workdir_lib
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
  with pytest.raises(ValueError, match=r"word_tok.*14 tokens.*is not the tokenizer of model "
                                       r".*139 tokens.*do not belong together"):
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
  from si_jax.rl import trainer
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
