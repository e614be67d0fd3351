"""The search over memory levers: config overrides that lower a plan's peak until it fits.

When the plan does not fit, si-plan tries the memory levers (config fields) one at a time,
cumulatively, re-planning the affected programs after each, until it fits: attention
blockwise (if dense), fsdp over every batch device (if mesh.data > 1), bfloat16 compute
(model.dtype), remat dots, doubled micro-batches (while rows per batch shard allow), remat
full, doubled log-prob calls (rl.logprob_microbatches), bfloat16 params with float32
optimizer state (model.param_dtype, rl.optim.state_dtype), tensor parallelism over up to 8
devices (mesh.tensor, dividing the KV heads), LoRA r=64 (model.lora.rank). A lever is kept
only if it lowers the peak of a phase that does not fit. si-plan prints the overrides that
made it fit, or that none did.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, Iterator, Sequence

from si_jax.tools.plan.devices import Accelerator, gib
from si_jax.tools.plan.inputs import config_get
from si_jax.tools.plan.planner import PHASES, Plan, plan

LORA_LEVER_RANK = 64  # SRPO's adapters


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
  if config_get(config, "model.lora.rank") == 0:
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
      log(f"  lever {lever.name}: peak {gib(q.peak()[0])} GiB in {q.peak()[1]}"
          + ("" if kept else " (no gain: dropped)"))
    if kept:
      config, p = cand, q
      search.steps.append((lever, q))
    else:
      search.dropped.append((lever, q.peak()[0]))
  search.fits = p.fits(acc)
  return search
