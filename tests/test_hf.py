"""HF checkpoint import/export: mapping table, logit parity with transformers, round trips,
sharded placement, error messages, and the si-convert CLI."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

import hf_fixtures
import tiny
from si_jax import sharding as sharding_lib
from si_jax.cli import convert as convert_cli
from si_jax.models import convert
from si_jax.models import hf
from si_jax.models import transformer
from si_jax.models.config import make_config

FAMILIES = hf_fixtures.FAMILIES


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
  """family -> (dir, fp32 torch model), built once for the module."""
  root = tmp_path_factory.mktemp("hf")
  return {f: hf_fixtures.make_checkpoint(f, str(root / f), seed=i)
          for i, f in enumerate(FAMILIES)}


@pytest.fixture(scope="module")
def loaded(ckpts):
  """family -> (cfg, params) imported with load_hf."""
  return {f: hf.load_hf(d) for f, (d, _) in ckpts.items()}


def _copy(src, dst):
  shutil.copytree(src, dst)
  return str(dst)


def _rewrite_weights(model_dir, edit):
  """Applies `edit(dict name -> array)` to model.safetensors in place."""
  path = os.path.join(model_dir, hf.WEIGHTS_FILE)
  tensors = safetensors.numpy.load_file(path)
  edit(tensors)
  safetensors.numpy.save_file(tensors, path, metadata={"format": "pt"})


def _rewrite_config(model_dir, edit):
  path = os.path.join(model_dir, hf.CONFIG_FILE)
  with open(path) as f:
    cfg = json.load(f)
  edit(cfg)
  with open(path, "w") as f:
    json.dump(cfg, f)


def _assert_trees_identical(a, b):
  fa, ta = jax.tree_util.tree_flatten_with_path(a)
  fb, tb = jax.tree_util.tree_flatten_with_path(b)
  assert ta == tb
  for (path, x), (_, y) in zip(fa, fb):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape, jax.tree_util.keystr(path)
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


# ----------------------------------------------------------------------------- mapping table


def test_rules_are_data_with_one_row_per_param():
  names = [r.hf for r in hf.RULES]
  assert len(names) == len(set(names))
  q = next(r for r in hf.RULES if r.path == ("layers", "q"))
  assert (q.hf, q.transform, q.when) == (
      "model.layers.{layer}.self_attn.q_proj.weight", "transpose", "always")
  assert q.hf_names(make_config("llama", num_layers=3)) == [
      f"model.layers.{i}.self_attn.q_proj.weight" for i in range(3)]
  for r in hf.RULES:
    assert r.transform in hf.TRANSFORMS and r.when in hf.CONDITIONS, r


@pytest.mark.parametrize("family,tie", [("llama", True), ("qwen2", False), ("qwen3", False)])
def test_active_rules_match_param_shapes(family, tie):
  cfg = make_config(family, tie_embeddings=tie)
  paths = {r.path for r in hf.active_rules(cfg)}
  assert (("layers", "q_bias") in paths) == (family == "qwen2")
  assert (("layers", "q_norm") in paths) == (family == "qwen3")
  assert (("lm_head",) in paths) == (not tie)


def test_hf_shape_and_index_invert_the_transform():
  assert hf._hf_shape((64, 96), "transpose") == (96, 64)
  assert hf._hf_shape((64,), "none") == (64,)
  x = np.arange(12.0).reshape(3, 4)  # an HF [out, in] tensor
  p = hf._to_param(x, "transpose")
  idx = (slice(1, 3), slice(0, 2))
  np.testing.assert_array_equal(p[idx], hf._to_param(x[hf._hf_index(idx, "transpose")],
                                                     "transpose"))
  np.testing.assert_array_equal(hf._to_hf(p, "transpose"), x)


def test_parse_size():
  assert hf.parse_size(123) == 123
  assert hf.parse_size("5GB") == 5 * 10**9
  assert hf.parse_size("2MiB") == 2 * 2**20
  assert hf.parse_size("40KB") == 40_000
  with pytest.raises(ValueError, match="max_shard_size.*'5 parsecs'"):
    hf.parse_size("5 parsecs")


# ----------------------------------------------------------------------------- import


@pytest.mark.parametrize("family", FAMILIES)
def test_import_gives_init_params_layout_and_torch_values(family, ckpts, loaded):
  cfg, params = loaded[family]
  _, model = ckpts[family]
  assert cfg.family == family
  want = jax.eval_shape(lambda: transformer.init_params(cfg, jax.random.key(0)))
  assert jax.tree.structure(params) == jax.tree.structure(want)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), params) == jax.tree.map(
      lambda a: (a.shape, a.dtype), want)
  sd = {k: v.numpy() for k, v in model.state_dict().items()}
  np.testing.assert_array_equal(params["layers"]["q"][1],
                                sd["model.layers.1.self_attn.q_proj.weight"].T)
  np.testing.assert_array_equal(params["layers"]["down"][0],
                                sd["model.layers.0.mlp.down_proj.weight"].T)
  np.testing.assert_array_equal(params["layers"]["mlp_norm"][1],
                                sd["model.layers.1.post_attention_layernorm.weight"])
  np.testing.assert_array_equal(params["embed"], sd["model.embed_tokens.weight"])
  if family == "qwen2":
    np.testing.assert_array_equal(params["layers"]["k_bias"][1],
                                  sd["model.layers.1.self_attn.k_proj.bias"])
  if family == "qwen3":
    assert cfg.head_dim == 32 != cfg.hidden_size // cfg.num_heads
    np.testing.assert_array_equal(params["layers"]["k_norm"][0],
                                  sd["model.layers.0.self_attn.k_norm.weight"])
  if family == "llama":
    assert cfg.tie_embeddings and cfg.rope_scaling is not None
    assert "lm_head" not in params


def _batch(vocab, seed=0):
  """Tokens [3, 24] with rows unpadded, left-padded by 5, and left-padded by 13."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, vocab, size=(3, 24)).astype(np.int32)
  mask = np.ones((3, 24), np.int32)
  mask[1, :5] = 0
  mask[2, :13] = 0
  tokens[mask == 0] = 0
  return tokens, mask


