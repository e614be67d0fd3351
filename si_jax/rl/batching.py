"""Pack stage: from the credit stage's rows to the mini-batches the update consumes.

Rows per step vary (SI adds repairs; dynamic sampling may keep fewer groups), so each term's row
count is padded up to a bucket: `unit * b` with b on the ladder 1, 2, 3, 4, 6, 8, 12, 16, ...
(each step at most 1.5x the last), where unit = minibatches * microbatches * (batch shards of
the mesh). The update then compiles once per bucket combination, a number that grows with the
log of the row count. Padding rows have seq_mask 0 and no loss tokens.

Old log-probs (the ratio's denominator) are recomputed with the trainer's forward pass where a
row has none of its own (`has_old` False: e.g. a repair sampled under the repair prompt and
trained under the policy prompt) and, for all rows, when `recompute` is on. The trainer's
log-probs of the sampled tokens are always computed, to log the sampler-trainer gap
(`policy/sampler_logprob_gap`: mean |sampler - trainer| log-prob over response tokens):
sequence-level ratios (GSPO, eps ~3e-4) clip most sequences when that gap exceeds eps (bf16,
top-p/top-k), which is why `rl.recompute_logprobs` defaults to on for them.
"""

from __future__ import annotations

import functools
from typing import Callable, Iterator

import jax
import numpy as np

from si_jax import multihost
from si_jax import sharding as shd
from si_jax.models import transformer
from si_jax.rl import credit as credit_lib
from si_jax.rl import update as update_lib

UPDATE_KEYS = ("tokens", "input_mask", "loss_mask", "seq_mask", "advantages", "old_logprobs",
               "ref_logprobs")


