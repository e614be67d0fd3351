"""Repair: sample repair candidates for failed rollouts, score and audit them, keep the best.

DESIGN 5.2 steps 2-3. For each request (a failed rollout y with an optional correct sibling a),
the repair prompt (`prompts.repair_prompt`: problem, y, a) is rendered with the chat template
and `repair_samples` candidates are sampled from the same params, all requests of a step in one
batched sampler call. A candidate is the span of token ids the sampler produced (stop token
included): those ids are what is aligned and trained on, never a re-tokenization of its text.

Scoring: r(y_bar) = 1 iff the task's verifier gives reward >= threshold on the candidate's
repaired solution (`prompts.parse_repair` of its text) AND, where the task knows the truth of
every step (`Task.trace_correct`), the whole trace is right (a repair that splices the anchor's
values into a wrong trace can still end on the right answer). h = 1 iff the audit gate passes
it. s = h * (r - lambda_edit * d(y, y_bar)), d the normalized token edit distance. The kept
repair of a request is its successful (h = r = 1) candidate with the highest s, i.e. the
smallest edit; a request without one is unrepaired.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import numpy as np

from si_jax import metrics as metrics_lib
from si_jax import sampling
from si_jax import shapes
from si_jax.rl import advantages as adv_lib
from si_jax.rl import credit as credit_lib
from si_jax.rl import rollout
from si_jax.si import align as align_lib
from si_jax.si import audit as audit_lib
from si_jax.si import prompts
from si_jax.si import rows as rows_lib
from si_jax.si import truncate as truncate_lib
from si_jax.si.select import Request

__all__ = ["Candidates", "sample_candidates", "score_candidates", "repair_success",
           "request_prompt", "truncate", "repair_credit", "compile_ahead",
           "repair_call", "continuation_rows"]


@dataclasses.dataclass
class Candidates:
  """C = len(requests) * n candidates, request-major (candidate j of request i is i * n + j).

  prompt_ids: per request, the repair prompt's token ids.
  ids / logprobs: per candidate, the sampled ids and their log-probs under the repair prompt.
  finished: [C] bool; texts: decoded candidates.
  Filled by `score_candidates`: reward [C] (r), reasons (gate block reason or None),
  distance [C] (normalized edit distance to the failed rollout), score [C] (s), best [R]
  (index of the kept candidate, -1 = none).
  """

  n: int
  prompt_ids: list[list[int]]
  ids: list[list[int]]
  logprobs: list[np.ndarray]
  finished: np.ndarray
  texts: list[str]
  reward: np.ndarray | None = None
  reasons: list[str | None] | None = None
  distance: np.ndarray | None = None
  score: np.ndarray | None = None
  best: np.ndarray | None = None


def sample_candidates(sampler, params, tokenizer, key, sp: sampling.SamplingParams,
                      prompt_ids: Sequence[Sequence[int]], n: int, *, width: int = 0,
                      rows: int = 0) -> Candidates:
  """n candidates per repair prompt, one batched sampler call (prompt width and batch rows
  floors `width`, `rows`: `Sampler.generate`)."""
  batch = [p for p in prompt_ids for _ in range(n)]
  if not batch and jax.process_count() == 1:  # with several processes sampling is collective
    return Candidates(n=n, prompt_ids=[], ids=[], logprobs=[], finished=np.zeros(0, bool),
                      texts=[])
  ids, lps, finished = rollout.generate(sampler, params, batch, key, sp, width=width, rows=rows)
  return Candidates(n=n, prompt_ids=[list(p) for p in prompt_ids], ids=ids, logprobs=lps,
                    finished=finished, texts=[tokenizer.decode(x) for x in ids])


def repair_success(task, examples, texts: Sequence[str], threshold: float) -> np.ndarray:
  """[N] bool: verifier reward >= threshold and the trace not known to be wrong."""
  bodies = [prompts.parse_repair(t) or "" for t in texts]
  verdicts = task.score(list(examples), bodies)
  ok = [v.reward >= threshold and task.trace_correct(ex, b) is not False
        for v, ex, b in zip(verdicts, examples, bodies)]
  return np.asarray(ok, bool)


def score_candidates(cands: Candidates, requests: Sequence[Request], ro: rollout.Rollouts,
                     task, gate, *, threshold: float, lambda_edit: float) -> Candidates:
  """Fills reward, reasons, distance, score and best (see the module docstring)."""
  n = cands.n
  examples = [ro.examples[req.group] for req in requests for _ in range(n)]
  cands.reward = repair_success(task, examples, cands.texts, threshold).astype(np.float32)
  cases = []
  for i, req in enumerate(requests):
    a = req.anchor_row
    for j in range(n):
      c = i * n + j
      cases.append(audit_lib.RepairCase(
          problem=ro.examples[req.group].prompt, failed_ids=ro.response_ids[req.row],
          failed_text=ro.texts[req.row],
          anchor_ids=None if a is None else ro.response_ids[a],
          anchor_text=None if a is None else ro.texts[a], candidate_ids=cands.ids[c],
          candidate_text=cands.texts[c], finished=bool(cands.finished[c])))
  cands.reasons = list(gate(cases)) if cases else []
  cands.distance = np.asarray(
      [audit_lib.edit_distance(ro.response_ids[requests[c // n].row], cands.ids[c])
       for c in range(len(cands.ids))], np.float32)
  h = np.asarray([r is None for r in cands.reasons], np.float32)
  cands.score = h * (cands.reward - lambda_edit * cands.distance)
  ok = (h * cands.reward).reshape(len(requests), n) > 0
  s = np.where(ok, cands.score.reshape(len(requests), n), -np.inf)
  cands.best = np.where(ok.any(axis=1), np.argmax(s, axis=1) + np.arange(len(requests)) * n, -1)
  return cands


# ----------------------------------------------------------------------------- the credit


def request_prompt(ctx, ro: rollout.Rollouts, req: Request, anchor: bool = True) -> list[int]:
  """The repair prompt of a request (without its anchor when `anchor` is False)."""
  a = req.anchor_row if anchor else None
  return prompts.repair_prompt_ids(
      ctx.tokenizer, ro.examples[req.group].prompt, ro.texts[req.row],
      None if a is None else ro.texts[a], ctx.task.system_prompt,
      ctx.config.si.repair_instruction or None)


def repair_call(ctx) -> tuple[sampling.SamplingParams, int, int]:
  """The repair sampler's call: (sampling params, prompt width, rows), its one shape in a run
  (what compile-ahead compiles it for)."""
  c = ctx.config.si
  return (rows_lib.sampling_params(ctx, c.repair_temperature, rows_lib.repair_budget(ctx.config)),
          rows_lib.repair_prompt_width(ctx), rows_lib.max_requests(ctx.config) * c.repair_samples)


def continuation_rows(cfg) -> tuple[int, int]:
  """The rows of truncation's continuation calls (one compiled shape each): the first rung
  meets every pair with more than K edits; the later ones only those that did not pass it
  (few), so their shape is a quarter of that (more rows: a rung up)."""
  most = rows_lib.max_requests(cfg) * cfg.si.truncation_samples
  return most, max(most // 4, 1)


def truncate(ctx, scored: credit_lib.Scored, kept: Sequence[tuple[Request, int]],
             failed_ids, repair_ids, alignments) -> tuple[list[int], Any, dict[int, str], int]:
  """K* of every kept pair (si.truncation: "continue" or "graft", `truncate.py`). Returns
  (kstar, stats, {pair: the first continuation that verified at its K*}, tokens sampled)."""
  c, cfg, tok, task = ctx.config.si, ctx.config, ctx.tokenizer, ctx.task
  ro = scored.rollouts
  examples = [ro.examples[r.group] for r, _ in kept]
  threshold = cfg.rl.success_threshold
  if c.truncation == "graft":
    def verify(pairs, grafts):
      return list(repair_success(task, [examples[i] for i in pairs],
                                 [tok.decode(g) for g in grafts], threshold))
    kstar, stats = truncate_lib.adaptive_truncation(failed_ids, repair_ids, alignments, verify,
                                                    c.truncation_k)
    return kstar, stats, {}, 0

  M = c.truncation_samples
  row_prompts = ro.row_prompt_ids()
  prompts_ = [row_prompts[r.row] for r, _ in kept]
  passed: dict[tuple[int, int], str] = {}  # (pair, rung) -> a verified continuation
  sampled = [0]

  def attempt(pairs: list[int], prefixes: list[list[int]], rung: int) -> list[float]:
    ps = [prompts_[i] for i in pairs for _ in range(M)]
    xs = [x for x in prefixes for _ in range(M)]
    ids, _ = rows_lib.continue_prefixes(ctx, ps, xs,
                                        jax.random.fold_in(ctx.key(rows_lib.TRUNCATE), rung),
                                        rows=continuation_rows(cfg)[min(rung, 1)])
    texts = [tok.decode(x + y) for x, y in zip(xs, ids)]
    sampled[0] += sum(len(y) for y in ids)
    ok = rows_lib.verified(task, [examples[i] for i in pairs for _ in range(M)], texts,
                           threshold).reshape(len(pairs), M)
    for j, i in enumerate(pairs):
      if ok[j].any():
        passed[(i, rung)] = texts[j * M + int(np.argmax(ok[j]))]
    return list(ok.mean(axis=1))

  pass_frac = c.truncation_pass or 1.0 / M  # 0 = any one continuation
  kstar, stats = truncate_lib.continuation_truncation(repair_ids, alignments, attempt,
                                                      c.truncation_k, pass_frac)
  rung_of = {c.truncation_k: 0, 2 * c.truncation_k: 1}  # K* -> the rung that set it
  conts = {}
  for i, ks in enumerate(kstar):
    if ks < alignments[i].num_edits and (i, rung_of.get(ks)) in passed:  # a rung passed
      conts[i] = passed[(i, rung_of[ks])]
  return kstar, stats, conts, sampled[0]


def _plus_rows(ctx, prompts_, repair_ids, repair_lps, alignments, kstar, values, prompt_len
               ) -> tuple[dict, dict]:
  """The repairs re-scored under the policy prompt (si.plus): as policy rows whose ratio starts
  at 1 ("pg"), the same with the truncated importance weight pi_old / rho of the tokens
  sampled under the repair prompt ("is"), or as an SFT term on the gated tokens ("sft").
  Returns (policy rows, SFT rows)."""
  c = ctx.config.si
  if not prompts_:
    return {}, {}
  rows = rows_lib.gated_rows(ctx, prompts_, repair_ids, None, alignments, kstar, "repaired",
                             values, prompt_len)
  if c.plus == "sft":
    return {}, {k: rows[k] for k in ("tokens", "input_mask", "loss_mask")}
  if c.plus == "is":
    rows["behavior_logprobs"] = rollout.pack_rows(
        prompts_, repair_ids, prefix_len=prompt_len,
        completion_len=rows["tokens"].shape[1] - prompt_len, pad_id=ctx.tokenizer.pad_id,
        values={"lp": repair_lps})["lp"]
    rows["behavior_rows"] = np.ones(len(prompts_), np.float32)
  return rows, {}


def _internalization_rows(ctx, ro: rollout.Rollouts, kept, cands: Candidates, repair_ids,
                          alignments, width: int) -> dict | None:
  """The repair-mode NLL rows of the kept repairs (DESIGN 5.2 step 7): the repair prompt
  without its anchor with probability si.anchor_dropout (so the mode learns to repair, not to
  transcribe), and loss weight si.repair_copy_weight on the repair's tokens outside its edits
  (those copied from the failure; 1 on the edits)."""
  c = ctx.config.si
  if not kept:
    return None
  drop = rows_lib.rng(ctx.key(rows_lib.DROPOUT)).random(len(kept)) < c.anchor_dropout
  prompts_ = [cands.prompt_ids[i] for i, b in enumerate(cands.best) if b >= 0]
  prompts_ = [request_prompt(ctx, ro, r, anchor=False) if d and r.anchor_row is not None
              else p for (r, _), p, d in zip(kept, prompts_, drop)]
  weights = None
  if c.repair_copy_weight != 1.0:
    weights = []
    for ids, a in zip(repair_ids, alignments):
      w = np.full(len(ids), c.repair_copy_weight, np.float32)
      _, g_plus = align_lib.edit_masks(a)
      w[g_plus] = 1.0
      weights.append(w)
  return rows_lib.nll_rows(prompts_, repair_ids, ctx.tokenizer.pad_id,
                           rows_lib.repair_budget(ctx.config), width, weights)


def repair_credit(ctx: credit_lib.CreditContext, scored: credit_lib.Scored) -> credit_lib.Credit:
  """SI by repair (`credit.py`'s docstring): select -> repair -> score + audit -> align ->
  truncate -> rows."""
  c, cfg = ctx.config.si, ctx.config
  ro, tok, task = scored.rollouts, ctx.tokenizer, ctx.task
  timer = metrics_lib.Timer()
  with timer("repair"):
    requests = rows_lib.select(ctx, scored, c.require_anchor)
    sp, width, most = repair_call(ctx)
    cands = sample_candidates(ctx.sampler, ctx.params, tok, ctx.key(rows_lib.REPAIR), sp,
                              [request_prompt(ctx, ro, r) for r in requests], c.repair_samples,
                              width=width, rows=most)
  with timer("verify_repairs"):
    cands = score_candidates(cands, requests, ro, task, rows_lib.make_gate(cfg, task),
                             threshold=cfg.rl.success_threshold, lambda_edit=c.lambda_edit)
  kept = [(r, int(b)) for r, b in zip(requests, cands.best) if b >= 0]
  failed_ids = [ro.response_ids[r.row] for r, _ in kept]
  repair_ids = [cands.ids[b] for _, b in kept]
  with timer("align"):
    alignments = align_lib.align_many(zip(failed_ids, repair_ids))
  with timer("truncate"):
    kstar, tstats, conts, cont_tokens = truncate(ctx, scored, kept, failed_ids, repair_ids,
                                                 alignments)
  with timer("credit_rows"):
    pl = scored.prompt_len
    row_prompts = ro.row_prompt_ids()
    pair_prompts = [row_prompts[r.row] for r, _ in kept]
    scale = (rows_lib.group_magnitude(ctx, scored) if c.adv_scale == "group"
             else np.ones(len(ro.response_ids), np.float32))
    minus = (rows_lib.gated_rows(ctx, pair_prompts, failed_ids,
                                 [ro.logprobs[r.row] for r, _ in kept], alignments, kstar,
                                 "failed", [-c.adv_minus * scale[r.row] for r, _ in kept], pl)
             if kept else {})
    plus, plus_sft = _plus_rows(ctx, pair_prompts, repair_ids, [cands.logprobs[b] for _, b in kept],
                                alignments, kstar, [c.adv_plus * scale[r.row] for r, _ in kept],
                                pl)
    policy = rows_lib.concat([minus, plus, rows_lib.base_rows(ctx, scored,
                                                              {r.row for r, _ in kept})])
    if c.plus == "is" and policy and "behavior_rows" not in policy:
      # a step without re-scored repairs keeps their keys (zero: no other policy), so the
      # policy term has one set of keys, one update program, whatever a step keeps
      R, W = policy["tokens"].shape
      policy["behavior_logprobs"] = np.zeros((R, W), np.float32)
      policy["behavior_rows"] = np.zeros(R, np.float32)
    nll = _internalization_rows(ctx, ro, kept, cands, repair_ids, alignments, width)
    rl_rows = _repair_rl_rows(ctx, cands, requests, width)

  # metrics
  n_fail = int((~scored.success & scored.group_mask[:, None]).sum())
  blocks = audit_lib.block_counts(cands.reasons)
  n_c = max(len(cands.ids), 1)
  plus_gate = (plus or plus_sft).get("loss_mask", np.zeros(0))
  gated = int(minus.get("loss_mask", np.zeros(0)).astype(bool).sum()) + int(
      plus_gate.astype(bool).sum())
  resp = sum(len(x) for x in failed_ids) + sum(len(x) for x in repair_ids)
  loc = []
  for (r, _), a in zip(kept, alignments):
    truth = task.first_wrong_step(ro.examples[r.group], ro.texts[r.row])
    if truth is not None and a.num_edits:
      loc.append(rows_lib.first_edit_step(tok, ro.response_ids[r.row], ro.texts[r.row],
                                          int(a.a_start[0]), task.step_mode) == truth)
  m = {
      "si/failed": n_fail, "si/requests": len(requests),
      "si/requests_with_anchor": sum(r.anchor_row is not None for r in requests),
      "si/repair_success": rows_lib.mean([b >= 0 for b in cands.best], 0.0),
      "si/repaired_fraction": len(kept) / n_fail if n_fail else 0.0,
      "si/candidate_success": float(np.sum((cands.reward > 0) & np.asarray(
          [x is None for x in cands.reasons], bool))) / n_c if len(cands.ids) else 0.0,
      "si/candidate_verified": rows_lib.mean(cands.reward, 0.0),
      "si/candidate_finished": rows_lib.mean(cands.finished, 0.0),
      "si/audit_block_rate": sum(blocks.values()) / n_c if len(cands.ids) else 0.0,
      **{f"si/audit_block/{k}": v for k, v in blocks.items()},
      "si/kept": len(kept),
      "si/edit_distance": rows_lib.mean([a.normalized_distance for a in alignments]),
      "si/num_edits": rows_lib.mean([a.num_edits for a in alignments]),
      **tstats.metrics(),
      "si/active_token_ratio": gated / resp if resp else float("nan"),
      "si/localization_precision": rows_lib.mean(loc),
      "si/policy_rows": int(policy["tokens"].shape[0]) if policy else 0,
      "si/advantage_minus": rows_lib.mean([-c.adv_minus * scale[r.row] for r, _ in kept]),
      "tokens/credit_sampled": sum(len(x) for x in cands.ids) + cont_tokens,
  }
  details = _details(ctx, scored, requests, cands, kept, kstar, alignments, conts, minus,
                     plus or plus_sft)
  return credit_lib.Credit(terms=rows_lib.terms(ctx, policy, nll, rl_rows, plus_sft), metrics=m,
                           timing=timer.summary(), details=details)


def compile_ahead(ctx: credit_lib.CreditContext) -> list[credit_lib.TermRows]:
  """Compiles SI by repair's programs before the first RL step, so a step whose first repair
  comes late (the first correct rollout of a run at RL step 24) compiles nothing: the repair
  sampler and truncation's continuation samplers at their floors (`Sampler.compile_ahead`),
  and the gate program (the row builders run on one empty pair). Returns one-row examples of
  the step's loss terms, built by the same builders (the policy rows of a step with a kept
  repair, the repair-mode NLL, repair-RL and plus rows), for the trainer to compile their
  log-prob and update programs."""
  c, cfg = ctx.config.si, ctx.config
  sp, width, most = repair_call(ctx)
  ctx.sampler.compile_ahead(ctx.params, sp, width=width, rows=most)
  if c.truncation == "continue":
    sp, cont_width = rows_lib.continuation_call(ctx)
    for rows in continuation_rows(cfg):
      ctx.sampler.compile_ahead(ctx.params, sp, width=cont_width, rows=rows)
  n = c.repair_samples
  one, lp = [[ctx.tokenizer.pad_id]], [np.zeros(1, np.float32)]
  pairs, pl = align_lib.align_many([(one[0], one[0])]), ctx.prompt_width
  minus = rows_lib.gated_rows(ctx, one, one, lp, pairs, [1], "failed", [0.0], pl)
  plus, plus_sft = _plus_rows(ctx, one, one, lp, pairs, [1], [0.0], pl)
  nll = rows_lib.nll_rows(one, one, ctx.tokenizer.pad_id, rows_lib.repair_budget(cfg), width,
                          None if c.repair_copy_weight == 1.0 else [np.ones(1, np.float32)])
  cands = Candidates(n=n, prompt_ids=one, ids=one * n, logprobs=lp * n,
                     finished=np.ones(n, bool), texts=[""] * n, score=np.zeros(n, np.float32))
  return rows_lib.terms(ctx, rows_lib.concat([minus, plus]), nll,
                        _repair_rl_rows(ctx, cands, [None], width), plus_sft)


def _repair_rl_rows(ctx, cands: Candidates, requests, width: int) -> dict | None:
  """si.repair_rl: every candidate under its repair prompt with the group-relative advantage
  of its score. The sampler's log-probs serve as old log-probs only when they were taken at
  the trainer's temperature (si.repair_temperature == rl.temperature); else recomputed."""
  c, cfg = ctx.config.si, ctx.config
  if not (c.repair_rl and requests):
    return None
  s = np.asarray(adv_lib.group_advantages(cands.score.reshape(len(requests), c.repair_samples),
                                          normalize_std=ctx.loss["normalize_std"])).reshape(-1)
  same_t = c.repair_temperature == cfg.rl.temperature
  return credit_lib.rollout_rows(
      [cands.prompt_ids[i // c.repair_samples] for i in range(len(cands.ids))], cands.ids,
      prompt_len=shapes.fit(max(map(len, cands.prompt_ids)), width),
      completion_len=rows_lib.repair_budget(cfg), pad_id=ctx.tokenizer.pad_id,
      advantages=list(s), old_logprobs=cands.logprobs if same_t else None)


def _details(ctx, scored, requests, cands: Candidates, kept, kstar, alignments, conts, minus,
             plus) -> list[dict]:
  """Per kept repair, what the credit did (experiments/show_repairs.py renders it): the
  failure and the repair (ids), their credited tokens (minus_mask / plus_mask: the gates) and
  advantages, K* and its rung, the audit verdicts of the request's candidates, the
  continuation that verified (its text, and how many repair tokens were its prefix)."""
  ro, task, c = scored.rollouts, ctx.task, ctx.config.si
  pl = scored.prompt_len
  by_request = {id(r): i for i, r in enumerate(requests)}
  out = []
  for i, ((r, b), ks, a) in enumerate(zip(kept, kstar, alignments)):
    q = by_request[id(r)]
    n = cands.n
    failed, repaired = ro.response_ids[r.row], cands.ids[b]
    rung = ("K" if ks == c.truncation_k else "2K" if ks == 2 * c.truncation_k else "all")
    out.append(dict(
        example=ro.examples[r.group].id, problem=ro.examples[r.group].prompt,
        failed=list(failed), repaired=list(repaired),
        minus_adv=minus["advantages"][i, pl:pl + len(failed)].tolist() if minus else [],
        minus_mask=minus["loss_mask"][i, pl:pl + len(failed)].tolist() if minus else [],
        plus_adv=(plus["advantages"][i, pl:pl + len(repaired)].tolist()
                  if plus and "advantages" in plus else []),
        plus_mask=plus["loss_mask"][i, pl:pl + len(repaired)].tolist() if plus else [],
        kstar=int(ks), num_edits=a.num_edits, rung="all" if ks >= a.num_edits else rung,
        anchor=None if r.anchor_row is None else ro.texts[r.anchor_row],
        candidates=[dict(text=cands.texts[j], reason=cands.reasons[j],
                         verified=bool(cands.reward[j]), kept=j == b)
                    for j in range(q * n, (q + 1) * n)],
        continuation=conts.get(i),
        # the repair tokens the policy was given before it continued: up to the end of edit K*
        continuation_prefix=truncate_lib.prefix_end(a, ks) if i in conts else None,
        first_wrong=task.first_wrong_step(ro.examples[r.group], ro.texts[r.row])))
  return out
