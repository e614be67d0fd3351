"""si-bench `--workloads decode_grow` (si_jax only): greedy `Sampler.generate` of `--batch` x
(`--prompt_len` + `--grow_new_tokens`), the KV cache full from the start (off) versus grown by
`--grow_every` columns between segments (on, `Sampler(grow_every=...)`). Attention reads every
cache column at every step, so the longer the generation the more an unfilled cache costs.
tokens/s = B x new tokens / wall time, prefill included; the parity column says whether both
sides generated the same tokens. Its own table.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from si_jax import tables
from si_jax.tools.bench import common

COLUMNS = ("size", "shape", "grow every", "cache columns from step", "off tok/s", "on tok/s",
           "ratio", "parity")


def row(size: str, cfg, params, args) -> dict[str, Any]:
  """The decode_grow row of one size."""
  import jax

  from si_jax.sampling import Sampler, SamplingParams

  B, P, N, G = args.batch, args.prompt_len, args.grow_new_tokens, args.grow_every
  rows = [list(p) for p in common.prompts(cfg, B, P, args.seed)]
  key = jax.random.key(args.seed)
  sp = SamplingParams(max_new_tokens=N, temperature=0.0)
  off = Sampler(cfg, max_len=P + N, prompt_bucket=P)
  on = Sampler(cfg, max_len=P + N, prompt_bucket=P, grow_every=G)
  outs = {}

  def run(name, sampler):
    def fn():
      outs[name] = sampler.generate(params, rows, key, sp)  # numpy: blocks
    return fn

  t_off = common.median_time(run("off", off), args)
  t_on = common.median_time(run("on", on), args)
  same = bool(np.array_equal(outs["off"].tokens, outs["on"].tokens))
  return dict(size=size, shape=f"B={B} P={P} N={N} greedy", grow_every=G,
              cache_lengths=on.last_cache_lengths, off_s=t_off, on_s=t_on,
              off_tok_s=B * N / t_off, on_tok_s=B * N / t_on, ratio=t_off / t_on,
              tokens_equal=same, parity="tokens equal" if same else "tokens DIFFER")


def _lengths(lengths) -> str:
  """[(step, columns)] as 'columns@step -> ...', the middle elided past four."""
  parts = [f"{s}@{t}" for t, s in lengths]
  return " -> ".join(parts if len(parts) <= 4 else parts[:2] + ["..."] + parts[-1:])


def markdown_table(rows: list[dict[str, Any]]) -> str:
  """The decode_grow rows as a markdown table with `COLUMNS`."""
  return tables.markdown_table(COLUMNS, [
      [r["size"], r["shape"], str(r["grow_every"]), _lengths(r["cache_lengths"]),
       f"{r['off_tok_s']:,.0f}", f"{r['on_tok_s']:,.0f}", f"{r['ratio']:.2f}x", r["parity"]]
      for r in rows])
