"""Outcome-only baseline on the synthetic arithmetic task: GRPO (or any preset by override).

The main job's task, model and RL budget (`arith_si.py`) with outcome credit and a cold start of
policy traces only (300 SFT steps, half the traces with an injected mistake, so the policy is
right only sometimes):

  si-train --config experiments/configs/arith_grpo.py --workdir runs/arith_grpo
  si-train --config experiments/configs/arith_grpo.py --workdir runs/dapo --config.rl.loss=dapo

For comparisons with SI from the same cold start use `arith_gspo.py` (arith_si's cold start,
GSPO) or experiments/reproduce_arith.py. `:smoke` is a seconds-long run for tests.
"""

import importlib.util
import os


def _arith_si():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "arith_si.py")
  spec = importlib.util.spec_from_file_location("arith_si", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg=None):
  c = _arith_si().get_config(arg)
  c.rl.credit = "outcome"
  c.rl.loss = "grpo"
  c.sft.repair_pairs = 0
  c.sft.reflection_pairs = 0
  if arg != "smoke":
    c.sft.steps = 300
    c.rl.steps = 60
  return c
