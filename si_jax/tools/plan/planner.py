"""One plan: the run a config describes, its programs compiled on a simulated mesh, by phase.

The phases run one after another: sample (prefill, decode), logprobs, update (gradient call,
optimizer step; `si_jax.tools.plan.programs`). A phase's peak per device is what stays on the
device besides the program's arguments (the optimizer state while sampling, the KL reference,
a LoRA base) plus the program's peak (`memory.Program.peak`); the run's peak is the largest
phase's, and the run fits an accelerator when that is at most its usable HBM.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from si_jax import train_state as ts
from si_jax.rl import batching
from si_jax.tools.plan.devices import Accelerator
from si_jax.tools.plan.inputs import (Workload, config_get, lora_config, make_mesh, model_for,
                                      planned_attention, workload)
from si_jax.tools.plan.memory import Phase, tree_bytes
from si_jax.tools.plan.programs import abstract_state, plan_logprobs, plan_sampler, plan_update

PHASES = ("sample", "logprobs", "update")


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
      config, jnp.float32 if lora_config(config) is not None else cfg.jnp_param_dtype)
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
  padding = batching.padding_note(wl.rollouts, wl.minibatches, wl.call_rows, wl.batch_shards)
  if padding:
    notes.append(padding)
  if config_get(config, "rl.decode_compaction"):
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
