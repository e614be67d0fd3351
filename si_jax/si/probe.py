"""The counterfactual probe of the repair (or reflection) mode, at every evaluation.

Greedy repairs of held-out failures (`Task.probe_failures`: the synthetic task makes them) with
the true anchor, with no anchor and with a wrong anchor (a failed sibling): how a reader knows
whether the repair mode repairs or transcribes (RESEARCH_NOTES). For "reset": how often the
reflection names the first wrong step.
"""

from __future__ import annotations

from typing import Any

import jax

from si_jax import multihost
from si_jax.rl import credit as credit_lib
from si_jax.rl import rollout
from si_jax.si import align as align_lib
from si_jax.si import locate as locate_lib
from si_jax.si import prompts
from si_jax.si import repair as repair_lib
from si_jax.si import rows as rows_lib

__all__ = ["probe"]


# Every metric `probe` may return (the trainer prints those present after RL).
METRICS = ("si/probe_repair_with_anchor", "si/probe_repair_no_anchor",
           "si/probe_repair_wrong_anchor", "si/probe_follows_wrong_anchor",
           "si/probe_localization", "si/probe_reflection_precision")


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
  greedy = rows_lib.sampling_params(ctx, 0.0, rows_lib.repair_budget(cfg))
  examples = [x["example"] for x in cases]
  out: dict[str, Any] = {}
  if c.correction == "reset":
    ps = [locate_lib.reflection_prompt_ids(tok, x["example"].prompt, x["failed"],
                                           task.step_mode, task.system_prompt) for x in cases]
    ids, _, _ = rollout.generate(ctx.sampler, ctx.params, ps, key, greedy,
                                 width=rows_lib.repair_prompt_width(ctx))
    ks = locate_lib.locate("reset", [x["failed"] for x in cases], step_mode=task.step_mode,
                           reflections=[tok.decode(i) for i in ids])
    out["si/probe_reflection_precision"] = rows_lib.global_mean(
        [k is not None and k - 1 == x["first_wrong"] for k, x in zip(ks, cases)])
    return out
  if c.correction != "repair":
    return out
  instruction = c.repair_instruction or None
  for name, anchor in (("with_anchor", "anchor"), ("no_anchor", None),
                       ("wrong_anchor", "wrong_anchor")):
    ps = [prompts.repair_prompt_ids(tok, x["example"].prompt, x["failed"],
                                    x[anchor] if anchor else None, task.system_prompt,
                                    instruction) for x in cases]
    ids, _, _ = rollout.generate(ctx.sampler, ctx.params, ps, key, greedy,
                                 width=rows_lib.repair_prompt_width(ctx))
    texts = [tok.decode(i) for i in ids]
    out[f"si/probe_repair_{name}"] = rows_lib.global_mean(repair_lib.repair_success(
        task, examples, texts, cfg.rl.success_threshold))
    if name == "wrong_anchor":
      follows = [task.answer_key(prompts.parse_repair(t) or "") ==
                 task.answer_key(x["wrong_anchor"]) for t, x in zip(texts, cases)]
      out["si/probe_follows_wrong_anchor"] = rows_lib.global_mean(follows)
    if name == "with_anchor":
      loc = []
      for x, i in zip(cases, ids):
        failed_ids = tok.encode(x["failed"]) + [tok.stop_ids[0]]  # as a sampled rollout ends
        a = align_lib.align(failed_ids, i)
        if a.num_edits:
          loc.append(rows_lib.first_edit_step(tok, failed_ids, x["failed"],
                                              int(a.a_start[0]), task.step_mode)
                     == x["first_wrong"])
      out["si/probe_localization"] = rows_lib.global_mean(loc)
  return out
