"""si-bench: si_jax versus transformers/PyTorch speed on CPU, fp32, same model and weights.

Two workloads per model size (`--sizes`, names of `config.PRESETS`):

  decode: `Sampler.generate` greedy versus `transformers` `model.generate(do_sample=False)`
    (sdpa attention, exactly `--new_tokens` new tokens, no stop id), batch `--batch` of
    `--prompt_len`-token prompts. tokens/s = B * N / wall time, prefill included.
  train: one jitted fwd+bwd+AdamW step (token-mean NLL through `transformer.token_logprobs`,
    optax.adamw, donated state) versus PyTorch eager (`loss.backward()` + `torch.optim.AdamW`)
    on `--train_batch` x `--train_len` tokens (`--torch_adamw` picks torch's AdamW
    implementation). tokens/s = B * T / wall time.

decode_mixed (si_jax only): `Sampler.generate` on a batch whose rows end at mixed lengths,
  decode compaction off versus on (`Sampler(compact=True)`), both with per-row keys, so both
  sample the same tokens (parity column). Lengths are forced deterministically: a first run
  without stop ids samples each row's stream; then a fraction `--mixed_short` of the rows gets
  a stop id among its first `--mixed_cut` x N tokens that the other rows never emit
  (`mixed_stop_ids`), so those rows end early and the others run the whole budget. tokens/s =
  generated tokens (stop ids included) / wall time, prefill included. Its own table.

memory: peak memory of the jitted train step (batch `--memory_batch`) at each of
  `--memory_lens`, for dense and blockwise attention, each with no remat and with `--remat`,
  from the compiled executable's `memory_analysis()`: temp (activations, residuals, scratch),
  arguments, outputs, aliased (donated) bytes, and peak = arguments + outputs - aliased + temp.
  Compiled only, never run (dense at 8k tokens would not fit), so process RSS is not
  measured. Its own table; no torch side.

decode_grow (si_jax only): greedy decoding of `--grow_new_tokens` tokens with the KV cache full
  from the start versus grown by `--grow_every` columns between segments
  (`Sampler(grow_every=...)`), and whether the tokens are equal (`si_jax/tools/bench/grow.py`).

floor: where the decode call and the train step spend their time (prefill, the decode step's
  matmuls, attention, the rest; the train step's matmul share of the profiled op time) and
  the ratio against HF that would remain at that floor (`si_jax/tools/bench/floor.py`). Its own
  table; with decode / train in the same run it takes HF's times from their rows.

align (no model size): pairs/s of SI's alignment stage (align + edit arrays + token credit)
  against bare rapidfuzz `editops` on `--align_pairs` pairs of `--align_len` tokens, its own
  table (`si_jax/tools/bench/align.py`).

Each decode / train row also reports, per timed call, minor page faults and system CPU
seconds of each side (`resource.getrusage` deltas over the timed calls): what the allocator
costs (`si_jax/allocator.py`; `si-bench` re-executes itself with the allocator SI_ALLOCATOR
selects, the header says which). The header names the machine (lscpu model name), the load
average, the allocator and XLA_FLAGS, and warns when the load makes the numbers incomparable;
`--json` records all of it.

Both sides load the same weights (`init_params`, exported with `hf.hf_tensors`), and each row
reports a parity check: the decode row the fraction of generated tokens that agree, the train
row |loss_jax - loss_torch| at the first step.

Achieved GFLOP/s counts model FLOPs analytically (the work the model needs, not what an
implementation happens to do: masked attention columns, rematerialization and optimizer
arithmetic are not counted). Per token, with d hidden, L layers, H / KV heads of size hd,
F MLP width, V vocab:

  body  = 2 * L * (d * hd * (2 H + 2 KV) + 3 d F)    q, k, v, o projections and the MLP
  head  = 2 * d * V                                   lm head
  attn(c) = 4 * L * H * hd * c                        QK^T and PV against c keys

  train step (B x T):  3 * B * (T * (body + head) + sum_{t=1..T} attn(t))   fwd + 2x fwd in bwd
  generate (B, P + N): B * (P * body + head + sum_{t=1..P} attn(t))          prefill, last logits
                     + B * sum_{i=1..N-1} (body + head + attn(P + i))       N-1 decode steps

(the first new token comes from the prefill's logits). The peak is `jnp.matmul` /
`torch.matmul` on f32 `--peak_n`^3 matrices (2 n^3 FLOPs), best of `--repeats` after warm-up,
measured in the same run. Timings are medians of `--repeats` calls after `--warmup` calls.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Sequence

import numpy as np

from si_jax import tables
from si_jax.tools.bench.common import TARGETS, generate_flops, time_calls, train_flops
from si_jax.tools.bench.common import jax_train_step as _jax_train_step
from si_jax.tools.bench.common import prompts as _prompts

WORKLOADS = ("decode", "train", "align", "memory", "decode_mixed", "floor", "decode_grow")
DEFAULT_WORKLOADS = ("decode", "train", "align")
COLUMNS = ("size", "params", "workload", "shape", "si_jax tok/s", "HF tok/s", "ratio", "target",
           "si_jax GFLOP/s", "HF GFLOP/s", "si_jax % peak", "HF % peak", "si_jax faults/call",
           "HF faults/call", "si_jax sys s/call", "HF sys s/call", "parity")
MEMORY_COLUMNS = ("size", "attention", "remat", "shape", "temp MB", "arguments MB",
                  "outputs MB", "aliased MB", "peak MB", "compile s")
MIXED_COLUMNS = ("size", "shape", "lengths", "off tok/s", "on tok/s", "ratio",
                 "batch from step", "off faults/call", "on faults/call", "parity")
REMATS = ("none", "dots", "full")


# ----------------------------------------------------------------------------- timing


def matmul_peaks(n: int, repeats: int) -> dict[str, float]:
  """Best f32 [n, n] @ [n, n] GFLOP/s of jnp.matmul (jitted) and torch.matmul."""
  import jax
  import jax.numpy as jnp
  import torch

  rng = np.random.default_rng(0)
  a = rng.standard_normal((n, n), dtype=np.float32)
  b = rng.standard_normal((n, n), dtype=np.float32)
  ja, jb = jnp.asarray(a), jnp.asarray(b)
  mm = jax.jit(jnp.matmul)
  ta, tb = torch.from_numpy(a), torch.from_numpy(b)
  flops = 2 * n ** 3
  jt = time_calls(lambda: mm(ja, jb).block_until_ready(), max(3, repeats), warmup=2)
  tt = time_calls(lambda: torch.matmul(ta, tb), max(3, repeats), warmup=2)
  return {"n": n, "jax_gflops": flops / min(jt) / 1e9, "torch_gflops": flops / min(tt) / 1e9}


# ----------------------------------------------------------------------------- models


def torch_model(params, cfg, attn_implementation: str = "sdpa"):
  """The transformers `*ForCausalLM` of `cfg` holding `params` (fp32), through `hf.hf_tensors`."""
  import torch
  import transformers

  from si_jax.models import hf
  from si_jax.models.config import to_hf_config

  hf_cfg = to_hf_config(cfg)
  config = transformers.AutoConfig.for_model(hf_cfg.pop("model_type"), **hf_cfg)
  model = transformers.AutoModelForCausalLM.from_config(
      config, attn_implementation=attn_implementation, dtype=torch.float32)
  state = {name: torch.from_numpy(np.array(x, np.float32))
           for name, x in hf.hf_tensors(params, cfg)}
  missing, unexpected = model.load_state_dict(state, strict=False)
  tied = {"lm_head.weight"} if cfg.tie_embeddings else set()
  if unexpected or set(missing) - tied:
    raise ValueError(f"torch_model: the {hf_cfg['architectures'][0]} state dict does not match "
                     f"hf.hf_tensors for this config: missing {sorted(set(missing) - tied)}, "
                     f"unexpected {sorted(unexpected)}")
  if cfg.tie_embeddings:
    model.tie_weights()
  return model


def bench_decode(cfg, params, model, args) -> dict[str, Any]:
  """tokens/s of si_jax Sampler.generate and HF model.generate (greedy, N new tokens)."""
  import jax
  import torch

  from si_jax.sampling import Sampler, SamplingParams

  B, P, N = args.batch, args.prompt_len, args.new_tokens
  prompts = _prompts(cfg, B, P, args.seed)
  sampler = Sampler(cfg, max_len=P + N, prompt_bucket=P)
  sp = SamplingParams(max_new_tokens=N, temperature=0.0)
  key = jax.random.key(args.seed)
  rows = [list(p) for p in prompts]
  jax_out = {}

  def run_jax():
    jax_out["tokens"] = sampler.generate(params, rows, key, sp).tokens  # numpy: blocks

  ids = torch.from_numpy(prompts.astype(np.int64))
  attn_mask = torch.ones_like(ids)
  hf_out = {}

  def run_hf():
    with torch.inference_mode():
      hf_out["tokens"] = model.generate(
          input_ids=ids, attention_mask=attn_mask, do_sample=False, max_new_tokens=N,
          min_new_tokens=N, pad_token_id=0)[:, P:].numpy()

  model.eval()
  ju, hu = {}, {}
  jt = time_calls(run_jax, args.repeats, args.warmup, ju)
  ht = time_calls(run_hf, args.repeats, args.warmup, hu)
  if hf_out["tokens"].shape != (B, N):
    raise RuntimeError(f"HF generate returned {hf_out['tokens'].shape[1]} new tokens per row, "
                       f"expected exactly {N} (max_new_tokens = min_new_tokens = {N})")
  agree = float(np.mean(np.asarray(jax_out["tokens"]) == hf_out["tokens"]))
  first = float(np.mean(np.asarray(jax_out["tokens"])[:, 0] == hf_out["tokens"][:, 0]))
  return dict(shape=f"B={B} P={P} N={N}", tokens=B * N, flops=generate_flops(cfg, B, P, N),
              jax_times=jt, hf_times=ht, parity=f"tokens agree {agree:.0%} (first {first:.0%})",
              token_agreement=agree, first_token_agreement=first, jax_usage=ju, hf_usage=hu)


def mixed_stop_ids(tokens: np.ndarray, long_rows: np.ndarray, cut: int) -> tuple[int, ...]:
  """Stop ids that end the short rows of `tokens` [B, N] (sampled without stop ids, per-row
  keys) within their first `cut` tokens and never end a long row (`long_rows` [B] bool): for
  each short row, its latest token before `cut` that no long row ever emits. A short row whose
  first `cut` tokens all occur in long rows gets none (it ends at another row's stop id, or
  runs on); the table reports the lengths that result."""
  used = set(tokens[long_rows].ravel().tolist())
  stop = set()
  for row in tokens[~long_rows]:
    free = [int(t) for t in row[:cut] if int(t) not in used]
    if free:
      stop.add(free[-1])
  return tuple(sorted(stop))


def bench_decode_mixed(size: str, cfg, params, args) -> dict[str, Any]:
  """tokens/s of `Sampler.generate` on a batch with mixed lengths, compaction off versus on."""
  import dataclasses

  import jax

  from si_jax.sampling import Sampler, SamplingParams

  B, P, N = args.batch, args.prompt_len, args.new_tokens
  rows = [list(p) for p in _prompts(cfg, B, P, args.seed)]
  key = jax.random.key(args.seed)
  sp = SamplingParams(max_new_tokens=N, temperature=args.mixed_temperature, row_keys=True)
  off = Sampler(cfg, max_len=P + N, prompt_bucket=P)
  on = Sampler(cfg, max_len=P + N, prompt_bucket=P, compact=True,
               compact_every=args.compact_every)
  free = off.generate(params, rows, key, sp).tokens  # each row's stream, no stop ids
  cut = max(1, round(args.mixed_cut * N))
  n_long = B - round(args.mixed_short * B)
  long_rows = np.zeros(B, bool)
  long_rows[np.random.default_rng(args.seed).permutation(B)[:n_long]] = True
  sp = dataclasses.replace(sp, stop_ids=mixed_stop_ids(free, long_rows, cut))
  outs = {}

  def run(name, sampler):
    def fn():
      outs[name] = sampler.generate(params, rows, key, sp)  # numpy: blocks
    return fn

  ou, nu = {}, {}
  ot = time_calls(run("off", off), args.repeats, args.warmup, ou)
  nt = time_calls(run("on", on), args.repeats, args.warmup, nu)
  lengths = outs["off"].lengths
  tokens = int(lengths.sum())
  same = all(np.array_equal(getattr(outs["off"], f), getattr(outs["on"], f))
             for f in ("tokens", "lengths", "finished"))
  t_off, t_on = statistics.median(ot), statistics.median(nt)
  return dict(
      size=size, shape=f"B={B} P={P} N={N} t={args.mixed_temperature:g}",
      lengths=(f"{int((lengths <= cut).sum())}/{B} rows end by step {cut}, "
               f"{int((lengths == N).sum())} run {N}; {tokens:,} tokens"),
      tokens=tokens, row_lengths=lengths.tolist(), stop_ids=list(sp.stop_ids), cut=cut,
      off_times=ot, on_times=nt, off_tok_s=tokens / t_off, on_tok_s=tokens / t_on,
      ratio=t_off / t_on, buckets=on.last_buckets, compact_every=args.compact_every,
      off_faults=ou["faults"], on_faults=nu["faults"], off_sys_s=ou["sys_s"],
      on_sys_s=nu["sys_s"], tokens_equal=same,
      parity="tokens equal" if same else "tokens DIFFER")


def mixed_table(rows: list[dict[str, Any]]) -> str:
  """The decode_mixed rows as a markdown table with `MIXED_COLUMNS`."""
  lines = ["| " + " | ".join(MIXED_COLUMNS) + " |", "|" + "---|" * len(MIXED_COLUMNS)]
  for r in rows:
    buckets = " -> ".join(f"{b}@{t}" for t, b in r["buckets"])
    cells = [r["size"], r["shape"], r["lengths"], f"{r['off_tok_s']:,.0f}",
             f"{r['on_tok_s']:,.0f}", f"{r['ratio']:.2f}x", buckets, f"{r['off_faults']:,.0f}",
             f"{r['on_faults']:,.0f}", r["parity"]]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def bench_train(cfg, params, model, args) -> dict[str, Any]:
  """tokens/s of one fwd+bwd+AdamW step: jitted si_jax versus PyTorch eager."""
  import jax
  import torch

  from si_jax.models import transformer

  B, T = args.train_batch, args.train_len
  tokens = _prompts(cfg, B, T, args.seed + 1)
  mask = np.ones((B, T), bool)
  lr, wd = 1e-4, 0.01

  init, step = _jax_train_step(cfg, lr, wd, args.remat)
  # Private copy: the step donates its state, and `params` is still needed by the caller.
  state = {"s": init(jax.tree.map(lambda x: x.copy(), params))}
  jtokens, jmask = jax.device_put(tokens), jax.device_put(mask)
  losses = {}

  def run_jax():
    state["s"], loss = step(state["s"], jtokens, jmask)
    losses.setdefault("jax", float(loss))  # float() blocks on the whole step

  model = copy.deepcopy(model).train()  # the caller's model keeps its weights for other rows
  impl = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[args.torch_adamw]
  opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8,
                          weight_decay=wd, **impl)
  ids = torch.from_numpy(tokens.astype(np.int64))

  def run_hf():
    opt.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss  # token-mean NLL of tokens[:, 1:]
    loss.backward()
    opt.step()
    losses.setdefault("hf", float(loss.detach()))

  ju, hu = {}, {}
  jt = time_calls(run_jax, args.repeats, args.warmup, ju)
  ht = time_calls(run_hf, args.repeats, args.warmup, hu)
  diff = abs(losses["jax"] - losses["hf"])
  attn = transformer.attention_impl(cfg, T)
  return dict(shape=f"B={B} T={T}, {attn}/{args.remat}, torch AdamW {args.torch_adamw}",
              tokens=B * T, flops=train_flops(cfg, B, T), jax_times=jt, hf_times=ht,
              parity=f"loss diff {diff:.1e}", loss_jax=losses["jax"], loss_hf=losses["hf"],
              loss_diff=diff, attention=attn, remat=args.remat, jax_usage=ju, hf_usage=hu)


def memory_rows(size: str, cfg, args) -> list[dict[str, Any]]:
  """Compiled (never run) train steps at each `--memory_lens` length: dense and blockwise
  attention, without remat and with `--remat`; sizes from `memory_analysis()` in MB."""
  import functools

  import jax
  import jax.numpy as jnp

  from si_jax.models import transformer

  B, mb = args.memory_batch, 1e6
  rows = []
  for T in _ints(args.memory_lens):
    for attn in ("dense", "blockwise"):
      for remat in dict.fromkeys(("none", args.remat)):
        c = cfg.replace(attention=attn)
        init, step = _jax_train_step(c, 1e-4, 0.01, remat)
        params = jax.eval_shape(functools.partial(transformer.init_params, c), jax.random.key(0))
        state = jax.eval_shape(init, params)
        tokens = jax.ShapeDtypeStruct((B, T), jnp.int32)
        t0 = time.perf_counter()
        m = step.lower(state, tokens, jax.ShapeDtypeStruct((B, T), jnp.bool_)).compile(
            ).memory_analysis()
        compile_s = time.perf_counter() - t0
        sizes = dict(temp=m.temp_size_in_bytes, arguments=m.argument_size_in_bytes,
                     outputs=m.output_size_in_bytes, aliased=m.alias_size_in_bytes)
        peak = sizes["arguments"] + sizes["outputs"] - sizes["aliased"] + sizes["temp"]
        rows.append(dict(size=size, attention=attn, remat=remat, shape=f"B={B} T={T}",
                         batch=B, length=T, **{f"{k}_mb": v / mb for k, v in sizes.items()},
                         peak_mb=peak / mb, compile_s=compile_s))
        print(f"{size} memory {attn}/{remat} B={B} T={T}: temp {sizes['temp'] / mb:,.0f} MB, "
              f"peak {peak / mb:,.0f} MB", flush=True)
  return rows


def memory_table(rows: list[dict[str, Any]]) -> str:
  """The memory rows as a markdown table with `MEMORY_COLUMNS`."""
  lines = ["| " + " | ".join(MEMORY_COLUMNS) + " |", "|" + "---|" * len(MEMORY_COLUMNS)]
  for r in rows:
    cells = [r["size"], r["attention"], r["remat"], r["shape"]] + [
        f"{r[k]:,.0f}" for k in ("temp_mb", "arguments_mb", "outputs_mb", "aliased_mb",
                                 "peak_mb")] + [f"{r['compile_s']:.1f}"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


# ----------------------------------------------------------------------------- report


def cpu_model() -> str:
  """The CPU's model name (`lscpu`, else /proc/cpuinfo, else the platform's machine type)."""
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
  except (OSError, subprocess.SubprocessError):
    out = ""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      out += "\n" + f.read()
  except OSError:
    pass
  for line in out.splitlines():
    key, _, value = line.partition(":")
    if key.strip().lower() == "model name" and value.strip():
      return value.strip()
  return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
  import jax
  import jaxlib
  import torch
  import transformers

  from si_jax import allocator

  return dict(cpu_model=cpu_model(), cpu_count=os.cpu_count(),
              torch_threads=torch.get_num_threads(),
              processor=platform.processor() or platform.machine(),
              allocator=allocator.loaded(), allocator_detail=allocator.describe(),
              xla_flags=os.environ.get("XLA_FLAGS", ""),
              python=platform.python_version(), jax=jax.__version__, jaxlib=jaxlib.__version__,
              jax_backend=jax.default_backend(), torch=torch.__version__,
              transformers=transformers.__version__, loadavg=list(os.getloadavg()))


def header(env: dict[str, Any]) -> str:
  """The lines printed before any measurement: machine, load, allocator, XLA flags, versions."""
  load = " ".join(f"{x:.2f}" for x in env["loadavg"])
  return "\n".join([
      f"machine: {env['cpu_model']} ({env['cpu_count']} CPUs, torch threads "
      f"{env['torch_threads']})",
      f"load average (1/5/15 min): {load}",
      f"allocator: {env['allocator_detail']}",
      f"XLA_FLAGS: {env['xla_flags'] or '(none)'}",
      f"versions: python {env['python']}, jax {env['jax']} ({env['jax_backend']}), torch "
      f"{env['torch']}, transformers {env['transformers']}",
  ])


def load_warning(load: float, cpus: int, when: str) -> str:
  """A loud banner saying the timings are not comparable (empty when the load is fine)."""
  if load <= cpus:
    return ""
  bar = "!" * 78
  return (f"{bar}\nWARNING: load average {load:.1f} {when} on {cpus} CPUs: other processes are "
          "using the CPU.\nThese timings are NOT comparable with an idle machine's; torch's "
          "OpenMP threads slow\ndown far more than XLA's under contention, so ratios overstate "
          f"si_jax. Rerun when idle.\n{bar}")


def _row(size: str, cfg, workload: str, r: dict[str, Any], peaks: dict[str, float]):
  jt, ht = statistics.median(r["jax_times"]), statistics.median(r["hf_times"])
  jg, hg = r["flops"] / jt / 1e9, r["flops"] / ht / 1e9
  return dict(
      size=size, params=cfg.num_params(), workload=workload, shape=r["shape"],
      jax_tok_s=r["tokens"] / jt, hf_tok_s=r["tokens"] / ht, ratio=ht / jt,
      target=TARGETS.get((size, workload)), jax_gflops=jg, hf_gflops=hg,
      jax_peak_frac=jg / peaks["jax_gflops"], hf_peak_frac=hg / peaks["torch_gflops"],
      jax_faults=r["jax_usage"]["faults"], hf_faults=r["hf_usage"]["faults"],
      jax_sys_s=r["jax_usage"]["sys_s"], hf_sys_s=r["hf_usage"]["sys_s"],
      **{k: v for k, v in r.items() if k not in ("shape", "jax_usage", "hf_usage")})


def contended(load_start: float, load_end: float, cpus: int) -> bool:
  """Heuristic: did other processes compete for the CPU? (1-minute load averages; the
  benchmark itself keeps about `cpus` threads busy, so the end value counts it.)"""
  return load_start > cpus or load_end > cpus + 1


def markdown_table(rows: list[dict[str, Any]]) -> str:
  """The rows as a markdown table with `COLUMNS`."""
  cells = []
  for r in rows:
    target = "-" if r["target"] is None else (
        f">= {r['target']:g}x " + ("met" if r["ratio"] >= r["target"] else "MISSED"))
    cells.append([r["size"], f"{r['params'] / 1e6:.2f}M", r["workload"], r["shape"],
             f"{r['jax_tok_s']:,.0f}", f"{r['hf_tok_s']:,.0f}", f"{r['ratio']:.2f}x", target,
             f"{r['jax_gflops']:.1f}", f"{r['hf_gflops']:.1f}", f"{r['jax_peak_frac']:.0%}",
             f"{r['hf_peak_frac']:.0%}", f"{r['jax_faults']:,.0f}", f"{r['hf_faults']:,.0f}",
             f"{r['jax_sys_s']:.3f}", f"{r['hf_sys_s']:.3f}", r["parity"]])
  return tables.markdown_table(COLUMNS, cells)


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="si-bench", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--sizes", default="tiny,25m", help="comma-separated model presets")
  p.add_argument("--workloads", default=",".join(DEFAULT_WORKLOADS),
                 help=f"comma-separated subset of {','.join(WORKLOADS)}")
  p.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (median)")
  p.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
  p.add_argument("--batch", type=int, default=32, help="decode batch")
  p.add_argument("--prompt_len", type=int, default=128, help="decode prompt tokens")
  p.add_argument("--new_tokens", type=int, default=128, help="decode new tokens")
  p.add_argument("--train_batch", type=int, default=8, help="train step batch")
  p.add_argument("--train_len", type=int, default=256, help="train step sequence length")
  p.add_argument("--torch_adamw", default="default", choices=("default", "foreach", "fused"),
                 help="torch.optim.AdamW implementation (default: what AdamW() picks on CPU, "
                 "the per-tensor loop; fused is several times faster on CPU)")
  p.add_argument("--attention", default="auto",
                 help="ModelConfig.attention of the si_jax side (auto, dense, blockwise, ...)")
  p.add_argument("--attention_block", type=int, default=128,
                 help="ModelConfig.attention_block_size")
  p.add_argument("--remat", default="dots", choices=REMATS,
                 help="train step's remat policy (transformer.REMAT_POLICIES)")
  p.add_argument("--memory_lens", default="1024,4096,8192",
                 help="memory: comma-separated sequence lengths")
  p.add_argument("--memory_batch", type=int, default=1, help="memory: batch")
  p.add_argument("--align_pairs", type=int, default=1000, help="align: number of pairs")
  p.add_argument("--align_len", type=int, default=2000, help="align: tokens per sequence")
  p.add_argument("--mixed_short", type=float, default=0.75,
                 help="decode_mixed: fraction of the rows that end early")
  p.add_argument("--mixed_cut", type=float, default=0.1,
                 help="decode_mixed: the early rows end within this fraction of --new_tokens")
  p.add_argument("--mixed_temperature", type=float, default=1.0,
                 help="decode_mixed: sampling temperature (0 = greedy)")
  p.add_argument("--compact_every", type=int, default=16,
                 help="decode_mixed: decode steps between compaction decisions")
  p.add_argument("--grow_every", type=int, default=64,
                 help="decode_grow: cache columns added between decode segments")
  p.add_argument("--grow_new_tokens", type=int, default=512,
                 help="decode_grow: new tokens per row (an RL-length generation)")
  p.add_argument("--peak_n", type=int, default=2048, help="matmul size for the peak")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json", help="also write the environment, peaks and rows here")
  return p


def _check_args(p: argparse.ArgumentParser, args) -> tuple[list[str], list[str]]:
  from si_jax.models.config import ATTENTION_IMPLS, PRESETS

  sizes = [s for s in args.sizes.split(",") if s]
  unknown = [s for s in sizes if s not in PRESETS]
  if not sizes or unknown:
    p.error(f"--sizes: unknown preset(s) {unknown or args.sizes!r}; known: {sorted(PRESETS)}")
  workloads = [w for w in args.workloads.split(",") if w]
  if not workloads or set(workloads) - set(WORKLOADS):
    p.error(f"--workloads must be a comma-separated subset of {WORKLOADS}, got "
            f"{args.workloads!r}")
  for name in ("repeats", "batch", "prompt_len", "new_tokens", "train_batch", "peak_n",
               "align_pairs", "align_len", "attention_block", "memory_batch", "compact_every",
               "grow_every", "grow_new_tokens"):
    if getattr(args, name) < 1:
      p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
  if "floor" in workloads and args.new_tokens < 2:
    p.error(f"--new_tokens must be >= 2 for the floor workload, got {args.new_tokens}")
  if args.train_len < 2:
    p.error(f"--train_len must be >= 2 (the loss predicts tokens 1..T-1), got {args.train_len}")
  for name in ("mixed_short", "mixed_cut"):
    if not 0.0 <= getattr(args, name) <= 1.0:
      p.error(f"--{name} must be in [0, 1], got {getattr(args, name)}")
  if not args.mixed_temperature >= 0:
    p.error(f"--mixed_temperature must be >= 0, got {args.mixed_temperature}")
  if args.warmup < 0:
    p.error(f"--warmup must be >= 0, got {args.warmup}")
  if args.attention not in ATTENTION_IMPLS:
    p.error(f"--attention must be one of {ATTENTION_IMPLS}, got {args.attention!r}")
  try:
    lens = _ints(args.memory_lens)
  except ValueError:
    lens = []
  if not lens or min(lens) < 2:
    p.error(f"--memory_lens must be comma-separated integers >= 2, got {args.memory_lens!r}")
  return sizes, workloads


def _ints(text: str) -> list[int]:
  return [int(x) for x in text.split(",") if x.strip()]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the benchmark, prints the environment and a markdown table, returns the report."""
  p = _parser()
  args = p.parse_args(argv)
  sizes, workloads = _check_args(p, args)

  import jax
  import torch

  from si_jax.models import transformer
  from si_jax.models.config import preset

  jax.config.update("jax_platforms", "cpu")  # a CPU benchmark, even on a host with a GPU
  torch.set_num_threads(os.cpu_count())
  env = environment()
  print(header(env), flush=True)
  print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()), flush=True)
  warning = load_warning(env["loadavg"][0], env["cpu_count"], "before the first measurement")
  if warning:
    print(warning, flush=True)
  model_workloads = [w for w in workloads if w in ("decode", "train")]
  peaks = matmul_peaks(args.peak_n, args.repeats) if model_workloads else None
  if peaks:
    print(f"f32 matmul {args.peak_n}^3 peak: jax {peaks['jax_gflops']:.1f} GFLOP/s, "
          f"torch {peaks['torch_gflops']:.1f} GFLOP/s", flush=True)

  rows, mem_rows, mixed_rows, floor_rows, grow_rows = [], [], [], [], []
  mixed, floor = "decode_mixed" in workloads, "floor" in workloads
  grow = "decode_grow" in workloads
  if floor:
    from si_jax.tools.bench import floor as bench_floor
  if grow:
    from si_jax.tools.bench import grow as bench_grow
  per_model = model_workloads or mixed or floor or grow
  for size in sizes if per_model or "memory" in workloads else []:
    cfg = preset(size, attention=args.attention, attention_block_size=args.attention_block)
    if "memory" in workloads:
      mem_rows += memory_rows(size, cfg, args)
    if not per_model:
      continue
    params = jax.jit(transformer.init_params, static_argnums=0)(cfg, jax.random.key(args.seed))
    if mixed:
      r = bench_decode_mixed(size, cfg, params, args)
      print(f"{size} decode_mixed: compaction off {r['off_tok_s']:,.0f} tok/s, on "
            f"{r['on_tok_s']:,.0f} tok/s ({r['ratio']:.2f}x); {r['lengths']}; {r['parity']}",
            flush=True)
      mixed_rows.append(r)
    if grow:
      r = bench_grow.row(size, cfg, params, args)
      print(f"{size} decode_grow: full cache {r['off_tok_s']:,.0f} tok/s, grown every "
            f"{r['grow_every']} {r['on_tok_s']:,.0f} tok/s ({r['ratio']:.2f}x); {r['parity']}",
            flush=True)
      grow_rows.append(r)
    hf_times = {}
    if model_workloads:
      model = torch_model(params, cfg)
      for workload in model_workloads:
        fn = bench_decode if workload == "decode" else bench_train
        row = _row(size, cfg, workload, fn(cfg, params, model, args), peaks)
        print(f"{size} {workload}: si_jax {row['jax_tok_s']:,.0f} tok/s, HF "
              f"{row['hf_tok_s']:,.0f} tok/s ({row['ratio']:.2f}x); {row['parity']}", flush=True)
        rows.append(row)
        hf_times[workload] = statistics.median(row["hf_times"])
      del model
    if floor:
      for r in bench_floor.rows_for(size, cfg, params, args, hf_times):
        print(f"{size} {r['workload']} floor: {r['call_s']:.3f} s per call, at the floor "
              f"{r['floor_s']:.3f} s", flush=True)
        floor_rows.append(r)

  align_rows = []
  if "align" in workloads:
    from si_jax.tools.bench import align as align_bench
    align_rows = align_bench.run(args.align_pairs, args.align_len, repeats=args.repeats,
                                 warmup=args.warmup, seed=args.seed)

  env["loadavg_end"] = list(os.getloadavg())
  if rows:
    print()
    print(markdown_table(rows))
  if mixed_rows:
    print()
    print(mixed_table(mixed_rows))
  if grow_rows:
    print()
    print(bench_grow.markdown_table(grow_rows))
  if floor_rows:
    print()
    print(bench_floor.markdown_table(floor_rows))
  if mem_rows:
    print()
    print(memory_table(mem_rows))
  if align_rows:
    print()
    print(align_bench.markdown_table(align_rows))
  print(f"\nload average (1/5/15 min) at start {env['loadavg']}, end {env['loadavg_end']}")
  env["contended"] = contended(env["loadavg"][0], env["loadavg_end"][0], env["cpu_count"])
  if env["contended"]:
    print(load_warning(max(env["loadavg"][0], env["loadavg_end"][0] - 1), env["cpu_count"],
                       f"(start {env['loadavg'][0]:.1f}, end {env['loadavg_end'][0]:.1f}, the "
                       "benchmark's own threads counted at the end)"))
  report = dict(env=env, peaks=peaks, args=vars(args), rows=rows, align_rows=align_rows,
                memory_rows=mem_rows, mixed_rows=mixed_rows, floor_rows=floor_rows,
                grow_rows=grow_rows)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(report, f, indent=2)
      f.write("\n")
  return report


def run() -> None:
  """Console-script entry point (`si-bench`): re-executes with the SI_ALLOCATOR allocator."""
  from si_jax import allocator

  allocator.reexec_if_needed()
  main()
  sys.exit(0)


if __name__ == "__main__":
  run()
