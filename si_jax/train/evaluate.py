"""Evaluation: avg@k, pass@k and maj@k of a policy on a task split, and their tables (markdown,
JSON). The `si-eval` command that runs it on a checkpoint is `si_jax/cli/eval.py`.

avg@k: mean reward over k samples per problem. pass@k: unbiased estimate (Chen et al. 2021)
from n >= k samples of the chance that one of k is correct (correct: reward >= the success
threshold, config rl.success_threshold for a run). maj@k: the reward of the answer most of the
k samples agree on (ties: the earliest sample's answer).
"""

from __future__ import annotations

import collections
import math
import os
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
