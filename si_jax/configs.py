"""The config schema: every field a run reads, with defaults, and its validation.

Experiment files (`experiments/configs/*.py`) start from `base_config()`, set what they need
and return `finalize(c)`. The result is locked, so an override of a field that does not exist
(`--config.rl.gruop_size=4`) is an error, and `validate` names any bad value by its full path.
Loss fields left as None take the defaults of the preset named by `rl.loss`.
"""

from __future__ import annotations

import json
from typing import Any

import ml_collections
from ml_collections import config_dict

from si_jax.rl import losses

_P = config_dict.placeholder


def _optim(lr: float) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      lr=lr, warmup_steps=0, schedule="cosine", end_lr_frac=0.1, b1=0.9, b2=0.99, eps=1e-8,
      weight_decay=0.0, clip_norm=1.0))


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.mesh = dict(data=-1, fsdp=1, tensor=1)

  c.task = dict(name="arith", kwargs={}, train_split="train", eval_split="test")
  # tokenizer.path: an HF tokenizer dir; tokenizer.build = 'arith' builds the synthetic one
  # into <workdir>/tokenizer when path is empty.
  c.tokenizer = dict(path="", build="")

  # Model: init_from (an HF dir or an si-convert params dir) or a preset + overrides
  # (vocab_size 0 = the tokenizer's vocab, rounded up to a multiple of 8).
  c.model = dict(init_from="", preset="tiny", family="qwen3", overrides={}, remat=False,
                 logprob_chunk=128)

  c.sft = dict(steps=0, batch_size=64, num_traces=10000, error_rate=0.3, data_path="",
               max_len=128, microbatches=1, optim=_optim(1e-3))

  c.rl = dict(
      steps=100, loss="grpo", prompts_per_step=16, group_size=8, max_new_tokens=64,
      temperature=1.0, top_p=1.0, top_k=0, epochs=1, minibatches=1, microbatches=1,
      ratio=_P(str), aggregation=_P(str), eps_low=_P(float), eps_high=_P(float),
      normalize_std=_P(bool), dynamic_sampling=_P(bool), overlong=_P(bool),
      overlong_buffer_frac=_P(float), max_sampling_rounds=4,
      kl_beta=0.0, kl_estimator="k3", recompute_logprobs=False, max_bad_steps=3,
      optim=_optim(1e-6))

  c.eval = dict(every=50, num_examples=256, k=1, temperature=0.0, max_new_tokens=64,
                batch_size=256)
  c.checkpoint = dict(every=50, keep=2)  # every=0: only at the SFT->RL hand-over and the end
  c.log = dict(every=1, tensorboard=True, progress_every=10)
  return c


def finalize(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  c.lock()
  return c


def _get(c, path: str):
  for part in path.split("."):
    c = c[part]
  return c


def _err(path: str, msg: str) -> ValueError:
  return ValueError(f"config.{path} {msg}")


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad field."""
  def pos(path, allow_zero=False):
    v = _get(c, path)
    if not isinstance(v, int) or isinstance(v, bool) or v < (0 if allow_zero else 1):
      raise _err(path, f"must be an int >= {0 if allow_zero else 1}, got {v!r}")
  for p in ("rl.prompts_per_step", "rl.max_new_tokens", "rl.epochs", "rl.minibatches",
            "rl.microbatches", "sft.batch_size", "sft.microbatches", "eval.k",
            "eval.max_new_tokens", "eval.batch_size", "checkpoint.keep", "log.every",
            "rl.max_sampling_rounds"):
    pos(p)
  for p in ("rl.steps", "sft.steps", "eval.every", "checkpoint.every", "eval.num_examples"):
    pos(p, allow_zero=True)
  if c.rl.group_size < 2:
    raise _err("rl.group_size", f"must be >= 2 (group-relative advantages), got "
               f"{c.rl.group_size}")
  if c.rl.loss not in losses.LOSS_PRESETS:
    raise _err("rl.loss", f"must be one of {sorted(losses.LOSS_PRESETS)}, got {c.rl.loss!r}")
  if not 0 < c.rl.top_p <= 1:
    raise _err("rl.top_p", f"must be in (0, 1], got {c.rl.top_p}")
  if c.rl.temperature <= 0:
    raise _err("rl.temperature", f"must be > 0 for RL sampling, got {c.rl.temperature}")
  if c.rl.kl_beta < 0:
    raise _err("rl.kl_beta", f"must be >= 0, got {c.rl.kl_beta}")
  rows = c.rl.prompts_per_step * c.rl.group_size
  if rows % c.rl.minibatches:
    raise _err("rl.minibatches", f"({c.rl.minibatches}) must divide prompts_per_step * "
               f"group_size = {rows}")
  if (rows // c.rl.minibatches) % c.rl.microbatches:
    raise _err("rl.microbatches", f"({c.rl.microbatches}) must divide the mini-batch of "
               f"{rows // c.rl.minibatches} rows")
  if c.sft.batch_size % c.sft.microbatches:
    raise _err("sft.microbatches", f"({c.sft.microbatches}) must divide sft.batch_size "
               f"{c.sft.batch_size}")
  if not 0 <= c.sft.error_rate <= 1:
    raise _err("sft.error_rate", f"must be in [0, 1], got {c.sft.error_rate}")
  for phase in ("sft", "rl"):
    o = c[phase].optim
    if o.lr < 0:
      raise _err(f"{phase}.optim.lr", f"must be >= 0, got {o.lr}")
    if o.schedule not in ("cosine", "constant"):
      raise _err(f"{phase}.optim.schedule", f"must be 'cosine' or 'constant', got "
                 f"{o.schedule!r}")
  if not c.model.init_from and not c.model.preset:
    raise _err("model.preset", "must name a preset when model.init_from is empty")
  if not c.tokenizer.path and not c.tokenizer.build:
    raise _err("tokenizer.path", "is empty and tokenizer.build is not set")
  loss_preset(c)  # validates the loss overrides


def loss_preset(c: ml_collections.ConfigDict) -> losses.LossPreset:
  """The loss preset `rl.loss` with any non-None rl.<field> override applied."""
  fields = ("ratio", "aggregation", "eps_low", "eps_high", "normalize_std",
            "dynamic_sampling", "overlong", "overlong_buffer_frac")
  over = {f: c.rl[f] for f in fields if c.rl[f] is not None}
  try:
    return losses.get_loss_preset(c.rl.loss, **over)
  except ValueError as e:
    raise ValueError(f"config.rl: {e}") from None


def to_json(c: ml_collections.ConfigDict) -> str:
  return c.to_json_best_effort(indent=2, sort_keys=True)


def to_dict(c: ml_collections.ConfigDict) -> dict[str, Any]:
  return json.loads(to_json(c))
