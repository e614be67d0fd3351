"""A plan as text (`report`) and as a row of si-plan's summary table (`table_row`)."""

from __future__ import annotations

from typing import Any, Sequence

from si_jax import sharding as shd
from si_jax import tables
from si_jax.tools.plan.devices import GiB, Accelerator, all_accelerators, gib
from si_jax.tools.plan.levers import Search
from si_jax.tools.plan.planner import Plan


def report(p: Plan, acc: Accelerator) -> str:
  """A plan as text: workload, per-device memory per program and phase, verdict."""
  wl = p.workload
  mesh = " ".join(f"{k}={v}" for k, v in p.mesh.items())
  big = p.peak()[0] >= GiB / 4
  unit, scale = ("GiB", GiB) if big else ("MiB", 2 ** 20)
  fmt = lambda n: f"{n / scale:.2f}"  # noqa: E731
  lines = [
      f"{p.model} ({p.num_params / 1e9:.2f}B params), mesh {mesh} on {p.devices} simulated "
      f"devices, for {acc.name} ({acc.hbm_gib:g} GiB, {gib(acc.usable_bytes)} usable)",
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
  others = ", ".join(f"{k} {'yes' if p.fits(a) else 'no'}"
                     for k, a in all_accelerators(acc).items())
  lines.append(f"  verdict: {verdict} on {acc.name} (peak {gib(peak)} GiB in {phase}, usable "
               f"{gib(acc.usable_bytes)} GiB = {acc.fraction:g} of {acc.hbm_gib:g}); fits: "
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
    lever = (f"{'; '.join(search.overrides)} -> {gib(last.peak()[0])} GiB "
             f"({last.peak()[1]}) on {acc.name}")
  else:
    best = search.steps[-1][1] if search.steps else p
    lever = (f"none fits {acc.name}; after {'; '.join(search.overrides) or 'no lever'}: "
             f"{gib(best.peak()[0])} GiB ({best.peak()[1]})")
  mesh = "x".join(str(p.mesh[k]) for k in shd.MESH_AXES)
  return {"model": p.model, "devices": p.devices, "mesh": mesh, "params": gib(d["params"]),
          "opt state": gib(d["opt_state"]), "update temporaries": gib(d["update_temp"]),
          "KV cache": gib(d["kv_cache"]), "peak (phase)": f"{gib(peak)} ({phase})",
          **{a.name.replace("TPU ", ""): "yes" if p.fits(a) else "no"
             for a in all_accelerators(acc).values()}, "lever": lever}


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
  """The summary table of `table_row`s (`tables.markdown_table`)."""
  return tables.markdown_table(TABLE_COLUMNS, [[r[c] for c in TABLE_COLUMNS] for r in rows])
