"""The RL run: cold-start SFT, then GRPO-family RL, with evaluation, metrics and checkpoints.

`train(config, workdir)` reads as the story of a run. Global step g counts completed updates:
g in [0, sft.steps) are SFT steps, g in [sft.steps, sft.steps + rl.steps) are RL iterations.
Everything random is derived from (seed, g, purpose) and the data order from (seed, epoch), so
a run restarted from its checkpoint at step g continues exactly as if it had never stopped.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from si_jax import checkpoint as ckpt_lib
from si_jax import configs
from si_jax import evaluate as eval_lib
from si_jax import metrics as metrics_lib
from si_jax import sampling
from si_jax import sft as sft_lib
from si_jax import sharding as shd
from si_jax.data import tasks as tasks_lib
from si_jax.models import config as model_config
from si_jax.models import transformer
from si_jax.rl import advantages as adv_lib
from si_jax.rl import rollout
from si_jax.rl import train_state as ts
from si_jax.rl import update as update_lib
from si_jax.tokenizer import Tokenizer

# PRNG purposes: fold_in(fold_in(key(seed), step), purpose).
ROLLOUT, EVAL, INIT, SHUFFLE = 1, 2, 3, 4
PROMPT_BUCKET = 16


# ----------------------------------------------------------------------------- set-up


def setup_tokenizer(config, workdir: str) -> Tokenizer:
  if config.tokenizer.path:
    return Tokenizer.from_dir(config.tokenizer.path)
  if config.tokenizer.build == "arith":
    from si_jax.tokenizer import build_char_tokenizer
    path = os.path.join(workdir, "tokenizer")
    if not os.path.exists(os.path.join(path, "tokenizer.json")):
      build_char_tokenizer(path)
    return Tokenizer.from_dir(path)
  raise ValueError(f"config.tokenizer.build: unknown tokenizer {config.tokenizer.build!r} "
                   f"(known: 'arith'); or set config.tokenizer.path")


def model_config_for(config, tokenizer: Tokenizer) -> model_config.ModelConfig:
  over = dict(config.model.overrides)
  if over.get("vocab_size", 0) in (0, None):
    over["vocab_size"] = -(-tokenizer.vocab_size // 8) * 8
  try:
    return model_config.preset(config.model.preset, config.model.family, **over)
  except TypeError as e:
    raise ValueError(f"config.model.overrides: {e}") from None


def setup_model(config, tokenizer: Tokenizer, mesh):
  """(model config, params placed on the mesh)."""
  if config.model.init_from:
    path = config.model.init_from
    shard = lambda c: shd.param_shardings(c, mesh)
    if os.path.exists(os.path.join(path, "model_config.json")):
      from si_jax.models import convert
      cfg, params = convert.load_params(path, shardings=shard)
    else:
      from si_jax.models import hf
      cfg, params = hf.load_hf(path, shardings=shard)
  else:
    cfg = model_config_for(config, tokenizer)
    key = jax.random.fold_in(jax.random.key(config.seed), INIT)
    params = shd.init_sharded_params(cfg, mesh, key)
  if cfg.vocab_size < tokenizer.vocab_size:
    raise ValueError(f"model vocab_size {cfg.vocab_size} < tokenizer vocab "
                     f"{tokenizer.vocab_size} ({tokenizer.path})")
  return cfg, params


def _bucket(n: int, b: int = PROMPT_BUCKET) -> int:
  return -(-n // b) * b


class PromptStream:
  """Training prompts in a per-epoch shuffled order; `cursor` = prompts consumed so far."""

  def __init__(self, examples, seed: int, cursor: int = 0):
    self.examples, self.seed, self.cursor = examples, seed, cursor
    if len(examples) == 0:
      raise ValueError("the training split has no examples")

  def take(self, n: int) -> list:
    out, size = [], len(self.examples)
    for _ in range(n):
      epoch, pos = divmod(self.cursor, size)
      out.append(self.examples[int(_perm(self.seed, epoch, size)[pos])])
      self.cursor += 1
    return out


@functools.lru_cache(maxsize=4)
def _perm(seed: int, epoch: int, size: int) -> np.ndarray:
  return np.random.default_rng([seed, SHUFFLE, epoch]).permutation(size)


# ----------------------------------------------------------------------------- RL batch


def rl_batch(ro: rollout.Rollouts, seq_adv: np.ndarray, *, prompt_len: int, max_new: int,
             pad_id: int, seq_mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Packs rollouts into the policy term's sub-batch with [B, T] token advantages."""
  adv = [np.full(len(r), a, np.float32) for r, a in zip(ro.response_ids, seq_adv)]
  b = rollout.pack_rows(ro.row_prompt_ids(), ro.response_ids, prefix_len=prompt_len,
                        completion_len=max_new, pad_id=pad_id,
                        values={"old_logprobs": ro.logprobs, "advantages": adv})
  b["seq_mask"] = (np.ones(len(adv), np.float32) if seq_mask is None
                   else seq_mask.astype(np.float32))
  return b


