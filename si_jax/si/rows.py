"""What the SI corrections share: PRNG purposes, budgets and shapes, the audit gate, and the
builders of the rows they train on (gated policy rows, outcome rows, NLL rows), plus metric
helpers. `repair.py` and `reset.py` build their credit from these; `credit.py` registers the
method.

Row shapes are fixed per run (`si_jax/shapes.py`): policy rows are the run's policy prompt
width + `completion_width`; repair-mode rows are `repair_prompt_width` + the repair budget.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import numpy as np

from si_jax import multihost
from si_jax import sampling
from si_jax import shapes
from si_jax import sharding as shd
from si_jax.data.steps import segment_steps
from si_jax.rl import credit as credit_lib
from si_jax.rl import rollout
from si_jax.rl import update as update_lib
from si_jax.si import align as align_lib
from si_jax.si import audit as audit_lib
from si_jax.si import locate as locate_lib
from si_jax.si import prompts
from si_jax.si import token_credit
from si_jax.si.select import select_failures

# PRNG purposes of the credit stage (the trainer's are < 10).
SELECT, REPAIR, REFLECT, RESET, PROBE, TRUNCATE, DROPOUT = 10, 11, 12, 13, 14, 15, 16


def rng(key: jax.Array) -> np.random.Generator:
  """A numpy Generator seeded by a PRNG key (host-side draws that resume exactly)."""
  return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


def select(ctx, scored: credit_lib.Scored, require_anchor: bool):
  """The step's correction requests, drawn with the step's SELECT key."""
  return select_failures(scored.success, scored.group_mask,
                         max_failed=ctx.config.si.max_failed_per_prompt,
                         require_anchor=require_anchor, rng=rng(ctx.key(SELECT)))


@functools.lru_cache(maxsize=4)
def _gate(kind: str, copy_margin: float, step_mode: str, judge_dir: str, threshold: float):
  """One gate per setting (a judge loads its model once)."""
  return audit_lib.gate_from_config(kind, copy_margin=copy_margin, step_mode=step_mode,
                                    judge_dir=judge_dir, judge_threshold=threshold)


def make_gate(config, task):
  c = config.si
  return _gate(c.audit, float(c.copy_margin), task.step_mode, c.judge_dir,
               float(c.judge_threshold))


@functools.lru_cache(maxsize=4)
def _credit_fn(mesh):
  """The gates of a process's own rows: on the run's mesh with one process, on this process's
  devices with several (each holds its own rows, and the call need not be collective)."""
  if jax.process_count() > 1:
    mesh = shd.make_mesh(data=jax.local_device_count(), devices=jax.local_devices())
  return token_credit.make_credit_fn(mesh)


# ----------------------------------------------------------------------------- budgets, shapes


def repair_budget(config) -> int:
  return config.si.repair_max_new_tokens or config.rl.max_new_tokens


def completion_width(config) -> int:
  """Response width of policy rows: rollouts and re-scored repairs share one width."""
  return max(config.rl.max_new_tokens, repair_budget(config))


def repair_prompt_width(ctx) -> int:
  """The width the repair (and reflection) prompts of a run are sampled and trained at, so
  each of their programs compiles once (`shapes.fit`): the repair template's own tokens, the
  longest problem (the policy prompt width less the chat template around it) and two
  solutions of rl.max_new_tokens (the failure and the anchor; a reflection's step numbers fit
  in the second). A longer prompt takes the next rung (one more compile, counted)."""
  tok, task, c = ctx.tokenizer, ctx.task, ctx.config
  around_problem = len(tok.prompt_ids("", task.system_prompt))
  template = len(prompts.repair_prompt_ids(tok, "", "", "", task.system_prompt,
                                           c.si.repair_instruction or None))
  problem = max(ctx.prompt_width - around_problem, 0)
  return shapes.round_up(template + problem + 2 * c.rl.max_new_tokens, shapes.QUANTUM)


def max_requests(config) -> int:
  """The most correction requests of a step (of the whole run): the sampler calls and the
  gates of the credit stage take their rows from it, so each compiles once."""
  return config.rl.prompts_per_step * config.si.max_failed_per_prompt


def continuation_width(ctx) -> int:
  """The prompt width of continuations (resets, truncation): the policy prompt + a prefix of
  at most one rollout budget."""
  return ctx.prompt_width + ctx.config.rl.max_new_tokens


def continuation_call(ctx) -> tuple[sampling.SamplingParams, int]:
  """The sampling params and prompt width of the policy's continuations (`continue_prefixes`;
  what compile-ahead compiles them for): the policy's temperature and budget."""
  return (sampling_params(ctx, ctx.sampling_params.temperature, ctx.config.rl.max_new_tokens),
          continuation_width(ctx))


