"""GSPO, the paper's baseline, from exactly the SI main job's cold start and RL budget.

`arith_si.py` with outcome credit: the same cold start (policy traces, repair and reflection
pairs, which GSPO does not use), the same prompts and samples per step, the same steps.

  si-train --config experiments/configs/arith_gspo.py --workdir runs/arith_gspo
"""

from si_jax import configs


def get_config(arg=None):
  c = configs.load_sibling(__file__, "arith_si").get_config(arg)
  c.rl.credit = "outcome"
  c.rl.loss = "gspo"
  return c
