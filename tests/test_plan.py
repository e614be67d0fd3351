"""si-plan: byte accounting, model shapes, levers, and the dry run itself on 8 simulated devices.

The in-process tests use the 8 simulated CPU devices of tests/conftest.py; the CLI test runs
`python -m si_jax.tools.plan` in a subprocess without XLA_FLAGS, so si-plan must set them itself.
Plans use the smoke model of gsm8k_grpo.py (1 layer, d=32): compiles take seconds.
"""

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from si_jax.tools import plan as pl
from si_jax import sharding as shd
from si_jax.models import config as mc
from si_jax import train_state as ts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "experiments", "configs", "gsm8k_grpo.py")


def smoke_config(**fields):
  """gsm8k_grpo.py:smoke (tiny model, arith tokenizer) with dotted-path overrides."""
  spec = importlib.util.spec_from_file_location("_gsm8k_grpo", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("smoke")
  base = {"mesh.data": 1, "mesh.fsdp": -1}
  return pl.apply_overrides(c, list({**base, **fields}.items()))


# ----------------------------------------------------------------------------- model shapes


@pytest.mark.parametrize("name,billions,tied", [
    ("qwen3-0.6b", 0.6, True), ("qwen3-1.7b", 1.7, True), ("qwen3-4b", 4.0, True),
    ("qwen3-8b", 8.2, False), ("qwen3-14b", 14.8, False), ("qwen3-32b", 32.8, False)])
def test_qwen3_presets_have_the_published_sizes(name, billions, tied):
  cfg = mc.preset(name)
  assert cfg.family == "qwen3" and cfg.qk_norm and cfg.tie_embeddings == tied
  assert (cfg.vocab_size, cfg.num_kv_heads, cfg.head_dim) == (151936, 8, 128)
  assert (cfg.rope_theta, cfg.max_position_embeddings) == (1e6, 40960)
  assert cfg.num_params() / 1e9 == pytest.approx(billions, rel=0.03)


# ----------------------------------------------------------------------------- bytes


def test_device_env_sets_the_count_and_keeps_other_flags():
  env = pl.device_env(64, {"XLA_FLAGS": "--xla_foo=1 --xla_force_host_platform_device_count=8"})
  assert env == {"XLA_FLAGS": "--xla_foo=1 --xla_force_host_platform_device_count=64",
                 "JAX_PLATFORMS": "cpu"}
  assert pl.device_env(2, {})["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"
  with pytest.raises(ValueError, match="--devices must be >= 1"):
    pl.device_env(0, {})


def test_shard_bytes_follow_the_sharding():
  mesh = shd.make_mesh(fsdp=8)
  split = jax.ShapeDtypeStruct((8, 16), jnp.float32, sharding=NamedSharding(mesh, P("fsdp")))
  whole = jax.ShapeDtypeStruct((8, 16), jnp.bfloat16, sharding=shd.replicated(mesh))
  assert pl.shard_bytes(split) == 8 * 16 * 4 // 8
  assert pl.shard_bytes(whole) == pl.global_bytes(whole) == 8 * 16 * 2
  assert pl.tree_bytes({"a": split, "b": [whole]}) == 64 + 256
  assert pl.tree_bytes({"a": split, "b": [whole]}, per_device=False) == 512 + 256
  key = jax.eval_shape(lambda: jax.random.key(0))
  assert pl.itemsize(key.dtype) == 8  # threefry: 2 x uint32


def test_program_peak_is_arguments_plus_temps_plus_outputs_minus_aliased():
  prog = pl.Program("x", arguments=100, outputs=30, aliased=20, temp=50, generated_code=0,
                    compile_s=0.0, parts={})
  assert prog.peak == 160
  phase = pl.Phase("sample", [prog, pl.Program("y", 10, 0, 0, 500, 0, 0.0, {})], {"opt": 7})
  assert phase.peak == 7 + 510


# ----------------------------------------------------------------------------- errors


def test_unknown_accelerator_is_an_error_naming_the_known_ones():
  with pytest.raises(ValueError, match=r"unknown accelerator 'a100'; known: \['h100', 'h200', "
                     r"'v5e', 'v5p'\]"):
    pl.accelerator("a100")
  assert pl.accelerator("h200").usable_bytes == pytest.approx(141 * 0.9 * 2 ** 30)


def test_mesh_errors_name_config_mesh_and_the_device_count():
  with pytest.raises(ValueError, match=r"config.mesh \(data=3, fsdp=-1, tensor=1\) does not fit "
                     r"--devices 8"):
    pl.make_mesh(smoke_config(**{"mesh.data": 3}), 8)
  with pytest.raises(ValueError, match=r"config.mesh \(data=2, fsdp=2, tensor=1\) uses 4 devices, "
                     r"not --devices 8"):
    pl.make_mesh(smoke_config(**{"mesh.data": 2, "mesh.fsdp": 2}), 8)
  with pytest.raises(ValueError, match="si-plan needs 16 devices but jax has 8"):
    pl.make_mesh(smoke_config(), 16)


def test_model_shape_from_init_from_config_json_without_weights(tmp_path):
  hf = mc.to_hf_config(mc.preset("qwen3-0.6b"))
  (tmp_path / "config.json").write_text(json.dumps(hf))
  cfg, desc = pl.model_for(smoke_config(**{"model.init_from": str(tmp_path),
                                           "model.attention": "blockwise"}))
  assert cfg == mc.preset("qwen3-0.6b", attention="blockwise")
  assert desc == f"init_from {tmp_path}"
  with pytest.raises(ValueError, match="has no config.json or model_config.json"):
    pl.model_for(smoke_config(**{"model.init_from": str(tmp_path / "missing")}))


def test_unknown_model_preset_is_an_error():
  with pytest.raises(ValueError, match="--model: unknown preset 'qwen3-7b'"):
    pl.model_for(smoke_config(), "qwen3-7b")


def test_workload_has_the_trainers_shapes():
  c = smoke_config(**{"rl.prompts_per_step": 10, "rl.group_size": 4, "rl.minibatches": 2,
                      "rl.microbatches": 2, "rl.logprob_microbatches": 8,
                      "rl.max_new_tokens": 100})
  wl = pl.workload(c, pl.make_mesh(c, 8), prompt_len=30)
  # the sampler's rows: the rung of 8 batch shards at or above 40
  assert (wl.rollouts, wl.sample_batch, wl.prompt_len, wl.width) == (40, 48, 32, 132)
  # update calls: 40 rows / (2 mini-batches x 2 micro-batches) = 10 -> 16 (8 batch shards);
  # rows padded to whole calls per mini-batch: 2 x 16 = 32 -> 64
  assert wl.unit == 2 * 16 and wl.call_rows == 16
  assert (wl.rows, wl.minibatch_rows, wl.micro_rows, wl.logprob_rows) == (64, 32, 16, 8)


# ----------------------------------------------------------------------------- levers as config


def _state(config, devices, model="qwen3-0.6b"):
  cfg, _ = pl.model_for(config, model)
  mesh = pl.make_mesh(config, devices)
  opt = ts.optimizer_from_config(config.rl.optim, 10)
  return pl.abstract_state(config, cfg, mesh, opt), mesh


def test_params_and_optimizer_state_are_split_over_fsdp():
  ab8, mesh = _state(smoke_config(), 8)
  ab1, _ = _state(smoke_config(), 1)
  p8, p1 = pl.tree_bytes(ab8.state.params), pl.tree_bytes(ab1.state.params)
  assert p1 == pl.tree_bytes(ab1.state.params, per_device=False)
  assert p1 / 8 <= p8 < p1 / 7.9  # all but the norms are split 8 ways
  for x in jax.tree.leaves(ab8.state.params):
    if "fsdp" in jax.tree.leaves(tuple(x.sharding.spec)):
      assert pl.shard_bytes(x) * 8 == pl.global_bytes(x)
  # AdamW's moments are sharded exactly like the params they track.
  param_specs = jax.tree.map(lambda x: x.sharding.spec, ab8.state.params)
  moment_specs = optax.tree_map_params(
      ts.optimizer_from_config(smoke_config().rl.optim, 10), lambda x: x.sharding.spec,
      ab8.state.opt_state, transform_non_params=lambda _: None)
  mu = moment_specs[1][0].mu  # chain(clip, adamw(scale_by_adam, ...))
  assert mu == param_specs
  assert pl.tree_bytes(ab8.state.opt_state) < pl.tree_bytes(ab1.state.opt_state) / 7.9


def test_train_state_create_shards_the_moments_like_the_params():
  cfg = mc.preset("tiny")
  mesh = shd.make_mesh(fsdp=8)
  params = shd.init_sharded_params(cfg, mesh, jax.random.key(0))
  state = ts.create(params, ts.make_optimizer(1e-3, 10), mesh)
  mu = state.opt_state[1][0].mu
  assert jax.tree.map(lambda x: x.sharding.spec, mu) == jax.tree.map(
      lambda x: x.sharding.spec, params)
  assert mu["embed"].sharding.spec == P(None, "fsdp")


def test_state_dtype_float32_keeps_moments_float32_with_bf16_params():
  params = {"w": jnp.ones((4, 3), jnp.bfloat16), "b": jnp.zeros((3,), jnp.bfloat16)}
  plain = ts.make_optimizer(1e-2, 10)
  mixed = ts.make_optimizer(1e-2, 10, state_dtype="float32")
  s_plain, s_mixed = plain.init(params), mixed.init(params)
  assert jax.tree.structure(s_plain) == jax.tree.structure(s_mixed)  # checkpoints restore
  assert {x.dtype for x in jax.tree.leaves(s_plain[1][0].nu)} == {jnp.dtype(jnp.bfloat16)}
  assert {x.dtype for x in jax.tree.leaves(s_mixed[1][0].mu)} == {jnp.dtype(jnp.float32)}
  assert {x.dtype for x in jax.tree.leaves(s_mixed[1][0].nu)} == {jnp.dtype(jnp.float32)}
  grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.5, p.dtype), params)
  updates, _ = mixed.update(grads, s_mixed, params)
  assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
  with pytest.raises(ValueError, match="optimizer state dtype must be one of"):
    ts.make_optimizer(1e-2, 10, state_dtype="float16")


