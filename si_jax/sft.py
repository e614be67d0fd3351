"""Cold start: supervised fine-tuning on (prompt, response) pairs.

Sources: the task's own generator, `Task.sft_pairs` (the synthetic task makes traces with
injected mistakes, so
the SFT policy is right only sometimes), or a jsonl file of {"prompt", "response"} lines. The
response gets the tokenizer's end-of-turn id appended so the model learns to stop. Batches are
packed with `rollout.pack_rows`, the same layout RL trains on.
"""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np

from si_jax.rl import rollout


def file_pairs(path: str) -> list[tuple[str, str]]:
  """(prompt, response) pairs from a jsonl file; a bad line is an error naming file:line."""
  pairs = []
  with open(path, encoding="utf-8") as f:
    for i, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{i}: not valid JSON ({e.msg})") from None
      for key in ("prompt", "response"):
        if not isinstance(row.get(key), str):
          raise ValueError(f"{path}:{i}: field {key!r} must be a string, got "
                           f"{type(row.get(key)).__name__}")
      pairs.append((row["prompt"], row["response"]))
  if not pairs:
    raise ValueError(f"{path}: no SFT pairs")
  return pairs


def encode_pairs(tokenizer, pairs: Sequence[tuple[str, str]], system: str | None = None
                 ) -> tuple[list[list[int]], list[list[int]]]:
  prompts = [tokenizer.prompt_ids(p, system) for p, _ in pairs]
  responses = [tokenizer.encode(r) + [tokenizer.stop_ids[0]] for _, r in pairs]
  return prompts, responses


def batches(prompts: list[list[int]], responses: list[list[int]], *, batch_size: int,
            prompt_len: int, response_len: int, pad_id: int, seed: int, start_step: int = 0):
  """Endless iterator of packed batches, reshuffled every epoch; deterministic in (seed, step),
  so a resumed run sees the same batches as an uninterrupted one."""
  n = len(prompts)
  if n < batch_size:
    raise ValueError(f"SFT has {n} pairs, fewer than sft.batch_size={batch_size}")
  per_epoch = n // batch_size
  step = start_step
  while True:
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    idx = perm[k * batch_size:(k + 1) * batch_size]
    yield rollout.pack_rows([prompts[i] for i in idx], [responses[i] for i in idx],
                            prefix_len=prompt_len, completion_len=response_len, pad_id=pad_id)
    step += 1
