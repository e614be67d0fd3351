"""HF checkpoints (config.json + safetensors) <-> (ModelConfig, param pytree).

The name mapping is data: `RULES` lists, for every param, the HF tensor name (with a `{layer}`
placeholder for per-layer tensors, which are stacked on the param's leading L axis), the param
path, the transform from the HF tensor to the param, and the config condition under which the
tensor exists. `ALIASES` lists tensors a checkpoint may carry that must equal another one (the
lm_head of a tied model) and `IGNORED` the buffers some exporters leave behind.

Kernels: torch `Linear.weight` is [out, in]; params store [in, out] ('transpose').

`load_hf` validates the whole checkpoint (missing, unexpected, mis-shaped tensors) from the
safetensors headers before it reads any data, then builds each param with
`jax.make_array_from_callback`: every device reads only its own slice of the file (mmap), so a
sharded load never materializes a replicated copy on device.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import numpy as np
import safetensors
import safetensors.numpy

from si_jax import tables
from si_jax.models import transformer
from si_jax.models.config import DTYPES, ModelConfig, from_hf_config, to_hf_config

Params = dict[str, Any]

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
# Files `save_hf(tokenizer_dir=...)` copies when present.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model",
                   "chat_template.jinja", "chat_template.json")
# HF config fields that ModelConfig does not model but a round trip should keep.
TOKEN_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "qwen3": "Qwen3ForCausalLM"}


@dataclasses.dataclass(frozen=True)
class Rule:
  """One HF tensor <-> one param (per layer when `hf` contains `{layer}`).

  hf: HF tensor name, e.g. 'model.layers.{layer}.self_attn.q_proj.weight'.
  path: param path, e.g. ('layers', 'q').
  transform: key of `TRANSFORMS`: how the HF tensor becomes the (per-layer) param.
  when: key of `CONDITIONS`: the tensor exists only if this holds for the config.
  """

  hf: str
  path: tuple[str, ...]
  transform: str = "none"
  when: str = "always"

  @property
  def per_layer(self) -> bool:
    return "{layer}" in self.hf

  def hf_names(self, cfg: ModelConfig) -> list[str]:
    """The HF tensor names of this rule, in layer order."""
    if self.per_layer:
      return [self.hf.format(layer=i) for i in range(cfg.num_layers)]
    return [self.hf]


# param = np.transpose(hf_tensor, axes); None: identity.
TRANSFORMS: dict[str, tuple[int, ...] | None] = {"none": None, "transpose": (1, 0)}

CONDITIONS: dict[str, Callable[[ModelConfig], bool]] = {
    "always": lambda cfg: True,
    "attention_bias": lambda cfg: cfg.attention_bias,
    "qk_norm": lambda cfg: cfg.qk_norm,
    "untied": lambda cfg: not cfg.tie_embeddings,
    "tied": lambda cfg: cfg.tie_embeddings,
}

_L = "model.layers.{layer}."
RULES: tuple[Rule, ...] = (
    Rule("model.embed_tokens.weight", ("embed",)),
    Rule(_L + "input_layernorm.weight", ("layers", "attn_norm")),
    Rule(_L + "self_attn.q_proj.weight", ("layers", "q"), "transpose"),
    Rule(_L + "self_attn.k_proj.weight", ("layers", "k"), "transpose"),
    Rule(_L + "self_attn.v_proj.weight", ("layers", "v"), "transpose"),
    Rule(_L + "self_attn.o_proj.weight", ("layers", "o"), "transpose"),
    Rule(_L + "self_attn.q_proj.bias", ("layers", "q_bias"), when="attention_bias"),
    Rule(_L + "self_attn.k_proj.bias", ("layers", "k_bias"), when="attention_bias"),
    Rule(_L + "self_attn.v_proj.bias", ("layers", "v_bias"), when="attention_bias"),
    Rule(_L + "self_attn.q_norm.weight", ("layers", "q_norm"), when="qk_norm"),
    Rule(_L + "self_attn.k_norm.weight", ("layers", "k_norm"), when="qk_norm"),
    Rule(_L + "post_attention_layernorm.weight", ("layers", "mlp_norm")),
    Rule(_L + "mlp.gate_proj.weight", ("layers", "gate"), "transpose"),
    Rule(_L + "mlp.up_proj.weight", ("layers", "up"), "transpose"),
    Rule(_L + "mlp.down_proj.weight", ("layers", "down"), "transpose"),
    Rule("model.norm.weight", ("final_norm",)),
    Rule("lm_head.weight", ("lm_head",), "transpose", when="untied"),
)


@dataclasses.dataclass(frozen=True)
class Alias:
  """An HF tensor that may be present when `when` holds, and must then equal `same_as`."""

  hf: str
  same_as: str
  when: str


ALIASES: tuple[Alias, ...] = (Alias("lm_head.weight", "model.embed_tokens.weight", "tied"),)

# Non-parameter buffers some exporters write (older Llama checkpoints); skipped on import.
IGNORED: tuple[str, ...] = (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",)


# ----------------------------------------------------------------------------- mapping


def active_rules(cfg: ModelConfig) -> list[Rule]:
  """The rules whose tensors exist for `cfg`, checked against `transformer.param_shapes`."""
  rules = [r for r in RULES if CONDITIONS[r.when](cfg)]
  shapes = transformer.param_shapes(cfg)
  want = {p for p, _ in _flatten_paths(shapes)}
  have = {r.path for r in rules}
  if want != have:
    raise AssertionError(
        f"hf.RULES is out of sync with transformer.param_shapes for family {cfg.family!r}: "
        f"params without a rule {sorted(want - have)}, rules without a param "
        f"{sorted(have - want)}")
  return rules


def _flatten_paths(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()
                   ) -> Iterator[tuple[tuple[str, ...], Any]]:
  for k, v in tree.items():
    if isinstance(v, Mapping):
      yield from _flatten_paths(v, prefix + (k,))
    else:
      yield prefix + (k,), v


def _get(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
  for k in path:
    tree = tree[k]
  return tree


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


def _param_repr(path: tuple[str, ...]) -> str:
  return "params" + "".join(f"[{k!r}]" for k in path)


def _hf_shape(param_shape: tuple[int, ...], transform: str) -> tuple[int, ...]:
  """The HF tensor shape that becomes a (per-layer) param of `param_shape`."""
  axes = TRANSFORMS[transform]
  if axes is None:
    return tuple(param_shape)
  hf = [0] * len(axes)
  for i, a in enumerate(axes):
    hf[a] = param_shape[i]
  return tuple(hf)


def _hf_index(index: tuple[slice, ...], transform: str) -> tuple[slice, ...]:
  """The slice of the HF tensor that, transformed, gives `param[index]`."""
  axes = TRANSFORMS[transform]
  if axes is None:
    return tuple(index)
  hf = [slice(None)] * len(axes)
  for i, a in enumerate(axes):
    hf[a] = index[i]
  return tuple(hf)


def _to_param(x: np.ndarray, transform: str) -> np.ndarray:
  axes = TRANSFORMS[transform]
  return x if axes is None else np.transpose(x, axes)


def _to_hf(x: np.ndarray, transform: str) -> np.ndarray:
  axes = TRANSFORMS[transform]
  return x if axes is None else np.ascontiguousarray(np.transpose(x, np.argsort(axes)))


def dtype_name(dtype: Any, where: str) -> str:
  """The `config.DTYPES` name of `dtype` (a name, numpy or jnp dtype); `where` is for errors."""
  try:
    name = np.dtype(dtype).name
  except TypeError:
    name = str(dtype)
  if name not in DTYPES:
    raise ValueError(f"{where}: dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
  return name


# ----------------------------------------------------------------------------- reading


class _SafetensorsReader:
  """Tensor names, shapes and slices across the shard files of one checkpoint (mmap)."""

  def __init__(self, model_dir: str):
    index_path = os.path.join(model_dir, WEIGHTS_INDEX_FILE)
    single_path = os.path.join(model_dir, WEIGHTS_FILE)
    if os.path.exists(index_path):
      with open(index_path) as f:
        weight_map = json.load(f).get("weight_map")
      if not isinstance(weight_map, dict):
        raise ValueError(f"{index_path}: no 'weight_map' object")
      self.files = {name: os.path.join(model_dir, fn) for name, fn in weight_map.items()}
      for path in sorted(set(self.files.values())):
        if not os.path.exists(path):
          raise FileNotFoundError(f"{index_path} names the weights file {path}, which does "
                                  "not exist")
    elif os.path.exists(single_path):
      with safetensors.safe_open(single_path, framework="numpy") as f:
        self.files = {name: single_path for name in f.keys()}
    else:
      others = [f for f in os.listdir(model_dir) if f.endswith((".bin", ".pt", ".pth"))]
      hint = f" (found {others}: convert them to safetensors first)" if others else ""
      raise FileNotFoundError(f"no weights in {model_dir}: neither {single_path} nor "
                              f"{index_path} exists{hint}")
    self._handles: dict[str, Any] = {}

  def _handle(self, name: str):
    path = self.files[name]
    if path not in self._handles:
      self._handles[path] = safetensors.safe_open(path, framework="numpy")
    return self._handles[path]

  def names(self) -> set[str]:
    return set(self.files)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._handle(name).get_slice(name).get_shape())

  def read(self, name: str, index: tuple[slice, ...] | None = None) -> np.ndarray:
    if index is None:
      return self._handle(name).get_tensor(name)
    return self._handle(name).get_slice(name)[index]

  def where(self, name: str) -> str:
    return self.files[name]

  def close(self) -> None:
    self._handles.clear()


def read_hf_config(model_dir: str) -> dict[str, Any]:
  """The parsed config.json of an HF model directory."""
  path = os.path.join(model_dir, CONFIG_FILE)
  if not os.path.isdir(model_dir):
    raise FileNotFoundError(f"HF model directory {model_dir} does not exist")
  if not os.path.exists(path):
    raise FileNotFoundError(f"no {CONFIG_FILE} in {model_dir}: expected {path}")
  with open(path) as f:
    return json.load(f)


def _check_architecture(hf_cfg: Mapping[str, Any], source: str) -> None:
  archs = hf_cfg.get("architectures")
  if archs is None:
    return
  supported = sorted(ARCHITECTURES.values())
  bad = [a for a in archs if a not in supported]
  if bad or not archs:
    raise ValueError(f"{source}: unsupported architectures {archs!r}; supported: {supported}")
  expected = ARCHITECTURES.get(hf_cfg.get("model_type"))
  if expected is not None and archs != [expected]:
    raise ValueError(f"{source}: architectures {archs!r} do not match model_type "
                     f"{hf_cfg.get('model_type')!r} (expected [{expected!r}])")


def _validate(reader: _SafetensorsReader, rules: list[Rule], cfg: ModelConfig,
              model_dir: str) -> None:
  """Raises on missing, unexpected, mis-shaped or unequal-alias tensors (headers only)."""
  expected: dict[str, Rule] = {}
  for rule in rules:
    for name in rule.hf_names(cfg):
      expected[name] = rule
  present = reader.names()
  aliases = {a.hf: a for a in ALIASES if CONDITIONS[a.when](cfg)}
  ignored = {n for n in present if any(re.fullmatch(p, n) for p in IGNORED)}

  missing = sorted(set(expected) - present)
  if missing:
    raise ValueError(f"{model_dir}: {len(missing)} tensor(s) missing from the checkpoint "
                     f"(family {cfg.family!r}, {cfg.num_layers} layers): {_some(missing)}")
  extra = sorted(present - set(expected) - set(aliases) - ignored)
  if extra:
    raise ValueError(f"{model_dir}: {len(extra)} unexpected tensor(s) in the checkpoint "
                     f"(family {cfg.family!r}, attention_bias={cfg.attention_bias}, "
                     f"qk_norm={cfg.qk_norm}, tie_embeddings={cfg.tie_embeddings}, "
                     f"{cfg.num_layers} layers): {_some(extra)}")

  shapes = transformer.param_shapes(cfg)
  for rule in rules:
    pshape = tuple(_get(shapes, rule.path))
    per = pshape[1:] if rule.per_layer else pshape
    want = _hf_shape(per, rule.transform)
    for layer, name in enumerate(rule.hf_names(cfg)):
      got = reader.shape(name)
      if got != want:
        target = _param_repr(rule.path) + (f"[{layer}]" if rule.per_layer else "")
        raise ValueError(
            f"{reader.where(name)}: tensor {name!r} (-> {target}, param shape {pshape}) has "
            f"shape {got}, expected {want} from {CONFIG_FILE}")

  for alias in aliases.values():
    if alias.hf in present:
      a, b = reader.read(alias.hf), reader.read(alias.same_as)
      if a.shape != b.shape or not np.array_equal(a, b):
        raise ValueError(
            f"{reader.where(alias.hf)}: tensor {alias.hf!r} differs from {alias.same_as!r}, "
            f"but the config ties them (tie_word_embeddings=True); set "
            f"tie_word_embeddings=false in {CONFIG_FILE} to load them separately")


def _some(names: list[str], k: int = 8) -> str:
  shown = ", ".join(repr(n) for n in names[:k])
  return shown + (f", ... ({len(names) - k} more)" if len(names) > k else "")


def _build_param(reader: _SafetensorsReader, rule: Rule, cfg: ModelConfig,
                 shape: tuple[int, ...], dtype: np.dtype, sharding) -> jax.Array:
  """One param as a jax.Array placed with `sharding`; each device reads only its slice."""
  names = rule.hf_names(cfg)
  cache: dict[Any, np.ndarray] = {}

  def block(index: tuple[slice, ...]) -> np.ndarray:
    key = tuple((s.start, s.stop, s.step) for s in index)
    if key not in cache:
      if rule.per_layer:
        layers = range(cfg.num_layers)[index[0]]
        hf_index = _hf_index(index[1:], rule.transform)
        parts = [_to_param(reader.read(names[l], hf_index), rule.transform) for l in layers]
        x = np.stack(parts)
      else:
        x = _to_param(reader.read(names[0], _hf_index(index, rule.transform)), rule.transform)
      cache[key] = np.ascontiguousarray(x.astype(dtype, copy=False))
    return cache[key]

  full = tuple(slice(0, n) for n in shape)
  if sharding is None:
    return jax.device_put(block(full))
  index_fn = lambda idx: block(tuple(  # noqa: E731
      slice(0 if s.start is None else s.start, n if s.stop is None else s.stop, s.step)
      for s, n in zip(idx, shape)))
  return jax.make_array_from_callback(shape, sharding, index_fn)


def load_hf(path: str, *, dtype: Any = None,
            shardings: Any | Callable[[ModelConfig], Any] = None,
            config_overrides: Mapping[str, Any] | None = None) -> tuple[ModelConfig, Params]:
  """Reads an HF model directory into (ModelConfig, params).

  Args:
    path: directory with config.json and model.safetensors (or a sharded
      model.safetensors.index.json).
    dtype: param dtype ('float32', 'bfloat16', ...); default: `param_dtype` of the config
      (float32 unless `config_overrides` says otherwise). The returned config's `param_dtype`
      is set to it.
    shardings: a pytree of `jax.sharding.Sharding` matching the params (e.g. from
      `sharding.param_shardings(cfg, mesh)`), or a callable `cfg -> that pytree` (the config
      is only known once config.json is read). None: the default device.
    config_overrides: ModelConfig fields to override (e.g. `{"dtype": "bfloat16"}`).

  Returns:
    (cfg, params) with params laid out as `transformer.param_shapes(cfg)`.
  """
  hf_cfg = read_hf_config(path)
  source = os.path.join(path, CONFIG_FILE)
  _check_architecture(hf_cfg, source)
  cfg = from_hf_config(hf_cfg, source=source, **dict(config_overrides or {}))
  if dtype is not None:
    cfg = cfg.replace(param_dtype=dtype_name(dtype, "load_hf(dtype=...)"))
  np_dtype = np.dtype(cfg.jnp_param_dtype)
  if callable(shardings):
    shardings = shardings(cfg)

  rules = active_rules(cfg)
  reader = _SafetensorsReader(path)
  try:
    _validate(reader, rules, cfg, path)
    shapes = transformer.param_shapes(cfg)
    params: Params = {}
    for rule in rules:
      sharding = None if shardings is None else _get(shardings, rule.path)
      _set(params, rule.path,
           _build_param(reader, rule, cfg, tuple(_get(shapes, rule.path)), np_dtype, sharding))
  finally:
    reader.close()
  return cfg, params


# ----------------------------------------------------------------------------- writing


def parse_size(size: int | str) -> int:
  """Bytes from an int or a string like '5GB', '500MB', '2GiB', '20KB'."""
  if isinstance(size, int):
    return size
  m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", str(size), re.IGNORECASE)
  if not m:
    raise ValueError(f"max_shard_size must be an int or like '5GB' / '500MiB', got {size!r}")
  unit = (m.group(2) or "B").upper()
  scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
           "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}[unit]
  return int(float(m.group(1)) * scale)


def _host(x: Any) -> np.ndarray:
  """A full host copy of a (possibly sharded, possibly multi-host) array."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(x)


