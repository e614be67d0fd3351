"""Decoder LM configuration for the Llama, Qwen2 and Qwen3 families.

`ModelConfig` is a frozen, hashable dataclass so it can be a static argument of `jax.jit`.
Per-family defaults and HF `config.json` reading live here; the weights mapping lives in `hf.py`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

FAMILIES = ("llama", "qwen2", "qwen3")
# Mirrors si_jax.models.attention.IMPLEMENTATIONS (kept here: config imports no model code).
ATTENTION_IMPLS = ("auto", "dense", "blockwise", "cudnn", "splash")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Llama-3 style frequency-dependent RoPE scaling (HF `rope_type="llama3"`)."""

  factor: float
  low_freq_factor: float
  high_freq_factor: float
  original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape and numerics of a decoder-only LM.

  family: 'llama' | 'qwen2' | 'qwen3'. qwen2 implies q/k/v biases, qwen3 implies q/k RMSNorm;
  both can also be set explicitly through `attention_bias` / `qk_norm`.

  attention / attention_block_size choose how training, scoring and prefill compute attention
  (`si_jax.models.attention`: "auto", "dense", "blockwise", "cudnn", "splash"); they change
  speed and memory, not the model, so `to_hf_config` does not write them.
  """

  family: str = "qwen3"
  vocab_size: int = 256
  hidden_size: int = 128
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: int = 2
  head_dim: int = 32
  intermediate_size: int = 384
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling | None = None
  rms_norm_eps: float = 1e-6
  attention_bias: bool = False
  qk_norm: bool = False
  tie_embeddings: bool = False
  max_position_embeddings: int = 4096
  param_dtype: str = "float32"
  dtype: str = "float32"  # compute (activation) dtype
  attention: str = "auto"
  attention_block_size: int = 128

  def __post_init__(self):
    errors = []
    if self.family not in FAMILIES:
      errors.append(f"family must be one of {FAMILIES}, got {self.family!r}")
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                 "head_dim", "intermediate_size"):
      if getattr(self, name) < 1:
        errors.append(f"{name} must be >= 1, got {getattr(self, name)}")
    if self.num_kv_heads >= 1 and self.num_heads % self.num_kv_heads:
      errors.append(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                    f"({self.num_kv_heads})")
    if self.family != "qwen2" and self.attention_bias:
      errors.append("attention_bias=True is only supported for qwen2 (q/k/v biases)")
    if self.head_dim % 2:
      errors.append(f"head_dim must be even for RoPE, got {self.head_dim}")
    for name in ("param_dtype", "dtype"):
      if getattr(self, name) not in DTYPES:
        errors.append(f"{name} must be one of {sorted(DTYPES)}, got {getattr(self, name)!r}")
    if self.attention not in ATTENTION_IMPLS:
      errors.append(f"attention must be one of {ATTENTION_IMPLS}, got {self.attention!r}")
    if self.attention_block_size < 1:
      errors.append(f"attention_block_size must be >= 1, got {self.attention_block_size}")
    if errors:
      raise ValueError("Invalid ModelConfig: " + "; ".join(errors))

  @property
  def q_per_kv(self) -> int:
    return self.num_heads // self.num_kv_heads

  @property
  def jnp_dtype(self):
    return DTYPES[self.dtype]

  @property
  def jnp_param_dtype(self):
    return DTYPES[self.param_dtype]

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  def num_params(self) -> int:
    d, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
    attn = d * hd * (2 * self.num_heads + 2 * self.num_kv_heads)
    if self.attention_bias:
      attn += hd * (self.num_heads + 2 * self.num_kv_heads)
    if self.qk_norm:
      attn += 2 * hd
    layer = attn + 3 * d * f + 2 * d
    emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
    return self.num_layers * layer + emb + d


def family_defaults(family: str) -> dict[str, Any]:
  return {
      "llama": dict(attention_bias=False, qk_norm=False),
      "qwen2": dict(attention_bias=True, qk_norm=False),
      "qwen3": dict(attention_bias=False, qk_norm=True),
  }[family]


def make_config(family: str, **kw) -> ModelConfig:
  """A config with the family's structural defaults (biases / q-k norm), overridable."""
  if family not in FAMILIES:
    raise ValueError(f"unknown model family {family!r}; supported: {FAMILIES}")
  return ModelConfig(family=family, **{**family_defaults(family), **kw})


# Named sizes used by tests, benchmarks and CPU experiments.
PRESETS: dict[str, dict[str, Any]] = {
    # d=128, 2 layers: the PERF_NOTES 'tiny' shape.
    "tiny": dict(vocab_size=512, hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                 head_dim=32, intermediate_size=384),
    # ~25-34M params, Qwen3-shaped (d=512, 8 layers, vocab 8192): the PERF_NOTES 'd=512' shape.
    "25m": dict(vocab_size=8192, hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4,
                head_dim=64, intermediate_size=1536),
}


