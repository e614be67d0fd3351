"""Evaluation: avg@k, pass@k and maj@k of a policy on a task split; `si-eval` writes tables.

  si-eval --workdir runs/arith                       # latest checkpoint of a training run
  si-eval --hf_dir path/to/hf --task gsm8k --k 8     # any HF checkpoint directory

avg@k: mean reward over k samples per problem. pass@k: unbiased estimate (Chen et al. 2021)
from n >= k samples of the chance that one of k is correct (correct: reward >= the success
threshold, config rl.success_threshold for a run). maj@k: the reward of the answer most of the
k samples agree on (ties: the earliest sample's answer).

Mistakes (a bad flag, an unknown task option, a missing data dir, a checkpoint that does not
verify) are one line on stderr, `si-eval: error: ...`, and exit code 2, as in si-train
(SI_TRACEBACK=1 shows the traceback).
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import sys
from typing import Sequence

import jax
import numpy as np

from si_jax import multihost
from si_jax import sampling
from si_jax import tables
from si_jax.rl import rollout


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k from n samples of which c are correct."""
  if n < k:
    raise ValueError(f"pass@k needs n >= k samples, got n={n}, k={k}")
  if n - c < k:
    return 1.0
  return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_reward(answers: Sequence[str | None], rewards: Sequence[float]) -> float:
  """Reward of the most common non-None answer (first seen wins ties); 0 if none."""
  counts = collections.Counter(a for a in answers if a is not None)
  if not counts:
    return 0.0
  top = max(counts.values())
  for a, r in zip(answers, rewards):
    if a is not None and counts[a] == top:
      return float(r)
  return 0.0


def evaluate(sampler: sampling.Sampler, params, tokenizer, task, examples, *, k: int = 1,
             temperature: float = 0.0, max_new_tokens: int = 64, top_p: float = 1.0,
             top_k: int = 0,
             key: jax.Array | None = None, batch_size: int = 256, threshold: float = 1.0,
             width: int = 0) -> dict:
  """Scores k samples per example. temperature 0 (greedy) makes the k samples identical, so
  it is only meaningful with k = 1. Returns metrics and per-example rows. width: the prompt
  width floor of the sampler (a training run's policy prompt width: one compiled shape).

  With several processes every process passes all `examples` and samples its contiguous share
  of each batch; the metrics cover all examples, `rows` only this process's."""
  if k > 1 and temperature == 0:
    raise ValueError("evaluate: k > 1 needs temperature > 0 (greedy samples are identical)")
  key = jax.random.key(0) if key is None else key
  sp = sampling.SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature,
                               top_p=top_p, top_k=top_k, stop_ids=tokenizer.stop_ids, pad_id=tokenizer.pad_id)
  per = max(1, batch_size // k)
  rows, avg, passk, maj, lengths = [], [], [], [], []
  examples = list(examples)
  for start in range(0, len(examples), per):
    chunk = examples[start:start + per]
    chunk = chunk[multihost.local_slice(len(chunk))]
    ro = rollout.sample_and_score(sampler, params, tokenizer, task, chunk,
                                  jax.random.fold_in(key, start), sp, group_size=k,
                                  width=width)
    for i, ex in enumerate(chunk):
      r = ro.rewards[i]
      texts = ro.texts[i * k:(i + 1) * k]
      answers = [task.answer_key(t) for t in texts]
      correct = int(np.sum(r >= threshold))
      avg.append(float(np.mean(r)))
      passk.append(pass_at_k(k, correct, k))
      maj.append(majority_reward(answers, r))
      lengths.extend(len(x) for x in ro.response_ids[i * k:(i + 1) * k])
      rows.append(dict(id=ex.id, prompt=ex.prompt, rewards=[float(x) for x in r],
                       answers=answers,
                       reasons=[v.reason for v in ro.verdicts[i * k:(i + 1) * k]],
                       sample=texts[0]))
  avg, passk, maj = (multihost.allgather_rows(np.asarray(x, np.float64))
                     for x in (avg, passk, maj))
  lengths = multihost.allgather_rows(np.asarray(lengths, np.int64))
  n = max(len(examples), 1)
  return {
      "num_examples": len(examples), "k": k, "temperature": temperature,
      f"avg@{k}": float(np.sum(avg) / n), f"pass@{k}": float(np.sum(passk) / n),
      f"maj@{k}": float(np.sum(maj) / n),
      "mean_response_tokens": float(np.mean(lengths)) if len(lengths) else 0.0,
      "rows": rows,
  }


def markdown_table(results: dict[str, dict]) -> str:
  """results: name -> evaluate() output (same k). One row per name."""
  if not results:
    return ""
  k = next(iter(results.values()))["k"]
  return tables.markdown_table(
      ["model", "n", f"avg@{k}", f"pass@{k}", f"maj@{k}", "mean tokens"],
      [[name, res["num_examples"], f"{res[f'avg@{k}']:.4f}", f"{res[f'pass@{k}']:.4f}",
        f"{res[f'maj@{k}']:.4f}", f"{res['mean_response_tokens']:.1f}"]
       for name, res in results.items()])


def write_tables(results: dict[str, dict], out_dir: str, name: str = "eval") -> tuple[str, str]:
  os.makedirs(out_dir, exist_ok=True)
  md, js = os.path.join(out_dir, f"{name}.md"), os.path.join(out_dir, f"{name}.json")
  with open(md, "w", encoding="utf-8") as f:
    f.write(markdown_table(results) + "\n")
  tables.write_json(js, results)
  return md, js


class _Error(Exception):
  """A mistake of the user's: one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
  def error(self, message: str):
    raise _Error(message)


def main(argv=None) -> int:
  """si-eval; returns the exit code (2 with one line on stderr for a mistake)."""
  try:
    return _main(argv)
  except (_Error, ValueError, FileNotFoundError, KeyError, NotADirectoryError) as e:
    if os.environ.get("SI_TRACEBACK") == "1":
      raise
    print(f"si-eval: error: {str(e).strip(chr(39) + chr(34))}", file=sys.stderr, flush=True)
    return 2


def _main(argv=None) -> int:
  from si_jax.train import workdir as workdir_lib
  from si_jax.data import tasks as tasks_lib
  from si_jax.tokenizer import Tokenizer

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
  args = ap.parse_args(argv)
  try:
    task_kwargs = json.loads(args.task_kwargs) if args.task_kwargs else None
  except json.JSONDecodeError as e:
    ap.error(f"--task_kwargs is not valid JSON ({e.msg}): {args.task_kwargs!r}")
  if task_kwargs is not None and not isinstance(task_kwargs, dict):
    ap.error(f"--task_kwargs must be a JSON object, got {args.task_kwargs!r}")
  threshold = 1.0
  from si_jax import multihost
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
  res = evaluate(sampler, params, tok, task, examples, k=args.k, temperature=temperature,
                 max_new_tokens=max_new, top_p=args.top_p, top_k=args.top_k,
                 batch_size=args.batch_size, threshold=threshold)
  res.update(task=task.name, split=split)
  if multihost.is_primary():  # rows are process 0's; the metrics cover every process
    md, js = write_tables({name: res}, out)
    print(markdown_table({name: res}))
    print(f"wrote {md} and {js}")
  task.close()
  return 0


def run():
  raise SystemExit(main())