@pytest.mark.parametrize("family", FAMILIES)
def test_logit_parity_with_transformers_left_padded(family, ckpts, loaded):
  cfg, params = loaded[family]
  _, model = ckpts[family]
  tokens, mask = _batch(cfg.vocab_size)
  ref = hf_fixtures.torch_logits(model, tokens, mask)
  got = np.asarray(transformer.forward(params, jnp.asarray(tokens), jnp.asarray(mask), cfg))
  real = mask.astype(bool)
  assert got.shape == ref.shape == (3, 24, cfg.vocab_size)
  assert np.abs(got - ref)[real].max() <= 1e-4
  assert ref[real].std() > 0.5  # logits are not near-constant: the comparison has teeth
  if family == "llama":
    # The comparison sees the llama3 RoPE scaling: dropping it breaks parity.
    plain = cfg.replace(rope_scaling=None)
    off = np.asarray(transformer.forward(params, jnp.asarray(tokens), jnp.asarray(mask), plain))
    assert np.abs(off - ref)[real].max() > 1e-3


def test_import_bf16_checkpoint(tmp_path):
  d, model = hf_fixtures.make_checkpoint("qwen3", str(tmp_path / "q3"), seed=7,
                                         dtype="bfloat16")
  cfg32, p32 = hf.load_hf(d)
  ref = model.state_dict()["model.layers.1.mlp.up_proj.weight"].to(torch.bfloat16).float()
  assert p32["layers"]["up"].dtype == jnp.float32
  np.testing.assert_array_equal(p32["layers"]["up"][1], ref.numpy().T)
  cfg16, p16 = hf.load_hf(d, dtype="bfloat16")
  assert cfg16.param_dtype == "bfloat16" and cfg32.param_dtype == "float32"
  assert {x.dtype for x in jax.tree.leaves(p16)} == {jnp.dtype(jnp.bfloat16)}
  _assert_trees_identical(jax.tree.map(lambda x: x.astype(jnp.float32), p16), p32)


