"""si-plan: ahead-of-time memory plan of a run, on a simulated mesh, from shapes alone.

    si-plan --config experiments/configs/gsm8k_grpo.py:smoke --model qwen3-8b --devices 64 \\
        --accelerator h100 [--prompt_len 256] [--config.model.remat=full ...]

No weights and no data: the trainer's programs, built by the library's own builders, are
lowered and compiled for `--devices` simulated CPU devices, and their per-device memory is
read from each executable's `memory_analysis()`. One module per job: `devices` (the
accelerators and their usable HBM, the simulated devices), `inputs` (what the config builds:
mesh, model shape, the step's shapes), `memory` (bytes of arrays and compiled programs),
`programs` (the sample, log-prob and update programs), `planner` (a plan: phases and peaks),
`levers` (the search over memory levers), `reports` (text report and summary table), `cli`
(the `si-plan` command, `run`).
"""

from si_jax.tools.plan.cli import run
from si_jax.tools.plan.devices import (MEM_FRACTION_ENV, TPU_USABLE_FRACTION, Accelerator,
                                       accelerator, device_env, gpu_mem_fraction)
from si_jax.tools.plan.inputs import Workload, make_mesh, model_for, workload
from si_jax.tools.plan.levers import apply_overrides, find_fit, next_lever
from si_jax.tools.plan.memory import (Phase, Program, global_bytes, itemsize, shard_bytes,
                                      tree_bytes)
from si_jax.tools.plan.planner import Plan, plan
from si_jax.tools.plan.programs import abstract_state
from si_jax.tools.plan.reports import report, table_row

__all__ = ["Accelerator", "MEM_FRACTION_ENV", "Phase", "Plan", "Program", "TPU_USABLE_FRACTION",
           "Workload", "abstract_state", "accelerator", "apply_overrides", "device_env",
           "find_fit", "global_bytes", "gpu_mem_fraction", "itemsize", "make_mesh", "model_for",
           "next_lever", "plan", "report", "run", "shard_bytes", "table_row", "tree_bytes",
           "workload"]