def test_dtype_fields_are_validated_and_reach_the_model():
  from si_jax import configs
  with pytest.raises(ValueError, match="config.model.param_dtype must be one of"):
    configs.validate(smoke_config(**{"model.param_dtype": "float64"}))
  c = smoke_config(**{"model.param_dtype": "bfloat16", "model.dtype": "bfloat16"})
  cfg, _ = pl.model_for(c, "qwen3-8b")
  assert (cfg.param_dtype, cfg.dtype) == ("bfloat16", "bfloat16")


def test_si_train_builds_the_model_si_plan_plans(tmp_path):
  from si_jax.train import workdir as workdir_lib
  c = smoke_config(**{"model.param_dtype": "bfloat16", "model.dtype": "bfloat16"})
  cfg, params = workdir_lib.setup_model(c, workdir_lib.setup_tokenizer(c, str(tmp_path)),
                                        shd.make_mesh(fsdp=8))
  assert (cfg.param_dtype, cfg.dtype) == ("bfloat16", "bfloat16")
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
  assert cfg == pl.model_for(c)[0]


def test_lora_trains_adapters_only():
  full, _ = _state(smoke_config(), 8)
  lora, _ = _state(smoke_config(**{"model.lora.rank": 8}), 8)
  assert lora.frozen is not None and lora.lora.rank == 8
  assert pl.tree_bytes(lora.frozen) == pl.tree_bytes(full.state.params)
  assert pl.tree_bytes(lora.state.opt_state) < pl.tree_bytes(full.state.opt_state) / 20


