"""What checkpoint checksums cost: save and restore of the 25m model's train state with and
without them (si_jax/checksum.py, si_jax/checkpoint.py).

  python experiments/checksum_cost.py [--size 25m] [--repeats 5] [--dir /tmp/ckpt_cost]

The state is si-bench's model size (params, AdamW mu and nu after one update with random
gradients, so nothing is all zeros and compresses away) on one device. Saves alternate between a
Checkpointer that records checksums and one that does not (same directory layout, max_to_keep=2);
restores read a checkpoint of each kind, the checksummed one verified. One untimed round first
(compiles, page cache). Prints the medians and writes them as JSON (--json).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import time

import jax
import optax

from si_jax import checkpoint as ckpt_lib
from si_jax import checksum as checksum_lib
from si_jax import sharding as shd
from si_jax.models import config as model_config
from si_jax import train_state as ts


def make_state(size: str):
  cfg = model_config.preset(size)
  mesh = shd.make_mesh(devices=jax.devices()[:1])
  params = shd.init_sharded_params(cfg, mesh, jax.random.key(0))
  opt = ts.make_optimizer(1e-3, 100)
  state = ts.create(params, opt, mesh)
  grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(1), p.shape, p.dtype) * 0.01,
                       state.params)
  updates, opt_state = opt.update(grads, state.opt_state, state.params)
  state = state.replace(opt_state=opt_state, params=optax.apply_updates(state.params, updates))
  return cfg, jax.block_until_ready(state)


def _timed(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--size", default="25m")
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--dir", default="/tmp/si_checksum_cost")
  ap.add_argument("--json", default="")
  args = ap.parse_args(argv)
  logging.getLogger("absl").setLevel(logging.ERROR)
  cfg, state = make_state(args.size)
  leaves = jax.tree.leaves(state)
  out = {"size": args.size, "params": cfg.num_params(), "leaves": len(leaves),
         "state_mb": sum(x.nbytes for x in leaves) / 1e6, "device": str(jax.devices()[0]),
         "load_before": os.getloadavg()[0]}
  t0 = time.perf_counter()
  checksum_lib.tree_checksums(state)
  out["checksum_first_call_s"] = time.perf_counter() - t0  # compiles once per leaf shape
  out["checksum_s"] = statistics.median(
      _timed(lambda: checksum_lib.tree_checksums(state)) for _ in range(args.repeats))

  shutil.rmtree(args.dir, ignore_errors=True)
  target = ts.abstract_state(state)
  times = {"save_off": [], "save_on": [], "restore_off": [], "restore_on": []}
  with ckpt_lib.Checkpointer(os.path.join(args.dir, "off"), max_to_keep=2,
                             checksums=False) as off, \
      ckpt_lib.Checkpointer(os.path.join(args.dir, "on"), max_to_keep=2) as on:
    for step in range(args.repeats + 1):  # round 0: warm-up, not timed
      t_off = _timed(lambda: off.save(step, state, {"step": step}, force=True))
      t_on = _timed(lambda: on.save(step, state, {"step": step}, force=True))
      r_off = _timed(lambda: off.restore(target, step))
      r_on = _timed(lambda: on.restore(target, step))
      if step:
        for k, v in zip(times, (t_off, t_on, r_off, r_on)):
          times[k].append(v)
  shutil.rmtree(args.dir, ignore_errors=True)
  for k, v in times.items():
    out[k + "_s"] = statistics.median(v)
    out[k + "_all_s"] = [round(x, 4) for x in v]
  out["save_overhead_pct"] = 100 * (out["save_on_s"] - out["save_off_s"]) / out["save_off_s"]
  out["restore_overhead_pct"] = 100 * (out["restore_on_s"] - out["restore_off_s"]) / out[
      "restore_off_s"]
  out["checksum_vs_save_pct"] = 100 * out["checksum_s"] / out["save_off_s"]
  out["load_after"] = os.getloadavg()[0]
  for k, v in out.items():
    print(f"{k:24s} {v:.4f}" if isinstance(v, float) else f"{k:24s} {v}", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(out, f, indent=1)
  return out


if __name__ == "__main__":
  main()
