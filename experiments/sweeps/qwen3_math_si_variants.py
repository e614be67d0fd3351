"""SI's corrections on math (DESIGN 5.2-5.3): repair (the paper's method), reset (the model
names its first wrong step and resamples from there) and random_reset (a uniformly random
step: the control for reset's localization). Qwen3 on DeepMath-103K; the size from $SI_SIZE
(default 32b). oracle_reset needs a task that knows its first wrong step (the synthetic one).

  SI_SIZE=8b si-sweep --sweep experiments/sweeps/qwen3_math_si_variants.py \\
      --root runs/math_8b_variants --dry_run
  python experiments/paper_table.py --root runs/math_8b --root runs/math_8b_variants

The repair run is the SI run of experiments/sweeps/qwen3_math.py; to skip it here, give
`--grid si.correction=reset,random_reset` (a command-line axis replaces the file's).
"""

import os


def get_sweep():
  size = os.environ.get("SI_SIZE", "32b")
  return dict(
      name=f"qwen3_math_si_variants_{size}",
      config=f"experiments/configs/qwen3_math.py:{size}",
      grid={"si.correction": ["repair", "reset", "random_reset"], "seed": [0]},
      set={"rl.credit": "si"},
      seed_axis="seed",
  )
