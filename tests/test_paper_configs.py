"""Paper-scale configs (experiments/configs/qwen3_*.py): every size and method builds and
validates, GSPO and SI differ only in their credit, the model is the checkpoint's, bad
arguments say what is valid, the sweep files validate, the data script splits as documented,
and the smoke variant trains GSPO and SI on a tiny HF checkpoint before the table script
evaluates both on AIME / HMMT-style files."""

import importlib.util
import json
import os
import shlex
import sys

import jax
import pytest

import jax_cache
from si_jax import configs
from si_jax import sharding as shd
from si_jax.tools import sweep as sweep_lib
from si_jax.train import workdir as workdir_lib
from si_jax.models import config as model_config
from si_jax.models import hf
from si_jax.models import transformer
from si_jax.train import trainer
from si_jax.tokenizer import Tokenizer, build_char_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ("qwen3_math", "qwen3_code")
SIZES = ("0.6b", "1.7b", "4b", "8b", "14b", "32b")


def _module(*parts):
  path = os.path.join(REPO, "experiments", *parts)
  name = "_paper_" + os.path.basename(path)[:-3]
  spec = importlib.util.spec_from_file_location(name, path)
  mod = importlib.util.module_from_spec(spec)
  sys.modules[name] = mod  # dataclasses look their module up
  spec.loader.exec_module(mod)
  return mod


def _config(name, arg):
  return _module("configs", f"{name}.py").get_config(arg)


