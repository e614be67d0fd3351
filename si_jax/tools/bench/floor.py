"""si-bench `--workloads floor`: where a decode call and a train step spend their time, and the
ratio against HF / PyTorch that would remain if everything but the matmuls took no time.

decode (greedy, `--batch` x (`--prompt_len` + `--new_tokens`), as the decode row):
  call     `Sampler.generate` with N new tokens; `Sampler.generate` with 1 new token is the
           prefill plus one decode step, so step = (call(N) - call(1)) / (N - 1) and
           prefill = call(1) - step.
  matmuls  the decode step's projections and lm head alone (`decode_layer_params`' weights,
           M = batch rows), chained through N - 1 iterations of a `fori_loop`, per step.
  attention the step's attention alone (`transformer._attend` over the whole cache, every
           layer), the same way.
  floor    prefill + (N - 1) x matmuls: a call whose decode steps cost only their GEMMs.
train (one jitted fwd+bwd+AdamW step, as the train row): the step traced by `jax.profiler`;
  each executed HLO instruction's time (summed over threads) is a matmul (a dot, or a fusion
  that computes one) or the rest. floor = step x matmul share: the step if the rest took no
  time (an estimate: with intra-op threads, thread time is not wall time).

With the decode / train workloads in the same run, each row also gives HF's time from that
row, the ratio now and the ratio at the floor (the ceiling of what removing non-matmul work
can give).
"""

from __future__ import annotations

import collections
import glob
import re
import tempfile
from typing import Any

import numpy as np

from si_jax import tables
from si_jax.tools.bench import common

COLUMNS = ("size", "workload", "shape", "si_jax s", "where the time goes", "floor s", "HF s",
           "ratio now", "ratio at floor", "goal")


def _chained(n: int, body, init):
  """A jitted function running `body` n times in a fori_loop from `init` (blocks on return)."""
  import jax

  fn = jax.jit(lambda x: jax.lax.fori_loop(0, n, lambda i, c: body(c), x))
  return lambda: jax.block_until_ready(fn(init))


def decode_floor(cfg, params, args) -> dict[str, Any]:
  """The decode call's split (module docstring), in seconds."""
  import jax
  import jax.numpy as jnp

  from si_jax.models import transformer
  from si_jax.sampling import Sampler, SamplingParams

  B, P, N = args.batch, args.prompt_len, args.new_tokens
  if N < 2:
    raise ValueError(f"--new_tokens={N}: the floor workload needs at least 2 new tokens")
  rows = [list(p) for p in common.prompts(cfg, B, P, args.seed)]
  sampler = Sampler(cfg, max_len=P + N, prompt_bucket=P)
  key = jax.random.key(args.seed)

  def call(n):
    sp = SamplingParams(max_new_tokens=n, temperature=0.0)
    return lambda: sampler.generate(params, rows, key, sp)  # numpy out: blocks

  full, one = common.median_time(call(N), args), common.median_time(call(1), args)
  step = (full - one) / (N - 1)

  lp = transformer.decode_layer_params(params, cfg)
  head = transformer.lm_head_kernel(params, cfg)
  H_hd, F, d = cfg.num_heads * cfg.head_dim, cfg.intermediate_size, cfg.hidden_size

  def gemms(x):  # [B, d] through every projection of one step, each feeding the next
    for p in lp:
      qkv = x @ p["qkv"]
      x = x + 1e-3 * (qkv[:, :H_hd] @ p["o"])
      gu = x @ p["gate_up"]
      x = x + 1e-3 * (gu[:, :F] @ p["down"])
    logits = x @ head
    return x + 1e-6 * jnp.resize(logits, x.shape)

  x0 = jnp.ones((B, d), cfg.jnp_dtype)
  gemm = common.median_time(_chained(N - 1, gemms, x0), args) / (N - 1)

  KV, G, hd, S = cfg.num_kv_heads, cfg.q_per_kv, cfg.head_dim, P + N
  rng = np.random.default_rng(args.seed)
  ks = [jnp.asarray(rng.standard_normal((B, KV, hd, S), np.float32)) for _ in lp]
  vs = [jnp.asarray(rng.standard_normal((B, KV, S, hd), np.float32)) for _ in lp]
  bias = jnp.zeros((B, 1, 1, S), jnp.float32)

  def attend(q):
    for k, v in zip(ks, vs):
      q = q + 1e-3 * transformer._attend(q, k, v, bias, cfg)
    return q

  q0 = jnp.ones((B, KV, G, hd), jnp.float32)
  attn = common.median_time(_chained(N - 1, attend, q0), args) / (N - 1)
  return dict(shape=f"B={B} P={P} N={N}", call_s=full, prefill_s=one - step, step_s=step,
              matmul_step_s=gemm,
              matmul_gflops=B * (common.body_flops(cfg) + common.head_flops(cfg)) / gemm / 1e9,
              attention_step_s=attn, rest_step_s=step - gemm - attn,
              floor_s=(one - step) + (N - 1) * gemm)


