"""Pack stage: from the credit stage's rows to the mini-batches the update consumes.

Rows per step vary (SI adds repairs; dynamic sampling may keep fewer groups), but the programs
that consume them must not: every term's rows are cut into calls of a fixed number of rows
(`call_rows`: the rollout rows of a mini-batch divided by rl.microbatches, or fewer for a term
whose credit function declares a smaller capacity), and a term's rows are padded to a whole
number of calls per mini-batch (`prepare`). A step with more rows makes more calls; no row count
compiles a new program (`si_jax/shapes.py`). Padding rows have seq_mask 0 and no loss tokens.

Old log-probs (the ratio's denominator) are recomputed with the trainer's forward pass where a
row has none of its own (`has_old` False: e.g. a repair sampled under the repair prompt and
trained under the policy prompt) and, for all rows, when `recompute` is on. The trainer's
log-probs of the sampled tokens are always computed, to log the sampler-trainer gap
(`policy/sampler_logprob_gap`: mean |sampler - trainer| log-prob over response tokens):
sequence-level ratios (GSPO, eps ~3e-4) clip most sequences when that gap exceeds eps (bf16,
top-p/top-k), which is why `rl.recompute_logprobs` defaults to on for them. The log-prob pass
runs in calls of a fixed number of rows too (`make_logprob_fn`).
"""

from __future__ import annotations

import functools
from typing import Callable, Iterator, Mapping

import jax
import numpy as np

from si_jax import multihost
from si_jax import shapes
from si_jax import sharding as shd
from si_jax.models import transformer
from si_jax.rl import credit as credit_lib
from si_jax.rl import update as update_lib

UPDATE_KEYS = ("tokens", "input_mask", "loss_mask", "seq_mask", "advantages", "old_logprobs",
               "ref_logprobs", "row_len", "behavior_logprobs", "behavior_rows")


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


def call_rows(base: int, capacity: int | None, minibatches: int, divisor: int) -> int:
  """Rows per update call of a loss term (global, a multiple of the batch shards `divisor`):
  `base` (the rollout rows of a mini-batch / rl.microbatches), or, for a term whose rows per
  step are at most `capacity`, no more than its share of a mini-batch, so that a small term
  (SI's repairs) is not padded up to the policy term's calls."""
  rows = base
  if capacity is not None:
    rows = min(rows, -(-max(int(capacity), 1) // minibatches))
  return shapes.round_up(rows, divisor)


def padding_note(rollouts: int, minibatches: int, call_rows: int, batch_shards: int
                 ) -> str | None:
  """One line saying how far a step's rollout rows are padded (every mini-batch is whole
  update calls of `call_rows`, a multiple of the batch shards, so each device gets a row per
  call), or None when they are not. Printed by si-train at start and by si-plan."""
  rows = shapes.round_up(rollouts, minibatches * call_rows)
  if rows <= rollouts:
    return None
  return (f"the trainer pads {rollouts} rollout rows a step to {rows} ({rows / rollouts:.1f}x: "
          f"{minibatches} mini-batches x {call_rows} rows per update call, a multiple of the "
          f"{batch_shards} batch shards); fewer rl.minibatches or more rl.prompts_per_step "
          f"pad less")


def logprob_program(cfg, mesh, param_shardings, shape: tuple[int, int], *, temperature: float,
                    chunk_size: int) -> Callable:
  """The jit of one log-prob call: (params, tokens, input_mask) -> log-probs, all of global
  `shape` [R, W] with rows sharded over the batch shards (`make_logprob_fn`'s program; si-plan
  lowers it from shapes)."""
  fn = functools.partial(transformer.token_logprobs, cfg=cfg, temperature=temperature,
                         chunk_size=chunk_size)
  b = shd.batch_sharding(mesh, shape)
  return jax.jit(shd.on_mesh(fn, mesh), in_shardings=(param_shardings, b, b), out_shardings=b)


def make_logprob_fn(cfg, mesh, param_shardings, *, temperature: float, chunk_size: int,
                    rows_per_call: int) -> Callable:
  """(params, tokens [R, W], input_mask [R, W]) -> log-probs [R, W], jitted, rows sharded,
  in calls of `rows_per_call` rows (rows of the whole run; a process brings its share): any
  R compiles one program per width (`logprob_program`). The last call is filled with masked
  rows whose outputs are dropped."""
  per = rows_per_call // jax.process_count()  # this process's rows of a call
  if per < 1 or rows_per_call % jax.process_count():
    raise ValueError(f"log-probs: {rows_per_call} rows per call do not split over "
                     f"{jax.process_count()} processes")
  cache: dict = {}

  def call(params, tokens, input_mask):
    """tokens, input_mask: this process's rows (all rows with one process)."""
    n = tokens.shape[0]
    pad = -n % per
    if pad:
      tokens = np.concatenate([tokens, np.zeros((pad,) + tokens.shape[1:], tokens.dtype)])
      filler = np.zeros((pad,) + input_mask.shape[1:], bool)
      filler[:, -1] = True  # one valid token keeps attention rows well defined
      input_mask = np.concatenate([input_mask, filler])
    out = [one(params, tokens[i:i + per], input_mask[i:i + per])
           for i in range(0, tokens.shape[0], per)]
    return np.concatenate(out)[:n] if out else np.zeros(tokens.shape, np.float32)

  def one(params, tokens, input_mask):
    shape = (tokens.shape[0] * jax.process_count(),) + tokens.shape[1:]
    b = shd.batch_sharding(mesh, shape)
    if shape not in cache:
      cache[shape] = logprob_program(cfg, mesh, param_shardings, shape, temperature=temperature,
                                     chunk_size=chunk_size)
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


def prepare(term_rows: list[credit_lib.TermRows], *, rows_per_call: Mapping[str, int],
            minibatches: int, params, ref_params, logprob_fn, recompute: bool
            ) -> tuple[list[credit_lib.TermRows], dict[str, float]]:
  """Pads every term's rows to a whole number of calls per mini-batch (rows_per_call[name]
  x minibatches, counted over the whole run) and fills old / reference log-probs of policy
  terms. Terms with no rows are dropped. Returns (terms, metrics).

  With several processes, `term_rows` are this process's rows and every process pads to the
  count of the process with the most rows (the update is one collective program), so each
  term has the same rows on every process."""
  out, metrics = [], {}
  for tr, n in agree_terms(term_rows):
    if n == 0:
      continue
    quantum = rows_per_call[tr.term.name] * minibatches // jax.process_count()
    rows = pad_rows(tr.rows, shapes.round_up(n, quantum))
    if isinstance(tr.term, update_lib.PolicyTerm):
      resp = rows["loss_mask"] != 0
      # loss tokens credited up and down (a run-level sum over processes: the tokens/ prefix)
      adv = rows["advantages"] * resp * (rows["seq_mask"][:, None] != 0)
      metrics[f"tokens/{tr.term.name}_positive"] = int((adv > 0).sum())
      metrics[f"tokens/{tr.term.name}_negative"] = int((adv < 0).sum())
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
