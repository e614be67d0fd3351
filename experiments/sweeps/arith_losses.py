"""GRPO vs GSPO with outcome-only credit on the arith_si cold start, 3 seeds each (6 runs).

The same cold start and RL budget as `arith_si.py`, so these are the baselines an SI run is
compared against; the table averages held-out accuracy over the seeds:

  si-sweep --sweep experiments/sweeps/arith_losses.py --root runs/arith_losses
  si-sweep --sweep experiments/sweeps/arith_losses.py --root runs/arith_losses --dry_run \\
      --launcher slurm --hosts 2
"""


def get_sweep():
  return dict(
      name="arith_losses",
      config="experiments/configs/arith_si.py",
      grid={"rl.loss": ["grpo", "gspo"], "seed": [0, 1, 2]},
      set={"rl.credit": "outcome"},
      seed_axis="seed",
  )