def _instruction_kinds(hlo_text: str) -> dict[str, str]:
  """Instruction name -> 'matmul' | 'control' | 'other' for a compiled module's text: a dot or
  convolution, or a fusion whose called computation holds one, is a matmul; while / call /
  conditional (their bodies' instructions are traced on their own) are control."""
  comps, name = {}, None
  for line in hlo_text.splitlines():
    m = re.match(r"(?:ENTRY )?%([\w.\-]+) .*\{$", line)
    if m:
      name = m.group(1)
      comps[name] = []
    elif name is not None:
      comps[name].append(line)
  has_dot = {c: any(re.search(r"= \S+ (dot|convolution)\(", l) for l in body)
             for c, body in comps.items()}
  kinds = {}
  for body in comps.values():
    for l in body:
      m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = \S+ ([\w\-]+)\(", l)
      if not m:
        continue
      op = m.group(2)
      called = re.search(r"calls=%([\w.\-]+)", l)
      if op in ("while", "call", "conditional"):
        kinds[m.group(1)] = "control"
      elif op in ("dot", "convolution") or (called and has_dot.get(called.group(1))):
        kinds[m.group(1)] = "matmul"
      else:
        kinds[m.group(1)] = "other"
  return kinds


def train_floor(cfg, params, args, steps: int = 3) -> dict[str, Any]:
  """The train step's matmul share of executed-instruction time (module docstring)."""
  import jax
  import jax.numpy as jnp

  B, T = args.train_batch, args.train_len
  init, step = common.jax_train_step(cfg, 1e-4, 0.01, args.remat)
  state = {"s": init(jax.tree.map(lambda x: x.copy(), params))}
  tokens = jnp.asarray(common.prompts(cfg, B, T, args.seed + 1))
  mask = jnp.ones((B, T), bool)
  kinds = _instruction_kinds(step.lower(state["s"], tokens, mask).compile().as_text())

  def run():
    state["s"], loss = step(state["s"], tokens, mask)
    float(loss)

  wall = common.median_time(run, args)
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d):
      for _ in range(steps):
        run()
    paths = glob.glob(f"{d}/**/*.xplane.pb", recursive=True)
    if not paths:
      raise RuntimeError(f"jax.profiler.trace wrote no .xplane.pb under {d}")
    profile = jax.profiler.ProfileData.from_file(paths[0])
  by_kind, other = collections.Counter(), collections.Counter()
  for plane in profile.planes:
    for line in plane.lines:
      for ev in line.events:
        kind = kinds.get(ev.name)
        if kind in ("matmul", "other"):
          by_kind[kind] += ev.duration_ns / steps / 1e9
          if kind == "other":
            other[re.sub(r"[.\d]+$", "", ev.name)] += ev.duration_ns / steps / 1e9
  total = sum(by_kind.values())
  if not total:
    raise RuntimeError("the profile holds no event named like an instruction of the train step")
  share = by_kind["matmul"] / total
  return dict(shape=f"B={B} T={T}, {args.remat} remat", call_s=wall,
              matmul_thread_s=by_kind["matmul"], other_thread_s=by_kind["other"],
              matmul_share=share, top_other=[(k, v) for k, v in other.most_common(5)],
              floor_s=wall * share)


def rows_for(size: str, cfg, params, args, hf_times: dict[str, float]) -> list[dict[str, Any]]:
  """The floor rows of one size; hf_times: workload -> HF seconds per call from the decode /
  train rows of the same run (absent: no ratios)."""
  out = []
  for workload, fn in (("decode", decode_floor), ("train", train_floor)):
    r = dict(size=size, workload=workload, **fn(cfg, params, args))
    hf = hf_times.get(workload)
    if hf:
      r.update(hf_s=hf, ratio_now=hf / r["call_s"], ratio_floor=hf / r["floor_s"])
    r["goal"] = common.TARGETS.get((size, workload))
    out.append(r)
  return out


def _ms(seconds: float) -> str:
  return f"{seconds * 1e3:.3g}"


def _where(r: dict[str, Any]) -> str:
  if r["workload"] == "decode":
    return (f"prefill {r['prefill_s']:.3g} s + {_ms(r['step_s'])} ms/step: matmuls "
            f"{_ms(r['matmul_step_s'])} ({r['matmul_gflops']:.0f} GFLOP/s), attention "
            f"{_ms(r['attention_step_s'])}, rest {_ms(r['rest_step_s'])}")
  top = ", ".join(f"{k} {_ms(v)}" for k, v in r["top_other"][:3])
  return (f"matmuls {r['matmul_share']:.0%} of op time ({r['matmul_thread_s']:.2f} s), the "
          f"rest {r['other_thread_s']:.2f} s (ms: {top})")


def markdown_table(rows: list[dict[str, Any]]) -> str:
  """The floor rows as a markdown table with `COLUMNS`."""
  cells = []
  for r in rows:
    ratio = lambda k: f"{r[k]:.2f}x" if k in r else "-"
    goal = f">= {r['goal']:g}x" if r.get("goal") else "-"
    hf = f"{r['hf_s']:.3f}" if "hf_s" in r else "-"
    cells.append([r["size"], r["workload"], r["shape"], f"{r['call_s']:.3f}", _where(r),
                  f"{r['floor_s']:.3f}", hf, ratio("ratio_now"), ratio("ratio_floor"), goal])
  return tables.markdown_table(COLUMNS, cells)
