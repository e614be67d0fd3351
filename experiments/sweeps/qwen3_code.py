"""The paper's comparison on code: GSPO vs SI at equal budget, Qwen3 on LiveCodeBench-style
problems (experiments/configs/qwen3_code.py; the size from $SI_SIZE, default 32b):

  SI_SIZE=8b si-sweep --sweep experiments/sweeps/qwen3_code.py --root runs/code_8b --dry_run
  python experiments/paper_table.py --root runs/code_8b        # LCB v6 avg@32

More seeds: `--grid seed=0,1,2`.
"""

import os


def get_sweep():
  size = os.environ.get("SI_SIZE", "32b")
  return dict(
      name=f"qwen3_code_{size}",
      config=f"experiments/configs/qwen3_code.py:{size}",
      grid={"rl.credit": ["outcome", "si"], "seed": [0]},
      seed_axis="seed",
  )
