"""si-bench `--workloads memory`: peak memory of the jitted train step (batch `--memory_batch`)
at each of `--memory_lens`, for dense and blockwise attention, each with no remat and with
`--remat`, from the compiled executable's `memory_analysis()`: temp (activations, residuals,
scratch), arguments, outputs, aliased (donated) bytes, and peak = arguments + outputs - aliased
+ temp. Compiled only, never run (dense at 8k tokens would not fit), so process RSS is not
measured. Its own table; no torch side.
"""

from __future__ import annotations

import time
from typing import Any

from si_jax import tables
from si_jax.tools.bench import common

MEMORY_COLUMNS = ("size", "attention", "remat", "shape", "temp MB", "arguments MB",
                  "outputs MB", "aliased MB", "peak MB", "compile s")


def lengths(text: str) -> list[int]:
  """`--memory_lens` as integers (raises ValueError on a non-integer)."""
  return [int(x) for x in text.split(",") if x.strip()]


def memory_rows(size: str, cfg, args) -> list[dict[str, Any]]:
  """Compiled (never run) train steps at each `--memory_lens` length: dense and blockwise
  attention, without remat and with `--remat`; sizes from `memory_analysis()` in MB."""
  import functools

  import jax
  import jax.numpy as jnp

  from si_jax.models import transformer

  B, mb = args.memory_batch, 1e6
  rows = []
  for T in lengths(args.memory_lens):
    for attn in ("dense", "blockwise"):
      for remat in dict.fromkeys(("none", args.remat)):
        c = cfg.replace(attention=attn)
        init, step = common.jax_train_step(c, 1e-4, 0.01, remat)
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
  return tables.markdown_table(MEMORY_COLUMNS, [
      [r["size"], r["attention"], r["remat"], r["shape"]]
      + [f"{r[k]:,.0f}" for k in ("temp_mb", "arguments_mb", "outputs_mb", "aliased_mb",
                                  "peak_mb")]
      + [f"{r['compile_s']:.1f}"] for r in rows])
