"""Shared by `qwen3_math.py` and `qwen3_code.py` (not a config itself): the config argument,
the Qwen3 sizes, and the RL settings both tasks use.

The argument is `<size>[,<method>]`:
  size    0.6b | 1.7b | 4b | 8b | 14b | 32b: a released Qwen3 dense model, or `smoke`: a
          seconds-long run of the same code path for tests and laptops.
  method  si (default): GSPO's loss with supervision-internalization credit (`rl.credit=si`);
          gspo: the same config with outcome-only credit (`rl.credit=outcome`), the paper's
          baseline. The two differ in `rl.credit` and nothing else: same budget, same data.

The model is read from an HF checkpoint directory: `$SI_CHECKPOINTS/Qwen3-<SIZE>` (default
root `checkpoints/`; override with `--config.model.init_from=DIR`); its tokenizer is the
model's own. `model.overrides` restates the size's `num_layers` and `hidden_size`, so a
checkpoint of another size is refused at load, naming the field. Data lives under `$SI_DATA`
(default `data/`), built datasets under `$SI_DATA/tfds` (see the task configs).

Per-size defaults (`SCALES`), for 80 GiB accelerators; none of them has run at scale:

  size  devices  fsdp x tensor  prompts x group  max_new_tokens  microbatches
  0.6b        8        1 x 1          8 x 16           8192             4
  1.7b        8        8 x 1          8 x 16           8192             4
  4b         16        8 x 1          8 x 16           8192             2
  8b         32        8 x 1         16 x 16          12288             2
  14b        64        8 x 2         16 x 16          12288             2
  32b       128       16 x 4         32 x 16          12288             4

Why these:
- Model state is 16 bytes per parameter (float32 params, AdamW's two moments, gradients;
  compute is bfloat16): 0.6B (9 GiB) stays plain data parallel (no per-layer all-gathers in
  decode); 1.7B-8B shard it over one 8-device host (<= 16 GiB per device); 14B adds tensor=2
  (14 GiB). 32B (525 GB) gets 64 devices per copy, so its fsdp crosses hosts: besides its
  state (8 GiB per device), one 37k-token SI row keeps ~23 GiB of bfloat16 layer inputs under
  full remat (64 layers x 5120 x 2 bytes per token). Tensor parallelism also splits the KV
  heads (Qwen3 has 8).
- The rollout batch is bounded by the KV cache: bfloat16 K and V cost layers x 8 KV heads x
  128 x 2 x 2 bytes per token (115 KB at 0.6B/1.7B, 147 KB at 4B/8B, 164 KB at 14B, 262 KB at
  32B, divided by tensor), and prefill holds two caches at its peak (the new one and its
  copy). SI's repair prompt holds the failure and its anchor, so a repair row is ~3 x
  max_new_tokens long; with `si.max_failed_per_prompt=2` and `si.repair_samples=2` a step
  samples up to 4 of them per prompt, 3/4 of the rollouts' cache. Scale prompts_per_step with
  data parallelism: twice the devices, twice the prompts.
- si-plan planned GSPO's programs from shapes alone (XLA:CPU; `si-plan --config
  experiments/configs/qwen3_math.py:8b,gspo --model qwen3-8b --devices 32 --accelerator h100
  --prompt_len 512`; it does not plan SI's repair and NLL rows). Peak GiB per device, of 72
  usable on an H100 (sample / pack log-probs / update), re-planned after the trainer's
  activation-sharding fix (`si_jax/models/constraints.py`):
    0.6B 37 / 12 / 15   1.7B 34 / 12 / 10   4B 26 / 14 / 20
    8B 42 / 27 / 44     14B 28 / 23 / 46    32B 32 / 25 / 34
  Every phase fits, with room for SI's longer rows. Before the fix, the log-probs and from 8B
  the update did not fit once fsdp > 1 (1.7B: 106 GiB of log-prob temporaries; 32B: 322):
  XLA had sharded the activations like the fsdp-split weights and gathered whole batches.
- max_new_tokens: long responses as in GSPO / DAPO recipes, capped by SI: 3 x 12288 + the
  problem fits Qwen3's 40,960-token context, 3 x 16384 does not. GSPO gets the same cap, so
  the comparison is at equal budget.
- group_size 16 (GRPO-family recipes use 8-16); 4 mini-batches per step (4 optimizer updates
  per rollout batch: GSPO's tight clipping, 3e-4 / 4e-4, acts on these off-policy updates);
  micro-batches such that a micro-batch holds one row per batch shard.
- AdamW at lr 1e-6, constant after a 20-step linear warm-up (DAPO's paper, Qwen2.5-32B), weight
  decay 0.1 (its verl recipe); the paper's own are not published. The first knob to sweep.
- 800 RL steps: the horizon of the paper's curves as summarized (GSPO's final score at ~800
  steps, SI's at ~350; DESIGN 5.6). Their batch per step is unknown, probably larger.

The rollouts sample at temperature 1.0; held-out evaluation during training samples 4 per
problem at 0.6 (Qwen3's thinking-mode setting) every 50 steps; checkpoints every 50 steps.

SI credit is not multi-process yet (README, Scale-out): an SI run is one process, so until it
is, the sizes whose defaults span several hosts run GSPO only.
"""