def bucket(n: int, unit: int) -> int:
  """The smallest `unit * b >= n` with b in 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (n >= 1)."""
  if unit < 1:
    raise ValueError(f"bucket: unit must be >= 1, got {unit}")
  units = max(1, -(-n // unit))
  if units == 1:
    return unit
  p = 2
  while True:
    for b in (p, p * 3 // 2):
      if b >= units:
        return unit * b
    p *= 2


def pad_rows(rows: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
  """Appends rows with no loss (seq_mask 0, loss_mask 0) up to `size` rows."""
  n = rows["tokens"].shape[0]
  if size < n:
    raise ValueError(f"pad_rows: {n} rows do not fit in {size}")
  extra = size - n
  out = {k: np.concatenate([v, np.zeros((extra,) + v.shape[1:], v.dtype)]) for k, v in
         rows.items()}
  if extra:
    out["input_mask"][n:, -1] = True  # one valid token keeps attention rows well defined
    if "seq_mask" in out:
      out["seq_mask"][n:] = 0
  return out


def make_logprob_fn(cfg, mesh, param_shardings, *, temperature: float, chunk_size: int,
                    num_calls: int = 1) -> Callable:
  """(params, tokens [R, W], input_mask [R, W]) -> log-probs [R, W], jitted, rows sharded.
  `num_calls` > 1 scores the rows in that many equal calls (rl.logprob_microbatches: a pass
  over all packed rows at once can be the step's memory peak); R must split into them."""
  fn = functools.partial(transformer.token_logprobs, cfg=cfg, temperature=temperature,
                         chunk_size=chunk_size)
  cache: dict = {}

  def call(params, tokens, input_mask):
    """tokens, input_mask: this process's rows (all rows with one process)."""
    if num_calls > 1:
      if tokens.shape[0] % num_calls:
        raise ValueError(f"log-probs: {tokens.shape[0]} rows do not split into "
                         f"rl.logprob_microbatches={num_calls} calls")
      return np.concatenate([one(params, t, m) for t, m in
                             zip(np.split(tokens, num_calls), np.split(input_mask, num_calls))])
    return one(params, tokens, input_mask)

  def one(params, tokens, input_mask):
    shape = (tokens.shape[0] * jax.process_count(),) + tokens.shape[1:]
    b = shd.batch_sharding(mesh, shape)
    if shape not in cache:
      cache[shape] = jax.jit(shd.on_mesh(fn, mesh), in_shardings=(param_shardings, b, b),
                             out_shardings=b)
    out = cache[shape](params, multihost.to_global(tokens, b),
                       multihost.to_global(input_mask, b))
    return multihost.local_rows(out)
  return call


def needs_recompute(setting: bool | None, ratio: str, param_dtype) -> bool:
  """rl.recompute_logprobs: None = auto (sequence-level ratio or non-fp32 params)."""
  if setting is not None:
    return bool(setting)
  return ratio != "token" or np.dtype(param_dtype) != np.float32


def agree_terms(term_rows: list[credit_lib.TermRows]
                ) -> list[tuple[credit_lib.TermRows, int]]:
  """(term rows, the largest process's row count) per term.

  With several processes the update is one collective program, so every process must bring
  the same terms with arrays of the same widths, whatever rows it happens to hold (an SI
  process may have kept no repair this step). The terms of all processes are gathered (by
  name, in process order); a term this process lacks gets zero rows, and a narrower array is
  widened with masked columns on the right (rows are prompt + completion + padding). With one
  process: the terms as they are."""
  if jax.process_count() == 1:
    return [(tr, tr.num_rows) for tr in term_rows]
  desc = [(tr.term, tr.num_rows, {k: (v.dtype.str, v.shape[1:]) for k, v in tr.rows.items()})
          for tr in term_rows]
  terms: dict[str, tuple] = {}  # name -> (term, max rows, key -> (dtype, widest trailing shape))
  for proc in multihost.allgather_objects(desc):
    for term, n, keys in proc:
      t, m, ks = terms.get(term.name, (term, 0, {}))
      for k, (dt, shp) in keys.items():
        old = ks.get(k, (dt, shp))[1]
        ks[k] = (dt, tuple(max(a, b) for a, b in zip(shp, old)) if old else shp)
      terms[term.name] = (t, max(m, n), ks)
  mine = {tr.term.name: tr.rows for tr in term_rows}
  out = []
  for name, (term, n, keys) in terms.items():
    rows = mine.get(name)
    fixed = {}
    for k, (dt, shp) in keys.items():
      v = rows[k] if rows is not None else np.zeros((0,) + shp, np.dtype(dt))
      if v.shape[1:] != shp:  # widen [R, W] with masked (zero) columns on the right
        v = np.pad(v, [(0, 0)] + [(0, b - a) for a, b in zip(v.shape[1:], shp)])
      fixed[k] = v
    out.append((credit_lib.TermRows(term, fixed), n))
  return out


def prepare(term_rows: list[credit_lib.TermRows], *, unit: int, params, ref_params,
            logprob_fn, recompute: bool) -> tuple[list[credit_lib.TermRows], dict[str, float]]:
  """Pads every term's rows to its bucket and fills old / reference log-probs of policy terms.
  Terms with no rows are dropped. Returns (terms, metrics).

  With several processes, `term_rows` are this process's rows, `unit` counts the rows of the
  whole run, and every process pads to the bucket of the largest process's row count (the
  update is one collective program), so each term has the same rows on every process."""
  out, metrics = [], {}
  local_unit = unit // jax.process_count()
  for tr, n in agree_terms(term_rows):
    if n == 0:
      continue
    rows = pad_rows(tr.rows, bucket(n, local_unit))
    if isinstance(tr.term, update_lib.PolicyTerm):
      resp = rows["loss_mask"] != 0
      lp = logprob_fn(params, rows["tokens"], rows["input_mask"])
      has_old = rows["has_old"].astype(bool)
      sampled = resp & has_old[:, None]
      if sampled.any():
        gap = np.abs(rows["old_logprobs"] - lp)[sampled]
        metrics[f"{tr.term.name}/sampler_logprob_gap"] = float(gap.mean())
      use_trainer = np.full(has_old.shape, True) if recompute else ~has_old
      rows["old_logprobs"] = np.where(use_trainer[:, None], lp, rows["old_logprobs"]) * resp
      if tr.term.kl_beta > 0:
        rows["ref_logprobs"] = logprob_fn(ref_params, rows["tokens"], rows["input_mask"]) * resp
    out.append(credit_lib.TermRows(tr.term, {k: v for k, v in rows.items()
                                             if k in UPDATE_KEYS}))
  return out, metrics


def minibatches(terms: list[credit_lib.TermRows], num: int, rng: np.random.Generator
                ) -> Iterator[dict[str, dict[str, np.ndarray]]]:
  """`num` mini-batches: each term's rows shuffled and split into `num` equal parts; the
  i-th mini-batch holds part i of every term. One mini-batch keeps the rows in order (its
  loss is a sum over rows), so a run's rows sit on the same devices whatever the number of
  processes. With several processes each splits its own rows the same way."""
  orders = [rng.permutation(tr.num_rows) if num > 1 else np.arange(tr.num_rows)
            for tr in terms]
  for i in range(num):
    mb = {}
    for tr, order in zip(terms, orders):
      size = tr.num_rows // num
      idx = order[i * size:(i + 1) * size]
      mb[tr.term.name] = {k: v[idx] for k, v in tr.rows.items()}
    yield mb
