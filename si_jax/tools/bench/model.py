"""si-bench's decode and train workloads: si_jax versus transformers / PyTorch on CPU, fp32, the
same model and weights, and the f32 matmul peak their GFLOP/s are measured against.

  decode: `Sampler.generate` greedy versus `transformers` `model.generate(do_sample=False)`
    (sdpa attention, exactly `--new_tokens` new tokens, no stop id), batch `--batch` of
    `--prompt_len`-token prompts. tokens/s = B * N / wall time, prefill included.
  train: one jitted fwd+bwd+AdamW step (token-mean NLL through `transformer.token_logprobs`,
    optax.adamw, donated state) versus PyTorch eager (`loss.backward()` + `torch.optim.AdamW`)
    on `--train_batch` x `--train_len` tokens (`--torch_adamw` picks torch's AdamW
    implementation). tokens/s = B * T / wall time.

Each decode / train row also reports, per timed call, minor page faults and system CPU
seconds of each side (`resource.getrusage` deltas over the timed calls): what the allocator
costs (`si_jax/allocator.py`).

Both sides load the same weights (`init_params`, exported with `hf.hf_tensors`), and each row
reports a parity check: the decode row the fraction of generated tokens that agree, the train
row |loss_jax - loss_torch| at the first step.

Achieved GFLOP/s count model FLOPs (the FLOP model in `common`). The peak is `jnp.matmul` /
`torch.matmul` on f32 `--peak_n`^3 matrices (2 n^3 FLOPs), best of `--repeats` after warm-up,
measured in the same run. Timings are medians of `--repeats` calls after `--warmup` calls.
"""

from __future__ import annotations

import copy
import statistics
from typing import Any

import numpy as np

from si_jax import tables
from si_jax.tools.bench import common

COLUMNS = ("size", "params", "workload", "shape", "si_jax tok/s", "HF tok/s", "ratio", "target",
           "si_jax GFLOP/s", "HF GFLOP/s", "si_jax % peak", "HF % peak", "si_jax faults/call",
           "HF faults/call", "si_jax sys s/call", "HF sys s/call", "parity")


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
  jt = common.time_calls(lambda: mm(ja, jb).block_until_ready(), max(3, repeats), warmup=2)
  tt = common.time_calls(lambda: torch.matmul(ta, tb), max(3, repeats), warmup=2)
  return {"n": n, "jax_gflops": flops / min(jt) / 1e9, "torch_gflops": flops / min(tt) / 1e9}


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
  prompts = common.prompts(cfg, B, P, args.seed)
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
  jt = common.time_calls(run_jax, args.repeats, args.warmup, ju)
  ht = common.time_calls(run_hf, args.repeats, args.warmup, hu)
  if hf_out["tokens"].shape != (B, N):
    raise RuntimeError(f"HF generate returned {hf_out['tokens'].shape[1]} new tokens per row, "
                       f"expected exactly {N} (max_new_tokens = min_new_tokens = {N})")
  agree = float(np.mean(np.asarray(jax_out["tokens"]) == hf_out["tokens"]))
  first = float(np.mean(np.asarray(jax_out["tokens"])[:, 0] == hf_out["tokens"][:, 0]))
  return dict(shape=f"B={B} P={P} N={N}", tokens=B * N,
              flops=common.generate_flops(cfg, B, P, N), jax_times=jt, hf_times=ht,
              parity=f"tokens agree {agree:.0%} (first {first:.0%})",
              token_agreement=agree, first_token_agreement=first, jax_usage=ju, hf_usage=hu)


def bench_train(cfg, params, model, args) -> dict[str, Any]:
  """tokens/s of one fwd+bwd+AdamW step: jitted si_jax versus PyTorch eager."""
  import jax
  import torch

  from si_jax.models import transformer

  B, T = args.train_batch, args.train_len
  tokens = common.prompts(cfg, B, T, args.seed + 1)
  mask = np.ones((B, T), bool)
  lr, wd = 1e-4, 0.01

  init, step = common.jax_train_step(cfg, lr, wd, args.remat)
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
  jt = common.time_calls(run_jax, args.repeats, args.warmup, ju)
  ht = common.time_calls(run_hf, args.repeats, args.warmup, hu)
  diff = abs(losses["jax"] - losses["hf"])
  attn = transformer.attention_impl(cfg, T)
  return dict(shape=f"B={B} T={T}, {attn}/{args.remat}, torch AdamW {args.torch_adamw}",
              tokens=B * T, flops=common.train_flops(cfg, B, T), jax_times=jt, hf_times=ht,
              parity=f"loss diff {diff:.1e}", loss_jax=losses["jax"], loss_hf=losses["hf"],
              loss_diff=diff, attention=attn, remat=args.remat, jax_usage=ju, hf_usage=hu)


def row(size: str, cfg, workload: str, r: dict[str, Any],
        peaks: dict[str, float]) -> dict[str, Any]:
  """The table row of one decode / train result `r` (`bench_decode` / `bench_train`)."""
  jt, ht = statistics.median(r["jax_times"]), statistics.median(r["hf_times"])
  jg, hg = r["flops"] / jt / 1e9, r["flops"] / ht / 1e9
  return dict(
      size=size, params=cfg.num_params(), workload=workload, shape=r["shape"],
      jax_tok_s=r["tokens"] / jt, hf_tok_s=r["tokens"] / ht, ratio=ht / jt,
      target=common.TARGETS.get((size, workload)), jax_gflops=jg, hf_gflops=hg,
      jax_peak_frac=jg / peaks["jax_gflops"], hf_peak_frac=hg / peaks["torch_gflops"],
      jax_faults=r["jax_usage"]["faults"], hf_faults=r["hf_usage"]["faults"],
      jax_sys_s=r["jax_usage"]["sys_s"], hf_sys_s=r["hf_usage"]["sys_s"],
      **{k: v for k, v in r.items() if k not in ("shape", "jax_usage", "hf_usage")})


def markdown_table(rows: list[dict[str, Any]]) -> str:
  """The decode / train rows (`row`) as a markdown table with `COLUMNS`."""
  cells = []
  for r in rows:
    target = "-" if r["target"] is None else (
        f">= {r['target']:g}x " + ("met" if r["ratio"] >= r["target"] else "MISSED"))
    cells.append([r["size"], f"{r['params'] / 1e6:.2f}M", r["workload"], r["shape"],
                  f"{r['jax_tok_s']:,.0f}", f"{r['hf_tok_s']:,.0f}", f"{r['ratio']:.2f}x",
                  target, f"{r['jax_gflops']:.1f}", f"{r['hf_gflops']:.1f}",
                  f"{r['jax_peak_frac']:.0%}", f"{r['hf_peak_frac']:.0%}",
                  f"{r['jax_faults']:,.0f}", f"{r['hf_faults']:,.0f}", f"{r['jax_sys_s']:.3f}",
                  f"{r['hf_sys_s']:.3f}", r["parity"]])
  return tables.markdown_table(COLUMNS, cells)
