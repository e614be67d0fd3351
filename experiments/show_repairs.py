"""Show what SI trains on: failed rollouts and their kept repairs side by side, credit marked.

  python experiments/show_repairs.py --workdir runs/arith_si [--step STEP] [--n 10]

Loads the run's checkpoint (latest, or --step), samples one RL step's rollouts with the run's
own config and keys, runs its credit stage, and prints for each kept repair the failed
rollout and the repair with the tokens that get credit in [brackets] (g_minus on the failure,
g_plus on the repair, after adaptive truncation), plus the task's true first wrong step where
it knows it. Nothing is trained or written.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def marked(tokenizer, tokens, mask) -> str:
  """Decoded response tokens, with runs of credited tokens in [brackets]."""
  out, run = [], []
  for t, m in zip(tokens, mask):
    if m:
      run.append(int(t))
      continue
    if run:
      out.append("[" + tokenizer.decode(run) + "]")
      run = []
    out.append(tokenizer.decode([int(t)]))
  if run:
    out.append("[" + tokenizer.decode(run) + "]")
  return "".join(out)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  ap.add_argument("--n", type=int, default=10, help="pairs to show")
  args = ap.parse_args(argv)
  from si_jax import workdir as workdir_lib
  from si_jax.rl import trainer

  config = workdir_lib.read_config(args.workdir)
  if config.rl.credit != "si":
    raise SystemExit(f"{args.workdir} trains with rl.credit={config.rl.credit!r}, not 'si'")
  run = trainer.Run(config, args.workdir)
  try:
    if args.step is None:
      run.restore()
    else:
      run.state, run.meta = run.ckpt.restore(trainer.ts.abstract_state(run.state), args.step)
    step = run.meta["step"]
    stream = trainer.PromptStream(run.task.examples(config.task.train_split), config.seed,
                                  run.meta["data_cursor"])
    scored = run.sample_and_score(step, stream)
    credit = run.credit_fn(run.credit_context(step), scored)
    m = credit.metrics
    print(f"step {step}: accuracy {scored.success.mean():.3f}, "
          f"{m.get('si/requests', 0)} repair requests, {m.get('si/kept', 0)} kept, "
          f"active-token ratio {m.get('si/active_token_ratio', float('nan')):.3f}, "
          f"audit blocks {m.get('si/audit_block_rate', 0):.2f}")
    kept = int(m.get("si/kept", 0))
    if not credit.terms or not kept:
      print("no kept repairs at this step")
      return 0
    rows = credit.terms[0].rows
    W0 = scored.prompt_len
    tok = run.tokenizer
    for i in range(min(args.n, kept)):
      minus, plus = i, kept + i
      print(f"\n--- pair {i + 1}")
      print("failed:  " + marked(tok, rows["tokens"][minus, W0:],
                                 rows["loss_mask"][minus, W0:] > 0).replace("\n", " | "))
      print("repair:  " + marked(tok, rows["tokens"][plus, W0:],
                                 rows["loss_mask"][plus, W0:] > 0).replace("\n", " | "))
      adv = rows["advantages"][minus][rows["loss_mask"][minus] > 0]
      print(f"         advantages: failure {np.unique(adv).tolist()}, repair "
            f"{np.unique(rows['advantages'][plus][rows['loss_mask'][plus] > 0]).tolist()}")
  finally:
    run.close()
  return 0


if __name__ == "__main__":
  sys.exit(main())