def _mean(x) -> float:
  x = np.asarray(x, np.float64)
  return float(x.mean()) if x.size else float("nan")


# ----------------------------------------------------------------------------- the run


class Run:
  """Everything a run holds; built once by `train`."""

  def __init__(self, config, workdir: str):
    configs.validate(config)
    self.config, self.workdir = config, workdir
    os.makedirs(workdir, exist_ok=True)
    self._check_config()
    self.tokenizer = setup_tokenizer(config, workdir)
    self.task = tasks_lib.get_task(config.task.name, **config.task.kwargs.to_dict())
    self.mesh = shd.mesh_from_config(config.mesh)
    self.model_cfg, params = setup_model(config, self.tokenizer, self.mesh)
    self.sft_steps, self.rl_steps = config.sft.steps, config.rl.steps
    self.total_steps = self.sft_steps + self.rl_steps
    self.sft_opt = ts.optimizer_from_config(config.sft.optim, max(self.sft_steps, 1))
    rl_updates = self.rl_steps * config.rl.epochs * config.rl.minibatches
    self.rl_opt = ts.optimizer_from_config(config.rl.optim, max(rl_updates, 1))
    self.state = ts.create(params, self.sft_opt if self.sft_steps else self.rl_opt, self.mesh)
    self.preset = configs.loss_preset(config)
    self.sampler = sampling.Sampler(self.model_cfg, self.mesh,
                                    max_len=self.model_cfg.max_position_embeddings)
    self.ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                      max_to_keep=config.checkpoint.keep,
                                      # every=0: only the forced saves (hand-over, end)
                                      save_every=config.checkpoint.every or 10**9)
    self.writer = metrics_lib.MetricsWriter(workdir, tensorboard=config.log.tensorboard)
    self._pending_row: dict | None = None
    # phase 'sft' until start_rl ran (also with sft.steps = 0: it evaluates the initial policy)
    self.meta: dict[str, Any] = dict(step=0, phase="sft",
                                     data_cursor=0, eval_before=None, eval_history=[],
                                     seed=config.seed, config=configs.to_json(config))
    self.root_key = jax.random.key(config.seed)
    self._update_fns: dict = {}
    self.ref_params = None
    self.logprob_fn = jax.jit(functools.partial(
        transformer.token_logprobs, cfg=self.model_cfg, temperature=config.rl.temperature,
        chunk_size=config.model.logprob_chunk))

  def _check_config(self):
    path = os.path.join(self.workdir, "config.json")
    new = configs.to_dict(self.config)
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        old = json.load(f)
      diff = _diff(old, new)
      if diff:
        raise ValueError(
            f"{self.workdir} holds a run with a different config ({path}); differing fields: "
            f"{', '.join(diff[:10])}. Resume with the same config or use a new --workdir.")
    else:
      with open(path, "w", encoding="utf-8") as f:
        f.write(configs.to_json(self.config))

  # -- checkpoints

  def restore(self) -> bool:
    step = self.ckpt.latest_step()
    if step is None:
      return False
    self.state, meta = self.ckpt.restore(ts.abstract_state(self.state), step)
    self.meta.update(meta)
    self.writer.truncate_after(self.meta["step"])
    return True

  def save(self, force: bool = False):
    self.ckpt.save(self.meta["step"], self.state, self.meta, force=force)

  def key(self, step: int, purpose: int) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(self.root_key, step), purpose)

  def update_fn(self, name: str, terms: tuple, batch: dict, optimizer, num_micro: int):
    shapes = tuple(sorted((k, tuple(v.shape)) for sub in batch.values() for k, v in sub.items()))
    key = (name, shapes)
    if key not in self._update_fns:
      self._update_fns[key] = update_lib.make_update_fn(
          self.state, batch, self.mesh, terms=terms, cfg=self.model_cfg, optimizer=optimizer,
          num_micro=num_micro, chunk_size=self.config.model.logprob_chunk,
          remat=self.config.model.remat)
    return self._update_fns[key]

  def _apply_update(self, fn, batch) -> dict:
    self.state, m = fn(self.state, batch)
    m = jax.device_get(m)
    if int(self.state.bad_streak) > self.config.rl.max_bad_steps:
      raise FloatingPointError(
          f"{int(self.state.bad_streak)} consecutive updates had a non-finite loss or "
          f"gradient (limit config.rl.max_bad_steps={self.config.rl.max_bad_steps}); last "
          f"loss={float(m['loss'])}, grad_norm={float(m['grad_norm'])}. The last good "
          f"checkpoint is in {self.ckpt.directory}.")
    return m

  # -- evaluation

  def evaluate(self, step: int) -> dict:
    c = self.config.eval
    examples = self.task.examples(self.config.task.eval_split)
    n = min(c.num_examples, len(examples))
    res = eval_lib.evaluate(self.sampler, self.state.params, self.tokenizer, self.task,
                            [examples[i] for i in range(n)], k=c.k, temperature=c.temperature,
                            max_new_tokens=c.max_new_tokens, key=self.key(step, EVAL),
                            batch_size=c.batch_size)
    return {k: v for k, v in res.items() if k != "rows"}

  # -- SFT

  def run_sft(self, progress):
    c = self.config.sft
    pairs = (sft_lib.file_pairs(c.data_path) if c.data_path else
             self.task.sft_pairs(c.num_traces, c.error_rate, self.config.seed))
    prompts, responses = sft_lib.encode_pairs(self.tokenizer, pairs, self.task.system_prompt)
    plen = _bucket(max(map(len, prompts)))
    rlen = max(map(len, responses))
    if plen + rlen > self.model_cfg.max_position_embeddings:
      raise ValueError(f"SFT rows need {plen + rlen} tokens > model max_position_embeddings "
                       f"{self.model_cfg.max_position_embeddings}")
    terms = (update_lib.NLLTerm(name="sft"),)
    it = sft_lib.batches(prompts, responses, batch_size=c.batch_size, prompt_len=plen,
                         response_len=rlen, pad_id=self.tokenizer.pad_id, seed=self.config.seed,
                         start_step=self.meta["step"])
    while self.meta["step"] < self.sft_steps:
      step = self.meta["step"]
      t0 = time.perf_counter()
      batch = {"sft": next(it)}
      fn = self.update_fn("sft", terms, batch, self.sft_opt, c.microbatches)
      m = self._apply_update(fn, batch)
      self.meta["step"] = step + 1
      out = {"phase": 0, "sft/nll": float(m["sft/nll"]), "grad_norm": float(m["grad_norm"]),
             "update_skipped": int(m["update_skipped"]), "time/update": time.perf_counter() - t0}
      progress.update(step + 1, nll=out["sft/nll"])
      if step + 1 < self.sft_steps:
        self.writer.write(step + 1, out)
        self.save()
      else:  # start_rl adds the 'before RL' evaluation to the last SFT row
        self._pending_row = out

  def start_rl(self):
    """Hand-over to RL (after SFT, or at step 0 without SFT): fresh optimizer, the 'before RL'
    evaluation, a checkpoint."""
    if self.sft_steps:
      self.state = ts.reset_optimizer(self.state, self.rl_opt)
    self.meta["phase"] = "rl"
    row = self._pending_row or {}
    self._pending_row = None
    if self.config.eval.num_examples:
      self.meta["eval_before"] = self.evaluate(self.meta["step"])
      row.update({f"eval/{k}": v for k, v in self.meta["eval_before"].items()
                  if isinstance(v, (int, float))})
    if row:
      self.writer.write(self.meta["step"], row)
    self.save(force=True)

  # -- RL

  def rollouts(self, step: int, stream: PromptStream) -> tuple[rollout.Rollouts, np.ndarray]:
    """Samples a batch of groups; with dynamic sampling, refills groups whose rewards are all
    equal (up to rl.max_sampling_rounds rounds). Returns (rollouts, seq_mask [rows])."""
    c = self.config.rl
    sp = sampling.SamplingParams(max_new_tokens=c.max_new_tokens, temperature=c.temperature,
                                 top_p=c.top_p, top_k=c.top_k, stop_ids=self.tokenizer.stop_ids,
                                 pad_id=self.tokenizer.pad_id)
    P, G = c.prompts_per_step, c.group_size
    params = self.state.params
    if not self.preset.dynamic_sampling:
      ro = rollout.sample(self.sampler, params, self.tokenizer, self.task, stream.take(P),
                          self.key(step, ROLLOUT), sp, G)
      return ro, np.ones(P * G, bool)
    kept, dropped, n_kept, timing = [], [], 0, {"sample": 0.0, "verify": 0.0}
    for r in range(c.max_sampling_rounds):
      ro = rollout.sample(self.sampler, params, self.tokenizer, self.task, stream.take(P),
                          jax.random.fold_in(self.key(step, ROLLOUT), r), sp, G)
      timing = {k: timing[k] + ro.timing[k] for k in timing}
      keep = np.asarray(adv_lib.dynamic_sampling_keep(ro.rewards))
      kept.append(ro.select(keep))
      dropped.append(ro.select(~keep))
      n_kept += int(keep.sum())
      if n_kept >= P:
        break
    good = rollout.Rollouts.concat(kept).select(np.arange(n_kept) < P) if n_kept else None
    n_good = min(n_kept, P)
    parts = [good] if good is not None else []
    if n_good < P:  # fill with zero-signal groups, masked out of the loss
      bad = rollout.Rollouts.concat(dropped)
      parts.append(bad.select(np.arange(len(bad.examples)) < P - n_good))
    ro = rollout.Rollouts.concat(parts)
    ro.timing = timing
    seq_mask = np.repeat(np.arange(P) < n_good, G)
    return ro, seq_mask

  def rl_step(self, step: int, stream: PromptStream) -> dict:
    c, timer = self.config.rl, metrics_lib.Timer()
    t0 = time.perf_counter()
    ro, seq_mask = self.rollouts(step, stream)
    t_rollout = time.perf_counter() - t0
    rewards = ro.rewards.copy()
    lengths = ro.lengths
    if self.preset.overlong:
      buf = int(self.preset.overlong_buffer_frac * c.max_new_tokens)
      rewards = rewards + np.asarray(adv_lib.overlong_penalty(
          lengths, c.max_new_tokens, buf)).reshape(rewards.shape)
    adv = np.asarray(adv_lib.group_advantages(rewards, normalize_std=self.preset.normalize_std))
    plen = _bucket(max(map(len, ro.prompt_ids)))
    batch = rl_batch(ro, adv.reshape(-1), prompt_len=plen, max_new=c.max_new_tokens,
                     pad_id=self.tokenizer.pad_id, seq_mask=seq_mask)
    if c.recompute_logprobs or c.kl_beta > 0:
      with timer("logprobs"):
        lp_fn = self.logprob_fn
        if c.recompute_logprobs:
          batch["old_logprobs"] = np.asarray(lp_fn(self.state.params, batch["tokens"],
                                                   batch["input_mask"])) * batch["loss_mask"]
        if c.kl_beta > 0:
          batch["ref_logprobs"] = np.asarray(lp_fn(self.ref_params, batch["tokens"],
                                                   batch["input_mask"])) * batch["loss_mask"]
    term = update_lib.PolicyTerm(
        ratio=self.preset.ratio, eps_low=self.preset.eps_low, eps_high=self.preset.eps_high,
        aggregation=self.preset.aggregation, max_len=c.max_new_tokens, kl_beta=c.kl_beta,
        kl_estimator=c.kl_estimator, temperature=c.temperature)
    rows = len(ro.response_ids)
    mb = rows // c.minibatches
    upd = []
    with timer("update"):
      for epoch in range(c.epochs):
        order = np.random.default_rng([self.config.seed, step, SHUFFLE, epoch]).permutation(rows)
        for i in range(c.minibatches):
          idx = order[i * mb:(i + 1) * mb]
          sub = {"policy": {k: v[idx] for k, v in batch.items()}}
          fn = self.update_fn("rl", (term,), sub, self.rl_opt, c.microbatches)
          upd.append(self._apply_update(fn, sub))
    correct = (ro.rewards >= 1.0).reshape(-1)
    reasons: dict[str, int] = {}
    for v in ro.verdicts:
      reasons[v.reason] = reasons.get(v.reason, 0) + 1
    out = {
        "phase": 1, "reward": _mean(ro.rewards), "accuracy": _mean(correct),
        "response_tokens": _mean(lengths), "finished": _mean(ro.finished),
        "groups_with_signal": _mean(np.asarray(adv_lib.dynamic_sampling_keep(ro.rewards))),
        **{f"verdict/{k}": n / rows for k, n in reasons.items()},
        **{k: _mean([float(u[k]) for u in upd]) for k in upd[0]},
        **{f"time/{k}": v for k, v in timer.summary().items()},
        "time/rollout": t_rollout - ro.timing["verify"], "time/verify": ro.timing["verify"],
    }
    if self.preset.dynamic_sampling:
      out["dynamic_sampling/kept_fraction"] = _mean(seq_mask)
    return out

  def run_rl(self, progress):
    stream = PromptStream(self.task.examples(self.config.task.train_split), self.config.seed,
                          self.meta["data_cursor"])
    if self.config.rl.kl_beta > 0:
      # The policy RL starts from; a copy, since the train state is donated to every update.
      self.ref_params = jax.tree.map(jnp.copy, self.state.params)
    ev = self.config.eval
    while self.meta["step"] < self.total_steps:
      step = self.meta["step"]
      out = self.rl_step(step, stream)
      self.meta["step"] = step + 1
      self.meta["data_cursor"] = stream.cursor
      if ev.every and ev.num_examples and (step + 1 - self.sft_steps) % ev.every == 0:
        res = self.evaluate(step + 1)
        out.update({f"eval/{k}": v for k, v in res.items() if isinstance(v, (int, float))})
        self.meta["eval_history"].append(dict(step=step + 1, **res))
      # A metric over zero tokens (e.g. every group filtered out) is NaN: leave it out.
      out = {k: v for k, v in out.items() if not (k.startswith("policy/") and v != v)}
      self.writer.write(step + 1, out)
      progress.update(step + 1, reward=out["reward"], acc=out["accuracy"],
                      **({"eval": out[f"eval/avg@{ev.k}"]} if f"eval/avg@{ev.k}" in out else {}))
      self.save(force=step + 1 == self.total_steps)

  def close(self):
    self.ckpt.wait()
    self.ckpt.close()
    self.writer.close()
    self.task.close()