# ----------------------------------------------------------------------------- compiled plans


TINY = pl.Accelerator("tiny", 1e-6, "gpu")  # 1 KiB of HBM: nothing fits
BIG = pl.accelerator("h200")


@pytest.fixture(scope="module")
def update_search():
  """The update step of the 'tiny' preset (d=128, 2 layers) on 8 rows of 128 + 128 tokens
  (bfloat16 compute, so the next levers are remat), then the lever search against a 1 KiB
  accelerator for two steps."""
  config = smoke_config(**{"model.dtype": "bfloat16", "rl.max_new_tokens": 128})
  p = pl.plan(config, devices=8, acc=BIG, model="tiny", prompt_len=128, phases=("update",))
  return p, pl.find_fit(config, p, TINY, model="tiny", prompt_len=128, max_steps=2)


def test_update_arguments_are_params_opt_state_counters_and_batch(update_search):
  p, _ = update_search
  grads, apply = p.phases["update"].programs
  for prog in (grads, apply):
    assert sum(prog.parts.values()) == prog.arguments  # our shard sums = XLA's argument bytes
  assert grads.aliased >= grads.parts["accumulator"]  # the accumulator is donated
  assert grads.held == {"opt_state": apply.parts["opt_state"]}  # on the device meanwhile
  assert apply.aliased >= apply.parts["params"] + apply.parts["opt_state"]  # the state too
  wl = p.workload
  assert (wl.rows, wl.width, wl.minibatches, wl.microbatches) == (8, 256, 1, 1)


