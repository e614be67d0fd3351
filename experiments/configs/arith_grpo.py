"""Outcome-only baseline on the synthetic arithmetic task: GRPO (or any preset by override).

The main job's task, model and RL budget (`arith_si.py`) with outcome credit and a cold start of
policy traces only (300 SFT steps, half the traces with an injected mistake, so the policy is
right only sometimes):

  si-train --config experiments/configs/arith_grpo.py --workdir runs/arith_grpo
  si-train --config experiments/configs/arith_grpo.py --workdir runs/dapo --config.rl.loss=dapo

For comparisons with SI from the same cold start use `arith_gspo.py` (arith_si's cold start,
GSPO) or experiments/reproduce_arith.py. `:smoke` is a seconds-long run for tests.
"""

from si_jax import configs


def get_config(arg=None):
  c = configs.load_sibling(__file__, "arith_si").get_config(arg)
  c.rl.credit = "outcome"
  c.rl.loss = "grpo"
  c.sft.repair_pairs = 0
  c.sft.reflection_pairs = 0
  if arg != "smoke":
    c.sft.steps = 300
    c.rl.steps = 60
  return c