def _leaf(params: Params, rule: Rule, cfg: ModelConfig) -> Any:
  """The param of `rule`, checked against the shape `cfg` implies."""
  x = params
  for k in rule.path:
    if not isinstance(x, Mapping) or k not in x:
      raise ValueError(f"{_param_repr(rule.path)} is missing from the params (family "
                       f"{cfg.family!r}, attention_bias={cfg.attention_bias}, "
                       f"qk_norm={cfg.qk_norm}, tie_embeddings={cfg.tie_embeddings})")
    x = x[k]
  want = tuple(_get(transformer.param_shapes(cfg), rule.path))
  if tuple(x.shape) != want:
    raise ValueError(f"{_param_repr(rule.path)} has shape {tuple(x.shape)}, expected {want} "
                     f"for the given ModelConfig")
  return x


def hf_tensors(params: Params, cfg: ModelConfig, *, dtype: Any = None
               ) -> Iterator[tuple[str, np.ndarray]]:
  """(HF name, host tensor) for every param, in checkpoint order, one param on host at a time."""
  np_dtype = None if dtype is None else np.dtype(DTYPES[dtype_name(dtype, "dtype")])
  for rule in active_rules(cfg):
    x = _host(_leaf(params, rule, cfg))
    if np_dtype is not None:
      x = x.astype(np_dtype)
    for layer, name in enumerate(rule.hf_names(cfg)):
      yield name, _to_hf(x[layer] if rule.per_layer else x, rule.transform)


