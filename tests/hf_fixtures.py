"""Tiny random HF checkpoints (one per supported family), built with transformers + torch.

Every builder is seeded and returns `(model_dir, torch_model)`; the torch model is in fp32,
eval mode, eager attention (the parity reference). Weights are drawn with std 1/sqrt(hidden)
(unless `initializer_range` is given) so attention is far from uniform, and RMSNorm weights /
q-k-v biases are perturbed away from their init (all-ones norms and zero biases would hide
mapping bugs).

  llama: llama3 RoPE scaling (short original context so the scaling bites), tied embeddings.
  qwen2: q/k/v biases, untied.
  qwen3: q/k RMSNorm, head_dim (32) != hidden / heads (16), untied.
"""

from __future__ import annotations

import copy
import math
import os
from typing import Any, Callable

import torch
import transformers

VOCAB = 160
HIDDEN = 64
LAYERS = 2


def _common(family_kw: dict[str, Any], kw: dict[str, Any]) -> dict[str, Any]:
  """Shared tiny sizes, then the family's settings, then the caller's overrides."""
  base = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=96,
              num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=512, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2,
              pad_token_id=0)
  base.update(family_kw)
  base.update(kw)
  base.setdefault("initializer_range", 1.0 / math.sqrt(base["hidden_size"]))
  return base


def llama_config(**kw) -> transformers.LlamaConfig:
  rope = dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0,
              high_freq_factor=4.0, original_max_position_embeddings=32)
  return transformers.LlamaConfig(**_common(
      dict(tie_word_embeddings=True, rope_parameters=rope), kw))


def qwen2_config(**kw) -> transformers.Qwen2Config:
  return transformers.Qwen2Config(**_common(
      dict(tie_word_embeddings=False,
           rope_parameters=dict(rope_type="default", rope_theta=10000.0)), kw))


def qwen3_config(**kw) -> transformers.Qwen3Config:
  return transformers.Qwen3Config(**_common(
      dict(tie_word_embeddings=False, head_dim=32,
           rope_parameters=dict(rope_type="default", rope_theta=1000000.0)), kw))


CONFIGS: dict[str, Callable[..., transformers.PretrainedConfig]] = {
    "llama": llama_config, "qwen2": qwen2_config, "qwen3": qwen3_config}
FAMILIES = tuple(CONFIGS)


def make_model(family: str, *, seed: int = 0, **config_kw) -> transformers.PreTrainedModel:
  """A seeded random fp32 `*ForCausalLM` of `family` with perturbed norms and biases."""
  config = CONFIGS[family](**config_kw)
  config._attn_implementation = "eager"  # pylint: disable=protected-access
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
  model = model.float().eval()
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
      elif name.endswith(".bias"):
        p.copy_(0.2 * torch.randn(p.shape, generator=gen))
  return model


def make_checkpoint(family: str, out_dir: str, *, seed: int = 0, dtype: str = "float32",
                    max_shard_size: str | int | None = None,
                    **config_kw) -> tuple[str, transformers.PreTrainedModel]:
  """Saves a tiny random `family` checkpoint to `out_dir`; returns (out_dir, fp32 torch model).

  dtype: dtype of the saved tensors ('float32' or 'bfloat16'); the returned model stays fp32.
  max_shard_size: e.g. '40KB' to get a sharded checkpoint with a model.safetensors.index.json.
  """
  model = make_model(family, seed=seed, **config_kw)
  os.makedirs(out_dir, exist_ok=True)
  to_save = model if dtype == "float32" else copy.deepcopy(model).to(getattr(torch, dtype))
  kw = {} if max_shard_size is None else dict(max_shard_size=max_shard_size)
  to_save.save_pretrained(out_dir, **kw)
  return out_dir, model


def make_tokenizer_files(out_dir: str) -> list[str]:
  """Writes a minimal word-level tokenizer (tokenizer.json + tokenizer_config.json)."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
  vocab.update({str(i): 4 + i for i in range(10)})
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  os.makedirs(out_dir, exist_ok=True)
  tok.save(os.path.join(out_dir, "tokenizer.json"))
  with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
    f.write('{"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", '
            '"unk_token": "<unk>", "tokenizer_class": "PreTrainedTokenizerFast"}\n')
  return ["tokenizer.json", "tokenizer_config.json"]


def position_ids(mask: torch.Tensor) -> torch.Tensor:
  """[B, T] 0/1 mask -> positions cumsum(mask) - 1 (0 on left padding), as HF needs them."""
  return (mask.long().cumsum(-1) - 1).clamp(min=0)


def torch_logits(model: transformers.PreTrainedModel, tokens, mask) -> Any:
  """fp32 logits [B, T, V] (numpy) of `model` on int tokens [B, T] with a 0/1 mask [B, T]."""
  tokens = torch.as_tensor(tokens, dtype=torch.long)
  mask = torch.as_tensor(mask, dtype=torch.long)
  with torch.no_grad():
    out = model(input_ids=tokens, attention_mask=mask, position_ids=position_ids(mask))
  return out.logits.float().numpy()