def _qwen3(hidden: int, intermediate: int, layers: int, heads: int, tied: bool) -> dict:
  """The shape of a released Qwen3 dense model (its HF config.json; family 'qwen3')."""
  return dict(vocab_size=151936, hidden_size=hidden, intermediate_size=intermediate,
              num_layers=layers, num_heads=heads, num_kv_heads=8, head_dim=128,
              rope_theta=1e6, rms_norm_eps=1e-6, tie_embeddings=tied,
              max_position_embeddings=40960)


# Shapes only (no weights): what si-plan plans and paper-scale configs name. Published sizes
# 0.6B, 1.7B, 4.0B, 8.2B, 14.8B, 32.8B (`ModelConfig.num_params`, checked in test_plan.py).
PRESETS.update({
    "qwen3-0.6b": _qwen3(1024, 3072, 28, 16, tied=True),
    "qwen3-1.7b": _qwen3(2048, 6144, 28, 16, tied=True),
    "qwen3-4b": _qwen3(2560, 9728, 36, 32, tied=True),
    "qwen3-8b": _qwen3(4096, 12288, 36, 32, tied=False),
    "qwen3-14b": _qwen3(5120, 17408, 40, 40, tied=False),
    "qwen3-32b": _qwen3(5120, 25600, 64, 64, tied=False),
})


def preset(name: str, family: str = "qwen3", **kw) -> ModelConfig:
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
  return make_config(family, **{**PRESETS[name], **kw})


_HF_MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}


def from_hf_config(hf: Mapping[str, Any], *, source: str = "config.json", **overrides) -> ModelConfig:
  """ModelConfig from an HF config dict (transformers 4.x `rope_scaling` or 5.x `rope_parameters`)."""
  model_type = hf.get("model_type")
  if model_type not in _HF_MODEL_TYPES:
    raise ValueError(f"{source}: unsupported model_type {model_type!r}; supported: "
                     f"{sorted(_HF_MODEL_TYPES)}")
  family = _HF_MODEL_TYPES[model_type]
  act = hf.get("hidden_act", "silu")
  if act != "silu":
    raise ValueError(f"{source}: hidden_act {act!r} is not supported (only 'silu')")
  if hf.get("mlp_bias"):
    raise ValueError(f"{source}: mlp_bias=True is not supported")
  if hf.get("use_sliding_window"):
    raise ValueError(f"{source}: use_sliding_window=True is not supported")
  rope = dict(hf.get("rope_parameters") or {})
  legacy = hf.get("rope_scaling") or {}
  rope = {**legacy, **rope}
  theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  scaling = None
  if rope_type == "llama3":
    scaling = RopeScaling(
        factor=float(rope["factor"]), low_freq_factor=float(rope["low_freq_factor"]),
        high_freq_factor=float(rope["high_freq_factor"]),
        original_max_position_embeddings=int(rope["original_max_position_embeddings"]))
  elif rope_type not in ("default", None):
    raise ValueError(f"{source}: rope_type {rope_type!r} is not supported (default, llama3)")
  try:
    heads = int(hf["num_attention_heads"])
    d = int(hf["hidden_size"])
    kw = dict(
        vocab_size=int(hf["vocab_size"]), hidden_size=d,
        num_layers=int(hf["num_hidden_layers"]), num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or d // heads),
        intermediate_size=int(hf["intermediate_size"]), rope_theta=float(theta),
        rope_scaling=scaling, rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
    )
  except KeyError as e:
    raise ValueError(f"{source}: missing required field {e.args[0]!r}") from None
  if family != "qwen2" and hf.get("attention_bias"):
    # Llama / Qwen3 put the bias on o_proj too; no released checkpoint of theirs uses it.
    raise ValueError(f"{source}: attention_bias=True is not supported for {family}")
  return make_config(family, **{**kw, **overrides})


def to_hf_config(cfg: ModelConfig) -> dict[str, Any]:
  """The HF config dict (transformers 5.x layout) for `cfg`."""
  rope: dict[str, Any] = {"rope_theta": cfg.rope_theta, "rope_type": "default"}
  if cfg.rope_scaling is not None:
    rope.update(rope_type="llama3", **dataclasses.asdict(cfg.rope_scaling))
  arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
  out = dict(
      architectures=[arch[cfg.family]], model_type=cfg.family, vocab_size=cfg.vocab_size,
      hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
      num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
      num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, hidden_act="silu",
      max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.rms_norm_eps,
      tie_word_embeddings=cfg.tie_embeddings, rope_parameters=rope, rope_theta=cfg.rope_theta,
      torch_dtype=cfg.param_dtype, use_cache=True,
  )
  if cfg.family != "qwen2":
    out["attention_bias"] = False
    out["mlp_bias"] = False
  if cfg.rope_scaling is not None:
    out["rope_scaling"] = dict(rope)
  return out
