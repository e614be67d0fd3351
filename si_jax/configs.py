"""The config schema: every field a run reads, with its one default, and its validation.

Experiment files (`experiments/configs/*.py`) start from `base_config()`, set what they need
and return `finalize(c)`. `finalize` fills `task.kwargs` with every option of the named task
(so `--config.task.kwargs.manual_dir=...` overrides one option like any other field) and locks
the config, so an override of a field that does not exist (`--config.rl.gruop_size=4`) is an
error, and `validate` names any bad value by its full path.

Algorithm defaults live here and nowhere else: `LOSS_PRESETS` is the table of GRPO-family
presets; `rl.<field>` left as None takes the value of the preset named by `rl.loss`
(`resolve_loss`). The loss code (`si_jax.rl.losses`) has no defaults of its own for these.
This module imports nothing from `si_jax.rl` or `si_jax.si` (layers are one-way); choices that
only the RL layer knows (the loss's ratio / aggregation names, registered credit functions)
are checked when the trainer builds its pieces, with errors naming the config field.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
from typing import Any

import ml_collections
from ml_collections import config_dict

_P = config_dict.placeholder

# GRPO-family presets (DESIGN 5.1). ratio / aggregation / eps: `losses.policy_loss` arguments;
# normalize_std: z-score group advantages; dynamic_sampling: refill groups whose rewards are
# all equal; overlong: DAPO's soft length penalty with a buffer of overlong_buffer_frac *
# max_new_tokens. KL to a reference is its own field (rl.kl_beta), in none of the presets.
LOSS_PRESETS: dict[str, dict[str, Any]] = {
    # DeepSeekMath (Shao et al. 2024): token ratio, eps 0.2, z-score, per-sequence token mean.
    "grpo": dict(ratio="token", aggregation="seq_mean_token_mean", eps_low=0.2, eps_high=0.2,
                 normalize_std=True, dynamic_sampling=False, overlong=False,
                 overlong_buffer_frac=0.2),
    # Dr.GRPO (Liu et al. 2025): no std normalization, token sum / constant.
    "dr_grpo": dict(ratio="token", aggregation="seq_mean_token_sum_norm", eps_low=0.2,
                    eps_high=0.2, normalize_std=False, dynamic_sampling=False, overlong=False,
                    overlong_buffer_frac=0.2),
    # DAPO (Yu et al. 2025): clip-higher 0.2 / 0.28, token mean, dynamic sampling, soft
    # overlong punishment with a 4096-token buffer on a 20480-token budget.
    "dapo": dict(ratio="token", aggregation="token_mean", eps_low=0.2, eps_high=0.28,
                 normalize_std=True, dynamic_sampling=True, overlong=True,
                 overlong_buffer_frac=0.2),
    # GSPO (Zheng et al. 2025): sequence ratio clipped to [1 - 3e-4, 1 + 4e-4], group
    # z-score advantages, per-sequence mean.
    "gspo": dict(ratio="sequence", aggregation="seq_mean_token_mean", eps_low=3e-4,
                 eps_high=4e-4, normalize_std=True, dynamic_sampling=False, overlong=False,
                 overlong_buffer_frac=0.2),
}
LOSS_FIELDS = tuple(LOSS_PRESETS["grpo"])

CORRECTIONS = ("repair", "reset", "random_reset", "oracle_reset")
UNREPAIRED = ("outcome", "drop")
AUDIT_GATES = ("rule", "judge", "none")


def _optim(lr: float) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      lr=lr, warmup_steps=0, schedule="cosine", end_lr_frac=0.1, b1=0.9, b2=0.99, eps=1e-8,
      weight_decay=0.0, clip_norm=1.0,
      # dtype of the AdamW moments and arithmetic: None = the params' own; "float32" keeps
      # them in float32 with bfloat16 params (si_jax/train_state.py: with_state_dtype).
      state_dtype=_P(str)))


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.mesh = dict(data=-1, fsdp=1, tensor=1)

  # task.kwargs: the task's options; finalize() adds every option the task has, with its
  # default, so each is overridable on the command line.
  c.task = dict(name="arith", kwargs={}, train_split="train", eval_split="test")
  # tokenizer.path: an HF tokenizer dir; empty = model.init_from's tokenizer, or, with
  # tokenizer.build = 'arith', the synthetic task's tokenizer built into <workdir>/tokenizer.
  c.tokenizer = dict(path="", build="")

  # Model: init_from (an HF dir, an si-convert params dir or another run's workdir) or a
  # preset + overrides (vocab_size 0 = the tokenizer's vocab, rounded up to a multiple of 8).
  # With init_from, overrides may only restate the checkpoint's values. How it computes, for
  # any model: attention ("auto": blockwise on CPU above attention_block_size tokens, cuDNN on
  # GPU in bf16, splash on TPU; or "dense", "blockwise", "cudnn", "splash"; si_jax/models/
  # attention.py) and remat of the train step ("none", "full", or "dots": keep the projections'
  # outputs, recompute the rest).
  # lora: rank > 0 trains LoRA adapters (scale alpha / rank) on the named kernels of every
  # layer and keeps the model's params frozen, in SFT and RL; checkpoints hold the adapters and
  # the base is re-read from init_from (si_jax/models/lora.py). rank 0 = off.
  # param_dtype / dtype: how params are stored and what the model computes in ("float32",
  # "bfloat16"); None = the model's own (a preset's, or the loaded checkpoint's). bfloat16
  # params with rl.optim.state_dtype="float32" is si-plan's mixed-precision memory lever.
  # master_weights: with params below float32, the optimizer keeps float32 master weights in
  # its state (sharded like the params) and the params are their rounding; without them an
  # update under half a bfloat16 step is lost (si_jax/train_state.py).
  c.model = dict(init_from="", preset="tiny", family="qwen3", overrides={}, remat="none",
                 attention="auto", attention_block_size=128, logprob_chunk=128,
                 lora=dict(rank=0, alpha=16.0,
                           targets=("q", "k", "v", "o", "gate", "up", "down")),
                 param_dtype=_P(str), dtype=_P(str), master_weights=True)

  # Cold start. Policy traces come from the task's generator (num_traces, error_rate) or from
  # data_path, a jsonl of {"prompt": <raw user message>, "response": <raw text>} lines (the
  # chat template and the end-of-turn token are added here). Repair-mode pairs (SI): generated
  # for the synthetic task (repair_pairs > 0) or read from repair_data_path, a jsonl of
  # {"problem", "failed", "anchor" (may be null), "repaired"} lines; a fraction
  # repair_no_anchor_frac of them is shown without the anchor. reflection_pairs: reset-variant
  # pairs (failed solution -> \boxed{first wrong step}), synthetic task only.
  # A batch's pairs are grouped by length (sft.py: length_buckets) and each group runs in
  # update calls of call_rows rows (rounded up to the batch shards), one optimizer step per
  # batch: a short pair is not padded to the longest one, and each bucket compiles once.
  c.sft = dict(steps=0, batch_size=64, num_traces=10000, error_rate=0.3, data_path="",
               repair_pairs=0, repair_no_anchor_frac=0.5, repair_data_path="",
               reflection_pairs=0, call_rows=8, optim=_optim(1e-3))

  c.rl = dict(
      steps=100, loss="grpo", credit="outcome", prompts_per_step=16, group_size=8,
      max_new_tokens=64, temperature=1.0, top_p=1.0, top_k=0, epochs=1, minibatches=1,
      microbatches=1, success_threshold=1.0,
      # the pack stage scores the packed rows (old / reference log-probs) in calls of
      # prompts_per_step x group_size / logprob_microbatches rows
      logprob_microbatches=1,
      # Columns of the policy prompts (si_jax/shapes.py): 0 = the longest prompt of the train
      # and eval splits, measured when the run starts. Every rollout, log-prob and update row
      # of the policy is this wide, so each program compiles once; a longer prompt takes the
      # next rung of the width ladder (one more compile, counted in compile/*).
      max_prompt_len=0,
      ratio=_P(str), aggregation=_P(str), eps_low=_P(float), eps_high=_P(float),
      normalize_std=_P(bool), dynamic_sampling=_P(bool), overlong=_P(bool),
      overlong_buffer_frac=_P(float), max_sampling_rounds=4,
      kl_beta=0.0, kl_estimator="k3",
      # None = auto: recompute when the ratio is sequence-level or the params are not fp32
      recompute_logprobs=_P(bool),
      # Stop decoding rows that hit a stop id (sampling.Sampler(compact=True)): unfinished rows
      # move to smaller batches. Uses one random stream per row, so it changes which tokens are
      # sampled (rollouts and evaluation), not their distribution. Off keeps the old streams.
      decode_compaction=False,
      # Grow the KV cache by this many columns between decode segments instead of making it
      # prompt + max_new_tokens long from the start (sampling.Sampler(grow_every=...)), so
      # attention reads only filled columns; 0 = off. Same tokens; one compile per length.
      decode_cache_growth=0,
      max_bad_steps=3, optim=_optim(1e-6))

  # Supervision internalization (rl.credit = "si"; DESIGN 5.2-5.4). Read si_jax/si/credit.py.
  c.si = dict(
      correction="repair",          # repair | reset | random_reset | oracle_reset
      max_failed_per_prompt=2,      # m_fail: failed rollouts repaired per prompt
      repair_samples=4,             # G_rep: repair candidates per failed rollout
      require_anchor=True,          # repair only failures whose group has a correct rollout
      repair_instruction="",        # first line of the repair prompt ("" = si/prompts.py's)
      repair_temperature=1.0,
      repair_max_new_tokens=0,      # 0 = rl.max_new_tokens
      lambda_edit=0.1,              # score = h * (r - lambda_edit * normalized edit distance)
      audit="rule",                 # rule | judge | none
      copy_margin=0.1,              # rule gate: closer to the anchor than to y by this margin
      judge_dir="",                 # HF model dir of the judge gate
      judge_threshold=0.0,          # judge passes iff logp(yes) - logp(no) > threshold
      truncation_k=1,               # K of adaptive truncation (K, then 2K, then all edits)
      # how a rung of K* is checked: "continue" = the policy continues the repair's prefix up
      # to the end of the K-th edit (truncation_samples times; the rung passes when a
      # fraction truncation_pass of them verify, 0 = any one); "graft" = the first K edits
      # grafted into the failure's own suffix must verify (a propagated mistake never does)
      truncation="continue",
      truncation_samples=2,
      truncation_pass=0.0,
      both_sides=True,              # every edit gates a token on both sides (si/credit.py)
      adv_minus=1.0,                # advantage -adv_minus on g_minus tokens of the failure
      adv_plus=1.0,                 # advantage +adv_plus on g_plus tokens of the repair
      # "group": both times the failure's |group advantage| (SI's credit on the scale of the
      # outcome credit beside it); "fixed": +-adv_plus / adv_minus as they are
      adv_scale="group",
      # a gated row under seq_mean_token_mean: "response" = normalized by its response length
      # (a gated token weighs what any response token weighs), "gate" = by its gated tokens
      # (a 1-2 token row then weighs a whole sequence)
      gate_norm="response",
      plus="pg",                    # the repair under the policy prompt: "pg" | "is" | "sft"
      plus_tis_cap=1.0,             # si.plus = "is": cap of the importance weight pi_old / rho
      plus_weight=1.0,              # si.plus = "sft": weight of the NLL term "plus"
      anchor_dropout=0.0,           # repair-mode NLL rows shown without their anchor
      repair_copy_weight=1.0,       # repair-mode NLL weight of the tokens outside the edits
      train_correct_base=False,     # outcome credit on correct rollouts too
      unrepaired="outcome",         # failures without a kept repair: outcome | drop
      lambda_rep=0.5,               # weight of the repair-mode NLL term (internalization)
      repair_rl=False,              # group-relative RL term over the repair candidates
      repair_rl_weight=0.5,
      reset_samples=4,              # M continuations per reset
      reflection_temperature=1.0,
      probe_examples=64,            # held-out counterfactual repair probe at each evaluation
  )

  c.eval = dict(every=50, num_examples=256, k=1, temperature=0.0, max_new_tokens=64,
                batch_size=256, num_samples_logged=8)
  # every=0: only at the SFT->RL hand-over and the end. on_corrupt: what a resume does when the
  # newest checkpoint does not verify (README, Reliability): "fall_back" to the newest one that
  # does (the bad one is kept as <step>.corrupt), or "refuse" (exit 2). It may differ between
  # the starts of one run.
  # async_save: a save returns once the arrays are in host memory and Orbax writes them in a
  # background thread while training goes on (the 25m state: 0.08 s instead of 2.3 s per save)
  c.checkpoint = dict(every=50, keep=2, on_corrupt="fall_back", async_save=True)
  c.log = dict(tensorboard=True, progress_every=10)
  return c


def load_file(path: str, name: str | None = None):
  """The Python file at `path` loaded as a module (config and sweep files are not a package).
  The one loader by path: si-train's --config, si-sweep's --sweep and `load_sibling`."""
  name = name or "_si_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_sibling(config_file: str, name: str):
  """The module `name`.py next to `config_file` (a config file's `__file__`), loaded by path:
  one config builds on another (arith_gspo on arith_si)."""
  return load_file(os.path.join(os.path.dirname(os.path.abspath(config_file)), name + ".py"),
                   name)


def finalize(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds the task's options to task.kwargs (keeping the values set) and locks the config."""
  from si_jax.data import tasks  # local: the task registry imports the task modules
  options = tasks.task_options(c.task.name)
  unknown = sorted(set(c.task.kwargs) - set(options)) if options else []
  if unknown:
    raise _err(f"task.kwargs.{unknown[0]}", f"is not an option of task {c.task.name!r}; "
               f"its options: {sorted(options)}")
  for k, v in options.items():
    if k not in c.task.kwargs:
      # None (unset) options may take a value of any type on the command line
      c.task.kwargs[k] = (_P(object) if v is None else list(v) if isinstance(v, tuple) else v)
  c.lock()
  return c


def _get(c, path: str):
  for part in path.split("."):
    c = c[part]
  return c


def _err(path: str, msg: str) -> ValueError:
  return ValueError(f"config.{path} {msg}")


def field_paths(c, prefix: str = "") -> list[str]:
  """Every leaf field of a ConfigDict as a dotted path ('rl.group_size', ...)."""
  out = []
  for k in c.keys():
    v = c[k]
    p = f"{prefix}{k}"
    if isinstance(v, ml_collections.ConfigDict) and v.keys():
      out += field_paths(v, p + ".")
    else:
      out.append(p)
  return out


def unknown_field_message(c, path: str) -> str | None:
  """None if `path` (dotted, without 'config.') is a field of c, else a one-line message naming
  it and the closest valid field."""
  fields = field_paths(c)
  if path in fields or any(f.startswith(path + ".") for f in fields):
    return None
  close = difflib.get_close_matches(path, fields, n=1, cutoff=0.6)
  hint = f"; did you mean config.{close[0]}?" if close else ""
  return f"unknown config field config.{path}{hint}"


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad field."""
  def pos(path, allow_zero=False):
    v = _get(c, path)
    if not isinstance(v, int) or isinstance(v, bool) or v < (0 if allow_zero else 1):
      raise _err(path, f"must be an int >= {0 if allow_zero else 1}, got {v!r}")

  def frac(path, lo=0.0, hi=1.0):
    v = _get(c, path)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not lo <= v <= hi:
      raise _err(path, f"must be a number in [{lo}, {hi}], got {v!r}")

  def choice(path, options):
    v = _get(c, path)
    if v not in options:
      raise _err(path, f"must be one of {list(options)}, got {v!r}")

  for p in ("rl.prompts_per_step", "rl.max_new_tokens", "rl.epochs", "rl.minibatches",
            "rl.microbatches", "rl.logprob_microbatches", "sft.batch_size", "sft.call_rows", "eval.k",
            "eval.max_new_tokens", "eval.batch_size", "checkpoint.keep",
            "rl.max_sampling_rounds", "log.progress_every", "si.repair_samples",
            "si.reset_samples", "si.max_failed_per_prompt", "si.truncation_k",
            "si.truncation_samples"):
    pos(p)
  for p in ("rl.steps", "sft.steps", "eval.every", "checkpoint.every", "eval.num_examples",
            "eval.num_samples_logged", "sft.repair_pairs", "sft.reflection_pairs",
            "si.repair_max_new_tokens", "si.probe_examples", "rl.top_k", "rl.max_prompt_len"):
    pos(p, allow_zero=True)

  if c.rl.group_size < 2:
    raise _err("rl.group_size", f"must be >= 2 (group-relative advantages), got "
               f"{c.rl.group_size}")
  choice("rl.loss", LOSS_PRESETS)
  if not 0 < c.rl.top_p <= 1:
    raise _err("rl.top_p", f"must be in (0, 1], got {c.rl.top_p}")
  if c.rl.temperature <= 0:
    raise _err("rl.temperature", f"must be > 0 for RL sampling, got {c.rl.temperature}")
  if c.rl.kl_beta < 0:
    raise _err("rl.kl_beta", f"must be >= 0, got {c.rl.kl_beta}")
  frac("rl.success_threshold")
  frac("sft.error_rate")
  frac("sft.repair_no_anchor_frac")
  for phase in ("sft", "rl"):
    o = c[phase].optim
    if o.lr < 0:
      raise _err(f"{phase}.optim.lr", f"must be >= 0, got {o.lr}")
    choice(f"{phase}.optim.schedule", ("cosine", "constant"))
  if not c.model.init_from and not c.model.preset:
    raise _err("model.preset", "must name a preset when model.init_from is empty")
  if not c.tokenizer.path and not c.tokenizer.build and not c.model.init_from:
    raise _err("tokenizer.path", "is empty, and neither tokenizer.build nor model.init_from "
               "(whose tokenizer would be used) is set")
  choice("model.remat", ("none", "full", "dots"))
  for p in ("model.param_dtype", "model.dtype", "sft.optim.state_dtype",
            "rl.optim.state_dtype"):
    parent, _, name = p.rpartition(".")
    if _get(c, parent).get(name) is not None:  # absent in configs written before the field
      choice(p, ("float32", "bfloat16"))
  choice("model.attention", ("auto", "dense", "blockwise", "cudnn", "splash"))
  if c.checkpoint.get("on_corrupt") is not None:  # absent in configs written before the field
    choice("checkpoint.on_corrupt", ("fall_back", "refuse"))
  pos("model.attention_block_size")
  from si_jax.models import lora  # local: keeps this module free of jax at import
  try:
    lora.from_config(c.model.lora)
  except ValueError as e:
    field, msg = str(e).split(" ", 1)
    raise _err(f"model.lora.{field}", msg) from None
  choice("si.correction", CORRECTIONS)
  choice("si.unrepaired", UNREPAIRED)
  choice("si.audit", AUDIT_GATES)
  if c.si.audit == "judge" and not c.si.judge_dir:
    raise _err("si.judge_dir", "must name an HF model directory when si.audit = 'judge'")
  choice("si.truncation", ("continue", "graft"))
  choice("si.adv_scale", ("fixed", "group"))
  choice("si.gate_norm", ("gate", "response"))
  choice("si.plus", ("pg", "is", "sft"))
  for p in ("si.lambda_edit", "si.copy_margin", "si.truncation_pass", "si.anchor_dropout"):
    frac(p)
  for p in ("si.adv_minus", "si.adv_plus", "si.lambda_rep", "si.repair_rl_weight",
            "si.plus_weight", "si.repair_copy_weight"):
    frac(p, 0.0, 100.0)
  frac("si.plus_tis_cap", 1e-6, 1e6)
  for p in ("si.repair_temperature", "si.reflection_temperature"):
    if _get(c, p) <= 0:
      raise _err(p, f"must be > 0 (repairs are sampled), got {_get(c, p)}")
  resolve_loss(c)


def resolve_loss(c: ml_collections.ConfigDict) -> dict[str, Any]:
  """The loss fields of preset `rl.loss`, each replaced by `rl.<field>` where that is set."""
  if c.rl.loss not in LOSS_PRESETS:
    raise _err("rl.loss", f"must be one of {sorted(LOSS_PRESETS)}, got {c.rl.loss!r}")
  out = dict(LOSS_PRESETS[c.rl.loss])
  out.update({f: c.rl[f] for f in LOSS_FIELDS if c.rl[f] is not None})
  if not 0.0 <= out["eps_low"] < 1.0:
    raise _err("rl.eps_low", f"must be in [0, 1), got {out['eps_low']}")
  if out["eps_high"] < 0:
    raise _err("rl.eps_high", f"must be >= 0, got {out['eps_high']}")
  if not 0.0 <= out["overlong_buffer_frac"] <= 1.0:
    raise _err("rl.overlong_buffer_frac", f"must be in [0, 1], got {out['overlong_buffer_frac']}")
  return out


def to_json(c: ml_collections.ConfigDict) -> str:
  return c.to_json_best_effort(indent=2, sort_keys=True)


def to_dict(c: ml_collections.ConfigDict) -> dict[str, Any]:
  return json.loads(to_json(c))


def from_json(text: str) -> ml_collections.ConfigDict:
  """A locked config from `to_json` output (a workdir's config.json)."""
  c = ml_collections.ConfigDict(json.loads(text))
  c.lock()
  return c
