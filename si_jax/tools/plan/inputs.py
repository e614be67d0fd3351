"""What a run would build from its config, without weights or data: its mesh on the simulated
devices, its model shape, the shapes of one RL step (`Workload`) and the attention planned.

Attention that resolves to cuDNN or splash on the named accelerator is planned as blockwise:
the same memory class (no T x T residual), and XLA:CPU cannot compile those kernels.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile

import jax

from si_jax import shapes
from si_jax import sharding as shd
from si_jax.models import attention as attention_lib
from si_jax.models import config as mc
from si_jax.rl import batching
from si_jax.tools.plan.devices import DEVICE_FLAG, Accelerator


def config_get(c, path: str, default=None):
  """config field at dotted `path`, or `default` where a part is absent (older configs)."""
  for part in path.split("."):
    if not hasattr(c, "get") or part not in c:
      return default
    c = c[part]
  return c


def model_for(config, model: str | None = None) -> tuple[mc.ModelConfig, str]:
  """(ModelConfig, description) the run would build, without weights or a tokenizer when it
  can: `model` (a preset name) replaces the config's model shape; else model.init_from's
  config (an HF dir's config.json, an si-convert dir's model_config.json, a workdir's run
  config), else model.preset + model.overrides (vocab_size 0: the tokenizer's). Then the
  run settings of config.model: attention, attention_block_size, param_dtype, dtype (as
  si-train applies them)."""
  from si_jax.train import workdir as workdir_lib  # local: it imports the checkpoint stack
  m = config.model
  if model:
    if model not in mc.PRESETS:
      raise ValueError(f"--model: unknown preset {model!r}; known: {sorted(mc.PRESETS)}")
    family = "qwen3" if model.startswith("qwen3-") else m.family
    cfg, desc = mc.preset(model, family), model
  elif m.init_from:
    cfg, desc = _init_from_config(m.init_from), f"init_from {m.init_from}"
  else:
    over = dict(m.overrides)
    if over.get("vocab_size", 0) in (0, None):  # the tokenizer's vocabulary
      with tempfile.TemporaryDirectory() as tmp:
        cfg = workdir_lib.model_config_for(config, workdir_lib.setup_tokenizer(config, tmp))
    else:
      cfg = mc.preset(m.preset, m.family, **over)
    desc = f"preset {m.preset}" + (" + overrides" if over else "")
  cfg = cfg.replace(attention=config_get(config, "model.attention", "auto"),
                    attention_block_size=config_get(config, "model.attention_block_size", 128))
  for name in ("param_dtype", "dtype"):
    value = config_get(config, f"model.{name}")
    if value:
      cfg = cfg.replace(**{name: value})
  return cfg, desc


def _init_from_config(path: str) -> mc.ModelConfig:
  from si_jax.train import workdir as workdir_lib
  from si_jax.models import convert
  if workdir_lib.is_workdir(path):
    return model_for(workdir_lib.read_config(path))[0]
  si_cfg = os.path.join(path, convert.MODEL_CONFIG_FILE)
  if os.path.exists(si_cfg):
    with open(si_cfg, encoding="utf-8") as f:
      return convert.config_from_dict(json.load(f), source=si_cfg)
  hf_cfg = os.path.join(path, "config.json")
  if os.path.exists(hf_cfg):
    with open(hf_cfg, encoding="utf-8") as f:
      return mc.from_hf_config(json.load(f), source=hf_cfg)
  raise ValueError(f"config.model.init_from={path!r} has no config.json or "
                   f"{convert.MODEL_CONFIG_FILE} to read the model shape from; or give si-plan "
                   f"--model <preset>")


def make_mesh(config, devices: int):
  """The run's mesh (config.mesh) on the first `devices` devices; errors name config.mesh."""
  have = jax.device_count()
  if have < devices:
    raise ValueError(f"si-plan needs {devices} devices but jax has {have}: XLA_FLAGS must say "
                     f"{DEVICE_FLAG}={devices} before jax starts (si-plan --devices "
                     f"{devices} sets it)")
  sizes = {k: int(config_get(config, f"mesh.{k}", 1)) for k in shd.MESH_AXES}
  desc = ", ".join(f"{k}={v}" for k, v in sizes.items())
  try:
    mesh = shd.make_mesh(**sizes, devices=jax.devices()[:devices])
  except ValueError as e:
    raise ValueError(f"config.mesh ({desc}) does not fit --devices {devices}: {e}") from None
  if mesh.devices.size != devices:
    raise ValueError(f"config.mesh ({desc}) uses {mesh.devices.size} devices, not --devices "
                     f"{devices}: make the sizes multiply to {devices} or set one to -1")
  return mesh


@dataclasses.dataclass(frozen=True)
class Workload:
  """The shapes the trainer builds for one RL step (see `si_jax.tools.plan.programs`)."""

  rollouts: int           # prompts_per_step * group_size
  sample_batch: int       # rollouts rounded up to the sampler's row ladder (shapes.rung)
  prompt_len: int         # the assumed prompt length, rounded up to the sampler's bucket
  new_tokens: int
  rows: int               # packed rows: whole update calls per mini-batch
  unit: int               # rows are padded to a multiple of this: minibatches x call rows
  minibatches: int
  microbatches: int
  logprob_calls: int      # rl.logprob_microbatches: rollouts / this = rows per log-prob call
  width: int              # packed row width: bucketed prompt + new tokens
  batch_shards: int
  call_rows: int = 0      # rows per update call (batching.call_rows)
  logprob_rows: int = 0   # rows per log-prob call

  @property
  def cache_len(self) -> int:
    return self.prompt_len + self.new_tokens

  @property
  def minibatch_rows(self) -> int:
    return self.rows // self.minibatches

  @property
  def micro_rows(self) -> int:
    return self.call_rows or self.minibatch_rows // self.microbatches


def workload(config, mesh, prompt_len: int) -> Workload:
  """The trainer's shapes (`Run.__init__`: call rows, log-prob rows, the sampler's rung)."""
  c = config.rl
  if prompt_len < 1:
    raise ValueError(f"--prompt_len must be >= 1, got {prompt_len}")
  div = shd.batch_divisor(mesh)
  rollouts = c.prompts_per_step * c.group_size
  calls = int(config_get(config, "rl.logprob_microbatches", 1))
  per_call = batching.call_rows(-(-rollouts // (c.minibatches * c.microbatches)), None,
                                c.minibatches, div)
  unit = c.minibatches * per_call
  plen = shapes.round_up(prompt_len, shapes.QUANTUM)  # the trainer's policy prompt width
  return Workload(rollouts=rollouts, sample_batch=shapes.rung(rollouts, div), prompt_len=plen,
                  new_tokens=c.max_new_tokens, rows=shapes.round_up(rollouts, unit), unit=unit,
                  minibatches=c.minibatches, microbatches=c.microbatches, logprob_calls=calls,
                  width=plen + c.max_new_tokens, batch_shards=div, call_rows=per_call,
                  logprob_rows=shapes.round_up(-(-rollouts // calls), div))


def planned_attention(cfg: mc.ModelConfig, acc: Accelerator, seq_len: int
                      ) -> tuple[mc.ModelConfig, str]:
  """cfg with the attention XLA:CPU can compile in the same memory class, and a note saying
  what the accelerator would run."""
  target = attention_lib.resolve(cfg.attention, seq_len=seq_len,
                                 block_size=cfg.attention_block_size, dtype=cfg.jnp_dtype,
                                 head_dim=cfg.head_dim, backend=acc.backend)
  if target in ("cudnn", "splash"):
    return (cfg.replace(attention="blockwise"),
            f"{cfg.attention} -> {target} on {acc.name}, planned as blockwise")
  return cfg.replace(attention=target), f"{cfg.attention} -> {target}"


def lora_config(config):
  """The LoraConfig of config.model.lora, or None (off, or a config without the field)."""
  section = config_get(config, "model.lora")
  if section is None:
    return None
  from si_jax.models import lora as lora_lib
  return lora_lib.from_config(section)
