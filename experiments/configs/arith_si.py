"""Main CPU job: supervision internalization on the synthetic arithmetic task.

A tiny Qwen3-shaped model (d=128, 2 layers) is cold-started on a mix of policy traces (half
with an injected mistake, so the policy is right only sometimes), error -> repair pairs in the
repair-prompt format (half of them without the anchor: RESEARCH_NOTES found that a repair mode
trained only with anchors transcribes the anchor) and reflection pairs (failed trace ->
\\boxed{first wrong step}, for the reset variants). RL then runs GSPO with SI's credit: failed
rollouts are repaired by the same model, and the token diff between failure and repair is the
credit. Prints held-out accuracy, the repair probe and the active-token ratio before and after.

  si-train --config experiments/configs/arith_si.py --workdir runs/arith_si

Variants (`arith_si.py:<variant>`): `smoke` (seconds, for tests); the dilution axes of the
study (experiments/reproduce_arith.py), where a failure carries more correct work: `long`
(chains of 6-8 operations instead of 2-4), `parts2` / `parts4` (2 or 4 independent chains per
problem, of 2-4 / 1-2 operations, reward 1 only when every part is right: a slip in one part
leaves the others right).
Their budgets come from the task's measured lengths (longest policy prompt / solution / repair
prompt + repair, built tokenizer): long 72 / 53 / 273, parts2 89 / 68 / 333, parts4 115 / 87 /
<= 455 (the bound) tokens. Corrections by override: `--config.si.correction=reset|random_reset|oracle_reset`.
Baselines from the same cold start: `arith_gspo.py` (this config with outcome credit),
`arith_grpo.py`.
"""

from si_jax import configs


def get_config(arg=None):
  c = configs.base_config()
  c.task.name = "arith"
  c.task.kwargs = dict(num_steps=(2, 4), operand_range=(0, 9), modulus=10,
                       train_size=20000, test_size=500)
  c.tokenizer.build = "arith"

  c.model.preset = "tiny"
  c.model.overrides = dict(vocab_size=0, num_layers=2, hidden_size=128, num_heads=4,
                           num_kv_heads=2, head_dim=32, intermediate_size=384,
                           max_position_embeddings=256)

  c.sft.steps = 600
  c.sft.batch_size = 64
  c.sft.num_traces = 20000
  c.sft.error_rate = 0.5
  c.sft.repair_pairs = 12000
  c.sft.repair_no_anchor_frac = 0.5
  c.sft.reflection_pairs = 4000
  c.sft.optim.lr = 3e-3
  c.sft.optim.warmup_steps = 40

  c.rl.steps = 20  # the main job; experiments/reproduce_arith.py runs 40 for every method
  c.rl.loss = "gspo"
  c.rl.credit = "si"
  c.rl.prompts_per_step = 32
  c.rl.group_size = 8
  # the longest correct solution is 29 tokens with its stop token (2-4 operations); 32 leaves
  # room, and every row, cache and repair prompt bound scales with it (48 before: 1.5x wider)
  c.rl.max_new_tokens = 32
  c.rl.temperature = 1.0
  c.rl.minibatches = 2
  c.rl.microbatches = 4  # update calls of 32 rows: a term's rows pad to 64, not 256
  c.rl.optim.lr = 1e-4
  c.rl.optim.warmup_steps = 5
  c.rl.optim.schedule = "constant"

  c.si.correction = "repair"
  # The audit's copy rule (closer to the anchor than to the failure) is off here: this task has
  # one correct trace per problem, so the minimal repair of a mistake IS the anchor, and with
  # the rule on (copy_margin 0.1) it blocked 62-78% of the candidates in the first 10 RL steps
  # of this job, nearly all of them correct repairs (kept repairs fell to 0-8% of requests).
  # Whether the repair mode repairs or transcribes is measured by the held-out probes instead
  # (eval/si/probe_repair_no_anchor and _wrong_anchor). The truncated / malformed /
  # answer-only rules stay on.
  c.si.copy_margin = 1.0
  c.si.max_failed_per_prompt = 2
  c.si.repair_samples = 4
  c.si.repair_max_new_tokens = 32
  # The ladder's "+ balanced signal" row (README, the decisive-credit study): continuation
  # truncation, both sides, SI's advantages on the group's scale, a gated token weighed like any
  # response token, and correct rollouts keep their group-relative outcome credit, so the signal
  # is not net negative (without it: 57 tokens credited up against 1,373 down per step). It ties
  # GSPO on 5 seeds; none of the rows beats GSPO by 2 standard errors.
  c.si.train_correct_base = True

  c.eval.every = 10
  c.eval.num_examples = 256
  c.eval.k = 4
  c.eval.temperature = 1.0
  c.eval.max_new_tokens = 32
  c.checkpoint.every = 10

  if arg == "smoke":  # seconds, for tests: same code path, minute sizes
    c.task.kwargs = dict(num_steps=(1, 2), operand_range=(0, 9), modulus=10,
                         train_size=2000, test_size=64)
    c.model.overrides = dict(c.model.overrides, num_layers=1, hidden_size=32, num_heads=2,
                             num_kv_heads=1, head_dim=16, intermediate_size=64)
    c.sft.steps = 6
    c.sft.batch_size = 16
    c.sft.num_traces = 256
    c.sft.repair_pairs = 64
    c.sft.reflection_pairs = 32
    c.rl.steps = 4
    c.rl.prompts_per_step = 4
    c.rl.group_size = 4
    c.rl.max_new_tokens = 24
    c.rl.microbatches = 1
    c.si.repair_samples = 2
    c.si.repair_max_new_tokens = 24
    c.si.probe_examples = 4
    c.eval.every = 2
    c.eval.num_examples = 8
    c.eval.max_new_tokens = 24
    c.checkpoint.every = 2
  elif arg in DILUTION:
    steps, parts, max_new, positions = DILUTION[arg]
    c.task.kwargs = dict(c.task.kwargs, num_steps=steps, parts=parts)
    c.model.overrides = dict(c.model.overrides, max_position_embeddings=positions)
    c.rl.max_new_tokens = c.si.repair_max_new_tokens = c.eval.max_new_tokens = max_new
  elif arg not in (None, ""):
    raise ValueError(f"arith_si: unknown variant {arg!r}; known: smoke, {', '.join(DILUTION)}")
  return configs.finalize(c)


# variant -> (operations per chain, chains per problem, rl.max_new_tokens, model positions):
# the budget covers the longest solution; the positions the repair prompt bound of
# si/rows.py:repair_prompt_width (template + problem + 2 solutions) plus a repair.
DILUTION = {"long": ((6, 8), 1, 64, 320), "parts2": ((2, 4), 2, 80, 384),
            "parts4": ((1, 2), 4, 96, 464)}
# parts4 at 2-4 operations a part (prompts up to 159 tokens, 144 new tokens, 640 positions) was
# flat: its cold start (seed 0) scored avg@4 0.000 held out and GSPO stayed at 0.000 over 40
# steps (the model misread operands of 4-part prompts); 1-2 operations a part keep 4 chains.
