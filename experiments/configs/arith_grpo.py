"""Main CPU job: a tiny Qwen3-shaped model learns multi-step modular arithmetic.

Cold start (SFT on traces of which `sft.error_rate` carry an injected mistake) gives a policy
that is right only sometimes; GRPO (or `--config.rl.loss=gspo|dapo|dr_grpo`) then raises
held-out accuracy. Runs in a few minutes on 2 CPU cores:

  si-train --config experiments/configs/arith_grpo.py --workdir runs/arith

Variants: `--config experiments/configs/arith_grpo.py:smoke` is a seconds-long run for tests.
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

  c.sft.steps = 300
  c.sft.batch_size = 64
  c.sft.num_traces = 20000
  c.sft.error_rate = 0.5
  c.sft.optim.lr = 3e-3
  c.sft.optim.warmup_steps = 40

  c.rl.steps = 60
  c.rl.loss = "grpo"
  c.rl.prompts_per_step = 32
  c.rl.group_size = 8
  c.rl.max_new_tokens = 48
  c.rl.temperature = 1.0
  c.rl.minibatches = 2
  c.rl.epochs = 1
  c.rl.optim.lr = 1e-4  # 1e-3 collapsed the policy within 20 iterations
  c.rl.optim.warmup_steps = 5
  c.rl.optim.schedule = "constant"

  # Held-out accuracy of the sampling policy (avg@4 at the training temperature; pass@4 and
  # maj@4 come with it), the quantity RL optimizes. Greedy: --config.eval.temperature=0
  # --config.eval.k=1.
  c.eval.every = 20
  c.eval.num_examples = 256
  c.eval.k = 4
  c.eval.temperature = 1.0
  c.eval.max_new_tokens = 48

  c.checkpoint.every = 20

  if arg == "smoke":  # seconds, for tests: same code path, minute sizes
    c.task.kwargs = dict(num_steps=(1, 2), operand_range=(0, 9), modulus=10,
                         train_size=2000, test_size=64)
    c.model.overrides = dict(c.model.overrides, num_layers=1, hidden_size=32, num_heads=2,
                             num_kv_heads=1, head_dim=16, intermediate_size=64)
    c.sft.steps = 6
    c.sft.batch_size = 16
    c.sft.num_traces = 256
    c.rl.steps = 4
    c.rl.prompts_per_step = 4
    c.rl.group_size = 4
    c.rl.max_new_tokens = 24
    c.eval.every = 2
    c.eval.num_examples = 8
    c.eval.max_new_tokens = 24
    c.checkpoint.every = 2
  elif arg not in (None, ""):
    raise ValueError(f"arith_grpo: unknown variant {arg!r}; known: smoke")
  return configs.finalize(c)
