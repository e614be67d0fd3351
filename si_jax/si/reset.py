"""SI by reset (DESIGN 5.3, si.correction = "reset" | "random_reset" | "oracle_reset").

For each selected failure: locate a step k (`locate.py`: the model's reflection, a random step,
or the task's true first wrong step), keep the failure's sampled ids before step k, and let the
policy continue M = si.reset_samples times from `policy prompt + prefix`. The continuations get
suffix-only advantages, group-relative within their M.

* A reset whose M continuations all score alike carries no signal (its group advantages are
  0): the failure then takes the outcome fallback (si.unrepaired), like a failure without a
  kept repair, instead of getting nothing.
* "reset" internalizes its reflections by NLL: only those whose reset found a correct
  continuation (steps before k were right), weighted by k / (the failure's step count). Any k
  up to the true first wrong step can find one, so an unweighted NLL favours k = 1 (a reset
  from the start is just resampling); the weight favours the latest k that still worked.
"""

from __future__ import annotations

import numpy as np

from si_jax import metrics as metrics_lib
from si_jax import multihost
from si_jax import sampling
from si_jax.data.steps import segment_steps
from si_jax.rl import advantages as adv_lib
from si_jax.rl import credit as credit_lib
from si_jax.rl import rollout
from si_jax.si import locate as locate_lib
from si_jax.si import rows as rows_lib

__all__ = ["reset_credit", "compile_ahead"]


def compile_ahead(ctx: credit_lib.CreditContext) -> list[credit_lib.TermRows]:
  """Compiles SI by reset's samplers before the first RL step (`repair.compile_ahead`): the
  reflections ("reset") and the continuations at their floors. Returns one-row examples of
  the step's loss terms (the continuations' policy rows, the reflections' NLL), built by the
  same builders, for the trainer to compile their log-prob and update programs."""
  c, cfg, pad = ctx.config.si, ctx.config, ctx.tokenizer.pad_id
  if c.correction == "reset":
    sp, width, rows = _reflection_call(ctx)
    ctx.sampler.compile_ahead(ctx.params, sp, width=width, rows=rows)
  sp, width = rows_lib.continuation_call(ctx)
  ctx.sampler.compile_ahead(ctx.params, sp, width=width,
                            rows=rows_lib.max_requests(cfg) * c.reset_samples)
  one, zero = [[pad]], [np.zeros(1, np.float32)]
  policy = rows_lib.with_row_len(ctx, credit_lib.rollout_rows(
      one, one, prompt_len=ctx.prompt_width, completion_len=rows_lib.completion_width(cfg),
      pad_id=pad, advantages=[0.0], old_logprobs=zero, gate=[np.ones(1, np.float32)]), [1])
  nll = None
  if c.correction == "reset":
    nll = rows_lib.nll_rows(one, one, pad, rows_lib.repair_budget(cfg),
                            rows_lib.repair_prompt_width(ctx), [np.ones(1, np.float32)])
  return rows_lib.terms(ctx, policy, nll)


def _reflection_call(ctx) -> tuple[sampling.SamplingParams, int, int]:
  """The reflection sampler's call: (sampling params, prompt width, rows)."""
  cfg = ctx.config
  return (rows_lib.sampling_params(ctx, cfg.si.reflection_temperature,
                                   rows_lib.repair_budget(cfg)),
          rows_lib.repair_prompt_width(ctx), rows_lib.max_requests(cfg))


