"""HF model directories <-> si_jax params directories (the library of `si-convert`, whose
command line is `si_jax/cli/convert.py`).

  si-convert --to=si --hf_dir=HF_DIR --out=PARAMS_DIR [--dtype=bfloat16]
  si-convert --to=hf --from_params=PARAMS_DIR --out=HF_DIR [--dtype=bfloat16]
             [--tokenizer_dir=DIR] [--max_shard_size=5GB]
  si-convert --to=hf --from_workdir=RUN_DIR [--step=N] --out=HF_DIR   # a si-train checkpoint

A params directory (what `--to=si` writes, `load_params` reads, and a trainer can init from):

  PARAMS_DIR/
    model_config.json        the ModelConfig fields (`config_to_dict`)
    params/                  Orbax PyTree checkpoint (`ocp.StandardCheckpointer`) of the param
                             dict, layout of `transformer.param_shapes(cfg)`
    hf_config.json           the source config.json, verbatim (keeps bos/eos/pad token ids and
                             other fields ModelConfig does not model, for the way back to HF)
    generation_config.json   copied from the HF dir when present
    tokenizer/               the HF dir's tokenizer files, when present

`--to=hf` writes an HF directory that `transformers.AutoModelForCausalLM.from_pretrained` loads,
with the tokenizer from `--tokenizer_dir` or else PARAMS_DIR/tokenizer. From a LoRA run
(`model.lora.rank > 0`, whose checkpoints hold adapters only) it writes the merged weights,
W + (alpha / r) A @ B, in the base's dtype (`workdir.load_run` re-reads the base from the run's
model.init_from).

Without `--dtype` both directions keep the source's dtype: `--to=si` the one config.json records
(`dtype` / `torch_dtype`; float32 if none), `--to=hf` the saved params' (a checkpoint's params
as trained). A bf16 model therefore round-trips HF -> si -> HF bitwise and stays bf16.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, Callable, Mapping, Sequence

import jax
import orbax.checkpoint as ocp

from si_jax import tables
from si_jax.models import hf
from si_jax.models import transformer
from si_jax.models.config import DTYPES, ModelConfig, RopeScaling

Params = dict[str, Any]

MODEL_CONFIG_FILE = "model_config.json"
PARAMS_SUBDIR = "params"
HF_CONFIG_FILE = "hf_config.json"
TOKENIZER_SUBDIR = "tokenizer"


def config_to_dict(cfg: ModelConfig) -> dict[str, Any]:
  return dataclasses.asdict(cfg)


def config_from_dict(d: Mapping[str, Any], *, source: str = MODEL_CONFIG_FILE) -> ModelConfig:
  """Inverse of `config_to_dict`; unknown fields are an error (naming them and `source`)."""
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = sorted(set(d) - fields)
  if unknown:
    raise ValueError(f"{source}: unknown ModelConfig field(s) {unknown}")
  d = dict(d)
  if d.get("rope_scaling") is not None:
    d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
  return ModelConfig(**d)


def save_params(out_dir: str, params: Params, cfg: ModelConfig, *,
                hf_config: Mapping[str, Any] | None = None) -> None:
  """Writes a params directory (layout in the module docstring). `out_dir` must be new/empty."""
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir) and os.listdir(out_dir):
    raise FileExistsError(f"output directory {out_dir} exists and is not empty")
  os.makedirs(out_dir, exist_ok=True)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.join(out_dir, PARAMS_SUBDIR), params)
  ckptr.wait_until_finished()
  if jax.process_index() == 0:
    tables.write_json(os.path.join(out_dir, MODEL_CONFIG_FILE), config_to_dict(cfg), indent=2,
                      sort_keys=True)
    if hf_config is not None:
      tables.write_json(os.path.join(out_dir, HF_CONFIG_FILE), dict(hf_config), indent=2,
                        sort_keys=True)


def load_params(params_dir: str, *, dtype: Any = None,
                shardings: Any | Callable[[ModelConfig], Any] = None
                ) -> tuple[ModelConfig, Params]:
  """Reads a params directory into (cfg, params).

  dtype: cast params to it (and set cfg.param_dtype); default: as saved.
  shardings: pytree of shardings matching the params, or a callable `cfg -> pytree`;
    default: the first device.
  """
  params_dir = os.path.abspath(params_dir)
  cfg_path = os.path.join(params_dir, MODEL_CONFIG_FILE)
  ckpt_path = os.path.join(params_dir, PARAMS_SUBDIR)
  for p in (cfg_path, ckpt_path):
    if not os.path.exists(p):
      raise FileNotFoundError(f"{params_dir} is not a params directory: {p} does not exist "
                              "(write one with `si-convert --to=si`)")
  with open(cfg_path) as f:
    cfg = config_from_dict(json.load(f), source=cfg_path)
  if dtype is not None:
    cfg = cfg.replace(param_dtype=hf.dtype_name(dtype, "load_params(dtype=...)"))
  if callable(shardings):
    shardings = shardings(cfg)
  ckptr = ocp.StandardCheckpointer()
  saved = ckptr.metadata(ckpt_path).item_metadata.tree
  _check_layout(saved, cfg, ckpt_path)
  default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  if shardings is None:
    shardings = jax.tree.map(lambda _: default, saved)

  def abstract(meta, sharding):
    dt = meta.dtype if dtype is None else DTYPES[cfg.param_dtype]
    return jax.ShapeDtypeStruct(tuple(meta.shape), dt, sharding=sharding)

  target = jax.tree.map(abstract, saved, shardings)
  return cfg, ckptr.restore(ckpt_path, target)


def _check_layout(saved: Params, cfg: ModelConfig, where: str) -> None:
  """Raises unless the saved param tree has exactly the paths and shapes `cfg` implies."""
  is_shape = lambda x: isinstance(x, tuple)  # noqa: E731
  want = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(
      transformer.param_shapes(cfg), is_leaf=is_shape)[0]}
  got = {jax.tree_util.keystr(k): tuple(v.shape)
         for k, v in jax.tree_util.tree_flatten_with_path(saved)[0]}
  if set(want) != set(got):
    raise ValueError(f"{where}: params do not match the model config: missing "
                     f"{sorted(set(want) - set(got))}, unexpected {sorted(set(got) - set(want))}")
  for k, shape in want.items():
    if got[k] != shape:
      raise ValueError(f"{where}: params{k} has shape {got[k]}, the model config implies {shape}")


def recorded_dtype(hf_config: Mapping[str, Any]) -> str | None:
  """The param dtype an HF config.json records (`dtype`, or 4.x's `torch_dtype`), if it is
  one of `DTYPES`; None when it records none (or 'auto', or one si_jax does not hold)."""
  for key in ("dtype", "torch_dtype"):
    name = hf_config.get(key)
    if isinstance(name, str) and name.removeprefix("torch.") in DTYPES:
      return name.removeprefix("torch.")
  return None


def hf_to_si(hf_dir: str, out_dir: str, *, dtype: Any = None) -> ModelConfig:
  """Imports an HF model directory into a new params directory; returns its config.

  dtype: of the written params; default: the dtype config.json records (so a bf16 checkpoint
    stays bf16, bitwise), else float32.
  """
  hf_config = hf.read_hf_config(hf_dir)
  if dtype is None:
    dtype = recorded_dtype(hf_config)
  cfg, params = hf.load_hf(hf_dir, dtype=dtype)
  save_params(out_dir, params, cfg, hf_config=hf_config)
  gen = os.path.join(hf_dir, hf.GENERATION_CONFIG_FILE)
  if os.path.exists(gen):
    shutil.copyfile(gen, os.path.join(out_dir, hf.GENERATION_CONFIG_FILE))
  if any(os.path.exists(os.path.join(hf_dir, f)) for f in hf.TOKENIZER_FILES):
    hf.copy_tokenizer(hf_dir, os.path.join(out_dir, TOKENIZER_SUBDIR))
  return cfg


def si_to_hf(params_dir: str, out_dir: str, *, dtype: Any = None,
             tokenizer_dir: str | None = None, max_shard_size: int | str = "5GB") -> ModelConfig:
  """Exports a params directory to an HF model directory; returns its config.

  dtype: of the written tensors; default: each param's dtype as the params directory holds it.
  """
  cfg, params = load_params(params_dir)
  extra = {}
  hf_cfg_path = os.path.join(params_dir, HF_CONFIG_FILE)
  if os.path.exists(hf_cfg_path):
    with open(hf_cfg_path) as f:
      src = json.load(f)
    extra = {k: src[k] for k in hf.TOKEN_ID_FIELDS if k in src}
  generation_config = None
  gen_path = os.path.join(params_dir, hf.GENERATION_CONFIG_FILE)
  if os.path.exists(gen_path):
    with open(gen_path) as f:
      generation_config = json.load(f)
  if tokenizer_dir is None and os.path.isdir(os.path.join(params_dir, TOKENIZER_SUBDIR)):
    tokenizer_dir = os.path.join(params_dir, TOKENIZER_SUBDIR)
  hf.save_hf(params, cfg, out_dir, dtype=dtype, tokenizer_dir=tokenizer_dir,
             max_shard_size=max_shard_size, extra_config=extra,
             generation_config=generation_config)
  return cfg