def sampling_params(ctx, temperature: float, max_new: int) -> sampling.SamplingParams:
  sp = ctx.sampling_params
  return sampling.SamplingParams(max_new_tokens=max_new, temperature=temperature,
                                 top_p=sp.top_p, top_k=sp.top_k, stop_ids=sp.stop_ids,
                                 pad_id=sp.pad_id)


def continue_prefixes(ctx, prompts_: Sequence[list[int]], prefixes: Sequence[list[int]],
                      key: jax.Array, rows: int) -> tuple[list[list[int]], list[np.ndarray]]:
  """The policy's continuations of `prompt + prefix` (one each, under the policy's sampling
  params), cut to the room the rollout budget leaves after the prefix: (ids, log-probs).
  rows: the most continuations such a call makes in a run (its one compiled shape).
  Collective with several processes: every process calls (with or without rows)."""
  budget = ctx.config.rl.max_new_tokens
  if not multihost.any_true(bool(prompts_)):
    return [], []
  sp, width = continuation_call(ctx)
  ids, lps, _ = rollout.generate(
      ctx.sampler, ctx.params, [list(p) + list(x) for p, x in zip(prompts_, prefixes)], key,
      sp, width=width, rows=rows)
  room = [budget - len(x) for x in prefixes]
  return [x[:r] for x, r in zip(ids, room)], [lp[:r] for lp, r in zip(lps, room)]


def verified(task, examples, texts: Sequence[str], threshold: float) -> np.ndarray:
  """[N] bool: the policy-format texts verify (reward >= threshold) and no step is known
  wrong (`Task.trace_correct`)."""
  verdicts = task.score(list(examples), list(texts))
  return np.asarray([v.reward >= threshold and task.trace_correct(ex, t) is not False
                     for v, ex, t in zip(verdicts, examples, texts)], bool)


# ----------------------------------------------------------------------------- rows


def gated_rows(ctx, prompts_: Sequence[list[int]], responses: Sequence[list[int]],
               old: Sequence[np.ndarray] | None, alignments: Sequence[align_lib.Alignment],
               kstar: Sequence[int], side: str, values: Sequence[float], prompt_len: int
               ) -> dict[str, np.ndarray]:
  """Policy rows whose loss mask is the gate of the first K* edits (`token_credit`; with
  si.both_sides an edit empty on this side gates the token at its divergence) and whose
  advantage is `values[r]` on it. With si.gate_norm = "response", `row_len` is the response
  length (a gated token weighs what any response token weighs, `losses.aggregate`)."""
  width = completion_width(ctx.config)
  rows = credit_lib.rollout_rows(prompts_, responses, prompt_len=prompt_len,
                                 completion_len=width, pad_id=ctx.tokenizer.pad_id,
                                 advantages=[0.0] * len(responses), old_logprobs=old)
  start, end = token_credit.edit_arrays(alignments, side, both_sides=ctx.config.si.both_sides)
  n = len(responses)
  gate, adv = _credit_fn(ctx.mesh)(start, end, np.asarray(kstar, np.int32),
                                   np.full(n, prompt_len, np.int32),
                                   np.asarray(values, np.float32), width=prompt_len + width,
                                   rows=max_requests(ctx.config))
  rows["loss_mask"] = rows["loss_mask"] * gate
  rows["advantages"] = adv * rows["loss_mask"]
  return with_row_len(ctx, rows, [len(r) for r in responses])


def with_row_len(ctx, rows: dict[str, np.ndarray], lengths: Sequence[int]
                 ) -> dict[str, np.ndarray]:
  """Adds `row_len` (si.gate_norm: "response" = the response lengths, "gate" = each row's own
  loss tokens) to policy rows."""
  if ctx.config.si.gate_norm == "response":
    rows["row_len"] = np.asarray(lengths, np.float32)
  else:
    rows["row_len"] = rows["loss_mask"].sum(axis=1).astype(np.float32)
  return rows


def outcome_rows(ctx, scored: credit_lib.Scored, rows_idx: Sequence[int], adv: np.ndarray,
                 prompt_len: int) -> dict[str, np.ndarray]:
  """Outcome credit (each rollout's group advantage on all its tokens) for some rollouts."""
  ro = scored.rollouts
  P = ro.row_prompt_ids()
  rows = credit_lib.rollout_rows(
      [P[i] for i in rows_idx], [ro.response_ids[i] for i in rows_idx], prompt_len=prompt_len,
      completion_len=completion_width(ctx.config), pad_id=ctx.tokenizer.pad_id,
      advantages=[adv[i] for i in rows_idx], old_logprobs=[ro.logprobs[i] for i in rows_idx])
  return with_row_len(ctx, rows, [len(ro.response_ids[i]) for i in rows_idx])


