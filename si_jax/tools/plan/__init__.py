"""si-plan: ahead-of-time memory plan of a run, on a simulated mesh, from shapes alone.

    si-plan --config experiments/configs/gsm8k_grpo.py:smoke --model qwen3-8b --devices 64 \\
        --accelerator h100 [--prompt_len 256] [--config.model.remat=full ...]

No weights and no data: every array is a `jax.ShapeDtypeStruct` with its sharding, and the
programs the trainer runs are lowered and compiled (`jax.jit(...).lower(...).compile()`) for
`--devices` simulated CPU devices (si-plan sets XLA_FLAGS=--xla_force_host_platform_device_count
itself, before jax starts). Per-device memory is read from each executable's
`memory_analysis()`. The programs, with the shapes the trainer would build:

  sample    `Sampler` prefill and decode loop (the trainer's jits, `Sampler._get_fns`) at the
            rollout batch (rl.prompts_per_step x rl.group_size rows, rounded up to the batch
            shards) and a KV cache of prompt + rl.max_new_tokens positions.
  logprobs  the pack stage's trainer log-probs (`batching.make_logprob_fn`'s jit) of the
            packed rows, in rl.logprob_microbatches calls.
  update    the `update.Updater` programs the trainer runs, with the config's policy term
            (`credit.policy_term`), its optimizer (`train_state.optimizer_from_config(
            config.rl.optim)`), model.remat and model.attention: the gradient call
            (`update_grads`) on one call's rows (the rollout rows of a mini-batch /
            rl.microbatches, `batching.call_rows`), each row `--prompt_len` (rounded up to
            16) + rl.max_new_tokens tokens wide, while the optimizer state stays on the
            device; and the optimizer step (`update_apply`). With model.lora.rank > 0 the
            state's params are the adapters and the frozen base is an extra argument.

A phase's peak per device is what stays on the device besides the program's arguments (the
optimizer state while sampling, the KL reference, a LoRA base) plus the program's peak,
arguments + temporaries + outputs - aliased (donated) bytes; the run's peak is the largest
phase's. Arguments are split into params / optimizer state / batch / KV cache by summing the
per-device shard sizes of their shardings (these sums equal XLA's argument size: tested).

What is exact and what is an estimate: argument, output and KV-cache bytes follow from shapes
and shardings and hold on any backend. Temporaries are XLA:CPU's buffer assignment of the
SPMD-partitioned program; a TPU or GPU compile fuses and schedules differently (and XLA:CPU may
upcast bfloat16 arithmetic to float32), so read them as an estimate. Attention that resolves
to cuDNN or splash on the named accelerator is planned as blockwise: the same memory class (no
T x T residual), and XLA:CPU cannot compile those kernels.

Usable HBM is a fraction of the accelerator's nominal capacity. On GPU it is the fraction JAX
preallocates, XLA_PYTHON_CLIENT_MEM_FRACTION: the value in si-plan's environment or
`--mem_fraction`, else `launch.GPU_MEM_FRACTION` (0.9), the value si-launch exports and
si-train sets when it is unset (JAX's own default is 0.75), so the verdict is computed against
the fraction the run gets. On TPU it is `TPU_USABLE_FRACTION` (90%): the runtime, XLA's
scratch and fragmentation take the rest.

When the plan does not fit, si-plan tries the memory levers (config fields) one at a time,
cumulatively, re-planning the affected programs after each, until it fits: attention
blockwise (if dense), fsdp over every batch device (if mesh.data > 1), bfloat16 compute
(model.dtype), remat dots, doubled micro-batches (while rows per batch shard allow), remat
full, doubled log-prob calls (rl.logprob_microbatches), bfloat16 params with float32
optimizer state (model.param_dtype, rl.optim.state_dtype), tensor parallelism over up to 8
devices (mesh.tensor, dividing the KV heads), LoRA r=64 (model.lora.rank). A lever is kept
only if it lowers the peak of a phase that does not fit. It prints the overrides that made it
fit, or that none did.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import os
import sys
import tempfile
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from si_jax import sampling
from si_jax import tables
from si_jax import shapes
from si_jax import sharding as shd
from si_jax.models import attention as attention_lib
from si_jax.models import config as mc
from si_jax.models import transformer
from si_jax.rl import batching
from si_jax.rl import credit as credit_lib
from si_jax import train_state as ts
from si_jax.rl import update as update_lib

GiB = 2 ** 30
TPU_USABLE_FRACTION = 0.9
MEM_FRACTION_ENV = "XLA_PYTHON_CLIENT_MEM_FRACTION"
DEVICE_FLAG = "--xla_force_host_platform_device_count"
PHASES = ("sample", "logprobs", "update")
LORA_LEVER_RANK = 64  # SRPO's adapters


@dataclasses.dataclass(frozen=True)
class Accelerator:
  """A device kind: nominal HBM in GiB, the jax backend it runs (for attention="auto") and
  the fraction of HBM a run may use (on GPU, what JAX preallocates)."""

  name: str
  hbm_gib: float
  backend: str
  fraction: float = TPU_USABLE_FRACTION

  @property
  def usable_bytes(self) -> float:
    return self.hbm_gib * GiB * self.fraction


ACCELERATORS = {
    "v5e": Accelerator("TPU v5e", 16, "tpu"),
    "v5p": Accelerator("TPU v5p", 95, "tpu"),
    "h100": Accelerator("H100", 80, "gpu"),
    "h200": Accelerator("H200", 141, "gpu"),
}


def gpu_mem_fraction(environ: Mapping[str, str] | None = None,
                     mem_fraction: float | None = None) -> float:
  """The fraction of GPU memory a run gets: `mem_fraction`, else XLA_PYTHON_CLIENT_MEM_FRACTION
  of `environ`, else what si-launch and si-train set (`launch.GPU_MEM_FRACTION`)."""
  from si_jax.tools import launch  # local: launch imports no JAX, but is a command module
  env = os.environ if environ is None else environ
  value = mem_fraction if mem_fraction else env.get(MEM_FRACTION_ENV) or launch.GPU_MEM_FRACTION
  try:
    value = float(value)
  except ValueError:
    raise ValueError(f"{MEM_FRACTION_ENV}={value!r}: must be a number in (0, 1]") from None
  if not 0 < value <= 1:
    raise ValueError(f"GPU memory fraction {value}: must be in (0, 1]")
  return value


def accelerator(name: str, environ: Mapping[str, str] | None = None,
                mem_fraction: float | None = None) -> Accelerator:
  """The accelerator `name`, a GPU with the memory fraction of `gpu_mem_fraction`."""
  if name not in ACCELERATORS:
    raise ValueError(f"unknown accelerator {name!r}; known: {sorted(ACCELERATORS)}")
  acc = ACCELERATORS[name]
  if acc.backend == "gpu":
    acc = dataclasses.replace(acc, fraction=gpu_mem_fraction(environ, mem_fraction))
  return acc


def device_env(n: int, environ: Mapping[str, str]) -> dict[str, str]:
  """The variables that give jax `n` simulated CPU devices: XLA_FLAGS with the device count
  (replacing a count already there, keeping other flags) and JAX_PLATFORMS=cpu. They must be
  in the environment before jax creates its backend."""
  if n < 1:
    raise ValueError(f"--devices must be >= 1, got {n}")
  flags = [f for f in environ.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_FLAG)]
  return {"XLA_FLAGS": " ".join(flags + [f"{DEVICE_FLAG}={n}"]), "JAX_PLATFORMS": "cpu"}


# ----------------------------------------------------------------------------- bytes


def itemsize(dtype) -> int:
  """Bytes per element (PRNG key arrays: their key data's)."""
  if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct((), dtype))
    return data.size * data.dtype.itemsize
  return np.dtype(dtype).itemsize


