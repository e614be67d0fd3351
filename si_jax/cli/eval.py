"""Evaluation: avg@k, pass@k and maj@k of a policy on a task split; `si-eval` writes tables.

  si-eval --workdir runs/arith                       # latest checkpoint of a training run
  si-eval --hf_dir path/to/hf --task gsm8k --k 8     # any HF checkpoint directory

The command line of `si_jax/train/evaluate.py` (the library: the metrics, what each means, and
the tables). A sample is correct when its reward is at least the success threshold: config
rl.success_threshold for a run, 1.0 for an HF directory. The table goes to `<out>/eval.md` and
`eval.json` (default out: `<workdir>/eval`, or `.` with --hf_dir).

Mistakes (a bad flag, an unknown task option, a missing data dir, a checkpoint that does not
verify) are one line on stderr, `si-eval: error: ...`, and exit code 2, as in si-train
(SI_TRACEBACK=1 shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import NoReturn, Sequence

from si_jax import multihost
from si_jax import sampling
from si_jax.cli.console import console
from si_jax.train import evaluate as eval_lib


class _Error(Exception):
  """A mistake of the user's: one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
  def error(self, message: str):
    raise _Error(message)


def _parser() -> _Parser:
  ap = _Parser(prog="si-eval", description=__doc__.split("\n")[0])
  src = ap.add_mutually_exclusive_group(required=True)
  src.add_argument("--workdir", help="a si-train workdir (its latest checkpoint and config)")
  src.add_argument("--hf_dir", help="an HF checkpoint directory (with its tokenizer)")
  ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  ap.add_argument("--task", default=None, help="task name (default: the run's task)")
  ap.add_argument("--task_kwargs", default=None,
                  help='task options as JSON, e.g. \'{"manual_dir": "data/gsm8k"}\' (default: '
                       "the run's options for its own task, else the task's defaults)")
  ap.add_argument("--split", default=None)
  ap.add_argument("--k", type=int, default=1)
  ap.add_argument("--num_examples", type=int, default=0, help="0 = the whole split")
  ap.add_argument("--temperature", type=float, default=None)
  ap.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling (1.0 = off)")
  ap.add_argument("--top_k", type=int, default=0, help="top-k sampling (0 = off)")
  ap.add_argument("--max_new_tokens", type=int, default=None)
  ap.add_argument("--mesh", default="1,1,1",
                  help="DATA,FSDP,TENSOR mesh the model is sharded and sampled on (one size "
                       "may be -1: the remaining devices), e.g. --mesh=-1,1,1 = every device "
                       "data-parallel, 1,1,8 = tensor-parallel over 8; with SI_MULTIHOST=1 "
                       "over every host's devices")
  ap.add_argument("--batch_size", type=int, default=256)
  ap.add_argument("--out", default=None, help="output dir (default: <workdir>/eval or .)")
  return ap


def main(argv: Sequence[str] | None = None) -> int:
  """si-eval; returns the exit code (2 with one line on stderr for a mistake)."""
  try:
    return _main(argv)
  except (_Error, ValueError, FileNotFoundError, KeyError, NotADirectoryError) as e:
    if os.environ.get("SI_TRACEBACK") == "1":
      raise
    print(f"si-eval: error: {str(e).strip(chr(39) + chr(34))}", file=sys.stderr, flush=True)
    return 2


def _main(argv: Sequence[str] | None = None) -> int:
  from si_jax.train import workdir as workdir_lib
  from si_jax.data import tasks as tasks_lib
  from si_jax.tokenizer import Tokenizer

  ap = _parser()
  args = ap.parse_args(argv)
  try:
    task_kwargs = json.loads(args.task_kwargs) if args.task_kwargs else None
  except json.JSONDecodeError as e:
    ap.error(f"--task_kwargs is not valid JSON ({e.msg}): {args.task_kwargs!r}")
  if task_kwargs is not None and not isinstance(task_kwargs, dict):
    ap.error(f"--task_kwargs must be a JSON object, got {args.task_kwargs!r}")
  threshold = 1.0
  from si_jax import sharding as shd
  multihost.initialize_from_env()  # SI_MULTIHOST=1: one si-eval per host, as si-train
  try:
    sizes = [int(x) for x in args.mesh.split(",")]
    if len(sizes) != 3:
      raise ValueError
  except ValueError:
    ap.error(f"--mesh must be DATA,FSDP,TENSOR (three ints), got {args.mesh!r}")
  try:
    mesh = shd.make_mesh(*sizes)
  except ValueError as e:
    ap.error(f"--mesh {args.mesh}: {e}")

  # The task and its examples first: a mistake in them is found before any model is loaded.
  if args.workdir:
    cfg = workdir_lib.read_config(args.workdir)
    task_name = args.task or cfg.task.name
    own = {} if args.task else cfg.task.kwargs.to_dict()
    threshold = cfg.rl.success_threshold
    split = args.split or cfg.task.eval_split
    temperature = cfg.eval.temperature if args.temperature is None else args.temperature
    max_new = args.max_new_tokens or cfg.eval.max_new_tokens
  else:
    if not args.task:
      ap.error("--task is required with --hf_dir")
    task_name, own = args.task, {}
    split = args.split or "test"
    temperature = 0.0 if args.temperature is None else args.temperature
    max_new = args.max_new_tokens or 512
  tasks_lib.check_options(task_name, task_kwargs or {}, "--task_kwargs")
  task = tasks_lib.get_task(task_name, **{**own, **(task_kwargs or {})})
  try:
    examples = task.examples(split)
    n = len(examples) if args.num_examples <= 0 else min(args.num_examples, len(examples))
    examples = [examples[i] for i in range(n)]
    if args.workdir:
      run = workdir_lib.load_run(args.workdir, step=args.step, mesh=mesh)
      params, tok, model_cfg = run["params"], run["tokenizer"], run["model_cfg"]
      name = f"{os.path.basename(os.path.normpath(args.workdir))}@{run['step']}"
      out = args.out or os.path.join(args.workdir, "eval")
    else:
      from si_jax.models import hf
      model_cfg, params = hf.load_hf(args.hf_dir,
                                     shardings=lambda c: shd.param_shardings(c, mesh))
      tok = Tokenizer.from_dir(args.hf_dir)
      workdir_lib.announce(f"model: {args.hf_dir} (HF directory): "
                           f"{workdir_lib.describe_model(model_cfg)}")
      workdir_lib.announce(f"tokenizer: {args.hf_dir} (the model's own): "
                           f"{workdir_lib.describe_tokenizer(tok)}")
      name = os.path.basename(os.path.normpath(args.hf_dir))
      out = args.out or "."
  except BaseException:
    task.close()
    raise
  sampler = sampling.Sampler(model_cfg, mesh, max_len=model_cfg.max_position_embeddings)
  res = eval_lib.evaluate(sampler, params, tok, task, examples, k=args.k,
                          temperature=temperature, max_new_tokens=max_new, top_p=args.top_p,
                          top_k=args.top_k, batch_size=args.batch_size, threshold=threshold)
  res.update(task=task.name, split=split)
  if multihost.is_primary():  # rows are process 0's; the metrics cover every process
    md, js = eval_lib.write_tables({name: res}, out)
    print(eval_lib.markdown_table({name: res}))
    print(f"wrote {md} and {js}")
  task.close()
  return 0


def run() -> NoReturn:
  """Console-script entry point (`si-eval`)."""
  console(main, "si-eval")


if __name__ == "__main__":
  run()
