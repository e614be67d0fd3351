"""The si-plan command: flags, the plans and lever searches they ask for, printing, files.

    si-plan --config experiments/configs/gsm8k_grpo.py:smoke --model qwen3-8b --devices 64 \\
        --accelerator h100 [--prompt_len 256] [--config.model.remat=full ...]

`run` sets the simulated device count (the largest of --devices) before jax starts, then
plans every (model, devices) pair: the report, the lever search when it does not fit, and a
summary table (also --markdown); --json writes every plan.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Sequence

import jax

from si_jax.tools.plan.devices import ACCELERATORS, accelerator, device_env
from si_jax.tools.plan.levers import find_fit
from si_jax.tools.plan.planner import PHASES, plan
from si_jax.tools.plan.reports import markdown_table, report, table_row


def _csv(text: str, kind=str) -> list:
  return [kind(x) for x in text.split(",") if x.strip()]


def _define_flags():
  from absl import flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "experiment config file, optionally with "
                                  ":variant", lock_config=True)
  flags.DEFINE_string("model", "", "comma-separated model presets replacing the config's "
                      "model shape (e.g. qwen3-8b,qwen3-32b); empty: the config's model")
  flags.DEFINE_string("devices", "8", "comma-separated simulated device counts")
  flags.DEFINE_enum("accelerator", "h100", sorted(ACCELERATORS), "HBM to plan against")
  flags.DEFINE_float("mem_fraction", None, "GPU: the fraction of memory the run gets (default "
                     "$XLA_PYTHON_CLIENT_MEM_FRACTION, else what si-launch / si-train set: "
                     "0.9)")
  flags.DEFINE_integer("prompt_len", 256, "prompt tokens assumed (rounded up to 16)")
  flags.DEFINE_string("phases", ",".join(PHASES), f"subset of {','.join(PHASES)}")
  flags.DEFINE_bool("levers", True, "when it does not fit, search the memory levers")
  flags.DEFINE_string("json", "", "also write every plan here")
  flags.DEFINE_string("markdown", "", "also write the summary table here")


def _main(argv) -> None:
  from absl import flags
  FLAGS = flags.FLAGS
  if len(argv) > 1:
    raise SystemExit(f"si-plan: error: unexpected arguments {argv[1:]}")
  try:
    acc = accelerator(FLAGS.accelerator, mem_fraction=FLAGS.mem_fraction)
    devices = _csv(FLAGS.devices, int)
    models = _csv(FLAGS.model) or [None]
    phases = _csv(FLAGS.phases)
  except ValueError as e:
    raise SystemExit(f"si-plan: error: {e}") from None
  config = FLAGS.config
  rows, plans = [], []
  t_all = time.perf_counter()
  for model in models:
    for n in devices:
      t0 = time.perf_counter()
      try:
        p = plan(config, devices=n, acc=acc, model=model, prompt_len=FLAGS.prompt_len,
                 phases=phases)
      except ValueError as e:
        if os.environ.get("SI_TRACEBACK") == "1":
          raise
        raise SystemExit(f"si-plan: error: {e}") from None
      print(report(p, acc), flush=True)
      search = None
      if FLAGS.levers and not p.fits(acc):
        print(f"  searching levers for {acc.name}:", flush=True)
        search = find_fit(config, p, acc, model=model, prompt_len=FLAGS.prompt_len,
                          log=lambda s: print(s, flush=True))
        print(f"  {'fits with' if search.fits else 'no lever made it fit; tried'}: "
              f"{'; '.join(search.overrides) or '-'}", flush=True)
      print(f"  planned in {time.perf_counter() - t0:.0f} s\n", flush=True)
      rows.append(table_row(p, acc, search))
      plans.append(dict(plan=p.to_json(), seconds=time.perf_counter() - t0,
                        levers=[dict(lever=lv.name, plan=q.to_json())
                                for lv, q in (search.steps if search else [])],
                        dropped=[dict(lever=lv.name, peak=peak)
                                 for lv, peak in (search.dropped if search else [])],
                        fits_after_levers=search.fits if search else p.fits(acc)))
  table = markdown_table(rows)
  print(table)
  print(f"\nsi-plan: {len(plans)} plan(s) in {time.perf_counter() - t_all:.0f} s")
  if FLAGS.markdown:
    with open(FLAGS.markdown, "w", encoding="utf-8") as f:
      f.write(table + "\n")
  if FLAGS.json:
    with open(FLAGS.json, "w", encoding="utf-8") as f:
      json.dump(dict(argv=sys.argv, accelerator=dataclasses.asdict(acc),
                     usable_fraction=acc.fraction, plans=plans), f, indent=1)
      f.write("\n")


def _device_arg(argv: Sequence[str]) -> int:
  """The largest of --devices (parsed before absl, which runs after jax may start)."""
  value = "8"
  for i, a in enumerate(argv):
    if a.startswith("--devices="):
      value = a.split("=", 1)[1]
    elif a == "--devices" and i + 1 < len(argv):
      value = argv[i + 1]
  try:
    counts = _csv(value, int)
  except ValueError:
    counts = []
  if not counts or min(counts) < 1:
    raise SystemExit(f"si-plan: error: --devices must be comma-separated integers >= 1, got "
                     f"{value!r}")
  return max(counts)


def run() -> None:
  """Console-script entry point (`si-plan`): simulated devices first, then the plan."""
  os.environ.update(device_env(_device_arg(sys.argv[1:]), os.environ))
  jax.config.update("jax_platforms", "cpu")
  from absl import app
  _define_flags()
  from absl import flags
  flags.mark_flags_as_required(["config"])
  app.run(_main)