def shard_bytes(x) -> int:
  """Bytes of one device's shard of `x` (anything with shape, dtype and a sharding)."""
  return math.prod(x.sharding.shard_shape(tuple(x.shape))) * itemsize(x.dtype)


def global_bytes(x) -> int:
  return math.prod(x.shape) * itemsize(x.dtype)


def tree_bytes(tree, per_device: bool = True) -> int:
  """Sum over the leaves of `tree` of their per-device (or global) bytes."""
  fn = shard_bytes if per_device else global_bytes
  return sum(fn(x) for x in jax.tree.leaves(tree))


def abstract(tree_shapes, dtype, shardings):
  """ShapeDtypeStructs from a tree of shape tuples, one dtype, and a matching sharding tree."""
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(tuple(s), dtype, sharding=sh),
                      tree_shapes, shardings, is_leaf=lambda x: isinstance(x, tuple))


def _plain(tree):
  """ShapeDtypeStructs (shape, dtype, sharding only) of a compiled program's out_info."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      tree)


@dataclasses.dataclass
class Program:
  """Per-device memory of one compiled executable, in bytes (`memory_analysis()`), its
  arguments split by role (`parts`: params, opt_state, batch, kv_cache, ...) and notable
  outputs (`out_parts`: the KV cache prefill makes)."""

  name: str
  arguments: int
  outputs: int
  aliased: int
  temp: int
  generated_code: int
  compile_s: float
  parts: dict[str, int]
  out_parts: dict[str, int] = dataclasses.field(default_factory=dict)
  # bytes that stay on the device while this program runs without being its arguments (the
  # optimizer state during the update's gradient calls), besides its phase's resident bytes
  held: dict[str, int] = dataclasses.field(default_factory=dict)

  @property
  def peak(self) -> int:
    return self.arguments + self.temp + self.outputs - self.aliased + sum(self.held.values())

  @classmethod
  def from_compiled(cls, name: str, compiled, compile_s: float, parts: dict[str, int]):
    m = compiled.memory_analysis()
    if m is None:
      raise RuntimeError(f"{name}: this backend gives no memory_analysis()")
    return cls(name=name, arguments=m.argument_size_in_bytes, outputs=m.output_size_in_bytes,
               aliased=m.alias_size_in_bytes, temp=m.temp_size_in_bytes,
               generated_code=m.generated_code_size_in_bytes, compile_s=compile_s, parts=parts)


def compile_program(name: str, fn, args: tuple, parts: dict[str, int]) -> Program:
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  return Program.from_compiled(name, compiled, time.perf_counter() - t0, parts)


@dataclasses.dataclass
class Phase:
  """Programs that run one after another while `resident` bytes stay on the device."""

  name: str
  programs: list[Program]
  resident: dict[str, int]

  @property
  def peak(self) -> int:
    return sum(self.resident.values()) + max(p.peak for p in self.programs)


# ----------------------------------------------------------------------------- inputs


def _get(c, path: str, default=None):
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
  cfg = cfg.replace(attention=_get(config, "model.attention", "auto"),
                    attention_block_size=_get(config, "model.attention_block_size", 128))
  for name in ("param_dtype", "dtype"):
    value = _get(config, f"model.{name}")
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
  sizes = {k: int(_get(config, f"mesh.{k}", 1)) for k in shd.MESH_AXES}
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
  """The shapes the trainer builds for one RL step (see the module docstring)."""

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
  calls = int(_get(config, "rl.logprob_microbatches", 1))
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


def _lora(config):
  """The LoraConfig of config.model.lora, or None (off, or a config without the field)."""
  section = _get(config, "model.lora")
  if section is None:
    return None
  from si_jax.models import lora as lora_lib
  return lora_lib.from_config(section)


# ----------------------------------------------------------------------------- programs


@dataclasses.dataclass
class Abstracts:
  """The abstract (shape, dtype, sharding) state of a run: `state` (params = the trained
  params: the model's, or LoRA adapters), `model_params` (what the sampler runs), `frozen`
  (LoRA base, else None)."""

  state: ts.TrainState
  model_params: Any
  frozen: Any
  lora: Any


def abstract_state(config, cfg, mesh, optimizer) -> Abstracts:
  """Params in their shardings and the state `train_state.create` makes around them, in its
  shardings (`train_state.init_shardings`)."""
  params = abstract(transformer.param_shapes(cfg), cfg.jnp_param_dtype,
                    shd.param_shardings(cfg, mesh))
  lc = _lora(config)
  trained = params
  if lc is not None:
    from si_jax.models import lora as lora_lib
    trained = abstract(lora_lib.adapter_shapes(cfg, lc), jnp.float32,
                       lora_lib.adapter_shardings(cfg, lc, mesh))
  init = ts.init_fn(optimizer)
  state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                       jax.eval_shape(init, trained), ts.init_shardings(trained, optimizer, mesh))
  return Abstracts(state=state, model_params=params, frozen=params if lc else None, lora=lc)


def policy_batch(config, mesh, rows: int, width: int) -> dict:
  """The policy term's sub-batch as `batching.prepare` leaves it (UPDATE_KEYS), abstract."""
  def arr(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=shd.batch_sharding(mesh, shape))
  b = {"tokens": arr((rows, width), jnp.int32), "input_mask": arr((rows, width), jnp.bool_),
       "loss_mask": arr((rows, width), jnp.float32), "seq_mask": arr((rows,), jnp.float32),
       "advantages": arr((rows, width), jnp.float32),
       "old_logprobs": arr((rows, width), jnp.float32)}
  if config.rl.kl_beta > 0:
    b["ref_logprobs"] = arr((rows, width), jnp.float32)
  return b


def plan_update(config, cfg, mesh, wl: Workload, ab: Abstracts, optimizer) -> list[Program]:
  """The update's programs (`update.Updater`, the trainer's): the policy term's gradient call
  on one call's rows (`update_grads`, the accumulator donated; the optimizer state stays on
  the device meanwhile) and the optimizer step (`update_apply`, the state donated)."""
  term = credit_lib.policy_term(config)
  updater = update_lib.Updater(ab.state, mesh, cfg=cfg, chunk_size=config.model.logprob_chunk,
                               remat=config.model.remat, lora=ab.lora, frozen=ab.frozen)
  chunk = policy_batch(config, mesh, wl.micro_rows, wl.width)
  st = ab.state
  acc = update_lib.Accum(grads=st.params, loss=jax.ShapeDtypeStruct(
      (), jnp.float32, sharding=shd.replicated(mesh)))
  den = jax.ShapeDtypeStruct((), jnp.float32, sharding=shd.replicated(mesh))
  args = (st.params, acc, chunk, den) + ((ab.frozen,) if ab.lora is not None else ())
  parts = {"params": tree_bytes(st.params), "accumulator": tree_bytes(acc),
           "batch": tree_bytes(chunk) + tree_bytes(den)}
  if ab.frozen is not None:
    parts["frozen_base"] = tree_bytes(ab.frozen)
  grads = compile_program("update_grads", updater.accumulate_program(term, chunk), args, parts)
  grads.held = {"opt_state": tree_bytes(st.opt_state)}
  empty = jax.ShapeDtypeStruct((), jnp.bool_, sharding=shd.replicated(mesh))
  apply = compile_program(
      "update_apply", updater.apply_program(optimizer), (st, acc, empty),
      {"params": tree_bytes(st.params), "opt_state": tree_bytes(st.opt_state),
       "counters": tree_bytes((st.step, st.skipped, st.bad_streak)),
       "accumulator": tree_bytes(acc), "batch": tree_bytes(empty)})
  return [grads, apply]


def plan_logprobs(config, cfg, mesh, wl: Workload, ab: Abstracts) -> Program:
  """The jit of `batching.make_logprob_fn` over one of its calls' share of the packed rows."""
  shape = (wl.logprob_rows, wl.width)
  b = shd.batch_sharding(mesh, shape)
  fn = functools.partial(transformer.token_logprobs, cfg=cfg, temperature=config.rl.temperature,
                         chunk_size=config.model.logprob_chunk)
  fn = jax.jit(shd.on_mesh(fn, mesh), in_shardings=(shd.param_shardings(cfg, mesh), b, b),
               out_shardings=b)
  tokens = jax.ShapeDtypeStruct(shape, jnp.int32, sharding=b)
  mask = jax.ShapeDtypeStruct(shape, jnp.bool_, sharding=b)
  return compile_program("logprobs", fn, (ab.model_params, tokens, mask),
                         {"params": tree_bytes(ab.model_params),
                          "batch": tree_bytes((tokens, mask))})


def plan_sampler(config, cfg, mesh, wl: Workload, ab: Abstracts) -> tuple[Program, Program]:
  """The trainer's `Sampler` jits: prefill [B, P] -> (logits, cache); decode loop (cache
  donated)."""
  c = config.rl
  sampler = sampling.Sampler(cfg, mesh, max_len=cfg.max_position_embeddings)
  sp = sampling.SamplingParams(max_new_tokens=c.max_new_tokens, temperature=c.temperature,
                               top_p=c.top_p, top_k=c.top_k, stop_ids=(1,), pad_id=0)
  B, P = wl.sample_batch, wl.prompt_len
  prefill, decode = sampler._get_fns(B, P, sp)  # pylint: disable=protected-access
  bs = shd.batch_sharding(mesh, (B, P))
  tokens = jax.ShapeDtypeStruct((B, P), jnp.int32, sharding=bs)
  mask = jax.ShapeDtypeStruct((B, P), jnp.bool_, sharding=bs)
  params_b = tree_bytes(ab.model_params)
  t0 = time.perf_counter()
  compiled = prefill.lower(ab.model_params, tokens, mask).compile()
  logits, cache = _plain(compiled.out_info)
  kv = tree_bytes((cache.k, cache.v))
  pre = Program.from_compiled("prefill", compiled, time.perf_counter() - t0,
                              {"params": params_b, "batch": tree_bytes((tokens, mask))})
  pre.out_parts["kv_cache"] = kv
  key = jax.ShapeDtypeStruct((), jax.eval_shape(lambda: jax.random.key(0)).dtype,
                             sharding=shd.replicated(mesh))
  dec = compile_program("decode", decode, (ab.model_params, logits, cache, key),
                        {"params": params_b, "kv_cache": kv,
                         "batch": tree_bytes(logits) + tree_bytes(key)
                         + tree_bytes((cache.valid, cache.index, cache.positions))})
  return pre, dec


# ----------------------------------------------------------------------------- the plan


@dataclasses.dataclass
class Plan:
  """Everything si-plan found for one (config, model, devices)."""

  model: str
  num_params: int
  kv_heads: int
  devices: int
  mesh: dict[str, int]
  workload: Workload
  numerics: dict[str, str]
  notes: list[str]
  phases: dict[str, Phase]
  opt_state_global: int
  params_global: int
  kv_cache: int

  def peak(self) -> tuple[int, str]:
    """(bytes, phase) of the largest phase."""
    name = max(self.phases, key=lambda n: self.phases[n].peak)
    return self.phases[name].peak, name

  def fits(self, acc: Accelerator) -> bool:
    return self.peak()[0] <= acc.usable_bytes

  def failing(self, acc: Accelerator) -> list[str]:
    return [n for n, p in self.phases.items() if p.peak > acc.usable_bytes]

  def per_device(self) -> dict[str, int]:
    """The headline numbers: the model's params (a LoRA base included), the trained params'
    optimizer state, the update's temporaries, the KV cache, the peak."""
    up = self.phases.get("update")
    grads, apply = (up.programs[0], up.programs[-1]) if up else (None, None)
    parts = grads.parts if up else {}
    out = {"params": parts.get("frozen_base", parts.get("params", 0)),
           "opt_state": apply.parts.get("opt_state", 0) if up else 0,
           "update_temp": max(grads.temp, apply.temp) if up else 0, "kv_cache": self.kv_cache}
    if "frozen_base" in parts:
      out["adapters"] = parts["params"]
    out["peak"] = self.peak()[0]
    return out

  def to_json(self) -> dict[str, Any]:
    return dict(model=self.model, num_params=self.num_params, kv_heads=self.kv_heads,
                devices=self.devices,
                mesh=self.mesh, workload=dataclasses.asdict(self.workload),
                numerics=self.numerics, notes=self.notes,
                phases={n: dict(peak=p.peak, resident=p.resident,
                                programs=[dict(dataclasses.asdict(g), peak=g.peak)
                                          for g in p.programs])
                        for n, p in self.phases.items()},
                opt_state_global=self.opt_state_global, params_global=self.params_global,
                kv_cache=self.kv_cache, per_device=self.per_device(),
                peak_phase=self.peak()[1])


def plan(config, *, devices: int, acc: Accelerator, model: str | None = None,
         prompt_len: int = 256, phases: Sequence[str] = PHASES,
         previous: Plan | None = None) -> Plan:
  """Plans `phases` of the run `config` describes on `devices` simulated devices (see the
  module docstring). `previous`: a plan of the same run whose other phases are kept."""
  unknown = [p for p in phases if p not in PHASES]
  if unknown:
    raise ValueError(f"unknown phase(s) {unknown}; known: {list(PHASES)}")
  from si_jax import configs  # local: configs imports the task registry
  configs.validate(config)
  mesh = make_mesh(config, devices)
  cfg, desc = model_for(config, model)
  wl = workload(config, mesh, prompt_len)
  if wl.width > cfg.max_position_embeddings:
    raise ValueError(f"rows of {wl.width} tokens (--prompt_len {prompt_len} + "
                     f"config.rl.max_new_tokens {wl.new_tokens}) exceed the model's "
                     f"max_position_embeddings {cfg.max_position_embeddings}")
  cfg, attn_note = planned_attention(cfg, acc, wl.width)
  rl_updates = config.rl.steps * config.rl.epochs * config.rl.minibatches
  master = ts.master_weights_for(  # LoRA trains float32 adapters: no master for them
      config, jnp.float32 if _lora(config) is not None else cfg.jnp_param_dtype)
  optimizer = ts.optimizer_from_config(config.rl.optim, max(rl_updates, 1), master)
  ab = abstract_state(config, cfg, mesh, optimizer)
  opt_b = tree_bytes(ab.state.opt_state)
  resident = {"opt_state": opt_b}
  if ab.lora is not None:
    resident.update(frozen_base=tree_bytes(ab.frozen), adapters=tree_bytes(ab.state.params))
  if config.rl.kl_beta > 0:
    resident["kl_reference"] = tree_bytes(ab.model_params)
  out = dict(previous.phases) if previous is not None else {}
  if "sample" in phases:
    out["sample"] = Phase("sample", list(plan_sampler(config, cfg, mesh, wl, ab)), resident)
  if "logprobs" in phases:
    out["logprobs"] = Phase("logprobs", [plan_logprobs(config, cfg, mesh, wl, ab)], resident)
  if "update" in phases:
    out["update"] = Phase("update", plan_update(config, cfg, mesh, wl, ab, optimizer),
                          {k: v for k, v in resident.items() if k == "kl_reference"})
  notes = [f"attention: {attn_note}"]
  if config.rl.credit != "outcome":
    notes.append(f"credit {config.rl.credit!r} adds loss terms whose rows vary per step "
                 f"(e.g. SI's repairs): planned is the policy term on the rollout rows")
  if wl.rows > wl.rollouts:
    notes.append(f"the trainer pads {wl.rollouts} rollout rows to {wl.rows} (a multiple of "
                 f"{wl.minibatches} mini-batches x {wl.call_rows} rows per update call, a "
                 f"multiple of the {wl.batch_shards} "
                 f"batch shards)")
  if _get(config, "rl.decode_compaction"):
    notes.append("rl.decode_compaction: planned is the decode loop at the full batch (the "
                 "first segment's shapes; later segments have fewer rows)")
  dtype_name = lambda d: np.dtype(d).name  # noqa: E731
  opt_leaves = [x for x in jax.tree.leaves(ab.state.opt_state) if x.ndim]
  numerics = dict(params=cfg.param_dtype, compute=cfg.dtype,
                  opt_state=dtype_name(opt_leaves[-1].dtype) if opt_leaves else "-",
                  master_weights="float32" if master else "off",
                  remat=config.model.remat, attention=cfg.attention,
                  lora=f"r={ab.lora.rank}" if ab.lora else "off")
  kv = 0
  if "sample" in out:
    kv = out["sample"].programs[1].parts["kv_cache"]
  elif previous is not None:
    kv = previous.kv_cache
  return Plan(model=desc, num_params=cfg.num_params(), kv_heads=cfg.num_kv_heads,
              devices=devices,
              mesh=dict(mesh.shape), workload=wl, numerics=numerics, notes=notes, phases=out,
              opt_state_global=tree_bytes(ab.state.opt_state, per_device=False),
              params_global=tree_bytes(ab.model_params, per_device=False), kv_cache=kv)


# ----------------------------------------------------------------------------- levers


@dataclasses.dataclass(frozen=True)
class Lever:
  """Config overrides (dotted path -> value) and the phases whose programs they change."""

  name: str
  overrides: tuple[tuple[str, Any], ...]
  phases: tuple[str, ...] = PHASES


def levers(config, p: Plan, acc: Accelerator) -> Iterator[Lever]:
  """The levers that apply to a plan that does not fit, in the order of the module
  docstring (remat and micro-batches only while the update does not fit)."""
  m = config.model
  if m.attention == "dense":
    yield Lever("model.attention=blockwise", (("model.attention", "blockwise"),))
  if p.mesh["data"] > 1:
    fsdp = p.mesh["data"] * p.mesh["fsdp"]
    yield Lever(f"mesh.data=1, mesh.fsdp={fsdp}", (("mesh.data", 1), ("mesh.fsdp", fsdp)))
  if p.numerics["compute"] != "bfloat16":
    yield Lever("model.dtype=bfloat16", (("model.dtype", "bfloat16"),))
  if "update" in p.failing(acc):
    if m.remat == "none":
      yield Lever("model.remat=dots", (("model.remat", "dots"),), ("update",))
    wl = p.workload
    if wl.micro_rows // wl.batch_shards >= 2:
      n = config.rl.microbatches * 2
      yield Lever(f"rl.microbatches={n}", (("rl.microbatches", n),), ("update", "logprobs"))
    if m.remat in ("none", "dots"):
      yield Lever("model.remat=full", (("model.remat", "full"),), ("update",))
  if "logprobs" in p.failing(acc) and p.workload.logprob_rows // p.workload.batch_shards >= 2:
    n = p.workload.logprob_calls * 2
    yield Lever(f"rl.logprob_microbatches={n}", (("rl.logprob_microbatches", n),),
                ("logprobs", "update"))
  if p.numerics["params"] != "bfloat16":
    yield Lever("model.param_dtype=bfloat16, rl.optim.state_dtype=float32",
                (("model.param_dtype", "bfloat16"), ("rl.optim.state_dtype", "float32")))
  tensor = next((t for t in (8, 4, 2) if p.kv_heads % t == 0 and p.mesh["fsdp"] % t == 0), 1)
  if p.mesh["tensor"] == 1 and tensor > 1:  # heads, MLP and vocab split, e.g. for decode
    fsdp = p.mesh["fsdp"] // tensor
    yield Lever(f"mesh.fsdp={fsdp}, mesh.tensor={tensor}",
                (("mesh.fsdp", fsdp), ("mesh.tensor", tensor)))
  if _get(config, "model.lora.rank") == 0:
    yield Lever(f"model.lora.rank={LORA_LEVER_RANK}", (("model.lora.rank", LORA_LEVER_RANK),))


def next_lever(config, p: Plan, acc: Accelerator, skip: Sequence[str] = ()) -> Lever | None:
  """The first of `levers` not named in `skip` (levers tried without gain), or None."""
  return next((lv for lv in levers(config, p, acc) if lv.name not in skip), None)


def apply_overrides(config, overrides) -> Any:
  """A copy of `config` with dotted-path overrides set."""
  c = copy.deepcopy(config)
  for path, value in overrides:
    *parents, name = path.split(".")
    node = c
    for part in parents:
      node = node[part]
    node[name] = value
  return c


@dataclasses.dataclass
class Search:
  """Levers applied, cumulatively, with the plan after each; levers tried and dropped
  because the peak did not go down, with the peak they gave."""

  steps: list[tuple[Lever, Plan]]
  fits: bool
  dropped: list[tuple[Lever, int]] = dataclasses.field(default_factory=list)

  @property
  def overrides(self) -> list[str]:
    return [lever.name for lever, _ in self.steps]


def find_fit(config, p: Plan, acc: Accelerator, *, model: str | None, prompt_len: int,
             max_steps: int = 12, log: Callable[[str], None] | None = None) -> Search:
  """Applies `next_lever` until the plan fits `acc`, no lever is left, or `max_steps` plans
  were made. A lever that does not lower the peak of the phases it changes that do not fit
  (or raises the overall peak) is dropped again and not tried twice: XLA:CPU, for one, can
  make bfloat16 compute cost more than float32."""
  search = Search(steps=[], fits=False)
  tried = 0
  while not p.fits(acc) and tried < max_steps:
    lever = next_lever(config, p, acc, skip=[lv.name for lv, _ in search.dropped])
    if lever is None:
      break
    cand = apply_overrides(config, lever.overrides)
    # Re-plans the phases the lever changes (of those planned) and keeps the others.
    phases = [ph for ph in lever.phases if ph in p.phases]
    q = plan(cand, devices=p.devices, acc=acc, model=model, prompt_len=prompt_len,
             phases=phases, previous=None if set(phases) == set(p.phases) else p)
    tried += 1
    # Kept when it lowers the largest peak among the phases it changes that do not fit,
    # without raising the overall peak.
    targets = [ph for ph in phases if ph in p.failing(acc)] or phases
    worst = lambda x: max(x.phases[ph].peak for ph in targets)  # noqa: E731
    kept = worst(q) < worst(p) and q.peak()[0] <= p.peak()[0]
    if log:
      log(f"  lever {lever.name}: peak {_gib(q.peak()[0])} GiB in {q.peak()[1]}"
          + ("" if kept else " (no gain: dropped)"))
    if kept:
      config, p = cand, q
      search.steps.append((lever, q))
    else:
      search.dropped.append((lever, q.peak()[0]))
  search.fits = p.fits(acc)
  return search


# ----------------------------------------------------------------------------- reports


def _all(acc: Accelerator) -> dict[str, Accelerator]:
  """Every accelerator, the GPUs with `acc`'s memory fraction when it is a GPU."""
  gpu = acc.fraction if acc.backend == "gpu" else None
  return {k: dataclasses.replace(a, fraction=gpu) if gpu and a.backend == "gpu" else
          accelerator(k) for k, a in ACCELERATORS.items()}


def _gib(n: float) -> str:
  return f"{n / GiB:.2f}"


def report(p: Plan, acc: Accelerator) -> str:
  """A plan as text: workload, per-device memory per program and phase, verdict."""
  wl = p.workload
  mesh = " ".join(f"{k}={v}" for k, v in p.mesh.items())
  big = p.peak()[0] >= GiB / 4
  unit, scale = ("GiB", GiB) if big else ("MiB", 2 ** 20)
  fmt = lambda n: f"{n / scale:.2f}"  # noqa: E731
  lines = [
      f"{p.model} ({p.num_params / 1e9:.2f}B params), mesh {mesh} on {p.devices} simulated "
      f"devices, for {acc.name} ({acc.hbm_gib:g} GiB, {_gib(acc.usable_bytes)} usable)",
      f"  rollouts: {wl.rollouts} rows of a {wl.prompt_len}-token prompt (assumed, "
      f"--prompt_len) + {wl.new_tokens} new tokens; sampler batch {wl.sample_batch}, KV cache "
      f"{wl.cache_len} positions",
      f"  update: {wl.rows} rows x {wl.width} tokens in {wl.minibatches} mini-batches of "
      f"{wl.minibatch_rows}, update calls of {wl.micro_rows} rows "
      f"({wl.micro_rows // wl.batch_shards} per batch shard); log-probs in calls of "
      f"{wl.logprob_rows} rows",
      "  numerics: " + ", ".join(f"{k} {v}" for k, v in p.numerics.items()),
  ]
  lines += [f"  note: {n}" for n in p.notes]
  progs = [(ph, g) for ph in p.phases.values() for g in ph.programs]
  lines.append(f"  {'per device, ' + unit:34s}" + "".join(f"{g.name:>10s}" for _, g in progs))
  roles = list(dict.fromkeys(k for _, g in progs for k in g.parts))
  for role in roles:
    lines.append(f"  {'argument: ' + role:34s}" + "".join(
        f"{fmt(g.parts[role]) if role in g.parts else '-':>10s}" for _, g in progs))
  for role in dict.fromkeys(k for _, g in progs for k in g.out_parts):
    lines.append(f"  {'output: ' + role:34s}" + "".join(
        f"{fmt(g.out_parts[role]) if role in g.out_parts else '-':>10s}" for _, g in progs))
  rows = [("arguments (XLA)", lambda ph, g: g.arguments),
          ("temporaries", lambda ph, g: g.temp),
          ("outputs - aliased (donated)", lambda ph, g: g.outputs - g.aliased),
          ("resident besides the arguments",
           lambda ph, g: sum(ph.resident.values()) + sum(g.held.values())),
          ("peak", lambda ph, g: sum(ph.resident.values()) + g.peak)]
  for name, fn in rows:
    lines.append(f"  {name:34s}" + "".join(f"{fmt(fn(ph, g)):>10s}" for ph, g in progs))
  lines.append(f"  {'compile s':34s}" + "".join(f"{g.compile_s:>10.1f}" for _, g in progs))
  d = p.per_device()
  if d["opt_state"] and d["params"]:
    lines.append(
        f"  params {fmt(d['params'])} {unit} per device of {fmt(p.params_global)} in all "
        f"({p.params_global / d['params']:.1f} ways); optimizer state {fmt(d['opt_state'])} "
        f"{unit} per device of {fmt(p.opt_state_global)} ("
        f"{p.opt_state_global / d['opt_state']:.1f} ways)")
  peak, phase = p.peak()
  verdict = "fits" if p.fits(acc) else "does not fit"
  others = ", ".join(f"{k} {'yes' if p.fits(a) else 'no'}" for k, a in _all(acc).items())
  lines.append(f"  verdict: {verdict} on {acc.name} (peak {_gib(peak)} GiB in {phase}, usable "
               f"{_gib(acc.usable_bytes)} GiB = {acc.fraction:g} of {acc.hbm_gib:g}); fits: "
               f"{others}")
  return "\n".join(lines)


TABLE_COLUMNS = ("model", "devices", "mesh", "params", "opt state", "update temporaries",
                 "KV cache", "peak (phase)", "v5e", "v5p", "H100", "H200", "lever")


def table_row(p: Plan, acc: Accelerator, search: Search | None) -> dict[str, Any]:
  d = p.per_device()
  peak, phase = p.peak()
  if p.fits(acc):
    lever = f"fits on {acc.name} as is"
  elif search is None:
    lever = "(not searched)"
  elif search.fits:
    last = search.steps[-1][1]
    lever = (f"{'; '.join(search.overrides)} -> {_gib(last.peak()[0])} GiB "
             f"({last.peak()[1]}) on {acc.name}")
  else:
    best = search.steps[-1][1] if search.steps else p
    lever = (f"none fits {acc.name}; after {'; '.join(search.overrides) or 'no lever'}: "
             f"{_gib(best.peak()[0])} GiB ({best.peak()[1]})")
  mesh = "x".join(str(p.mesh[k]) for k in shd.MESH_AXES)
  return {"model": p.model, "devices": p.devices, "mesh": mesh, "params": _gib(d["params"]),
          "opt state": _gib(d["opt_state"]), "update temporaries": _gib(d["update_temp"]),
          "KV cache": _gib(d["kv_cache"]), "peak (phase)": f"{_gib(peak)} ({phase})",
          **{a.name.replace("TPU ", ""): "yes" if p.fits(a) else "no"
             for a in _all(acc).values()}, "lever": lever}


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
  return tables.markdown_table(TABLE_COLUMNS, [[r[c] for c in TABLE_COLUMNS] for r in rows])


# ----------------------------------------------------------------------------- CLI


def _csv(text: str, kind=str) -> list:
  return [kind(x) for x in text.split(",") if x.strip()]


def _define_flags():
  from absl import flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "experiment config file, optionally with "
                                  ":variant", lock_config=True)
  flags.DEFINE_string("model", "", "comma-separated model presets replacing the config's "
                      "model shape (e.g. qwen3-8b,qwen3-32b); empty: the config's model")
  flags.DEFINE_string("devices", "8", "comma-separated simulated device counts")
  flags.DEFINE_enum("accelerator", "h100", sorted(ACCELERATORS), "HBM to plan against")
  flags.DEFINE_float("mem_fraction", None, "GPU: the fraction of memory the run gets (default "
                     "$XLA_PYTHON_CLIENT_MEM_FRACTION, else what si-launch / si-train set: "
                     "0.9)")
  flags.DEFINE_integer("prompt_len", 256, "prompt tokens assumed (rounded up to 16)")
  flags.DEFINE_string("phases", ",".join(PHASES), f"subset of {','.join(PHASES)}")
  flags.DEFINE_bool("levers", True, "when it does not fit, search the memory levers")
  flags.DEFINE_string("json", "", "also write every plan here")
  flags.DEFINE_string("markdown", "", "also write the summary table here")


