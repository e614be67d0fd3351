"""Assign credit: the one stage of an RL step where an algorithm plugs in.

A credit function turns scored rollout groups into the rows to train on, as loss terms with
their own sub-batches, plus its metrics:

    credit_fn(ctx: CreditContext, scored: Scored) -> Credit

A credit function may carry attributes: `evaluate(ctx, key) -> dict`, metrics it adds to every
evaluation (SI's held-out repair probe); `capacity(config) -> {term name: rows}`, the most rows
each of its terms can get per step, by which the trainer sizes the term's update calls
(`batching.call_rows`; a term not named gets the policy term's calls); `summary`, the names
of its metrics the trainer prints first -> last RL step at the end of a run; `eval_summary`,
the names of its `evaluate` metrics the trainer prints before -> after RL.

`outcome` (the GRPO family: one group-relative advantage per rollout, broadcast onto its tokens)
is registered here; supervision internalization registers `si` (`si_jax.si.credit`, imported by
the trainer). A new algorithm is one module with `@register("name")` plus `config.rl.credit =
"name"`, imported before the run starts (e.g. by the config file that names it).

Rows are packed token ids ([R, W] arrays, see `rollout.pack_rows`): tokens, input_mask,
loss_mask (1 on the tokens that get loss: all response tokens, or SI's gate), and for policy
terms advantages [R, W] and old_logprobs [R, W] with has_old [R] (True where old_logprobs are
the sampler's own for these very tokens and prompt; rows without, e.g. a repair re-scored
under the policy prompt, get them recomputed by the pack stage). seq_mask [R] is 0 for rows
that are in the batch only to keep its shape (DAPO's filtered groups).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np

from si_jax import configs
from si_jax import registry
from si_jax.rl import advantages as adv_lib
from si_jax.rl import rollout
from si_jax.rl import update as update_lib

__all__ = ["Scored", "TermRows", "Credit", "CreditContext", "CREDITS", "register", "get_credit",
           "credit_names", "policy_term", "rollout_rows", "outcome_credit"]


@dataclasses.dataclass
class Scored:
  """Output of the score stage.

  rollouts: P groups x G responses with their verdicts.
  rewards: [P, G] float32 rewards the advantages are computed from (verifier reward plus any
    shaping, e.g. DAPO's overlong penalty).
  success: [P, G] bool, verifier reward >= rl.success_threshold (correct / failed split).
  group_mask: [P] bool, False for groups in the batch only to fill it (dynamic sampling).
  prompt_len: width the prompts are left-padded to (bucketed).
  """

  rollouts: rollout.Rollouts
  rewards: np.ndarray
  success: np.ndarray
  group_mask: np.ndarray
  prompt_len: int


@dataclasses.dataclass
class TermRows:
  """One loss term and its rows (a dict of [R, ...] numpy arrays, see the module docstring)."""

  term: Any
  rows: dict[str, np.ndarray]

  @property
  def num_rows(self) -> int:
    return int(self.rows["tokens"].shape[0])


@dataclasses.dataclass
class Credit:
  """The rows to train on, as loss terms with their own rows, plus metrics ('tokens/
  credit_sampled': tokens the credit stage sampled itself, e.g. repairs) and seconds per
  part of the stage."""

  terms: list[TermRows]
  metrics: dict[str, float] = dataclasses.field(default_factory=dict)
  timing: dict[str, float] = dataclasses.field(default_factory=dict)
  # optional, per credited item, what the credit did (for inspection; never trained on)
  details: list[dict] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class CreditContext:
  """What a credit function may use besides the scored rollouts.

  key(purpose): the step's PRNG key for a purpose (int), fold_in(fold_in(seed, step), purpose).
  prompt_width: the run's policy prompt width (`si_jax/shapes.py`): sample and pack prompts
    built from the policy's at widths derived from it, so every step compiles the same shapes.
  loss: the resolved loss fields (`configs.resolve_loss`).
  policy_term: the policy loss term built from config (`policy_term`).
  sampling_params: how the policy samples (temperature, stop ids, budget).
  """

  config: Any
  step: int
  key: Callable[[int], jax.Array]
  params: Any
  sampler: Any
  tokenizer: Any
  task: Any
  mesh: Any
  loss: dict[str, Any]
  policy_term: update_lib.PolicyTerm
  sampling_params: Any
  prompt_width: int = 0


CreditFn = Callable[[CreditContext, Scored], Credit]
# The credit functions by name. This layer knows only its own (`outcome`); a method's module
# registers itself when it is imported (the trainer imports `si_jax.si.credit`).
CREDITS = registry.Registry("credit function", field="config.rl.credit")
register = CREDITS.register
get_credit = CREDITS.get
credit_names = CREDITS.names


def policy_term(config, name: str = "policy", weight: float = 1.0,
                ratio: str | None = None) -> update_lib.PolicyTerm:
  """The policy loss term from config (preset + overrides); errors name the config field."""
  loss = configs.resolve_loss(config)
  c = config.rl
  try:
    return update_lib.PolicyTerm(
        ratio=ratio or loss["ratio"], eps_low=loss["eps_low"], eps_high=loss["eps_high"],
        aggregation=loss["aggregation"], max_len=c.max_new_tokens, kl_beta=c.kl_beta,
        kl_estimator=c.kl_estimator, temperature=c.temperature, name=name, weight=weight,
        tis_cap=config.si.plus_tis_cap)
  except ValueError as e:
    field = str(e).split(" ", 1)[0]
    raise ValueError(f"config.rl.{field} {str(e).split(' ', 1)[1]}") from None


def rollout_rows(prompts, responses, *, prompt_len: int, completion_len: int, pad_id: int,
                 advantages, old_logprobs=None, seq_mask=None, gate=None
                 ) -> dict[str, np.ndarray]:
  """Policy-term rows for (prompt ids, response ids) pairs.

  advantages: per row either a scalar (broadcast onto the response tokens) or a [len] array.
  old_logprobs: per row the sampler's [len] log-probs, or None (has_old False: recomputed).
  seq_mask: [R] (default ones). gate: per row a [len] 0/1 array; the loss mask is
  response * gate (default: every response token).
  """
  n = len(responses)
  adv = [np.broadcast_to(np.asarray(a, np.float32), (len(r),)) for a, r in
         zip(advantages, responses)]
  values = {"advantages": adv}
  if old_logprobs is not None:
    values["old_logprobs"] = old_logprobs
  if gate is not None:
    values["gate"] = gate
  b = rollout.pack_rows(prompts, responses, prefix_len=prompt_len, completion_len=completion_len,
                        pad_id=pad_id, values=values)
  if gate is not None:
    b["loss_mask"] = b["loss_mask"] * b.pop("gate")
  if old_logprobs is None:
    b["old_logprobs"] = np.zeros_like(b["advantages"])
  b["has_old"] = np.full(n, old_logprobs is not None)
  b["seq_mask"] = (np.ones(n, np.float32) if seq_mask is None
                   else np.asarray(seq_mask, np.float32))
  b["advantages"] = b["advantages"] * b["loss_mask"]
  return b


def group_advantages(scored: Scored, normalize_std: bool) -> np.ndarray:
  """[P, G] group-relative advantages of the scored rewards (zero in filtered groups)."""
  adv = np.asarray(adv_lib.group_advantages(scored.rewards, normalize_std=normalize_std))
  return adv * scored.group_mask[:, None]


@register("outcome")
def outcome_credit(ctx: CreditContext, scored: Scored) -> Credit:
  """GRPO family: each rollout's group-relative advantage on every one of its tokens."""
  ro = scored.rollouts
  adv = group_advantages(scored, ctx.loss["normalize_std"]).reshape(-1)
  rows = rollout_rows(ro.row_prompt_ids(), ro.response_ids, prompt_len=scored.prompt_len,
                      completion_len=ctx.config.rl.max_new_tokens, pad_id=ctx.tokenizer.pad_id,
                      advantages=adv, old_logprobs=ro.logprobs,
                      seq_mask=np.repeat(scored.group_mask, ro.group_size))
  return Credit(terms=[TermRows(ctx.policy_term, rows)])


outcome_credit.multi_process = True  # works on each process's own groups (whole groups)
