"""si-bench `--workloads decode_mixed` (si_jax only): `Sampler.generate` on a batch whose rows
end at mixed lengths, decode compaction off versus on (`Sampler(compact=True)`), both with
per-row keys, so both sample the same tokens (parity column). Lengths are forced
deterministically: a first run without stop ids samples each row's stream; then a fraction
`--mixed_short` of the rows gets a stop id among its first `--mixed_cut` x N tokens that the
other rows never emit (`mixed_stop_ids`), so those rows end early and the others run the whole
budget. tokens/s = generated tokens (stop ids included) / wall time, prefill included. Its own
table.
"""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np

from si_jax import tables
from si_jax.tools.bench import common

MIXED_COLUMNS = ("size", "shape", "lengths", "off tok/s", "on tok/s", "ratio",
                 "batch from step", "off faults/call", "on faults/call", "parity")


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
  rows = [list(p) for p in common.prompts(cfg, B, P, args.seed)]
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
  ot = common.time_calls(run("off", off), args.repeats, args.warmup, ou)
  nt = common.time_calls(run("on", on), args.repeats, args.warmup, nu)
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
  cells = []
  for r in rows:
    buckets = " -> ".join(f"{b}@{t}" for t, b in r["buckets"])
    cells.append([r["size"], r["shape"], r["lengths"], f"{r['off_tok_s']:,.0f}",
                  f"{r['on_tok_s']:,.0f}", f"{r['ratio']:.2f}x", buckets,
                  f"{r['off_faults']:,.0f}", f"{r['on_faults']:,.0f}", r["parity"]])
  return tables.markdown_table(MIXED_COLUMNS, cells)