def _main(argv) -> None:
  from absl import flags
  FLAGS = flags.FLAGS
  if len(argv) > 1:
    raise SystemExit(f"si-plan: error: unexpected arguments {argv[1:]}")
  try:
    acc = accelerator(FLAGS.accelerator, mem_fraction=FLAGS.mem_fraction)
    devices = _csv(FLAGS.devices, int)
    models = _csv(FLAGS.model) or [None]
    phases = _csv(FLAGS.phases)
  except ValueError as e:
    raise SystemExit(f"si-plan: error: {e}") from None
  config = FLAGS.config
  rows, plans = [], []
  t_all = time.perf_counter()
  for model in models:
    for n in devices:
      t0 = time.perf_counter()
      try:
        p = plan(config, devices=n, acc=acc, model=model, prompt_len=FLAGS.prompt_len,
                 phases=phases)
      except ValueError as e:
        if os.environ.get("SI_TRACEBACK") == "1":
          raise
        raise SystemExit(f"si-plan: error: {e}") from None
      print(report(p, acc), flush=True)
      search = None
      if FLAGS.levers and not p.fits(acc):
        print(f"  searching levers for {acc.name}:", flush=True)
        search = find_fit(config, p, acc, model=model, prompt_len=FLAGS.prompt_len,
                          log=lambda s: print(s, flush=True))
        print(f"  {'fits with' if search.fits else 'no lever made it fit; tried'}: "
              f"{'; '.join(search.overrides) or '-'}", flush=True)
      print(f"  planned in {time.perf_counter() - t0:.0f} s\n", flush=True)
      rows.append(table_row(p, acc, search))
      plans.append(dict(plan=p.to_json(), seconds=time.perf_counter() - t0,
                        levers=[dict(lever=lv.name, plan=q.to_json())
                                for lv, q in (search.steps if search else [])],
                        dropped=[dict(lever=lv.name, peak=peak)
                                 for lv, peak in (search.dropped if search else [])],
                        fits_after_levers=search.fits if search else p.fits(acc)))
  table = markdown_table(rows)
  print(table)
  print(f"\nsi-plan: {len(plans)} plan(s) in {time.perf_counter() - t_all:.0f} s")
  if FLAGS.markdown:
    with open(FLAGS.markdown, "w", encoding="utf-8") as f:
      f.write(table + "\n")
  if FLAGS.json:
    with open(FLAGS.json, "w", encoding="utf-8") as f:
      json.dump(dict(argv=sys.argv, accelerator=dataclasses.asdict(acc),
                     usable_fraction=acc.fraction, plans=plans), f, indent=1)
      f.write("\n")


def _device_arg(argv: Sequence[str]) -> int:
  """The largest of --devices (parsed before absl, which runs after jax may start)."""
  value = "8"
  for i, a in enumerate(argv):
    if a.startswith("--devices="):
      value = a.split("=", 1)[1]
    elif a == "--devices" and i + 1 < len(argv):
      value = argv[i + 1]
  try:
    counts = _csv(value, int)
  except ValueError:
    counts = []
  if not counts or min(counts) < 1:
    raise SystemExit(f"si-plan: error: --devices must be comma-separated integers >= 1, got "
                     f"{value!r}")
  return max(counts)


def run() -> None:
  """Console-script entry point (`si-plan`): simulated devices first, then the plan."""
  os.environ.update(device_env(_device_arg(sys.argv[1:]), os.environ))
  jax.config.update("jax_platforms", "cpu")
  from absl import app
  _define_flags()
  from absl import flags
  flags.mark_flags_as_required(["config"])
  app.run(_main)


if __name__ == "__main__":
  run()