def _plan_shards(entries: list[tuple[str, int]], max_bytes: int) -> list[list[str]]:
  """Greedy grouping of (name, nbytes) in order into shards of at most `max_bytes`."""
  shards: list[list[str]] = [[]]
  size = 0
  for name, nbytes in entries:
    if shards[-1] and size + nbytes > max_bytes:
      shards.append([])
      size = 0
    shards[-1].append(name)
    size += nbytes
  return shards


def generation_config(stop_ids: Sequence[int], pad_id: int | None = None,
                      bos_id: int | None = None) -> dict[str, Any]:
  """generation_config.json contents for a tokenizer's stop and pad ids.

  Args:
    stop_ids: the ids that end a response (eos, end-of-turn): `Tokenizer.stop_ids`, exactly
      where si_jax's sampler stops, so `generate` in transformers stops at the same tokens.
    pad_id: the padding id, written as `pad_token_id` only. It is among `eos_token_id` only
      when it is one of `stop_ids` itself (Qwen's <|endoftext|> is both).
    bos_id: written as `bos_token_id` when given.

  Returns:
    {"eos_token_id": [stop ids, first occurrence order], "pad_token_id": ..., "bos_token_id": ...}
  """
  eos = list(dict.fromkeys(int(i) for i in stop_ids))
  if not eos:
    raise ValueError("generation_config: stop_ids is empty; a model needs at least one eos id")
  out: dict[str, Any] = {"eos_token_id": eos}
  if pad_id is not None:
    out["pad_token_id"] = int(pad_id)
  if bos_id is not None:
    out["bos_token_id"] = int(bos_id)
  return out