def reset_credit(ctx: credit_lib.CreditContext, scored: credit_lib.Scored) -> credit_lib.Credit:
  c, cfg = ctx.config.si, ctx.config
  ro, tok, task = scored.rollouts, ctx.tokenizer, ctx.task
  timer = metrics_lib.Timer()
  with timer("locate"):
    requests = rows_lib.select(ctx, scored, require_anchor=False)  # resets show no anchor
    texts = [ro.texts[r.row] for r in requests]
    refl_prompts, refl_ids, refl_texts = [], [], None
    if c.correction == "reset" and multihost.any_true(bool(requests)):  # collective sampling
      refl_prompts = [locate_lib.reflection_prompt_ids(tok, ro.examples[r.group].prompt, t,
                                                       task.step_mode, task.system_prompt)
                      for r, t in zip(requests, texts)]
      sp, width, rows = _reflection_call(ctx)
      refl_ids, _, _ = rollout.generate(ctx.sampler, ctx.params, refl_prompts,
                                        ctx.key(rows_lib.REFLECT), sp, width=width, rows=rows)
      refl_texts = [tok.decode(x) for x in refl_ids]
    truth = [task.first_wrong_step(ro.examples[r.group], t) for r, t in zip(requests, texts)]
    ks = locate_lib.locate(c.correction, texts, step_mode=task.step_mode,
                           reflections=refl_texts, truth=truth,
                           rng=rows_lib.rng(ctx.key(rows_lib.RESET)))

  with timer("reset"):
    budget = cfg.rl.max_new_tokens
    resets = []  # (request index, prefix ids)
    for i, (r, k) in enumerate(zip(requests, ks)):
      if k is None:
        continue
      prefix = locate_lib.prefix_ids(tok, ro.response_ids[r.row], texts[i], k, task.step_mode)
      if len(prefix) < budget:
        resets.append((i, prefix))
    M = c.reset_samples
    row_prompts = ro.row_prompt_ids()
    conts, cont_lps = rows_lib.continue_prefixes(
        ctx, [row_prompts[requests[i].row] for i, _ in resets for _ in range(M)],
        [p for _, p in resets for _ in range(M)], ctx.key(rows_lib.RESET),
        rows=rows_lib.max_requests(cfg) * M)
    rewards = np.zeros((len(resets), M), np.float32)
    if conts:
      full = [tok.decode(resets[j // M][1] + conts[j]) for j in range(len(conts))]
      exs = [ro.examples[requests[resets[j // M][0]].group] for j in range(len(conts))]
      rewards = np.asarray([v.reward for v in task.score(exs, full)],
                           np.float32).reshape(len(resets), M)

  with timer("credit_rows"):
    signal = rewards.std(axis=1) > 0  # a reset whose continuations all tie teaches nothing
    adv = np.asarray(adv_lib.group_advantages(rewards, normalize_std=ctx.loss["normalize_std"]))
    responses, old, gate, advs, prm = [], [], [], [], []
    for j, cont in enumerate(conts):
      n = j // M
      if not signal[n]:
        continue
      i, prefix = resets[n]
      responses.append(prefix + cont)
      old.append(np.concatenate([np.zeros(len(prefix), np.float32), cont_lps[j]]))
      gate.append(np.concatenate([np.zeros(len(prefix)), np.ones(len(cont))]).astype(np.float32))
      advs.append(float(adv[n, j % M]))
      prm.append(row_prompts[requests[i].row])
    parts = []
    if responses:
      parts.append(rows_lib.with_row_len(ctx, credit_lib.rollout_rows(
          prm, responses, prompt_len=scored.prompt_len,
          completion_len=rows_lib.completion_width(cfg), pad_id=tok.pad_id, advantages=advs,
          old_logprobs=old, gate=gate), [len(x) for x in responses]))
    success = rewards >= cfg.rl.success_threshold
    corrected = {requests[i].row for n, (i, _) in enumerate(resets) if signal[n]}
    parts.append(rows_lib.base_rows(ctx, scored, corrected))
    policy = rows_lib.concat(parts)
    nll = None
    if c.correction == "reset" and resets:
      good = [(i, n) for n, (i, _) in enumerate(resets) if success[n].any()]
      if good:
        weights = [np.full(len(refl_ids[i]), ks[i] / max(len(segment_steps(
            texts[i], task.step_mode)), 1), np.float32) for i, _ in good]
        nll = rows_lib.nll_rows([refl_prompts[i] for i, _ in good],
                                [refl_ids[i] for i, _ in good], tok.pad_id,
                                rows_lib.repair_budget(cfg), rows_lib.repair_prompt_width(ctx),
                                weights)

  cont_tokens = sum(len(x) for x in conts)
  all_tokens = sum(len(p) for _, p in resets) * M + cont_tokens
  loc = [ks[i] - 1 == truth[i] for i, _ in resets if truth[i] is not None]
  m = {
      "si/failed": int((~scored.success & scored.group_mask[:, None]).sum()),
      "si/requests": len(requests),
      "si/located": rows_lib.mean([k is not None for k in ks], 0.0),
      "si/resets": len(resets),
      "si/resets_with_signal": int(signal.sum()),
      "si/repair_success": rows_lib.mean(success.any(axis=1), 0.0) if resets else 0.0,
      "si/candidate_success": rows_lib.mean(success, 0.0) if resets else 0.0,
      "si/reset_step_mean": rows_lib.mean([ks[i] for i, _ in resets]),
      "si/active_token_ratio": cont_tokens / all_tokens if all_tokens else float("nan"),
      "si/localization_precision": rows_lib.mean(loc),
      "si/policy_rows": int(policy["tokens"].shape[0]) if policy else 0,
      "tokens/credit_sampled": cont_tokens + sum(len(x) for x in refl_ids),
  }
  return credit_lib.Credit(terms=rows_lib.terms(ctx, policy, nll), metrics=m,
                           timing=timer.summary())
