"""GRPO-family RL of an HF model on GSM8K, from local files (nothing is downloaded).

  si-train --config experiments/configs/gsm8k_grpo.py:/path/to/Qwen3-0.6B --workdir runs/gsm8k \
      --config.task.kwargs.manual_dir=/path/to/gsm8k      # train.jsonl / test.jsonl

The argument is the HF model directory (weights + tokenizer; the tokenizer is the model's own
unless tokenizer.path is set). The GSM8K files are the published jsonl (`question`, `answer`
ending in `#### <number>`), built once into an array_record tfds dataset under
task.kwargs.data_dir (default: ~/tensorflow_datasets). GSPO: `--config.rl.loss=gspo`; SI:
`--config.rl.credit=si` (with a repair-mode cold start from `sft.repair_data_path`).

`:smoke` is a seconds-long run of the same code path for tests: a tiny random model with the
synthetic task's tokenizer, on whatever GSM8K files task.kwargs.manual_dir points to.
"""

from si_jax import configs


def get_config(arg=None):
  c = configs.base_config()
  c.task.name = "gsm8k"
  c.task.kwargs = dict(manual_dir="data/gsm8k")
  c.rl.loss = "grpo"
  c.rl.steps = 200
  c.rl.prompts_per_step = 32
  c.rl.group_size = 8
  c.rl.max_new_tokens = 512
  c.rl.minibatches = 4
  c.rl.microbatches = 4
  c.rl.optim.lr = 1e-6
  c.eval.every = 50
  c.eval.num_examples = 256
  c.eval.k = 4
  c.eval.temperature = 1.0
  c.eval.max_new_tokens = 512
  c.eval.batch_size = 128
  c.checkpoint.every = 50
  if arg == "smoke":
    c.tokenizer.build = "arith"
    c.model.preset = "tiny"
    c.model.overrides = dict(vocab_size=0, num_layers=1, hidden_size=32, num_heads=2,
                             num_kv_heads=1, head_dim=16, intermediate_size=64,
                             max_position_embeddings=1024)
    c.task.kwargs = dict(manual_dir="", num_workers=1)
    c.rl.steps = 2
    c.rl.prompts_per_step = 2
    c.rl.group_size = 2
    c.rl.max_new_tokens = 16
    c.rl.minibatches = 1
    c.rl.microbatches = 1
    c.eval.every = 2
    c.eval.num_examples = 2
    c.eval.k = 2
    c.eval.max_new_tokens = 16
    c.checkpoint.every = 0
  elif arg:
    c.model.init_from = arg
  else:
    raise ValueError("gsm8k_grpo: give the HF model directory as the config argument "
                     "(gsm8k_grpo.py:/path/to/model) or use :smoke")
  return configs.finalize(c)