def _diff(a, b, prefix="") -> list[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for k in sorted(set(a) | set(b)):
      out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
    return out
  return [] if a == b else [prefix.rstrip(".")]


def train(config, workdir: str) -> dict:
  """Runs (or resumes) the whole job. Returns the final summary (also in summary.json)."""
  t_start = time.perf_counter()
  run = Run(config, workdir)
  try:
    resumed = run.restore()
    if resumed:
      print(f"resumed {workdir} at step {run.meta['step']}/{run.total_steps}", flush=True)
    progress = metrics_lib.Progress(run.total_steps, start_step=run.meta["step"],
                                    every=config.log.progress_every)
    if run.meta["step"] < run.sft_steps:
      run.run_sft(progress)
    if run.meta["phase"] == "sft" and run.rl_steps:
      run.start_rl()
    if run.rl_steps:
      run.run_rl(progress)
    progress.close()
    summary = dict(workdir=workdir, steps=run.meta["step"], resumed=resumed,
                   wall_s=time.perf_counter() - t_start, eval_before=run.meta["eval_before"])
    if config.eval.num_examples:
      hist = run.meta["eval_history"]
      last = hist[-1] if hist and hist[-1]["step"] == run.meta["step"] else None
      summary["eval_after"] = ({k: v for k, v in last.items() if k != "step"} if last
                               else run.evaluate(run.meta["step"]))
      _print_summary(summary, config.eval.k)
    with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
      json.dump(summary, f, indent=1)
    return summary
  finally:
    run.close()


def _print_summary(summary: dict, k: int):
  before, after = summary.get("eval_before"), summary["eval_after"]
  n, t = after["num_examples"], after["temperature"]
  print(f"\nheld-out accuracy, {n} problems, {k} samples each at temperature {t}:", flush=True)
  for name in (f"avg@{k}", f"pass@{k}", f"maj@{k}"):
    line = f"  {name:8s}"
    line += f" before RL {before[name]:.3f} ->" if before else ""
    print(f"{line} after RL {after[name]:.3f}", flush=True)
  print(f"held-out {k and f'avg@{k}'}: " + (f"{before[f'avg@{k}']:.3f} -> " if before else "")
        + f"{after[f'avg@{k}']:.3f}; wall time {summary['wall_s']:.0f} s", flush=True)


def load_run(workdir: str, step: int | None = None) -> dict:
  """Config, tokenizer, model config and params of a training run's checkpoint (for si-eval
  and si-convert)."""
  import ml_collections
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir} is not a si-train workdir: no config.json")
  with open(path, encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  tok = setup_tokenizer(config, workdir)
  mesh = shd.make_mesh(devices=jax.devices()[:1])
  cfg, params = setup_model(config, tok, mesh)
  sft_opt = ts.optimizer_from_config(config.sft.optim, 1)
  state = ts.create(params, sft_opt, mesh)
  ck = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
  step = ck.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"{workdir}/checkpoints has no checkpoint")
  state, meta = ck.restore(ts.abstract_state(state), step)
  ck.close()
  return dict(config=config, tokenizer=tok, model_cfg=cfg, params=state.params, step=step,
              meta=meta)