import dataclasses
import os

from si_jax import configs
from si_jax.models import config as model_config

SIZES = ("0.6b", "1.7b", "4b", "8b", "14b", "32b")
METHODS = ("si", "gspo")
CREDIT = {"si": "si", "gspo": "outcome"}
# The released checkpoints' directory names and the shape restated in model.overrides.
HF_NAMES = {"0.6b": "Qwen3-0.6B", "1.7b": "Qwen3-1.7B", "4b": "Qwen3-4B", "8b": "Qwen3-8B",
            "14b": "Qwen3-14B", "32b": "Qwen3-32B"}
CHECKED_SHAPE = ("num_layers", "hidden_size")  # these two tell the six sizes apart


@dataclasses.dataclass(frozen=True)
class Scale:
  """Per-size defaults (see the module docstring for the reasoning)."""
  devices: int          # accelerators the defaults are sized for (data = devices / fsdp / tensor)
  fsdp: int
  tensor: int
  prompts: int          # rl.prompts_per_step
  group: int            # rl.group_size
  max_new: int          # rl.max_new_tokens (and si.repair_max_new_tokens, eval)
  microbatches: int     # rl.microbatches (rows per mini-batch / (microbatches x batch shards) = 1)
  lr: float


SCALES = {
    "0.6b": Scale(devices=8, fsdp=1, tensor=1, prompts=8, group=16, max_new=8192,
                  microbatches=4, lr=1e-6),
    "1.7b": Scale(devices=8, fsdp=8, tensor=1, prompts=8, group=16, max_new=8192,
                  microbatches=4, lr=1e-6),
    "4b": Scale(devices=16, fsdp=8, tensor=1, prompts=8, group=16, max_new=8192,
                microbatches=2, lr=1e-6),
    "8b": Scale(devices=32, fsdp=8, tensor=1, prompts=16, group=16, max_new=12288,
                microbatches=2, lr=1e-6),
    "14b": Scale(devices=64, fsdp=8, tensor=2, prompts=16, group=16, max_new=12288,
                 microbatches=2, lr=1e-6),
    "32b": Scale(devices=128, fsdp=16, tensor=4, prompts=32, group=16, max_new=12288,
                 microbatches=4, lr=1e-6),
}
MINIBATCHES = 4


def parse_arg(arg: str | None, config_name: str) -> tuple[str, str]:
  """`<size>[,<method>]` -> (size, method); a ValueError names the valid values."""
  usage = (f"{config_name}: the config argument is <size>[,<method>] with size one of "
           f"{', '.join(SIZES + ('smoke',))} and method one of {', '.join(METHODS)} (default si), "
           f"e.g. {config_name}.py:8b,gspo")
  parts = [p.strip() for p in (arg or "").split(",")]
  if not parts[0]:
    raise ValueError(f"{usage}; got no argument")
  if len(parts) > 2:
    raise ValueError(f"{usage}; got {arg!r}")
  size = parts[0].lower()
  method = parts[1].lower() if len(parts) == 2 else "si"
  if size not in SIZES + ("smoke",):
    raise ValueError(f"{config_name}: unknown size {parts[0]!r} in {arg!r}; sizes: "
                     f"{', '.join(SIZES + ('smoke',))}")
  if method not in METHODS:
    raise ValueError(f"{config_name}: unknown method {parts[1]!r} in {arg!r}; methods: "
                     f"{', '.join(METHODS)}")
  return size, method