def save_hf(params: Params, cfg: ModelConfig, out_dir: str, *, dtype: Any = None,
            tokenizer_dir: str | None = None, max_shard_size: int | str = "5GB",
            extra_config: Mapping[str, Any] | None = None,
            generation_config: Mapping[str, Any] | None = None) -> None:
  """Writes an HF model directory that `transformers.AutoModelForCausalLM` loads.

  Args:
    params: param pytree (layout of `transformer.param_shapes(cfg)`); jax or numpy arrays.
    cfg: its ModelConfig.
    out_dir: created if needed; stale model*.safetensors files in it are removed.
    dtype: dtype of the saved tensors; default: each param's own dtype.
    tokenizer_dir: copy the tokenizer files (`TOKENIZER_FILES`) found there.
    max_shard_size: bytes or '5GB'-style; above it the weights are split into
      model-0000k-of-0000n.safetensors files with a model.safetensors.index.json.
    extra_config: fields merged into config.json (e.g. bos/eos/pad token ids).
    generation_config: generation_config.json contents; default: the token ids of
      `extra_config` (or, if present, tokenizer_dir's generation_config.json).

  Only process 0 writes; every process must call it (gathering sharded params is collective).
  """
  max_bytes = parse_size(max_shard_size)
  np_dtype = None if dtype is None else np.dtype(DTYPES[dtype_name(dtype, "save_hf(dtype=...)")])
  # Plan shards from shapes and dtypes alone, before any tensor is gathered to host.
  entries = []
  for rule in active_rules(cfg):
    leaf = _leaf(params, rule, cfg)
    itemsize = np.dtype(leaf.dtype if np_dtype is None else np_dtype).itemsize
    per = tuple(leaf.shape)[1 if rule.per_layer else 0:]
    for name in rule.hf_names(cfg):
      entries.append((name, int(np.prod(per)) * itemsize))
  shards = _plan_shards(entries, max_bytes)
  n = len(shards)
  filenames = [WEIGHTS_FILE] if n == 1 else [
      f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
  write = jax.process_index() == 0

  if write:
    os.makedirs(out_dir, exist_ok=True)
    for fn in os.listdir(out_dir):
      if re.fullmatch(r"model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?", fn):
        os.remove(os.path.join(out_dir, fn))

  weight_map: dict[str, str] = {}
  tensors = hf_tensors(params, cfg, dtype=dtype)
  saved_dtype = None
  for fn, names in zip(filenames, shards):
    batch = {}
    for name in names:
      got, x = next(tensors)
      assert got == name, (got, name)
      batch[name] = x
      saved_dtype = saved_dtype or x.dtype.name
      weight_map[name] = fn
    if write:
      safetensors.numpy.save_file(batch, os.path.join(out_dir, fn), metadata={"format": "pt"})
  if not write:
    return

  if n > 1:
    total = sum(nbytes for _, nbytes in entries)
    with open(os.path.join(out_dir, WEIGHTS_INDEX_FILE), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2,
                sort_keys=True)

  hf_cfg = to_hf_config(cfg)
  hf_cfg.update(dtype=saved_dtype, torch_dtype=saved_dtype)
  hf_cfg.update(extra_config or {})
  tables.write_json(os.path.join(out_dir, CONFIG_FILE), hf_cfg, indent=2, sort_keys=True)

  if generation_config is None:
    src = tokenizer_dir and os.path.join(tokenizer_dir, GENERATION_CONFIG_FILE)
    if src and os.path.exists(src):
      with open(src) as f:
        generation_config = json.load(f)
    else:
      generation_config = {k: hf_cfg[k] for k in TOKEN_ID_FIELDS if hf_cfg.get(k) is not None}
  tables.write_json(os.path.join(out_dir, GENERATION_CONFIG_FILE), dict(generation_config),
                    indent=2, sort_keys=True)

  if tokenizer_dir is not None:
    copy_tokenizer(tokenizer_dir, out_dir)




def copy_tokenizer(src_dir: str, out_dir: str) -> list[str]:
  """Copies the tokenizer files present in `src_dir`; returns their names."""
  found = [fn for fn in TOKENIZER_FILES if os.path.exists(os.path.join(src_dir, fn))]
  if not found:
    raise FileNotFoundError(f"tokenizer_dir {src_dir} holds none of the tokenizer files "
                            f"{list(TOKENIZER_FILES)}")
  os.makedirs(out_dir, exist_ok=True)
  for fn in found:
    shutil.copyfile(os.path.join(src_dir, fn), os.path.join(out_dir, fn))
  return found