def test_verdict_flips_with_the_hbm(update_search):
  p, _ = update_search
  assert p.fits(BIG) and not p.fits(TINY)
  assert p.failing(TINY) == ["update"] and p.failing(BIG) == []
  assert "does not fit on tiny" in pl.report(p, TINY)
  assert "verdict: fits on H200" in pl.report(p, BIG)


def test_the_verdict_uses_the_gpu_memory_fraction_the_launch_sets(update_search, monkeypatch):
  """JAX preallocates XLA_PYTHON_CLIENT_MEM_FRACTION of a GPU (0.75 unless set): the slurm
  launcher exports the fraction si-plan plans against, si-train sets it when unset, and a
  peak between 75% and 90% of the HBM fits only as launched."""
  import re
  from si_jax.tools import launch
  from si_jax.cli import train as main
  p, _ = update_search
  script = launch.slurm_script(["--config", "c", "--workdir", "w"], nodes=2)
  exported = re.search(r"^export XLA_PYTHON_CLIENT_MEM_FRACTION=([0-9.]+)", script, re.M)
  assert exported, script
  fraction = float(exported.group(1))
  h100 = pl.accelerator("h100", environ={})
  assert h100.fraction == fraction == 0.9
  assert h100.usable_bytes == pytest.approx(80 * fraction * 2 ** 30)
  env = {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.75"}
  assert pl.accelerator("h100", environ=env).usable_bytes == pytest.approx(60 * 2 ** 30)
  assert pl.accelerator("h100", environ=env, mem_fraction=0.5).fraction == 0.5
  assert pl.accelerator("v5p", environ=env).fraction == pl.TPU_USABLE_FRACTION  # GPU only
  gpu = pl.Accelerator("gpu", p.peak()[0] / 0.8 / 2 ** 30, "gpu")  # peak = 80% of its HBM
  assert p.fits(dataclasses.replace(gpu, fraction=fraction))
  assert not p.fits(dataclasses.replace(gpu, fraction=0.75))
  assert "usable 0.00 GiB = 0.9 of" in pl.report(p, dataclasses.replace(TINY, fraction=0.9))
  # si-train, started without it (a plain `si-train` on a GPU), sets the same fraction
  monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
  from si_jax import allocator
  monkeypatch.setattr(allocator, "reexec_if_needed", lambda: None)
  monkeypatch.setattr(main.app, "run", lambda _: None)
  monkeypatch.setattr(sys, "argv", ["si-train"])
  main.run()
  assert os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] == str(fraction)
  assert launch.MEM_FRACTION_ENV == pl.MEM_FRACTION_ENV


def test_levers_remat_dots_then_full_reduce_the_update_temporaries(update_search):
  p, search = update_search
  assert search.overrides == ["model.remat=dots", "model.remat=full"] and not search.fits
  temps = [p.phases["update"].programs[0].temp] + [
      q.phases["update"].programs[0].temp for _, q in search.steps]
  assert temps[0] > temps[1] > temps[2], temps  # each lever is kept only if the peak drops
  assert search.steps[-1][1].numerics["remat"] == "full"
  row = pl.table_row(p, TINY, search)
  assert row["lever"].startswith("none fits tiny; after model.remat=dots; model.remat=full")