def data_path(*parts: str) -> str:
  """A path under $SI_DATA (default `data`)."""
  return os.path.join(os.environ.get("SI_DATA", "data"), *parts)


def checkpoint_dir(size: str) -> str:
  """$SI_CHECKPOINTS/Qwen3-<SIZE> (default root `checkpoints`)."""
  return os.path.join(os.environ.get("SI_CHECKPOINTS", "checkpoints"), HF_NAMES[size])


def expected_shape(size: str) -> dict[str, int]:
  """The fields of CHECKED_SHAPE of Qwen3-<size> (the `qwen3-<size>` model preset)."""
  preset = model_config.PRESETS[f"qwen3-{size}"]
  return {k: preset[k] for k in CHECKED_SHAPE}


def base(size: str, method: str):
  """Everything but the task: model, mesh, RL, SI, evaluation and checkpoints of one size."""
  c = configs.base_config()
  c.rl.loss = "gspo"
  c.rl.credit = CREDIT[method]
  c.si.correction = "repair"
  c.si.max_failed_per_prompt = 2
  c.si.repair_samples = 2        # G_rep: memory-bound at scale (repair rows are ~3x long)
  c.si.repair_max_new_tokens = 0  # = rl.max_new_tokens: a repair is about as long as y
  c.si.probe_examples = 0        # the counterfactual probe needs Task.probe_failures (synthetic)
  if size == "smoke":
    return _smoke(c)
  s = SCALES[size]
  c.model.init_from = checkpoint_dir(size)
  c.model.preset = f"qwen3-{size}"  # used only without init_from (planning, dry runs)
  c.model.overrides = expected_shape(size)
  c.model.remat = "full"
  c.model.dtype = "bfloat16"  # compute (and KV cache) in bfloat16; params and AdamW in float32
  c.mesh = dict(data=-1, fsdp=s.fsdp, tensor=s.tensor)

  c.rl.steps = 800
  c.rl.prompts_per_step = s.prompts
  c.rl.group_size = s.group
  c.rl.max_new_tokens = s.max_new
  c.rl.temperature = 1.0
  c.rl.minibatches = MINIBATCHES
  c.rl.microbatches = s.microbatches
  c.rl.optim.lr = s.lr
  c.rl.optim.warmup_steps = 20
  c.rl.optim.schedule = "constant"
  c.rl.optim.weight_decay = 0.1

  c.eval.every = 50
  c.eval.num_examples = 128
  c.eval.k = 4
  c.eval.temperature = 0.6
  c.eval.max_new_tokens = s.max_new
  c.eval.batch_size = s.prompts * s.group  # rows per sampler call: a rollout step's
  c.checkpoint.every = 50
  c.checkpoint.keep = 2
  return c


def _smoke(c):
  """A seconds-long run: one device, 2 RL steps of 2 prompts x 2 samples, 16 new tokens. The
  model is `model.init_from` when given (a tiny HF checkpoint in the tests), else a tiny random
  Qwen3 with the synthetic task's character tokenizer."""
  c.model.preset = "tiny"
  c.tokenizer.build = "arith"
  c.mesh = dict(data=1, fsdp=1, tensor=1)
  c.rl.steps = 2
  c.rl.prompts_per_step = 2
  c.rl.group_size = 2
  c.rl.max_new_tokens = 16
  c.rl.minibatches = 1
  c.rl.microbatches = 1
  c.rl.optim.lr = 1e-4
  # A random model never answers right: without an anchor requirement its failures are still
  # sent to the repair mode, so the smoke run goes through repair, audit and alignment.
  c.si.require_anchor = False
  c.eval.every = 2
  c.eval.num_examples = 2
  c.eval.k = 2
  c.eval.temperature = 1.0
  c.eval.max_new_tokens = 16
  c.eval.batch_size = 4
  c.checkpoint.every = 0
  c.log.tensorboard = False
  return c
