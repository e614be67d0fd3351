"""si-bench: si_jax versus transformers/PyTorch speed on CPU, fp32, same model and weights.

One module per job: `cli` (the `si-bench` command: flags, the run, the tables, `--json`), `env`
(the machine and its load), `common` (what the workloads share: goals, FLOP model, timers,
prompts, the jitted train step), and one per workload: `model` (decode and train against HF),
`mixed` (decode_mixed), `memory`, `grow` (decode_grow), `floor`, `align`. `verify` is the
verifiers' benchmark (`python -m si_jax.tools.bench.verify`).
"""

from si_jax.tools.bench.cli import main, run
from si_jax.tools.bench.common import TARGETS, generate_flops, time_calls, train_flops
from si_jax.tools.bench.env import contended, cpu_model, header, load_warning
from si_jax.tools.bench.memory import MEMORY_COLUMNS
from si_jax.tools.bench.mixed import MIXED_COLUMNS, bench_decode_mixed, mixed_stop_ids
from si_jax.tools.bench.mixed import mixed_table
from si_jax.tools.bench.model import COLUMNS, markdown_table

__all__ = ["COLUMNS", "MEMORY_COLUMNS", "MIXED_COLUMNS", "TARGETS", "bench_decode_mixed",
           "contended", "cpu_model", "generate_flops", "header", "load_warning", "main",
           "markdown_table", "mixed_stop_ids", "mixed_table", "run", "time_calls", "train_flops"]
