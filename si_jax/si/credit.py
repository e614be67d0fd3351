"""Supervision internalization as a credit function (`config.rl.credit = "si"`, DESIGN 5.2-5.5).

    failed rollouts -> select -> repair (or reset) -> score + audit -> align -> truncate -> rows

Repair (si.correction = "repair"), per step:
  1. select (`select.py`): up to si.max_failed_per_prompt failures per group, each with a
     correct sibling as anchor (si.require_anchor; without it all-failed groups are repaired
     from the failure alone).
  2. repair (`repair.py`): si.repair_samples candidates per failure from the same params under
     the repair prompt, one batched sampler call; scored s = h * (r - lambda_edit * d) with the
     audit gate h (`audit.py`, si.audit); the best successful candidate is kept.
  3. align (`align.py`): token Levenshtein edits between the failure y and its repair y_bar.
  4. truncate (`truncate.py`): the first K* in {K, 2K, all} edits whose graft into y verifies
     (si.truncation_k = K), batched across the step.
  5. reuse (`token_credit.py`, jitted and sharded): rows for the policy term
       y     under the policy prompt, gate g_minus (first K* edits), advantage -si.adv_minus
       y_bar under the policy prompt, gate g_plus,                advantage +si.adv_plus
     (y_bar's old log-probs are recomputed under the policy prompt: its tokens were sampled
     under the repair prompt). The ratio is the policy term's (GSPO's sequence ratio over the
     gate = DESIGN's gated sequence ratio). Failures without a kept repair (or not selected)
     get outcome credit (si.unrepaired = "outcome": their group-relative advantage on every
     token) or nothing ("drop"); correct rollouts get outcome credit only with
     si.train_correct_base (default off: it collapsed entropy in the paper's ablation).
  6. internalize: a second loss term "repair", si.lambda_rep * NLL of each kept repair under
     its repair prompt, and with si.repair_rl a third, "repair_rl": the policy loss over all
     candidates under the repair prompt with group-relative advantages of their scores s.

Reset (si.correction = "reset" | "random_reset" | "oracle_reset", `reset.py`): the located step
k of each selected failure, M = si.reset_samples continuations from the prefix before it,
suffix-only advantages group-relative within the M; rows gate only the continuation. For
"reset", reflections whose reset led to a correct continuation are internalized by NLL.

Metrics (DESIGN 5.5, prefix si/): repair_success (kept repairs / requests) and per candidate,
audit blocks by reason, K* distribution, active_token_ratio (gated tokens / response tokens of
the credited pairs), localization_precision (synthetic task: the first active edit lies in the
truly first wrong step; for reset, k is it), time split. At every evaluation `si_credit.evaluate`
probes the repair mode on held-out failures counterfactually: with the true anchor, with no
anchor and with a wrong anchor (a failed sibling) - whether it repairs or copies.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Sequence

import jax
import numpy as np

from si_jax import multihost
from si_jax import sampling
from si_jax import sharding as shd
from si_jax.data.steps import segment_steps
from si_jax.rl import advantages as adv_lib
from si_jax.rl import credit as credit_lib
from si_jax.rl import rollout
from si_jax.rl import update as update_lib
from si_jax.si import align as align_lib
from si_jax.si import audit as audit_lib
from si_jax.si import prompts
from si_jax.si import repair as repair_lib
from si_jax.si import reset as reset_lib
from si_jax.si import token_credit
from si_jax.si import truncate as truncate_lib
from si_jax.si.select import select_failures

# PRNG purposes of the credit stage (the trainer's are < 10).
SELECT, REPAIR, REFLECT, RESET, PROBE = 10, 11, 12, 13, 14
def _rng(key: jax.Array) -> np.random.Generator:
  return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


@functools.lru_cache(maxsize=4)
def _gate(kind: str, copy_margin: float, step_mode: str, judge_dir: str, threshold: float):
  if kind == "rule":
    return audit_lib.RuleGate(copy_margin=copy_margin, step_mode=step_mode)
  if kind == "judge":
    return audit_lib.JudgeGate(judge_dir, threshold=threshold,
                               rules=audit_lib.RuleGate(copy_margin=copy_margin,
                                                        step_mode=step_mode))
  return audit_lib.NoGate()


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


def repair_budget(config) -> int:
  return config.si.repair_max_new_tokens or config.rl.max_new_tokens


def completion_width(config) -> int:
  """Response width of policy rows: rollouts and re-scored repairs share one width."""
  return max(config.rl.max_new_tokens, repair_budget(config))


def _sp(ctx, temperature: float, max_new: int) -> sampling.SamplingParams:
  sp = ctx.sampling_params
  return sampling.SamplingParams(max_new_tokens=max_new, temperature=temperature,
                                 top_p=sp.top_p, top_k=sp.top_k, stop_ids=sp.stop_ids,
                                 pad_id=sp.pad_id)


# ----------------------------------------------------------------------------- rows


def gated_rows(ctx, prompts_: Sequence[list[int]], responses: Sequence[list[int]],
               old: Sequence[np.ndarray] | None, alignments: Sequence[align_lib.Alignment],
               kstar: Sequence[int], side: str, value: float, prompt_len: int
               ) -> dict[str, np.ndarray]:
  """Policy rows whose loss mask is the gate of the first K* edits (`token_credit`) and whose
  advantage is `value` on it."""
  width = completion_width(ctx.config)
  rows = credit_lib.rollout_rows(prompts_, responses, prompt_len=prompt_len,
                                 completion_len=width, pad_id=ctx.tokenizer.pad_id,
                                 advantages=[0.0] * len(responses), old_logprobs=old)
  start, end = token_credit.edit_arrays(alignments, side)
  n = len(responses)
  gate, adv = _credit_fn(ctx.mesh)(start, end, np.asarray(kstar, np.int32),
                                   np.full(n, prompt_len, np.int32),
                                   np.full(n, value, np.float32), width=prompt_len + width)
  rows["loss_mask"] = rows["loss_mask"] * np.asarray(gate)
  rows["advantages"] = np.asarray(adv) * rows["loss_mask"]
  return rows


def outcome_rows(ctx, scored: credit_lib.Scored, rows_idx: Sequence[int], adv: np.ndarray,
                 prompt_len: int) -> dict[str, np.ndarray]:
  """Outcome credit (each rollout's group advantage on all its tokens) for some rollouts."""
  ro = scored.rollouts
  P = ro.row_prompt_ids()
  return credit_lib.rollout_rows(
      [P[i] for i in rows_idx], [ro.response_ids[i] for i in rows_idx], prompt_len=prompt_len,
      completion_len=completion_width(ctx.config), pad_id=ctx.tokenizer.pad_id,
      advantages=[adv[i] for i in rows_idx], old_logprobs=[ro.logprobs[i] for i in rows_idx])


def _concat(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  parts = [p for p in parts if p and p["tokens"].shape[0]]
  if not parts:
    return {}
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


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
             completion_len: int) -> dict[str, np.ndarray]:
  return rollout.pack_rows(prompts_, responses, prefix_len=rollout.bucket_width(max(map(len, prompts_))),
                           completion_len=completion_len, pad_id=pad_id)


def _terms(ctx, policy: dict, nll: dict | None, repair_rl: dict | None
           ) -> list[credit_lib.TermRows]:
  c = ctx.config.si
  terms = []
  if policy:
    terms.append(credit_lib.TermRows(ctx.policy_term, policy))
  if nll and c.lambda_rep > 0:
    terms.append(credit_lib.TermRows(update_lib.NLLTerm(name="repair", weight=c.lambda_rep), nll))
  if repair_rl:
    terms.append(credit_lib.TermRows(
        credit_lib.policy_term(ctx.config, name="repair_rl", weight=c.repair_rl_weight),
        repair_rl))
  return terms


# ----------------------------------------------------------------------------- metrics


def first_edit_step(tokenizer, ids: Sequence[int], text: str, token: int, step_mode: str) -> int:
  """Step index (segment_steps of text = decode(ids)) holding token `token` of ids."""
  steps = segment_steps(text, step_mode)
  return reset_lib.step_of_char(steps, reset_lib.token_to_char(tokenizer, ids, token))


def _mean(x, default=float("nan")) -> float:
  x = np.asarray(x, np.float64)
  return float(x.mean()) if x.size else default


def _global_mean(x, default=float("nan")) -> float:
  """The mean over every process's values (the probe splits its cases over processes)."""
  return _mean(multihost.allgather_rows(np.asarray(x, np.float64).reshape(-1)), default)


# ----------------------------------------------------------------------------- repair


def _select(ctx, scored: credit_lib.Scored, require_anchor: bool):
  """The step's correction requests, drawn with the step's SELECT key."""
  return select_failures(scored.success, scored.group_mask,
                         max_failed=ctx.config.si.max_failed_per_prompt,
                         require_anchor=require_anchor, rng=_rng(ctx.key(SELECT)))


def repair_credit(ctx: credit_lib.CreditContext, scored: credit_lib.Scored) -> credit_lib.Credit:
  c, cfg = ctx.config.si, ctx.config
  ro, tok, task = scored.rollouts, ctx.tokenizer, ctx.task
  timing: dict[str, float] = {}
  t0 = time.perf_counter()
  requests = _select(ctx, scored, c.require_anchor)
  prompt_ids = [repair_lib.repair_prompt_ids(
      tok, ro.examples[r.group].prompt, ro.texts[r.row],
      None if r.anchor_row is None else ro.texts[r.anchor_row], task.system_prompt,
      c.repair_instruction or None) for r in requests]
  cands = repair_lib.sample_candidates(ctx.sampler, ctx.params, tok, ctx.key(REPAIR),
                                       _sp(ctx, c.repair_temperature, repair_budget(cfg)),
                                       prompt_ids, c.repair_samples)
  timing["repair"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  cands = repair_lib.score_candidates(cands, requests, ro, task, make_gate(cfg, task),
                                      threshold=cfg.rl.success_threshold,
                                      lambda_edit=c.lambda_edit)
  timing["verify_repairs"] = time.perf_counter() - t0
  kept = [(r, int(b)) for r, b in zip(requests, cands.best) if b >= 0]

  t0 = time.perf_counter()
  failed_ids = [ro.response_ids[r.row] for r, _ in kept]
  repair_ids = [cands.ids[b] for _, b in kept]
  alignments = align_lib.align_many(zip(failed_ids, repair_ids))
  timing["align"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  examples = [ro.examples[r.group] for r, _ in kept]

  def verify(pairs, grafts):
    return list(repair_lib.repair_success(task, [examples[i] for i in pairs],
                                          [tok.decode(g) for g in grafts],
                                          cfg.rl.success_threshold))

  kstar, tstats = truncate_lib.adaptive_truncation(failed_ids, repair_ids, alignments, verify,
                                                   c.truncation_k)
  timing["truncate"] = time.perf_counter() - t0

  t0 = time.perf_counter()
  row_prompts = ro.row_prompt_ids()
  pl = scored.prompt_len
  minus = gated_rows(ctx, [row_prompts[r.row] for r, _ in kept], failed_ids,
                     [ro.logprobs[r.row] for r, _ in kept], alignments, kstar, "failed",
                     -c.adv_minus, pl) if kept else {}
  plus = gated_rows(ctx, [row_prompts[r.row] for r, _ in kept], repair_ids, None, alignments,
                    kstar, "repaired", c.adv_plus, pl) if kept else {}
  base = base_rows(ctx, scored, {r.row for r, _ in kept})
  policy = _concat([minus, plus, base])
  nll = (nll_rows([cands.prompt_ids[i] for i, (r, b) in enumerate(zip(requests, cands.best))
                   if b >= 0], repair_ids, tok.pad_id, repair_budget(cfg)) if kept else None)
  rl_rows = None
  if c.repair_rl and requests:
    s = np.asarray(adv_lib.group_advantages(cands.score.reshape(len(requests), c.repair_samples),
                                            normalize_std=ctx.loss["normalize_std"])).reshape(-1)
    rl_rows = credit_lib.rollout_rows(
        [cands.prompt_ids[i // c.repair_samples] for i in range(len(cands.ids))], cands.ids,
        prompt_len=rollout.bucket_width(max(map(len, cands.prompt_ids))), completion_len=repair_budget(cfg),
        pad_id=tok.pad_id, advantages=list(s), old_logprobs=cands.logprobs)
  timing["credit_rows"] = time.perf_counter() - t0

  # metrics
  n_fail = int((~scored.success & scored.group_mask[:, None]).sum())
  blocks = audit_lib.block_counts(cands.reasons)
  n_c = max(len(cands.ids), 1)
  gated = (sum(int(m.sum()) for m in (minus.get("loss_mask", np.zeros(0)),
                                      plus.get("loss_mask", np.zeros(0)))))
  resp = sum(len(x) for x in failed_ids) + sum(len(x) for x in repair_ids)
  loc = []
  for (r, _), a in zip(kept, alignments):
    truth = task.first_wrong_step(ro.examples[r.group], ro.texts[r.row])
    if truth is not None and a.num_edits:
      loc.append(first_edit_step(tok, ro.response_ids[r.row], ro.texts[r.row],
                                 int(a.a_start[0]), task.step_mode) == truth)
  m = {
      "si/failed": n_fail, "si/requests": len(requests),
      "si/requests_with_anchor": sum(r.anchor_row is not None for r in requests),
      "si/repair_success": _mean([b >= 0 for b in cands.best], 0.0),
      "si/repaired_fraction": len(kept) / n_fail if n_fail else 0.0,
      "si/candidate_success": float(np.sum((cands.reward > 0) & np.asarray(
          [x is None for x in cands.reasons], bool))) / n_c if len(cands.ids) else 0.0,
      "si/candidate_verified": _mean(cands.reward, 0.0),
      "si/candidate_finished": _mean(cands.finished, 0.0),
      "si/audit_block_rate": sum(blocks.values()) / n_c if len(cands.ids) else 0.0,
      **{f"si/audit_block/{k}": v for k, v in blocks.items()},
      "si/kept": len(kept),
      "si/edit_distance": _mean([a.normalized_distance for a in alignments]),
      "si/num_edits": _mean([a.num_edits for a in alignments]),
      **tstats.metrics(),
      "si/active_token_ratio": gated / resp if resp else float("nan"),
      "si/localization_precision": _mean(loc),
      "si/policy_rows": int(policy["tokens"].shape[0]) if policy else 0,
      "tokens/credit_sampled": sum(len(x) for x in cands.ids),
  }
  return credit_lib.Credit(terms=_terms(ctx, policy, nll, rl_rows), metrics=m, timing=timing)


# ----------------------------------------------------------------------------- reset


def reset_credit(ctx: credit_lib.CreditContext, scored: credit_lib.Scored) -> credit_lib.Credit:
  c, cfg = ctx.config.si, ctx.config
  ro, tok, task = scored.rollouts, ctx.tokenizer, ctx.task
  timing: dict[str, float] = {}
  t0 = time.perf_counter()
  requests = _select(ctx, scored, require_anchor=False)  # resets show no anchor
  texts = [ro.texts[r.row] for r in requests]
  refl_prompts, refl_ids, refl_texts = [], [], None
  if c.correction == "reset" and multihost.any_true(bool(requests)):  # collective sampling
    refl_prompts = [reset_lib.reflection_prompt_ids(tok, ro.examples[r.group].prompt, t,
                                                    task.step_mode, task.system_prompt)
                    for r, t in zip(requests, texts)]
    refl_ids, _, _ = rollout.generate(ctx.sampler, ctx.params, refl_prompts, ctx.key(REFLECT),
                                      _sp(ctx, c.reflection_temperature, repair_budget(cfg)))
    refl_texts = [tok.decode(x) for x in refl_ids]
  truth = [task.first_wrong_step(ro.examples[r.group], t) for r, t in zip(requests, texts)]
  ks = reset_lib.locate(c.correction, texts, step_mode=task.step_mode, reflections=refl_texts,
                        truth=truth, rng=_rng(ctx.key(RESET)))
  timing["locate"] = time.perf_counter() - t0

  t0 = time.perf_counter()
  budget = cfg.rl.max_new_tokens
  resets = []  # (request index, prefix ids)
  for i, (r, k) in enumerate(zip(requests, ks)):
    if k is None:
      continue
    prefix = reset_lib.prefix_ids(tok, ro.response_ids[r.row], texts[i], k, task.step_mode)
    if len(prefix) < budget:
      resets.append((i, prefix))
  M = c.reset_samples
  row_prompts = ro.row_prompt_ids()
  conts, cont_lps, rewards = [], [], np.zeros((len(resets), M), np.float32)
  if multihost.any_true(bool(resets)):  # sampling is collective: one budget for all processes
    max_new = multihost.global_max(budget - min((len(p) for _, p in resets), default=budget - 1))
    prompts_ = [row_prompts[requests[i].row] + p for i, p in resets for _ in range(M)]
    ids, lps, finished = rollout.generate(ctx.sampler, ctx.params, prompts_, ctx.key(RESET),
                                          _sp(ctx, ctx.sampling_params.temperature, max_new))
    for j, (x, lp) in enumerate(zip(ids, lps)):
      room = budget - len(resets[j // M][1])
      conts.append(x[:room])
      cont_lps.append(lp[:room])
    full = [tok.decode(resets[j // M][1] + conts[j]) for j in range(len(conts))]
    exs = [ro.examples[requests[resets[j // M][0]].group] for j in range(len(conts))]
    verdicts = task.score(exs, full)
    rewards = np.asarray([v.reward for v in verdicts], np.float32).reshape(len(resets), M)
  timing["reset"] = time.perf_counter() - t0

  t0 = time.perf_counter()
  policy_parts = []
  if resets:
    adv = np.asarray(adv_lib.group_advantages(rewards, normalize_std=ctx.loss["normalize_std"]))
    responses, old, gate, advs, prm = [], [], [], [], []
    for j, cont in enumerate(conts):
      i, prefix = resets[j // M]
      responses.append(prefix + cont)
      old.append(np.concatenate([np.zeros(len(prefix), np.float32), cont_lps[j]]))
      gate.append(np.concatenate([np.zeros(len(prefix)), np.ones(len(cont))]).astype(np.float32))
      advs.append(float(adv.reshape(-1)[j]))
      prm.append(row_prompts[requests[i].row])
    policy_parts.append(credit_lib.rollout_rows(
        prm, responses, prompt_len=scored.prompt_len, completion_len=completion_width(cfg),
        pad_id=tok.pad_id, advantages=advs, old_logprobs=old, gate=gate))
  success = rewards >= cfg.rl.success_threshold
  policy_parts.append(base_rows(ctx, scored, {requests[i].row for i, _ in resets}))
  policy = _concat(policy_parts)
  nll = None
  if c.correction == "reset" and resets:
    good = [i for n, (i, _) in enumerate(resets) if success[n].any()]
    if good:
      nll = nll_rows([refl_prompts[i] for i in good], [refl_ids[i] for i in good], tok.pad_id,
                     repair_budget(cfg))
  timing["credit_rows"] = time.perf_counter() - t0

  cont_tokens = sum(len(x) for x in conts)
  all_tokens = sum(len(p) for _, p in resets) * M + cont_tokens
  loc = [ks[i] - 1 == truth[i] for i, _ in resets if truth[i] is not None]
  m = {
      "si/failed": int((~scored.success & scored.group_mask[:, None]).sum()),
      "si/requests": len(requests),
      "si/located": _mean([k is not None for k in ks], 0.0),
      "si/resets": len(resets),
      "si/repair_success": _mean(success.any(axis=1), 0.0) if resets else 0.0,
      "si/candidate_success": _mean(success, 0.0) if resets else 0.0,
      "si/reset_step_mean": _mean([ks[i] for i, _ in resets]),
      "si/active_token_ratio": cont_tokens / all_tokens if all_tokens else float("nan"),
      "si/localization_precision": _mean(loc),
      "si/policy_rows": int(policy["tokens"].shape[0]) if policy else 0,
      "tokens/credit_sampled": cont_tokens + sum(len(x) for x in refl_ids),
  }
  return credit_lib.Credit(terms=_terms(ctx, policy, nll, None), metrics=m, timing=timing)


# ----------------------------------------------------------------------------- entry points


@credit_lib.register("si")
def si_credit(ctx: credit_lib.CreditContext, scored: credit_lib.Scored) -> credit_lib.Credit:
  """Supervision internalization (see the module docstring)."""
  if ctx.config.si.correction == "repair":
    return repair_credit(ctx, scored)
  return reset_credit(ctx, scored)


def probe(ctx: credit_lib.CreditContext, key: jax.Array) -> dict[str, Any]:
  """Counterfactual probe of the repair (or reflection) mode on held-out failures, greedy.

  repair: si/probe_repair_with_anchor, _no_anchor, _wrong_anchor (fraction whose whole repair
  is correct), si/probe_follows_wrong_anchor (the repair states the wrong anchor's answer),
  si/probe_localization (with the true anchor: the first changed token lies in the true first
  wrong step). reset: si/probe_reflection_precision (the reflection names the first wrong step).
  Only for tasks that can make held-out failures (`Task.probe_failures`).
  """
  c, cfg, tok, task = ctx.config.si, ctx.config, ctx.tokenizer, ctx.task
  cases = task.probe_failures(c.probe_examples, cfg.seed)
  if not cases:
    return {}
  cases = cases[multihost.local_slice(len(cases))]  # each process probes its share
  greedy = _sp(ctx, 0.0, repair_budget(cfg))
  examples = [x["example"] for x in cases]
  out: dict[str, Any] = {}
  if c.correction == "reset":
    ps = [reset_lib.reflection_prompt_ids(tok, x["example"].prompt, x["failed"], task.step_mode,
                                          task.system_prompt) for x in cases]
    ids, _, _ = rollout.generate(ctx.sampler, ctx.params, ps, key, greedy)
    ks = reset_lib.locate("reset", [x["failed"] for x in cases], step_mode=task.step_mode,
                          reflections=[tok.decode(i) for i in ids])
    out["si/probe_reflection_precision"] = _global_mean(
        [k is not None and k - 1 == x["first_wrong"] for k, x in zip(ks, cases)])
    return out
  if c.correction != "repair":
    return out
  instruction = c.repair_instruction or None
  for name, anchor in (("with_anchor", "anchor"), ("no_anchor", None),
                       ("wrong_anchor", "wrong_anchor")):
    ps = [repair_lib.repair_prompt_ids(tok, x["example"].prompt, x["failed"],
                                       x[anchor] if anchor else None, task.system_prompt,
                                       instruction) for x in cases]
    ids, _, _ = rollout.generate(ctx.sampler, ctx.params, ps, key, greedy)
    texts = [tok.decode(i) for i in ids]
    out[f"si/probe_repair_{name}"] = _global_mean(repair_lib.repair_success(
        task, examples, texts, cfg.rl.success_threshold))
    if name == "wrong_anchor":
      follows = [task.answer_key(prompts.parse_repair(t) or "") ==
                 task.answer_key(x["wrong_anchor"]) for t, x in zip(texts, cases)]
      out["si/probe_follows_wrong_anchor"] = _global_mean(follows)
    if name == "with_anchor":
      loc = []
      for x, i in zip(cases, ids):
        failed_ids = tok.encode(x["failed"]) + [tok.stop_ids[0]]  # as a sampled rollout ends
        a = align_lib.align(failed_ids, i)
        if a.num_edits:
          loc.append(first_edit_step(tok, failed_ids, x["failed"], int(a.a_start[0]),
                                     task.step_mode) == x["first_wrong"])
      out["si/probe_localization"] = _global_mean(loc)
  return out


si_credit.evaluate = probe
# Each process corrects its own failures; sampling calls are collective (every process calls,
# with or without rows), gates run on the process's own devices, the probe splits its cases.
si_credit.multi_process = True
