"""Supervision internalization as a credit function (`config.rl.credit = "si"`, DESIGN 5.2-5.5).

    failed rollouts -> select -> repair (or reset) -> score + audit -> align -> truncate -> rows

Repair (si.correction = "repair", `repair.py`), per step:
  1. select (`select.py`): up to si.max_failed_per_prompt failures per group, each with a
     correct sibling as anchor (si.require_anchor; without it all-failed groups are repaired
     from the failure alone).
  2. repair: si.repair_samples candidates per failure from the same params under the repair
     prompt, one batched sampler call; scored s = h * (r - lambda_edit * d) with the audit gate
     h (`audit.py`, si.audit); the best successful candidate is kept.
  3. align (`align.py`): token Levenshtein edits between the failure y and its repair y_bar.
  4. truncate (`truncate.py`, si.truncation): K* in {K, 2K, all} edits, the first rung whose
     repair prefix the *policy* continues to a verified solution ("continue": si.truncation_k,
     si.truncation_samples continuations, si.truncation_pass of them must verify), or whose
     graft into y verifies ("graft"), batched across the step.
  5. reuse (`token_credit.py`, jitted and sharded; rows in `rows.py`): rows for the policy term
       y     under the policy prompt, gate g_minus (first K* edits), advantage -a on it
       y_bar under the policy prompt, gate g_plus,                advantage +a on it
     with a = si.adv_minus / si.adv_plus, times the failure's own group-relative magnitude
     when si.adv_scale = "group" (SI's credit on the scale of the outcome credit beside it).
     With si.both_sides every edit gates a token on both sides (an insertion gates the token
     the failure emitted where it diverged, a deletion the repair's). si.gate_norm: how a
     gated row is weighed under seq_mean_token_mean ("gate": by its gated tokens, so a
     2-token row weighs a whole sequence; "response": by its response length, so a gated token
     weighs what any response token weighs; token_mean and Dr.GRPO weigh tokens alike anyway).
     The ratio is the policy term's (GSPO's sequence ratio over the gate = DESIGN's gated
     sequence ratio). y_bar was sampled under the repair prompt (si.plus): "pg" recomputes its
     old log-probs under the policy prompt (the ratio starts at 1), "is" multiplies its
     policy gradient by the truncated importance weight min(pi_old / rho, si.plus_tis_cap),
     "sft" trains its gated tokens by NLL as a term of its own (weight si.plus_weight).
     Failures without a kept repair (or not selected) get outcome credit (si.unrepaired =
     "outcome": their group-relative advantage on every token) or nothing ("drop"); correct
     rollouts get outcome credit only with si.train_correct_base (default off: it collapsed
     entropy in the paper's ablation).
  6. internalize: a second loss term "repair", si.lambda_rep * NLL of each kept repair under
     its repair prompt, the anchor dropped with probability si.anchor_dropout and the tokens
     copied from the failure weighted si.repair_copy_weight; with si.repair_rl a third,
     "repair_rl": the policy loss over all candidates under the repair prompt with
     group-relative advantages of their scores s.

Reset (si.correction = "reset" | "random_reset" | "oracle_reset", `reset.py`): the located step
k of each selected failure, M = si.reset_samples continuations from the prefix before it,
suffix-only advantages group-relative within the M; rows gate only the continuation.

Metrics (DESIGN 5.5, prefix si/): repair_success (kept repairs / requests) and per candidate,
audit blocks by reason, K* distribution, active_token_ratio (gated tokens / response tokens of
the credited pairs), localization_precision (synthetic task: the first active edit lies in the
truly first wrong step; for reset, k is it), time split. `Credit.details` holds, per kept
repair, what the credit did (experiments/show_repairs.py renders it). At every evaluation
`probe.py` probes the repair mode on held-out failures counterfactually: with the true anchor,
with no anchor and with a wrong anchor (a failed sibling) - whether it repairs or copies.
"""

from __future__ import annotations

from si_jax.rl import credit as credit_lib
from si_jax.si import probe as probe_lib
from si_jax.si import repair as repair_lib
from si_jax.si import reset as reset_lib

__all__ = ["si_credit", "capacity", "compile_ahead", "SUMMARY"]

# What the trainer prints at the end of a run, first -> last RL step (`Credit` metrics).
SUMMARY = ("si/repair_success", "si/active_token_ratio", "si/kstar_mean",
           "si/kstar_at_k_share", "si/localization_precision", "si/audit_block_rate")


def capacity(config) -> dict[str, int]:
  """The most rows each loss term can get in a step (the trainer sizes its update calls by
  it, `batching.call_rows`): the policy term's rollouts plus one repair (or M reset
  continuations) per request, one repair-mode NLL row and one re-scored repair ("plus") per
  request, G_rep repair-RL rows."""
  c, rl = config.si, config.rl
  requests = rl.prompts_per_step * c.max_failed_per_prompt
  extra = requests * (c.reset_samples if c.correction != "repair" else 1)
  return {"policy": rl.prompts_per_step * rl.group_size + extra, "repair": requests,
          "plus": requests, "repair_rl": requests * c.repair_samples}


@credit_lib.register("si")
def si_credit(ctx: credit_lib.CreditContext, scored: credit_lib.Scored) -> credit_lib.Credit:
  """Supervision internalization (see the module docstring)."""
  if ctx.config.si.correction == "repair":
    return repair_lib.repair_credit(ctx, scored)
  return reset_lib.reset_credit(ctx, scored)


def compile_ahead(ctx: credit_lib.CreditContext) -> list[credit_lib.TermRows]:
  """SI's programs compiled before the first RL step (`repair.compile_ahead`,
  `reset.compile_ahead`); returns one-row examples of its loss terms for the trainer."""
  if ctx.config.si.correction == "repair":
    return repair_lib.compile_ahead(ctx)
  return reset_lib.compile_ahead(ctx)


si_credit.evaluate = probe_lib.probe
si_credit.compile_ahead = compile_ahead
si_credit.capacity = capacity
si_credit.summary = SUMMARY
si_credit.eval_summary = probe_lib.METRICS
# Each process corrects its own failures; sampling calls are collective (every process calls,
# with or without rows), gates run on the process's own devices, the probe splits its cases.
si_credit.multi_process = True
