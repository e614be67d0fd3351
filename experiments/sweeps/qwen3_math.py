"""The paper's comparison on math: GSPO vs SI at equal budget, Qwen3 on DeepMath-103K.

The size comes from $SI_SIZE (0.6b, 1.7b, 4b, 8b, 14b, 32b; default 32b, the paper's model);
the two runs differ only in rl.credit (experiments/configs/qwen3_math.py):

  SI_SIZE=8b si-sweep --sweep experiments/sweeps/qwen3_math.py --root runs/math_8b --dry_run
  SI_SIZE=8b si-sweep --sweep experiments/sweeps/qwen3_math.py --root runs/math_8b \\
      --launcher slurm --hosts 4
  python experiments/paper_table.py --root runs/math_8b        # AIME25 / HMMT25 avg@32

More seeds: `--grid seed=0,1,2`. Every size: one root per size
(`for s in 0.6b 1.7b 4b 8b 14b 32b; do SI_SIZE=$s si-sweep ... --root runs/math_$s; done`).
"""

import os


def get_sweep():
  size = os.environ.get("SI_SIZE", "32b")
  return dict(
      name=f"qwen3_math_{size}",
      config=f"experiments/configs/qwen3_math.py:{size}",
      grid={"rl.credit": ["outcome", "si"], "seed": [0]},
      seed_axis="seed",
  )