def _spec(name, arg):
  return os.path.join(REPO, "experiments", "configs", f"{name}.py") + f":{arg}"


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", CONFIGS)
def test_every_size_and_method_builds_and_validates(name):
  q = _module("configs", "_qwen3.py")
  for size in SIZES + ("smoke",):
    si, gspo = _config(name, size), _config(name, f"{size},gspo")
    configs.validate(si)
    configs.validate(gspo)
    assert (si.rl.credit, gspo.rl.credit) == ("si", "outcome")
    assert si.rl.loss == gspo.rl.loss == "gspo"
    assert _config(name, f"{size},si").to_dict() == si.to_dict()  # si is the default
    # equal budget: the methods differ in their credit and nothing else
    a, b = configs.to_dict(si), configs.to_dict(gspo)
    del a["rl"]["credit"], b["rl"]["credit"]
    assert a == b
    if size == "smoke":
      assert si.model.dtype is None and si.mesh.data == 1  # float32 on one CPU device
      continue
    assert si.model.dtype == "bfloat16" and si.model.param_dtype is None  # float32 params
    s = q.SCALES[size]
    assert si.model.init_from.endswith(q.HF_NAMES[size])
    assert dict(si.mesh) == dict(data=-1, fsdp=s.fsdp, tensor=s.tensor)
    assert (si.rl.prompts_per_step, si.rl.group_size) == (s.prompts, s.group)
    assert 8 <= si.rl.group_size <= 16 and si.rl.max_new_tokens >= 8192
    # SI's repair rows (failure + anchor + repair) fit the model's context
    preset = model_config.PRESETS[f"qwen3-{size}"]
    assert 3 * si.rl.max_new_tokens + 1024 <= preset["max_position_embeddings"]
    # the model's size is checked against the checkpoint, from the preset's shape
    assert dict(si.model.overrides) == {k: preset[k] for k in ("num_layers", "hidden_size")}
    # a micro-batch holds one row per batch shard on the devices the defaults are sized for
    shards = s.devices // s.tensor
    assert s.prompts * s.group == si.rl.minibatches * si.rl.microbatches * shards
    assert s.devices % (s.fsdp * s.tensor) == 0
    assert s.prompts % max(1, s.devices // 8) == 0  # multi-host: whole groups per 8-GPU host


def test_sizes_are_told_apart_and_paths_come_from_the_environment(monkeypatch):
  shapes = {tuple(_config("qwen3_math", s).model.overrides.values()) for s in SIZES}
  assert len(shapes) == len(SIZES)
  monkeypatch.setenv("SI_CHECKPOINTS", "/ckpt")
  monkeypatch.setenv("SI_DATA", "/data")
  c = _config("qwen3_code", "14b,gspo")
  assert c.model.init_from == "/ckpt/Qwen3-14B"
  assert (c.task.kwargs.manual_dir, c.task.kwargs.data_dir) == ("/data/livecodebench",
                                                                "/data/tfds")
  assert (c.task.train_split, c.task.eval_split) == ("train", "dev")
  m = _config("qwen3_math", "0.6b")
  assert m.task.name == "deepmath" and m.task.kwargs.manual_dir == "/data/deepmath"


@pytest.mark.parametrize("arg,match", [
    (None, r"qwen3_math: the config argument is <size>\[,<method>\] with size one of 0\.6b, "
           r"1\.7b, 4b, 8b, 14b, 32b, smoke and method one of si, gspo .*got no argument"),
    ("7b", r"unknown size '7b' in '7b'; sizes: 0\.6b, 1\.7b, 4b, 8b, 14b, 32b, smoke"),
    ("8b,grpo", r"unknown method 'grpo' in '8b,grpo'; methods: si, gspo"),
    ("8b,si,reset", r"the config argument is <size>\[,<method>\].*got '8b,si,reset'"),
])
def test_a_bad_argument_names_the_valid_ones(arg, match):
  with pytest.raises(ValueError, match=match):
    _config("qwen3_math", arg)


def test_overrides_work_on_the_command_line():
  c = sweep_lib.load_config(_spec("qwen3_math", "8b,gspo"),
                            [("model.init_from", "/elsewhere/Qwen3-8B"), ("rl.group_size", 8)])
  configs.validate(c)
  assert c.model.init_from == "/elsewhere/Qwen3-8B" and c.rl.group_size == 8


# ----------------------------------------------------------------------------- the model


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """A tiny random Qwen3 HF checkpoint (written by si_jax's exporter, no torch) with a
  tokenizer that belongs to it (the synthetic task's character tokenizer)."""
  root = tmp_path_factory.mktemp("hf")
  tok_dir = build_char_tokenizer(str(root / "tok"))
  tok = Tokenizer.from_dir(tok_dir)
  cfg = model_config.make_config(
      "qwen3", vocab_size=-(-tok.vocab_size // 8) * 8, hidden_size=32, num_layers=2,
      num_heads=2, num_kv_heads=1, head_dim=16, intermediate_size=64,
      max_position_embeddings=1024)
  model_dir = str(root / "Qwen3-tiny")
  hf.save_hf(transformer.init_params(cfg, jax.random.key(0)), cfg, model_dir,
             tokenizer_dir=tok_dir, extra_config=dict(eos_token_id=tok.eos_id,
                                                      pad_token_id=tok.pad_id,
                                                      bos_token_id=tok.pad_id))
  return model_dir


def test_the_model_is_read_from_the_checkpoint_and_must_be_the_size(hf_dir, tmp_path):
  mesh = shd.make_mesh(devices=jax.devices()[:1])
  c = sweep_lib.load_config(_spec("qwen3_math", "smoke"), [("model.init_from", hf_dir)])
  tok = workdir_lib.setup_tokenizer(c, str(tmp_path))
  assert tok.path == hf_dir  # the checkpoint's own tokenizer, not the smoke's fallback
  cfg, _ = workdir_lib.setup_model(c, tok, mesh)
  hf_cfg = json.load(open(os.path.join(hf_dir, "config.json")))
  assert (cfg.num_layers, cfg.hidden_size, cfg.intermediate_size, cfg.head_dim) == (
      hf_cfg["num_hidden_layers"], hf_cfg["hidden_size"], hf_cfg["intermediate_size"],
      hf_cfg["head_dim"])
  # a sized config refuses a checkpoint of another size, naming the field
  c = sweep_lib.load_config(_spec("qwen3_math", "8b"), [("model.init_from", hf_dir)])
  with pytest.raises(ValueError, match=r"config.model.overrides.(hidden_size=4096 differs from "
                                       r"32|num_layers=36 differs from 2) in the checkpoint"):
    workdir_lib.setup_model(c, tok, mesh)


# ----------------------------------------------------------------------------- sweeps


@pytest.mark.parametrize("name,runs", [("qwen3_math", 2), ("qwen3_code", 2),
                                       ("qwen3_math_si_variants", 3)])
def test_sweep_files_validate(name, runs, capsys, monkeypatch, tmp_path):
  monkeypatch.chdir(REPO)
  monkeypatch.setenv("SI_SIZE", "8b")
  rc = sweep_lib.main(["--sweep", f"experiments/sweeps/{name}.py", "--root",
                       str(tmp_path / "root"), "--dry_run"])
  out, err = capsys.readouterr()
  lines = out.splitlines()
  assert rc == 0 and len(lines) == runs, err
  task = "code" if "code" in name else "math"
  assert all(shlex.split(l)[:3] == ["si-train", "--config",
                                    f"experiments/configs/qwen3_{task}.py:8b"] for l in lines)
  monkeypatch.setenv("SI_SIZE", "7b")
  assert sweep_lib.main(["--sweep", f"experiments/sweeps/{name}.py", "--root",
                         str(tmp_path / "root"), "--dry_run"]) == 2
  assert "unknown size '7b'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- data


def _jsonl(path, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write("".join(json.dumps(r) + "\n" for r in rows))


def test_prepare_paper_data_holds_out_and_splits_by_date(tmp_path):
  prep = _module("prepare_paper_data.py")
  src = tmp_path / "src"
  _jsonl(str(src / "train-00000.jsonl"),
         [dict(question=f"q{i}", final_answer=str(i), difficulty=5.0, topic="t",
               r1_solution_1="long") for i in range(10)])
  assert prep.main(["deepmath", "--src", str(src), "--out", str(tmp_path / "dm"),
                    "--dev", "3"]) == 0
  train = [json.loads(l) for l in open(tmp_path / "dm" / "train.jsonl")]
  dev = [json.loads(l) for l in open(tmp_path / "dm" / "dev.jsonl")]
  assert len(train) == 7 and len(dev) == 3
  assert sorted(r["question"] for r in train + dev) == sorted(f"q{i}" for i in range(10))
  assert set(train[0]) == {"question", "final_answer", "difficulty", "topic"}

  dates = ["2024-06-01T00:00:00", "2025-01-31T00:00:00", "2025-02-01T00:00:00",
           "2025-04-30T00:00:00", "2025-06-01T00:00:00"]
  _jsonl(str(tmp_path / "lcb" / "test.jsonl"),
         [dict(question_content=f"p{i}", contest_date=d, public_test_cases="[]")
          for i, d in enumerate(dates[:2])])
  _jsonl(str(tmp_path / "lcb" / "test6.jsonl"),
         [dict(question_content=f"p{i + 2}", contest_date=d, public_test_cases="[]")
          for i, d in enumerate(dates[2:])])
  out = tmp_path / "lcb_out"
  assert prep.main(["livecodebench", "--src", str(tmp_path / "lcb"), "--out", str(out),
                    "--dev", "1", "--test_to", "2025-05-01"]) == 0
  read = lambda s: [json.loads(l)["question_content"] for l in open(out / f"{s}.jsonl")]
  assert read("v6") == ["p2", "p3"]  # 2025-06-01 is after --test_to: dropped
  assert sorted(read("train") + read("dev")) == ["p0", "p1"] and len(read("dev")) == 1
  assert prep.main(["deepmath", "--src", str(tmp_path / "nope"), "--out", str(out)]) == 2


def test_table_script_labels_runs_and_refuses_bad_arguments(tmp_path, capsys):
  table = _module("paper_table.py")
  for name, credit, correction, task in [("a", "outcome", "repair", "deepmath"),
                                         ("b", "si", "reset", "livecodebench")]:
    _jsonl(str(tmp_path / "root" / name / "config.json"), [dict(
        rl=dict(credit=credit, loss="gspo", success_threshold=1.0),
        si=dict(correction=correction), model=dict(init_from="/ckpt/Qwen3-4B"),
        task=dict(name=task))])
  runs = [table.describe(w) for w in table.find_runs([str(tmp_path / "root")], [])]
  assert [(r["model"], r["method"], r["domain"], r["step"]) for r in runs] == [
      ("Qwen3-4B", "GSPO", "math", None), ("Qwen3-4B", "SI (reset)", "code", None)]
  assert table.main(["--root", str(tmp_path / "root"), "--dry_run"]) == 0
  out = capsys.readouterr().out.splitlines()
  assert len(out) == 3 and all(l.endswith("# no checkpoint yet") for l in out)
  assert "--split v6" in out[2] and "--k 32 --temperature 0.6 --top_p 0.95" in out[0]
  for argv, msg in [(["--root", str(tmp_path)], "holds no si-train workdir"),
                    (["--workdir", str(tmp_path)], "not an si-train workdir"),
                    ([], "no runs"),
                    (["--root", str(tmp_path / "root"), "--benchmarks", "AIME24"],
                     "unknown benchmark 'AIME24'")]:
    assert table.main(argv + ["--dry_run"]) == 2
    assert msg in capsys.readouterr().err


# ----------------------------------------------------------------------------- end to end


def _math_rows(n, offset=0):
  return [dict(question=f"What is {i} + {i + 1}?", final_answer=str(2 * i + 1),
               difficulty=3.0) for i in range(offset, offset + n)]


def test_smoke_trains_gspo_and_si_then_the_table_evaluates_both(hf_dir, tmp_path, capsys):
  # One compilation cache for both runs and the four evaluations, as si-train's default cache
  # is on one machine: the SI run and the second run's evaluations read the programs they
  # share with the first instead of compiling them again.
  with jax_cache.scoped(tmp_path / "xla"):
    _smoke_then_table(hf_dir, tmp_path, capsys)


def _smoke_then_table(hf_dir, tmp_path, capsys):
  data = tmp_path / "data"
  _jsonl(str(data / "deepmath" / "train.jsonl"), _math_rows(6))
  _jsonl(str(data / "deepmath" / "dev.jsonl"), _math_rows(2, offset=10))
  _jsonl(str(data / "aime" / "aime25.jsonl"),
         [dict(problem="Find 3 + 4.", answer=7), dict(problem="Find 2 * 5.", answer="10")])
  _jsonl(str(data / "hmmt" / "hmmt25.jsonl"), [dict(problem="Find 1 + 1.", answer="2")])
  runs = tmp_path / "runs"
  for method in ("gspo", "si"):
    c = sweep_lib.load_config(_spec("qwen3_math", f"smoke,{method}"), [
        ("model.init_from", hf_dir), ("task.kwargs.manual_dir", str(data / "deepmath")),
        ("task.kwargs.data_dir", str(data / "tfds"))])
    summary = trainer.train(c, str(runs / method))
    assert summary["steps"] == 2 and "avg@2" in summary["eval_after"]
  si_metrics = [json.loads(l) for l in open(runs / "si" / "metrics.jsonl")]
  assert any(k.startswith("si/") for k in si_metrics[-1])

  table = _module("paper_table.py")
  common = ["--root", str(runs), "--data_root", str(data), "--k", "2", "--temperature", "1.0",
            "--max_new_tokens", "8", "--workers", "1", "--out", str(tmp_path / "table")]
  capsys.readouterr()
  assert table.main(common + ["--dry_run"]) == 0
  cmds = [shlex.split(l) for l in capsys.readouterr().out.splitlines()]
  assert len(cmds) == 4  # 2 runs x (AIME25, HMMT25); math runs skip LCB v6
  assert cmds[0][:3] == ["si-eval", "--workdir", str(runs / "gspo")]
  assert {c[c.index("--split") + 1] for c in cmds} == {"aime25", "hmmt25"}
  assert cmds[0][cmds[0].index("--k") + 1] == "2" and "--top_p" in cmds[0]

  assert table.main(common) == 0
  md = open(tmp_path / "table" / "table.md").read()
  assert "| model | method | runs | AIME25 avg@2 | HMMT25 avg@2 | LCB v6 avg@2 |" in md
  rows = {l.split(" | ")[1]: l for l in md.splitlines() if l.startswith("| Qwen3-tiny")}
  assert set(rows) == {"GSPO", "SI", "SI - GSPO"}
  assert rows["GSPO"].rstrip(" |").endswith("| -")  # no LCB v6 for math runs
  res = json.load(open(tmp_path / "table" / "table.json"))
  assert len(res["results"]) == 4
  assert all(0.0 <= r["score"] <= 1.0 and r["num_examples"] in (1, 2) for r in res["results"])
  assert os.path.exists(runs / "si" / "paper_eval" / "aime25" / "eval.json")
  capsys.readouterr()
  assert table.main(common) == 0  # done before: reused, nothing evaluated again
  assert capsys.readouterr().out.count("reused") == 4