def concat(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """Rows of several builders as one term's rows; a key only some parts have (behavior
  log-probs of re-scored repairs) is zero in the others."""
  parts = [p for p in parts if p and p["tokens"].shape[0]]
  if not parts:
    return {}
  keys = list(dict.fromkeys(k for p in parts for k in p))
  out = {}
  for k in keys:
    like = next(p[k] for p in parts if k in p)
    out[k] = np.concatenate([p[k] if k in p else np.zeros((p["tokens"].shape[0],) +
                                                          like.shape[1:], like.dtype)
                             for p in parts])
  return out


def group_magnitude(ctx, scored: credit_lib.Scored) -> np.ndarray:
  """[P * G] |group-relative advantage| of every rollout (si.adv_scale = "group")."""
  return np.abs(credit_lib.group_advantages(scored, ctx.loss["normalize_std"]).reshape(-1))


def base_rows(ctx, scored: credit_lib.Scored, corrected: set[int]) -> dict[str, np.ndarray]:
  """Outcome rows for failures that were not corrected (si.unrepaired = 'outcome') and for
  correct rollouts (si.train_correct_base)."""
  c = ctx.config.si
  adv = credit_lib.group_advantages(scored, ctx.loss["normalize_std"]).reshape(-1)
  success = scored.success.reshape(-1)
  groups = np.repeat(scored.group_mask, scored.rollouts.group_size)
  idx = [i for i in range(len(success)) if groups[i] and (
      (success[i] and c.train_correct_base) or
      (not success[i] and i not in corrected and c.unrepaired == "outcome"))]
  return outcome_rows(ctx, scored, idx, adv, scored.prompt_len) if idx else {}


def nll_rows(prompts_: Sequence[list[int]], responses: Sequence[list[int]], pad_id: int,
             completion_len: int, width: int, weights: Sequence[np.ndarray] | None = None
             ) -> dict[str, np.ndarray]:
  """NLL rows (repair mode, reflections); width: the prompt width floor. weights: per row a
  [len] loss weight of each response token (default 1)."""
  rows = rollout.pack_rows(prompts_, responses,
                           prefix_len=shapes.fit(max(map(len, prompts_)), width),
                           completion_len=completion_len, pad_id=pad_id,
                           values=None if weights is None else {"weight": weights})
  if weights is not None:
    rows["loss_mask"] = rows["loss_mask"] * rows.pop("weight")
  return rows


def terms(ctx, policy: dict, nll: dict | None, repair_rl: dict | None = None,
          plus_sft: dict | None = None) -> list[credit_lib.TermRows]:
  """The loss terms of a step: the policy term, the repair-mode NLL ("repair", si.lambda_rep),
  the repair-mode RL term ("repair_rl") and the re-scored repairs as an SFT term ("plus",
  si.plus = "sft", weight si.plus_weight)."""
  c = ctx.config.si
  out = []
  if policy:
    out.append(credit_lib.TermRows(ctx.policy_term, policy))
  if nll and c.lambda_rep > 0:
    out.append(credit_lib.TermRows(update_lib.NLLTerm(name="repair", weight=c.lambda_rep), nll))
  if repair_rl:
    out.append(credit_lib.TermRows(
        credit_lib.policy_term(ctx.config, name="repair_rl", weight=c.repair_rl_weight),
        repair_rl))
  if plus_sft:
    out.append(credit_lib.TermRows(update_lib.NLLTerm(name="plus", weight=c.plus_weight),
                                   plus_sft))
  return out


# ----------------------------------------------------------------------------- metrics


def first_edit_step(tokenizer, ids: Sequence[int], text: str, token: int, step_mode: str) -> int:
  """Step index (segment_steps of text = decode(ids)) holding token `token` of ids."""
  steps = segment_steps(text, step_mode)
  return locate_lib.step_of_char(steps, locate_lib.token_to_char(tokenizer, ids, token))


def mean(x, default=float("nan")) -> float:
  x = np.asarray(x, np.float64)
  return float(x.mean()) if x.size else default


def global_mean(x, default=float("nan")) -> float:
  """The mean over every process's values (the probe splits its cases over processes)."""
  return mean(multihost.allgather_rows(np.asarray(x, np.float64).reshape(-1)), default)
