"""si-bench: si_jax versus transformers/PyTorch speed on CPU, fp32, same model and weights.

The command line: parses the flags, prints the header (`env.py`), runs the workloads of
`--workloads` for each model size of `--sizes` (names of `config.PRESETS`), prints one table per
kind of workload and, with `--json`, writes the environment, peaks, arguments and rows.

decode, train: si_jax versus HF on the same weights, with achieved GFLOP/s against the f32
  matmul peak of the same run (`si_jax/tools/bench/model.py`).

decode_mixed (si_jax only): `Sampler.generate` on a batch whose rows end at mixed lengths,
  decode compaction off versus on (`si_jax/tools/bench/mixed.py`). Its own table.

memory: peak memory of the compiled (never run) train step at each of `--memory_lens`, dense and
  blockwise attention, with and without `--remat` (`si_jax/tools/bench/memory.py`). Its own
  table; no torch side.

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

`run` (the `si-bench` console script) re-executes itself with the allocator SI_ALLOCATOR
selects (`si_jax/allocator.py`) first; the header says which.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from typing import Any, Sequence

from si_jax import tables
from si_jax.tools.bench import env as bench_env
from si_jax.tools.bench import floor, grow, memory, mixed, model

WORKLOADS = ("decode", "train", "align", "memory", "decode_mixed", "floor", "decode_grow")
DEFAULT_WORKLOADS = ("decode", "train", "align")
REMATS = ("none", "dots", "full")


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
    lens = memory.lengths(args.memory_lens)
  except ValueError:
    lens = []
  if not lens or min(lens) < 2:
    p.error(f"--memory_lens must be comma-separated integers >= 2, got {args.memory_lens!r}")
  return sizes, workloads


def _size_rows(size: str, args, workloads: list[str], peaks: dict[str, float] | None,
               out: dict[str, list]) -> None:
  """Runs the per-size workloads of one model size, printing a line per row, and appends the
  rows to `out` (table name -> rows)."""
  import jax

  from si_jax.models import transformer
  from si_jax.models.config import preset

  cfg = preset(size, attention=args.attention, attention_block_size=args.attention_block)
  if "memory" in workloads:
    out["memory_rows"] += memory.memory_rows(size, cfg, args)
  model_workloads = [w for w in workloads if w in ("decode", "train")]
  if not model_workloads and not {"decode_mixed", "floor", "decode_grow"} & set(workloads):
    return
  params = jax.jit(transformer.init_params, static_argnums=0)(cfg, jax.random.key(args.seed))
  if "decode_mixed" in workloads:
    r = mixed.bench_decode_mixed(size, cfg, params, args)
    print(f"{size} decode_mixed: compaction off {r['off_tok_s']:,.0f} tok/s, on "
          f"{r['on_tok_s']:,.0f} tok/s ({r['ratio']:.2f}x); {r['lengths']}; {r['parity']}",
          flush=True)
    out["mixed_rows"].append(r)
  if "decode_grow" in workloads:
    r = grow.row(size, cfg, params, args)
    print(f"{size} decode_grow: full cache {r['off_tok_s']:,.0f} tok/s, grown every "
          f"{r['grow_every']} {r['on_tok_s']:,.0f} tok/s ({r['ratio']:.2f}x); {r['parity']}",
          flush=True)
    out["grow_rows"].append(r)
  hf_times = {}
  if model_workloads:
    hf_model = model.torch_model(params, cfg)
    for workload in model_workloads:
      fn = model.bench_decode if workload == "decode" else model.bench_train
      row = model.row(size, cfg, workload, fn(cfg, params, hf_model, args), peaks)
      print(f"{size} {workload}: si_jax {row['jax_tok_s']:,.0f} tok/s, HF "
            f"{row['hf_tok_s']:,.0f} tok/s ({row['ratio']:.2f}x); {row['parity']}", flush=True)
      out["rows"].append(row)
      hf_times[workload] = statistics.median(row["hf_times"])
    del hf_model
  if "floor" in workloads:
    for r in floor.rows_for(size, cfg, params, args, hf_times):
      print(f"{size} {r['workload']} floor: {r['call_s']:.3f} s per call, at the floor "
            f"{r['floor_s']:.3f} s", flush=True)
      out["floor_rows"].append(r)


def _print_tables(out: dict[str, list]) -> None:
  """Prints the table of each kind of row that the run produced, a blank line before each."""
  for name, table in (("rows", model.markdown_table), ("mixed_rows", mixed.mixed_table),
                      ("grow_rows", grow.markdown_table), ("floor_rows", floor.markdown_table),
                      ("memory_rows", memory.memory_table)):
    if out[name]:
      print()
      print(table(out[name]))
  if out["align_rows"]:
    from si_jax.tools.bench import align

    print()
    print(align.markdown_table(out["align_rows"]))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the benchmark, prints the environment and a markdown table, returns the report."""
  p = _parser()
  args = p.parse_args(argv)
  sizes, workloads = _check_args(p, args)

  import jax
  import torch

  jax.config.update("jax_platforms", "cpu")  # a CPU benchmark, even on a host with a GPU
  torch.set_num_threads(os.cpu_count())
  env = bench_env.environment()
  print(bench_env.header(env), flush=True)
  print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()), flush=True)
  warning = bench_env.load_warning(env["loadavg"][0], env["cpu_count"],
                                   "before the first measurement")
  if warning:
    print(warning, flush=True)
  model_workloads = [w for w in workloads if w in ("decode", "train")]
  peaks = model.matmul_peaks(args.peak_n, args.repeats) if model_workloads else None
  if peaks:
    print(f"f32 matmul {args.peak_n}^3 peak: jax {peaks['jax_gflops']:.1f} GFLOP/s, "
          f"torch {peaks['torch_gflops']:.1f} GFLOP/s", flush=True)

  out = {name: [] for name in ("rows", "align_rows", "memory_rows", "mixed_rows", "floor_rows",
                               "grow_rows")}
  per_size = set(workloads) & {"decode", "train", "decode_mixed", "floor", "decode_grow",
                               "memory"}
  for size in sizes if per_size else []:
    _size_rows(size, args, workloads, peaks, out)
  if "align" in workloads:
    from si_jax.tools.bench import align

    out["align_rows"] = align.run(args.align_pairs, args.align_len, repeats=args.repeats,
                                  warmup=args.warmup, seed=args.seed)

  env["loadavg_end"] = list(os.getloadavg())
  _print_tables(out)
  print(f"\nload average (1/5/15 min) at start {env['loadavg']}, end {env['loadavg_end']}")
  env["contended"] = bench_env.contended(env["loadavg"][0], env["loadavg_end"][0],
                                         env["cpu_count"])
  if env["contended"]:
    print(bench_env.load_warning(
        max(env["loadavg"][0], env["loadavg_end"][0] - 1), env["cpu_count"],
        f"(start {env['loadavg'][0]:.1f}, end {env['loadavg_end'][0]:.1f}, the benchmark's own "
        "threads counted at the end)"))
  report = dict(env=env, peaks=peaks, args=vars(args), **out)
  if args.json:
    tables.write_json(args.json, report, indent=2)
  return report


def run() -> None:
  """Console-script entry point (`si-bench`): re-executes with the SI_ALLOCATOR allocator."""
  from si_jax import allocator

  allocator.reexec_if_needed()
  main()
  sys.exit(0)


if __name__ == "__main__":
  run()
