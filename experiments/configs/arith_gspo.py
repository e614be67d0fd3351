"""GSPO, the paper's baseline, from exactly the SI main job's cold start and RL budget.

`arith_si.py` with outcome credit: the same cold start (policy traces, repair and reflection
pairs, which GSPO does not use), the same prompts and samples per step, the same steps.

  si-train --config experiments/configs/arith_gspo.py --workdir runs/arith_gspo
"""

import importlib.util
import os


def get_config(arg=None):
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "arith_si.py")
  spec = importlib.util.spec_from_file_location("arith_si", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(arg)
  c.rl.credit = "outcome"
  c.rl.loss = "gspo"
  return c
