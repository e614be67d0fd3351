"""Tiny native models, their params and the char tokenizer, shared by the tests.

`config()` is one small Qwen3 shape (SHAPE); a test that needs another shape passes the fields
that differ. `params(cfg, seed)` is `transformer.init_params(cfg, jax.random.key(seed))`, so
values compared against other runs stay what they were. The torch-built HF checkpoints that
parity tests compare against are in hf_fixtures.
"""

from __future__ import annotations

import os

import jax

from si_jax.models import config as config_lib
from si_jax.models import hf
from si_jax.models import transformer
from si_jax.tokenizer import Tokenizer, build_char_tokenizer

SHAPE = dict(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
             head_dim=8, intermediate_size=64)


def config(family: str = "qwen3", **kw) -> config_lib.ModelConfig:
  """`make_config(family)` with SHAPE's sizes; `kw` overrides them or sets any other field."""
  return config_lib.make_config(family, **{**SHAPE, **kw})


# SHAPE at d=64: every size divides the 8-device meshes' axes, so each param really is split.
WIDE = config(vocab_size=128, hidden_size=64, head_dim=16, intermediate_size=128)


def params(cfg: config_lib.ModelConfig, seed: int = 0) -> transformer.Params:
  """Random params of `cfg`, in its param_dtype."""
  return transformer.init_params(cfg, jax.random.key(seed))


def char_tokenizer(out_dir) -> Tokenizer:
  """The synthetic task's char tokenizer, built in `out_dir` and loaded."""
  return Tokenizer.from_dir(build_char_tokenizer(str(out_dir)))


def padded_vocab(tok: Tokenizer) -> int:
  """`tok`'s vocab size rounded up to a multiple of 8: a model's vocab_size for it."""
  return -(-tok.vocab_size // 8) * 8


def char_hf_model(root, *, seed: int = 0, **cfg_kw) -> str:
  """A random `config(**cfg_kw)` Qwen3 written as an HF dir root/model by si_jax's exporter (no
  torch), with the char tokenizer built in root/tok and its eos / pad ids; returns the dir."""
  tok_dir = build_char_tokenizer(os.path.join(str(root), "tok"))
  tok = Tokenizer.from_dir(tok_dir)
  cfg = config(vocab_size=padded_vocab(tok), **cfg_kw)
  model_dir = os.path.join(str(root), "model")
  hf.save_hf(params(cfg, seed), cfg, model_dir, tokenizer_dir=tok_dir,
             extra_config=dict(eos_token_id=tok.eos_id, pad_token_id=tok.pad_id))
  return model_dir