def test_import_sharded_checkpoint_into_mesh(tmp_path, ckpts, loaded):
  """Sharded safetensors (index.json) placed directly on a (data, fsdp, tensor) = (2, 2, 2) mesh."""
  src, _ = ckpts["qwen2"]
  _, model = ckpts["qwen2"]
  d = str(tmp_path / "sharded")
  model.save_pretrained(d, max_shard_size="40KB")
  assert os.path.exists(os.path.join(d, hf.WEIGHTS_INDEX_FILE))
  assert len([f for f in os.listdir(d) if f.endswith(".safetensors")]) > 2
  mesh = sharding_lib.make_mesh(data=2, fsdp=2, tensor=2)
  cfg, params = hf.load_hf(d, shardings=lambda c: sharding_lib.param_shardings(c, mesh))
  want = sharding_lib.param_shardings(cfg, mesh)
  q = params["layers"]["q"]
  assert q.sharding == want["layers"]["q"]
  assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  for shard in q.addressable_shards:  # each device holds only its block
    assert shard.data.shape == (cfg.num_layers, cfg.hidden_size // 2,
                                cfg.num_heads * cfg.head_dim // 2)
    np.testing.assert_array_equal(shard.data, np.asarray(loaded["qwen2"][1]["layers"]["q"])[
        shard.index])
  jax.tree.map(lambda p, s: assert_sharding(p, s), params, want)
  _assert_trees_identical(params, loaded["qwen2"][1])


def assert_sharding(p, s):
  assert p.sharding == s, (p.sharding, s)


# ----------------------------------------------------------------------------- export


@pytest.mark.parametrize("family", FAMILIES)
def test_export_loads_in_transformers_and_reimports_identically(family, ckpts, loaded,
                                                                tmp_path):
  cfg, params = loaded[family]
  _, model = ckpts[family]
  out = str(tmp_path / "export")
  hf.save_hf(params, cfg, out, extra_config={"bos_token_id": 1, "eos_token_id": 2})
  assert sorted(os.listdir(out)) == ["config.json", "generation_config.json",
                                     "model.safetensors"]
  reloaded, info = transformers.AutoModelForCausalLM.from_pretrained(
      out, output_loading_info=True, attn_implementation="eager")
  assert info == {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(),
                  "error_msgs": []}
  assert reloaded.dtype == torch.float32
  want_sd, got_sd = model.state_dict(), reloaded.state_dict()
  assert sorted(want_sd) == sorted(got_sd)
  for k in want_sd:
    assert torch.equal(want_sd[k], got_sd[k]), k
  with open(os.path.join(out, hf.GENERATION_CONFIG_FILE)) as f:
    assert json.load(f) == {"bos_token_id": 1, "eos_token_id": 2}
  cfg2, params2 = hf.load_hf(out)
  assert cfg2 == cfg
  _assert_trees_identical(params2, params)


def test_export_sharded_bf16_with_tokenizer(tmp_path, loaded):
  cfg, params = loaded["llama"]
  tok_dir = str(tmp_path / "tok")
  copied = hf_fixtures.make_tokenizer_files(tok_dir)
  out = str(tmp_path / "export")
  os.makedirs(out)
  open(os.path.join(out, "model-00001-of-00009.safetensors"), "w").close()  # stale shard
  hf.save_hf(params, cfg, out, dtype="bfloat16", tokenizer_dir=tok_dir, max_shard_size="30KB")
  files = sorted(os.listdir(out))
  shards = [f for f in files if f.endswith(".safetensors")]
  assert len(shards) > 2 and "model-00001-of-00009.safetensors" not in files
  assert hf.WEIGHTS_INDEX_FILE in files and set(copied) <= set(files)
  with open(os.path.join(out, hf.WEIGHTS_INDEX_FILE)) as f:
    index = json.load(f)
  assert set(index["weight_map"].values()) == set(shards)
  assert "lm_head.weight" not in index["weight_map"]  # tied
  with open(os.path.join(out, hf.CONFIG_FILE)) as f:
    assert json.load(f)["dtype"] == "bfloat16"
  reloaded, info = transformers.AutoModelForCausalLM.from_pretrained(
      out, output_loading_info=True)
  assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"])
  assert reloaded.dtype == torch.bfloat16
  assert transformers.AutoTokenizer.from_pretrained(out).convert_tokens_to_ids("7") == 11
  cfg16, p16 = hf.load_hf(out)
  assert cfg16.param_dtype == "float32"  # load_hf's default; the values are bf16-exact
  _assert_trees_identical(p16, jax.tree.map(
      lambda x: x.astype(jnp.bfloat16).astype(jnp.float32), params))


def test_export_rejects_params_that_do_not_match_the_config(tmp_path, loaded):
  cfg, params = loaded["qwen2"]
  layers = {k: v for k, v in params["layers"].items() if k != "v_bias"}
  with pytest.raises(ValueError, match=r"params\['layers'\]\['v_bias'\] is missing"):
    hf.save_hf({**params, "layers": layers}, cfg, str(tmp_path / "a"))
  with pytest.raises(ValueError, match=r"params\['final_norm'\] has shape \(63,\), expected "
                                       r"\(64,\)"):
    hf.save_hf({**params, "final_norm": params["final_norm"][:63]}, cfg, str(tmp_path / "b"))


# ----------------------------------------------------------------------------- import errors


def test_missing_tensor_is_named(tmp_path, ckpts):
  d = _copy(ckpts["qwen3"][0], tmp_path / "m")
  _rewrite_weights(d, lambda t: t.pop("model.layers.1.self_attn.q_norm.weight"))
  with pytest.raises(ValueError, match=r"1 tensor\(s\) missing.*"
                                       r"'model\.layers\.1\.self_attn\.q_norm\.weight'"):
    hf.load_hf(d)


def test_unexpected_tensor_is_named(tmp_path, ckpts):
  d = _copy(ckpts["llama"][0], tmp_path / "x")
  _rewrite_weights(d, lambda t: t.update(
      {"model.layers.0.self_attn.o_proj.bias": np.zeros(64, np.float32)}))
  with pytest.raises(ValueError, match=r"unexpected tensor.*"
                                       r"'model\.layers\.0\.self_attn\.o_proj\.bias'"):
    hf.load_hf(d)


def test_misshaped_tensor_names_tensor_param_and_both_shapes(tmp_path, ckpts):
  d = _copy(ckpts["qwen2"][0], tmp_path / "s")
  _rewrite_weights(d, lambda t: t.update(
      {"model.layers.1.self_attn.k_proj.weight": np.zeros((16, 64), np.float32)}))
  with pytest.raises(ValueError) as e:
    hf.load_hf(d)
  msg = str(e.value)
  for part in ("'model.layers.1.self_attn.k_proj.weight'", "params['layers']['k'][1]",
               "shape (16, 64)", "expected (32, 64)", "model.safetensors"):
    assert part in msg, (part, msg)


def test_tied_lm_head_accepted_when_equal_rejected_when_not(tmp_path, ckpts, loaded):
  d = _copy(ckpts["llama"][0], tmp_path / "t")
  _rewrite_weights(d, lambda t: t.update(
      {"lm_head.weight": t["model.embed_tokens.weight"].copy()}))
  _, params = hf.load_hf(d)
  _assert_trees_identical(params, loaded["llama"][1])

  def perturb(t):
    t["lm_head.weight"] = t["lm_head.weight"] + np.float32(1e-3)
  _rewrite_weights(d, perturb)
  with pytest.raises(ValueError, match=r"'lm_head\.weight' differs from "
                                       r"'model\.embed_tokens\.weight'.*tie_word_embeddings"):
    hf.load_hf(d)


def test_ignored_rotary_buffer(tmp_path, ckpts, loaded):
  d = _copy(ckpts["llama"][0], tmp_path / "r")
  _rewrite_weights(d, lambda t: t.update(
      {"model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(8, np.float32)}))
  _assert_trees_identical(hf.load_hf(d)[1], loaded["llama"][1])


def test_unsupported_model_type_and_architecture(tmp_path, ckpts):
  d = _copy(ckpts["llama"][0], tmp_path / "u")
  _rewrite_config(d, lambda c: c.update(model_type="mistral", architectures=None))
  with pytest.raises(ValueError, match=r"config\.json: unsupported model_type 'mistral'"):
    hf.load_hf(d)
  _rewrite_config(d, lambda c: c.update(model_type="llama",
                                        architectures=["LlamaForSequenceClassification"]))
  with pytest.raises(ValueError, match=r"unsupported architectures "
                                       r"\['LlamaForSequenceClassification'\]"):
    hf.load_hf(d)
  _rewrite_config(d, lambda c: c.update(architectures=["Qwen2ForCausalLM"]))
  with pytest.raises(ValueError, match=r"do not match model_type 'llama'"):
    hf.load_hf(d)


def test_missing_files_are_named(tmp_path, ckpts):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    hf.load_hf(str(tmp_path / "nowhere"))
  d = _copy(ckpts["qwen2"][0], tmp_path / "f")
  os.remove(os.path.join(d, hf.CONFIG_FILE))
  with pytest.raises(FileNotFoundError, match=f"expected {d}/config.json"):
    hf.load_hf(d)
  d = _copy(ckpts["qwen2"][0], tmp_path / "w")
  os.remove(os.path.join(d, hf.WEIGHTS_FILE))
  with pytest.raises(FileNotFoundError, match=f"neither {d}/model.safetensors nor "
                                              f"{d}/model.safetensors.index.json"):
    hf.load_hf(d)
  with open(os.path.join(d, hf.WEIGHTS_INDEX_FILE), "w") as f:
    json.dump({"weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}}, f)
  with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors, which does "
                                              "not exist"):
    hf.load_hf(d)


# ----------------------------------------------------------------------------- si-convert


def test_convert_cli_round_trip(tmp_path, ckpts, loaded, capsys):
  src, model = ckpts["qwen3"]
  hf_dir = _copy(src, tmp_path / "hf")
  hf_fixtures.make_tokenizer_files(hf_dir)
  si_dir, back = str(tmp_path / "si"), str(tmp_path / "back")
  assert convert_cli.main(["--to=si", f"--hf_dir={hf_dir}", f"--out={si_dir}"]) == 0
  for name in (convert.MODEL_CONFIG_FILE, convert.HF_CONFIG_FILE, hf.GENERATION_CONFIG_FILE,
               os.path.join(convert.TOKENIZER_SUBDIR, "tokenizer.json")):
    assert os.path.exists(os.path.join(si_dir, name)), name
  cfg, params = convert.load_params(si_dir)
  assert cfg == loaded["qwen3"][0]
  _assert_trees_identical(params, loaded["qwen3"][1])

  assert convert_cli.main(["--to=hf", f"--from_params={si_dir}", f"--out={back}"]) == 0
  with open(os.path.join(back, hf.CONFIG_FILE)) as f:
    hf_cfg = json.load(f)
  assert (hf_cfg["bos_token_id"], hf_cfg["eos_token_id"], hf_cfg["pad_token_id"]) == (1, 2, 0)
  assert os.path.exists(os.path.join(back, "tokenizer.json"))
  reloaded, info = transformers.AutoModelForCausalLM.from_pretrained(
      back, output_loading_info=True)
  assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"])
  for k, v in model.state_dict().items():
    assert torch.equal(v, reloaded.state_dict()[k]), k

  capsys.readouterr()
  assert convert_cli.main(["--to=si", f"--hf_dir={hf_dir}", f"--out={si_dir}"]) == 2
  err = capsys.readouterr().err  # one line, as si-train's mistakes
  assert err.startswith("si-convert: error: output directory ") and err.endswith(
      "exists and is not empty\n") and err.count("\n") == 1, err
  with pytest.raises(SystemExit):
    convert_cli.main(["--to=hf", f"--hf_dir={hf_dir}", f"--out={back}"])


def _safetensors_dtypes(model_dir):
  """{tensor name: safetensors dtype tag} from the header of model.safetensors."""
  with open(os.path.join(model_dir, hf.WEIGHTS_FILE), "rb") as f:
    (n,) = np.frombuffer(f.read(8), np.uint64)
    header = json.loads(f.read(int(n)))
  return {k: v["dtype"] for k, v in header.items() if k != "__metadata__"}


def test_recorded_dtype():
  assert convert.recorded_dtype({"dtype": "bfloat16"}) == "bfloat16"
  assert convert.recorded_dtype({"torch_dtype": "float16"}) == "float16"  # transformers 4.x
  assert convert.recorded_dtype({"torch_dtype": "torch.bfloat16"}) == "bfloat16"
  assert convert.recorded_dtype({"dtype": "auto"}) is None
  assert convert.recorded_dtype({"dtype": "float64"}) is None
  assert convert.recorded_dtype({}) is None


def test_convert_keeps_the_recorded_bf16_dtype_both_ways(tmp_path):
  src, _ = hf_fixtures.make_checkpoint("qwen3", str(tmp_path / "hf"), seed=3, dtype="bfloat16")
  si_dir, back, si_again = (str(tmp_path / n) for n in ("si", "back", "si_again"))
  # HF bf16 -> params dir: bf16, as config.json records (not load_hf's float32 default).
  assert convert_cli.main(["--to=si", f"--hf_dir={src}", f"--out={si_dir}"]) == 0
  with open(os.path.join(si_dir, convert.MODEL_CONFIG_FILE)) as f:
    assert json.load(f)["param_dtype"] == "bfloat16"
  cfg, params = convert.load_params(si_dir)
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
  # Params dir -> HF, no --dtype: bf16 safetensors, bitwise the source tensors.
  assert convert_cli.main(["--to=hf", f"--from_params={si_dir}", f"--out={back}"]) == 0
  assert set(_safetensors_dtypes(back).values()) == {"BF16"}
  with open(os.path.join(back, hf.CONFIG_FILE)) as f:
    assert json.load(f)["dtype"] == "bfloat16"
  import safetensors.torch  # pylint: disable=g-import-not-at-top
  want = safetensors.torch.load_file(os.path.join(src, hf.WEIGHTS_FILE))
  got = safetensors.torch.load_file(os.path.join(back, hf.WEIGHTS_FILE))
  assert sorted(got) == sorted(want)
  for k in want:
    assert got[k].dtype == torch.bfloat16 and torch.equal(got[k], want[k]), k
  # ... and it reimports to the same params, bitwise.
  assert convert_cli.main(["--to=si", f"--hf_dir={back}", f"--out={si_again}"]) == 0
  cfg2, params2 = convert.load_params(si_again)
  assert cfg2 == cfg
  _assert_trees_identical(params2, params)
  # --dtype still overrides, both ways.
  assert convert_cli.main(["--to=hf", f"--from_params={si_dir}", f"--out={tmp_path / 'f32'}",
                       "--dtype=float32"]) == 0
  assert set(_safetensors_dtypes(tmp_path / "f32").values()) == {"F32"}
  assert convert_cli.main(["--to=si", f"--hf_dir={src}", f"--out={tmp_path / 'si32'}",
                       "--dtype=float32"]) == 0
  assert convert.load_params(str(tmp_path / "si32"))[0].param_dtype == "float32"


# ----------------------------------------------------------------------------- generation_config


def test_generation_config_lists_stop_ids_as_eos_and_pad_separately():
  assert hf.generation_config([2, 3], 0) == {"eos_token_id": [2, 3], "pad_token_id": 0}
  assert hf.generation_config((7, 5, 7), 0, bos_id=1) == {
      "eos_token_id": [7, 5], "pad_token_id": 0, "bos_token_id": 1}
  # A pad token that is also a stop token (Qwen's <|endoftext|>) stays a stop.
  assert hf.generation_config([151645, 151643], 151643) == {
      "eos_token_id": [151645, 151643], "pad_token_id": 151643}
  assert hf.generation_config(np.array([2], np.int64), None) == {"eos_token_id": [2]}
  assert all(type(i) is int for i in hf.generation_config(np.array([2, 4]), np.int32(0))[
      "eos_token_id"])
  with pytest.raises(ValueError, match="stop_ids is empty"):
    hf.generation_config([], 0)


def test_generation_config_of_the_arith_tokenizer_keeps_pad_out_of_eos(tmp_path):
  from si_jax import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  tok = tiny.char_tokenizer(tmp_path)
  gen = hf.generation_config(tok.stop_ids, tok.pad_id)
  im_end, endoftext, pad = tok.hf.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>",
                                                         "<|pad|>"])
  assert gen == {"eos_token_id": [im_end, endoftext], "pad_token_id": pad}
  assert pad not in gen["eos_token_id"]
  # Written by save_hf and read back by the tokenizer: the same stop ids, nothing added.
  cfg = tiny.config(vocab_size=tiny.padded_vocab(tok), num_layers=1, num_heads=2,
                    num_kv_heads=1, head_dim=16)
  out = str(tmp_path / "hf")
  hf.save_hf(tiny.params(cfg), cfg, out, tokenizer_dir=str(tmp_path), generation_config=gen)
  with open(os.path.join(out, hf.GENERATION_CONFIG_FILE)) as f:
    assert json.load(f) == gen
  assert tokenizer_lib.Tokenizer.from_dir(out).stop_ids == tok.stop_ids


def test_load_params_casts_and_shards(tmp_path, loaded):
  cfg, params = loaded["llama"]
  d = str(tmp_path / "p")
  convert.save_params(d, params, cfg)
  mesh = sharding_lib.make_mesh(fsdp=2, tensor=4)
  cfg16, p16 = convert.load_params(
      d, dtype="bfloat16", shardings=lambda c: sharding_lib.param_shardings(c, mesh))
  assert cfg16 == cfg.replace(param_dtype="bfloat16")
  assert p16["embed"].dtype == jnp.bfloat16
  assert p16["layers"]["gate"].sharding == sharding_lib.param_shardings(cfg16, mesh)[
      "layers"]["gate"]
  with open(os.path.join(d, convert.MODEL_CONFIG_FILE), "w") as f:
    json.dump(convert.config_to_dict(cfg.replace(num_layers=3)), f)
  with pytest.raises(ValueError, match=r"params\['layers'\]\['attn_norm'\] has shape \(2, 64\), "
                                       r"the model config implies \(3, 64\)"):
    convert.load_params(d)