def test_next_lever_order():
  """On a plan whose update never fits, the levers come in the documented order; each is
  applied to the config and reflected in the plan before the next is chosen."""
  wl = pl.Workload(rollouts=64, sample_batch=64, prompt_len=16, new_tokens=16, rows=64, unit=8,
                   minibatches=1, microbatches=1, logprob_calls=1, width=32, batch_shards=8)
  update = pl.Phase("update", [pl.Program("update", 10 ** 6, 0, 0, 0, 0, 0.0, {})], {})
  p = pl.Plan(model="m", num_params=1, kv_heads=8, devices=8,
              mesh={"data": 8, "fsdp": 1, "tensor": 1},
              workload=wl, numerics={"params": "float32", "compute": "float32"}, notes=[],
              phases={"update": update}, opt_state_global=0, params_global=0, kv_cache=0)
  c = smoke_config(**{"mesh.data": 8, "mesh.fsdp": 1, "model.attention": "dense"})
  names = []
  while (lever := pl.next_lever(c, p, TINY)) is not None:
    names.append(lever.name)
    c = pl.apply_overrides(c, lever.overrides)
    p = dataclasses.replace(
        p, mesh={"data": c.mesh.data, "fsdp": c.mesh.fsdp, "tensor": c.mesh.tensor},
        numerics={"compute": c.model.dtype or "float32",
                  "params": c.model.param_dtype or "float32"},
        workload=dataclasses.replace(wl, microbatches=c.rl.microbatches))
  assert names == [
      "model.attention=blockwise", "mesh.data=1, mesh.fsdp=8", "model.dtype=bfloat16",
      "model.remat=dots", "rl.microbatches=2", "rl.microbatches=4", "rl.microbatches=8",
      "model.remat=full", "model.param_dtype=bfloat16, rl.optim.state_dtype=float32",
      "mesh.fsdp=1, mesh.tensor=8", "model.lora.rank=64"]
  assert c.model.lora.rank == 64 and c.rl.optim.state_dtype == "float32"


def test_plan_builds_its_programs_with_the_library_builders():
  """Issue 17: no jit lines copied from the trainer or the sampler, and no private calls into
  other modules (`Sampler.programs`, `batching.logprob_program`, `update.Updater`)."""
  import ast
  import glob
  folder = os.path.join(ROOT, "si_jax", "tools", "plan")
  for path in sorted(glob.glob(os.path.join(folder, "*.py"))):
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
      if isinstance(node, ast.Attribute):
        assert not (node.attr == "jit" or node.attr.startswith("_")), (path, node.lineno)


# ----------------------------------------------------------------------------- the CLI


def _cli(tmp_path, *args):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # si-plan sets its own
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  return subprocess.run([sys.executable, "-m", "si_jax.tools.plan", f"--config={CONFIG}:smoke",
                         *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                        timeout=300)


def test_cli_dry_run_of_a_small_model_on_8_simulated_devices(tmp_path):
  out = _cli(tmp_path, "--devices=8", "--accelerator=v5e", "--prompt_len=32",
             "--config.mesh.data=1", "--config.mesh.fsdp=-1", "--json=plan.json",
             "--markdown=plan.md")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "mesh data=1 fsdp=8 tensor=1 on 8 simulated devices" in out.stdout
  assert "verdict: fits on TPU v5e" in out.stdout
  report = json.loads((tmp_path / "plan.json").read_text())
  (entry,) = report["plans"]
  p = entry["plan"]
  assert p["devices"] == 8 and p["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
  progs = {g["name"]: g for ph in p["phases"].values() for g in ph["programs"]}
  assert set(progs) == {"prefill", "decode", "logprobs", "update_grads", "update_apply"}
  for g in progs.values():
    held = sum(g["held"].values())
    assert g["peak"] == g["arguments"] + g["temp"] + g["outputs"] - g["aliased"] + held > 0
  assert progs["decode"]["parts"]["kv_cache"] == progs["prefill"]["out_parts"]["kv_cache"]
  assert progs["prefill"]["outputs"] >= progs["prefill"]["out_parts"]["kv_cache"]
  assert progs["decode"]["aliased"] >= progs["decode"]["parts"]["kv_cache"]  # cache donated
  assert p["opt_state_global"] / p["per_device"]["opt_state"] > 7  # norms are replicated
  assert p["phases"]["sample"]["resident"]["opt_state"] == p["per_device"]["opt_state"]
  assert "| gsm8k" not in (tmp_path / "plan.md").read_text()
  assert "| preset tiny + overrides | 8 | 1x8x1 |" in (tmp_path / "plan.md").read_text()


def test_cli_reports_a_mesh_that_does_not_divide_the_devices(tmp_path):
  out = _cli(tmp_path, "--devices=8", "--config.mesh.data=3", "--config.mesh.fsdp=-1")
  assert out.returncode != 0
  assert "si-plan: error: config.mesh (data=3, fsdp=-1, tensor=1) does not fit --devices 8" \
      in out.stderr
