"""The RL run: cold-start SFT, then RL with a pluggable credit stage, evaluation, checkpoints.

`train(config, workdir)` reads as the story of a run, and `Run.rl_step` as the algorithm:

    sample -> score -> assign credit -> pack -> update -> log

Each stage is a function with typed inputs and outputs (`rollout.sample` / `rollout.score`,
`credit.Scored`, the registered credit function `config.rl.credit` -> `credit.Credit`,
`batching.prepare` / `batching.minibatches`, `update.make_update_fn`). Assign credit is the one
place an algorithm plugs in (`si_jax/rl/credit.py`).

Global step g counts completed updates: g in [0, sft.steps) are SFT steps, g in
[sft.steps, sft.steps + rl.steps) are RL iterations. Everything random is derived from
(seed, g, purpose) and the data order from (seed, epoch), so a run restarted from its checkpoint
at step g continues exactly as if it had never stopped. The KL reference (rl.kl_beta > 0) is
the policy RL started from, saved once at the hand-over (`<workdir>/reference`) and restored
from there on resume.

With LoRA (model.lora.rank > 0) the train state holds adapters and the model's params stay
frozen in `Run.base` (re-read from model.init_from, or re-made from the seed, on resume);
everything that runs the policy gets `Run.policy_params()`, the base merged with the adapters.
Checkpoints and the KL reference then hold adapters only.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import sys
import time
from typing import Any, Sequence

import jax
import numpy as np
from etils import epath

from si_jax import checkpoint as ckpt_lib
from si_jax import compilation
from si_jax import configs
from si_jax.train import evaluate as eval_lib
from si_jax import metrics as metrics_lib
from si_jax import multihost
from si_jax import preemption as preemption_lib
from si_jax import sampling
from si_jax.train import sft as sft_lib
from si_jax import shapes
from si_jax import sharding as shd
from si_jax.train import workdir as workdir_lib
from si_jax.data import tasks as tasks_lib
from si_jax.models import lora as lora_lib
from si_jax.rl import advantages as adv_lib
from si_jax.rl import batching
from si_jax.rl import credit as credit_lib
from si_jax.rl import rollout
from si_jax import train_state as ts
from si_jax.rl import update as update_lib
from si_jax.si import credit as si_credit  # pylint: disable=unused-import (registers "si")

# PRNG purposes: fold_in(fold_in(key(seed), step), purpose). Credit functions use >= 10.
ROLLOUT, EVAL, INIT, SHUFFLE = 1, 2, workdir_lib.INIT_PURPOSE, 4
SAMPLES_FILE = "samples.jsonl"


def check_multiprocess(config, mesh, credit_fn) -> None:
  """With several processes (multi-host), each process takes an equal share of every step's
  prompts (whole groups) and of the batch shards; the credit function must declare that it
  works on a process's own rows (`multi_process = True`)."""
  n = jax.process_count()
  if n == 1:
    return
  multihost.check_mesh(mesh)
  if config.rl.prompts_per_step % n:
    raise ValueError(f"config.rl.prompts_per_step={config.rl.prompts_per_step} must be a "
                     f"multiple of the {n} processes (each samples whole groups)")
  if config.rl.steps and not getattr(credit_fn, "multi_process", False):
    raise ValueError(f"config.rl.credit={config.rl.credit!r} runs on one process only (any "
                     f"number of devices): its credit stage has not been made multi-process "
                     f"yet (README, multi-host)")


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


def _mean(x) -> float:
  x = np.asarray(x, np.float64)
  return float(x.mean()) if x.size else float("nan")


def _mean_updates(upd: list[dict]) -> dict[str, float]:
  """Mean over the step's updates of each metric (NaN entries, e.g. a term without tokens in
  one mini-batch, left out); skip counters are summed."""
  out = {}
  for k in upd[0] if upd else ():
    vals = np.asarray([float(u[k]) for u in upd], np.float64)
    if k.startswith("update_skipped"):
      out[k] = int(vals.sum())
    elif np.isfinite(vals).any():
      out[k] = float(vals[np.isfinite(vals)].mean())
  return out


# ----------------------------------------------------------------------------- the run


class Run:
  """Everything a run holds; built once by `train`."""

  def __init__(self, config, workdir: str):
    configs.validate(config)
    self.config, self.workdir = config, workdir
    self.credit_fn = credit_lib.get_credit(config.rl.credit)
    self.loss = configs.resolve_loss(config)
    self.policy_term = credit_lib.policy_term(config)
    workdir_lib.check_inputs_on_every_host(config)  # multi-host: shared storage, or stop here
    workdir_lib.claim(config, workdir)
    workdir_lib.warn_without_repair_cold_start(config)
    self.tokenizer = workdir_lib.setup_tokenizer(config, workdir)
    self.task = tasks_lib.get_task(config.task.name, **config.task.kwargs.to_dict())
    for split in (config.task.train_split, config.task.eval_split):  # fail fast on bad data
      if len(self.task.examples(split)) == 0:
        raise ValueError(f"config.task: split {split!r} of task {config.task.name!r} is empty")
    self.mesh = shd.mesh_from_config(config.mesh)
    check_multiprocess(config, self.mesh, self.credit_fn)
    self.model_cfg, params = workdir_lib.setup_model(config, self.tokenizer, self.mesh)
    param_sh = jax.tree.map(lambda x: x.sharding, params)
    # LoRA: the state trains adapters; the model's params stay frozen in self.base
    self.lora, adapters = workdir_lib.setup_adapters(config, self.model_cfg, self.mesh)
    self.base, self._policy = None, None
    if self.lora is not None:
      self.base, params = params, adapters
      self._merge = lora_lib.make_merge_fn(self.lora, param_sh)
    self.sft_steps, self.rl_steps = config.sft.steps, config.rl.steps
    self.total_steps = self.sft_steps + self.rl_steps
    master = ts.master_weights_for(config, jax.tree.leaves(params)[0].dtype)  # bf16: fp32 copy
    self.sft_opt = ts.optimizer_from_config(config.sft.optim, max(self.sft_steps, 1), master)
    rl_updates = self.rl_steps * config.rl.epochs * config.rl.minibatches
    self.rl_opt = ts.optimizer_from_config(config.rl.optim, max(rl_updates, 1), master)
    self.state = ts.create(params, self.sft_opt if self.sft_steps else self.rl_opt, self.mesh)
    self.sampler = sampling.Sampler(self.model_cfg, self.mesh,
                                    max_len=self.model_cfg.max_position_embeddings,
                                    compact=bool(config.rl.get("decode_compaction", False)),
                                    grow_every=int(config.rl.get("decode_cache_growth", 0)))
    self.ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, workdir_lib.CHECKPOINTS),
                                      max_to_keep=config.checkpoint.keep,
                                      # every=0: only the forced saves (hand-over, end)
                                      save_every=config.checkpoint.every or 10**9,
                                      async_save=config.checkpoint.get("async_save", False))
    self.writer = metrics_lib.MetricsWriter(workdir, tensorboard=config.log.tensorboard)
    self.preemption = preemption_lib.Monitor()  # SIGTERM -> save at a step boundary, exit
    self._pending_row: dict | None = None
    # phase 'sft' until start_rl ran (also with sft.steps = 0: it evaluates the initial policy)
    self.meta: dict[str, Any] = dict(step=0, phase="sft",
                                     data_cursor=0, eval_before=None, eval_history=[],
                                     seed=config.seed, config=configs.to_json(config))
    self.root_key = jax.random.key(config.seed)
    self.ref_params = None
    self.updater = update_lib.Updater(self.state, self.mesh, cfg=self.model_cfg,
                                      chunk_size=config.model.logprob_chunk,
                                      remat=config.model.remat, lora=self.lora, frozen=self.base)
    c = config.rl
    # Shapes (si_jax/shapes.py): every program an RL step runs takes them from here.
    div = shd.batch_divisor(self.mesh)
    self.rollout_rows = c.prompts_per_step * c.group_size
    self.prompt_width = self._prompt_width()  # the policy prompts' columns
    base = -(-self.rollout_rows // (c.minibatches * c.microbatches))
    capacity = getattr(self.credit_fn, "capacity", None)  # rows per step of each term
    caps = capacity(config) if capacity is not None else {}
    self.call_rows = {name: batching.call_rows(base, cap, c.minibatches, div)
                      for name, cap in caps.items()}
    self.default_call_rows = batching.call_rows(base, None, c.minibatches, div)
    self.logprob_fn = batching.make_logprob_fn(
        self.model_cfg, self.mesh, param_sh, temperature=config.rl.temperature,
        chunk_size=config.model.logprob_chunk,
        rows_per_call=shapes.round_up(-(-self.rollout_rows // c.logprob_microbatches), div))
    self.recompute = batching.needs_recompute(config.rl.recompute_logprobs,
                                              self.policy_term.ratio, self.model_cfg.param_dtype)
    self.sp = sampling.SamplingParams(max_new_tokens=c.max_new_tokens, temperature=c.temperature,
                                      top_p=c.top_p, top_k=c.top_k,
                                      stop_ids=self.tokenizer.stop_ids,
                                      pad_id=self.tokenizer.pad_id)
    self.compiles = compilation.counter()
    self.compiled_from = self.compiles.now()  # this process's compilations, for the summary
    self.compile_log: list[tuple[int, int]] = []  # (step, programs compiled) of RL steps

  def _prompt_width(self) -> int:
    """Columns of the policy prompts (rl.max_prompt_len, or the longest prompt of the train and
    eval splits, measured once here): the sampler's prompts and the policy term's rows are
    this wide, so each program compiles once. A longer prompt (rl.max_prompt_len set too
    small) takes the next rung of the width ladder: one more compile, counted."""
    c = self.config
    if c.rl.max_prompt_len:
      return shapes.round_up(c.rl.max_prompt_len, shapes.QUANTUM)
    longest = 0
    for split in (c.task.train_split, c.task.eval_split):
      examples = self.task.examples(split)
      texts = [self.tokenizer.prompt_text(ex.prompt, self.task.system_prompt) for ex in examples]
      longest = max([longest] + [len(x) for x in self.tokenizer.encode_batch(texts)])
    return shapes.round_up(longest, shapes.QUANTUM)

  def term_call_rows(self, name: str) -> int:
    """Rows per update call of loss term `name` (of the whole run; batching.call_rows)."""
    return self.call_rows.get(name, self.default_call_rows)

  # -- checkpoints

  def restore(self) -> bool:
    """Resumes from the newest checkpoint that verifies (config.checkpoint.on_corrupt)."""
    found = self.ckpt.restore_latest_good(
        ts.abstract_state(self.state),
        fall_back=self.config.checkpoint.get("on_corrupt", "fall_back") == "fall_back")
    if found is None:
      return False
    self.state, meta, step, skipped = found
    for e in skipped if multihost.is_primary() else ():
      print(f"si-train: warning: {e}; moved it to {e.moved_to} and resuming from checkpoint "
            f"{step} (with config.checkpoint.on_corrupt=refuse the run would stop instead)",
            file=sys.stderr, flush=True)
    self.meta.update(meta)
    self.writer.truncate_after(self.meta["step"])
    return True

  def save(self, force: bool = False):
    """Checkpoints the step just finished if due (or forced), or if a preemption notice
    reached any process: then every process saves this same step and raises Preempted."""
    step = self.meta["step"]
    stop = self.preemption.reached(step)  # collective: every process, every boundary
    self.ckpt.save(step, self.state, self.meta,
                   force=force or (stop and self.ckpt.latest_step() != step))
    if stop:
      self.ckpt.wait()
      raise preemption_lib.Preempted(step, self.ckpt.directory, self.preemption.signalled)

  def key(self, step: int, purpose: int) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(self.root_key, step), purpose)

  def policy_params(self):
    """The policy's full params (sampling, log-probs, evaluation, credit): the state's own, or
    with LoRA the frozen base merged with the state's adapters, merged once per set of
    adapters (so once per RL step) and dropped at the next update."""
    if self.lora is None:
      return self.state.params
    if self._policy is None or self._policy[0] is not self.state.params:
      self._policy = None  # free the stale copy before making the new one
      self._policy = (self.state.params, self._merge(self.base, self.state.params))
    return self._policy[1]

  def _reference(self) -> ckpt_lib.Checkpointer:
    return ckpt_lib.Checkpointer(os.path.join(self.workdir, "reference"), max_to_keep=1,
                                 async_save=False)

  def _apply_update(self, batch: dict, terms: tuple, rows_per_call: dict, optimizer,
                    local: bool) -> dict:
    self._policy = None  # a LoRA run's merged params go stale: free them for the update
    self.state, m = self.updater(self.state, batch, terms=terms, rows_per_call=rows_per_call,
                                 optimizer=optimizer, local=local)
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
    res = eval_lib.evaluate(self.sampler, self.policy_params(), self.tokenizer, self.task,
                            [examples[i] for i in range(n)], k=c.k, temperature=c.temperature,
                            max_new_tokens=c.max_new_tokens, key=self.key(step, EVAL),
                            batch_size=c.batch_size, threshold=self.config.rl.success_threshold,
                            width=self.prompt_width)
    self._log_samples(step, res["rows"][:c.num_samples_logged])
    out = {k: v for k, v in res.items() if k != "rows"}
    probe = getattr(self.credit_fn, "evaluate", None)
    if probe is not None:  # a credit function's own held-out metrics (SI's repair probe)
      out.update(probe(self.credit_context(step), self.key(step, EVAL)))
    return out

  def _log_samples(self, step: int, rows: list[dict]):
    """A few prompts, completions and verdicts per evaluation: samples.jsonl and TensorBoard."""
    if not rows or not multihost.is_primary():
      return
    metrics_lib.append_text(
        os.path.join(self.workdir, SAMPLES_FILE),
        "".join(json.dumps(dict(step=step, id=r["id"], prompt=r["prompt"], completion=r["sample"],
                                reward=r["rewards"][0], verdict=r["reasons"][0])) + "\n"
                for r in rows))
    text = "\n\n".join(f"**{r['id']}** (reward {r['rewards'][0]}, {r['reasons'][0]})\n\n"
                       f"    {r['prompt']}\n\n    " + r["sample"].replace("\n", "\n    ")
                       for r in rows)
    self.writer.write_text(step, "samples", text)

  # -- SFT

  def run_sft(self, progress):
    c = self.config.sft
    prompts, responses = sft_lib.build(self.config, self.task, self.tokenizer)
    longest = max(len(p) + len(r) for p, r in zip(prompts, responses))
    if longest > self.model_cfg.max_position_embeddings:
      raise ValueError(f"SFT pairs need up to {longest} tokens > model max_position_embeddings "
                       f"{self.model_cfg.max_position_embeddings}")
    terms = (update_lib.NLLTerm(name="sft"),)
    per_call = shapes.round_up(c.call_rows, shd.batch_divisor(self.mesh))
    it = sft_lib.batches(prompts, responses, batch_size=c.batch_size, call_rows=per_call,
                         pad_id=self.tokenizer.pad_id, seed=self.config.seed,
                         start_step=self.meta["step"])
    while self.meta["step"] < self.sft_steps:
      step = self.meta["step"]
      timer = metrics_lib.Timer()
      with timer("update"):  # up to the float()s, which wait for the update
        batch = {"sft": next(it)}
        compiled: dict[str, compilation.CompileStats] = {}
        with self.compiling("update", compiled):
          m = self._apply_update(batch, terms, {"sft": per_call}, self.sft_opt, local=False)
        self.meta["step"] = step + 1
        out = {"phase": 0, "sft/nll": float(m["sft/nll"]), "grad_norm": float(m["grad_norm"]),
               "update_skipped": int(m["update_skipped"])}
      out = {**out, **timer.summary(prefix="time/"),
             "sft/real_token_fraction": float(np.mean(np.concatenate(
                 [g["input_mask"].reshape(-1) for g in batch["sft"]]))),
             **compilation.stage_metrics(compiled)}
      progress.update(step + 1, nll=out["sft/nll"])
      if step + 1 < self.sft_steps or not self.rl_steps:
        self.writer.write(step + 1, out)
        self.save(force=step + 1 == self.total_steps)
      else:  # start_rl adds the 'before RL' evaluation to the last SFT row
        self._pending_row = out

  def start_rl(self):
    """Hand-over to RL (after SFT, or at step 0 without SFT): fresh optimizer, the KL
    reference, the 'before RL' evaluation, a checkpoint."""
    if self.sft_steps:
      self.state = ts.reset_optimizer(self.state, self.rl_opt)
    if self.config.rl.kl_beta > 0:
      with self._reference() as ref:
        ref.save(self.meta["step"], {"params": self.state.params}, {"step": self.meta["step"]},
                 force=True)
    self.meta["phase"] = "rl"
    row = self._pending_row or {}
    self._pending_row = None
    if self.config.eval.num_examples:
      compiled: dict[str, compilation.CompileStats] = {}
      with self.compiling("eval", compiled):
        self.meta["eval_before"] = self.evaluate(self.meta["step"])
      row.update({f"eval/{k}": v for k, v in self.meta["eval_before"].items()
                  if isinstance(v, (int, float))})
      if "compile/compiles" in row:  # the last SFT step's row: add the evaluation's
        row["compile/compiles"] += compiled["eval"].compiles
        row["compile/cache_hits"] += compiled["eval"].cache_hits
        row["compile/seconds"] += compiled["eval"].seconds
      row["compile/compiles_eval"] = compiled["eval"].compiles
    if row:
      self.writer.write(self.meta["step"], row)
    self.save(force=True)

  def load_reference(self):
    """The KL reference: the params RL started from (saved by start_rl; with LoRA the
    adapters, merged here with the base)."""
    with self._reference() as ref:
      step = ref.latest_step()
      if step is None:
        raise FileNotFoundError(f"{self.workdir}/reference holds no KL reference policy; it is "
                                f"written when RL starts with rl.kl_beta > 0")
      target = {"params": ts.abstract_state(self.state).params}
      self.ref_params = ref.restore(target, step)[0]["params"]
    if self.lora is not None:
      self.ref_params = self._merge(self.base, self.ref_params)

  # -- RL: the stages

  def credit_context(self, step: int) -> credit_lib.CreditContext:
    return credit_lib.CreditContext(
        config=self.config, step=step, key=functools.partial(self.key, step),
        params=self.policy_params(), sampler=self.sampler, tokenizer=self.tokenizer,
        task=self.task, mesh=self.mesh, loss=self.loss, policy_term=self.policy_term,
        sampling_params=self.sp, prompt_width=self.prompt_width)

  def sample_and_score(self, step: int, stream: PromptStream) -> credit_lib.Scored:
    """sample -> score, with DAPO's refill of groups whose rewards are all equal (up to
    rl.max_sampling_rounds rounds; groups still missing are kept as filler, group_mask 0)."""
    c = self.config.rl
    G = c.group_size
    # every process takes the step's prompts (the stream stays in step) and keeps its share
    share = multihost.local_slice(c.prompts_per_step)
    P = share.stop - share.start
    params = self.policy_params()
    if not self.loss["dynamic_sampling"]:
      ro = rollout.sample(self.sampler, params, self.tokenizer, self.task,
                          stream.take(c.prompts_per_step)[share], self.key(step, ROLLOUT),
                          self.sp, G, width=self.prompt_width)
      return self.score(rollout.score(ro, self.task), np.ones(P, bool))
    kept, dropped, n_kept = [], [], 0
    for r in range(c.max_sampling_rounds):
      ro = rollout.sample(self.sampler, params, self.tokenizer, self.task,
                          stream.take(c.prompts_per_step)[share],
                          jax.random.fold_in(self.key(step, ROLLOUT), r), self.sp, G,
                          width=self.prompt_width)
      ro = rollout.score(ro, self.task)
      keep = np.asarray(adv_lib.dynamic_sampling_keep(ro.rewards))
      kept.append(ro.select(keep))
      dropped.append(ro.select(~keep))
      n_kept += int(keep.sum())
      if multihost.all_true(n_kept >= P):  # sampling is collective: all stop together
        break
    timing = {k: sum(p.timing.get(k, 0.0) for p in kept) for k in ("sample", "verify")}
    n_good = min(n_kept, P)
    parts = [rollout.Rollouts.concat(kept).select(np.arange(n_kept) < P)] if n_kept else []
    if n_good < P:
      bad = rollout.Rollouts.concat(dropped)
      parts.append(bad.select(np.arange(len(bad.examples)) < P - n_good))
    ro = rollout.Rollouts.concat(parts)
    ro.timing = timing
    return self.score(ro, np.arange(P) < n_good)

  def score(self, ro: rollout.Rollouts, group_mask: np.ndarray) -> credit_lib.Scored:
    """Reward shaping and the correct / failed split of scored rollouts."""
    rewards = ro.rewards.copy()
    if self.loss["overlong"]:
      n = self.config.rl.max_new_tokens
      buf = int(self.loss["overlong_buffer_frac"] * n)
      rewards = rewards + np.asarray(adv_lib.overlong_penalty(ro.lengths, n, buf)).reshape(
          rewards.shape)
    return credit_lib.Scored(
        rollouts=ro, rewards=rewards, success=ro.rewards >= self.config.rl.success_threshold,
        group_mask=np.asarray(group_mask, bool),
        prompt_len=shapes.fit(multihost.global_max(max(map(len, ro.prompt_ids))),
                              self.prompt_width))

  def pack(self, credit: credit_lib.Credit) -> tuple[list[credit_lib.TermRows], dict]:
    per_call = {tr.term.name: self.term_call_rows(tr.term.name) for tr in credit.terms}
    return batching.prepare(credit.terms, rows_per_call=per_call,
                            minibatches=self.config.rl.minibatches, params=self.policy_params(),
                            ref_params=self.ref_params, logprob_fn=self.logprob_fn,
                            recompute=self.recompute)

  def update(self, step: int, terms: list[credit_lib.TermRows]) -> list[dict]:
    """rl.epochs x rl.minibatches optimizer updates over every term's rows."""
    c = self.config.rl
    if not terms:  # nothing to train on this step
      return [{"update_skipped_empty": c.epochs * c.minibatches}]
    term_tuple = tuple(t.term for t in terms)
    per_call = {t.term.name: self.term_call_rows(t.term.name) for t in terms}
    out = []
    for epoch in range(c.epochs):
      rng = np.random.default_rng([self.config.seed, step, SHUFFLE, epoch])
      for mb in batching.minibatches(terms, c.minibatches, rng):
        out.append(self._apply_update(mb, term_tuple, per_call, self.rl_opt, local=True))
    return out

  def compile_ahead(self, step: int) -> None:
    """Compiles what the credit function may first run late (`credit_fn.compile_ahead`, SI's:
    its samplers and gate program), then the log-prob and update programs of the loss terms
    it returns one-row examples of, through the pack stage and `Updater.compile_ahead` (with
    the optimizer step). Run once per process before its first RL step, so a stage first used
    after the warm-up (SI's repair sampler and repair-mode NLL once the first correct rollout
    comes) compiles nothing then. Collective with several processes, like the pack stage."""
    ahead = getattr(self.credit_fn, "compile_ahead", None)
    if ahead is None:
      return
    terms, _ = self.pack(credit_lib.Credit(terms=ahead(self.credit_context(step))))
    calls = []
    for tr in terms:
      per = self.term_call_rows(tr.term.name) // jax.process_count()
      calls.append((tr.term, {k: v[:per] for k, v in tr.rows.items()}))
    self.updater.compile_ahead(self.state, self.rl_opt, calls)

  @contextlib.contextmanager
  def compiling(self, stage: str, out: dict[str, compilation.CompileStats]):
    """Counts what the block compiles into out[stage] (compile/* metrics)."""
    with self.compiles.since() as stats:
      yield
    out[stage] = stats[0]

  def rl_step(self, step: int, stream: PromptStream,
              compiled: dict[str, compilation.CompileStats] | None = None) -> dict:
    """One RL iteration; `compiled` receives what each stage compiled."""
    timer, compiled = metrics_lib.Timer(), {} if compiled is None else compiled
    with self.compiling("sample", compiled):
      scored = self.sample_and_score(step, stream)
    with timer("credit"), self.compiling("credit", compiled):
      credit = self.credit_fn(self.credit_context(step), scored)
    with timer("pack"), self.compiling("pack", compiled):
      terms, pack_metrics = self.pack(credit)
    with timer("update"), self.compiling("update", compiled):
      upd = self.update(step, terms)
    return self.log_row(scored, credit, pack_metrics, upd, timer)

  def log_row(self, scored: credit_lib.Scored, credit: credit_lib.Credit, pack_metrics: dict,
              upd: list[dict], timer: metrics_lib.Timer) -> dict:
    ro = scored.rollouts
    rows = len(ro.response_ids)
    reasons: dict[str, int] = {}
    for v in ro.verdicts:
      reasons[v.reason] = reasons.get(v.reason, 0) + 1
    out = {
        "phase": 1, "reward": _mean(ro.rewards), "accuracy": _mean(scored.success),
        "response_tokens": _mean(ro.lengths), "finished": _mean(ro.finished),
        "tokens/rollout": int(ro.lengths.sum()),
        "tokens/sampled": int(ro.lengths.sum()) + int(credit.metrics.get("tokens/credit_sampled",
                                                                        0)),
        "groups_with_signal": _mean(np.asarray(adv_lib.dynamic_sampling_keep(ro.rewards))),
        **{f"verdict/{k}": n / rows for k, n in reasons.items()},
        **_mean_updates(upd), **pack_metrics, **credit.metrics,
        "time/rollout": ro.timing["sample"], "time/verify": ro.timing["verify"],
        **{f"time/{k}": v for k, v in credit.timing.items()},
        **{f"time/{k}": v for k, v in timer.summary().items()},
    }
    if self.loss["dynamic_sampling"]:
      out["dynamic_sampling/kept_fraction"] = _mean(scored.group_mask)
    # A metric over zero tokens (e.g. every group filtered out) is NaN: leave it out.
    return {k: v for k, v in out.items() if not (isinstance(v, float) and v != v)}

  def run_rl(self, progress):
    stream = PromptStream(self.task.examples(self.config.task.train_split), self.config.seed,
                          self.meta["data_cursor"])
    if self.config.rl.kl_beta > 0:
      self.load_reference()
    ev = self.config.eval
    first = True
    while self.meta["step"] < self.total_steps:
      step = self.meta["step"]
      compiled: dict[str, compilation.CompileStats] = {}
      if first:  # this process's first RL step: what may first run late, compiled now
        with self.compiling("ahead", compiled):
          self.compile_ahead(step)
        first = False
      out = multihost.reduce_metrics(self.rl_step(step, stream, compiled))
      self.meta["step"] = step + 1
      self.meta["data_cursor"] = stream.cursor
      if ev.every and ev.num_examples and (step + 1 - self.sft_steps) % ev.every == 0:
        with self.compiling("eval", compiled):
          res = self.evaluate(step + 1)
        out.update({f"eval/{k}": v for k, v in res.items() if isinstance(v, (int, float))})
        self.meta["eval_history"].append(dict(step=step + 1, **res))
      out.update(compilation.stage_metrics(compiled))  # this process's (they all compile alike)
      self.compile_log.append((step + 1 - self.sft_steps, out["compile/compiles"]))
      self.writer.write(step + 1, out)
      summary_keys = getattr(self.credit_fn, "summary", ())
      credit_metrics = {k: v for k, v in out.items() if k in summary_keys}
      if step == self.sft_steps:
        self.meta["credit_first"] = credit_metrics
      self.meta["credit_last"] = credit_metrics
      progress.update(step + 1, reward=out["reward"], acc=out["accuracy"],
                      **({"eval": out[f"eval/avg@{ev.k}"]} if f"eval/avg@{ev.k}" in out else {}))
      self.save(force=step + 1 == self.total_steps)

  def close(self):
    self.preemption.uninstall()
    self.ckpt.wait()
    self.ckpt.close()
    self.writer.close()
    self.task.close()


def train(config, workdir: str, run: Run | None = None) -> dict:
  """Runs (or resumes) the whole job. Returns the final summary (also in summary.json).
  `run`: an already built `Run(config, workdir)` (si-train builds it first to report set-up
  errors in one line)."""
  t_start = time.perf_counter()
  run = run or Run(config, workdir)
  try:
    run.preemption.install()
    resumed = run.restore()
    if resumed and multihost.is_primary():
      print(f"resumed {workdir} at step {run.meta['step']}/{run.total_steps}", flush=True)
    padding = batching.padding_note(run.rollout_rows, config.rl.minibatches,
                                    run.default_call_rows, shd.batch_divisor(run.mesh))
    if padding and run.rl_steps and multihost.is_primary():
      print(f"si-train: note: {padding}", flush=True)
    progress = metrics_lib.Progress(
        run.total_steps, start_step=run.meta["step"], every=config.log.progress_every,
        stream=None if multihost.is_primary() else io.StringIO())  # process 0 reports
    if run.meta["step"] < run.sft_steps:
      run.run_sft(progress)
    if run.meta["phase"] == "sft" and run.rl_steps:
      run.start_rl()
    if run.rl_steps:
      run.run_rl(progress)
    progress.close()
    if run.ckpt.latest_step() != run.meta["step"]:  # the end of a run is always saved
      run.save(force=True)
    comp = run.compiles.now() - run.compiled_from
    summary = dict(workdir=workdir, steps=run.meta["step"], resumed=resumed,
                   wall_s=time.perf_counter() - t_start, eval_before=run.meta["eval_before"],
                   credit_first=run.meta.get("credit_first"),
                   credit_last=run.meta.get("credit_last"),
                   # what this process compiled (a resumed run: since it resumed), and the
                   # programs each RL step compiled, as [RL step, programs]
                   compile=dict(compiles=comp.compiles, cache_hits=comp.cache_hits,
                                seconds=comp.seconds,
                                hit_rate=comp.cache_hits / comp.requests if comp.requests else 0.0,
                                rl_steps=[list(x) for x in run.compile_log]))
    if config.eval.num_examples and run.rl_steps:
      hist = run.meta["eval_history"]
      last = hist[-1] if hist and hist[-1]["step"] == run.meta["step"] else None
      summary["eval_after"] = ({k: v for k, v in last.items() if k != "step"} if last
                               else run.evaluate(run.meta["step"]))
      if multihost.is_primary():
        _print_summary(summary, config.eval.k, getattr(run.credit_fn, "eval_summary", ()))
    if multihost.is_primary():
      print(compile_line(summary["compile"]), flush=True)
      (epath.Path(workdir) / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
  finally:
    run.close()


# RL steps that may compile: the first steps meet every program of the run once (repairs,
# evaluations, a second mini-batch shape); after them a run should compile nothing.
WARMUP_STEPS = 5


def compile_line(comp: dict) -> str:
  """One line on what a run compiled (summary['compile'])."""
  late = [f"{s} ({n})" for s, n in comp["rl_steps"] if s > WARMUP_STEPS and n]
  return (f"compilation: {comp['compiles']} programs compiled, {comp['cache_hits']} read from "
          f"the persistent cache (hit rate {comp['hit_rate']:.2f}), {comp['seconds']:.1f} s; "
          f"RL steps after step {WARMUP_STEPS} that compiled: {', '.join(late) or 'none'}")


def _print_summary(summary: dict, k: int, credit_eval: Sequence[str] = ()):
  """The end-of-run lines: held-out accuracy (and the credit function's own evaluation metrics,
  `credit_eval`) before -> after RL, its training metrics first -> last RL step."""
  before, after = summary.get("eval_before"), summary["eval_after"]
  n, t = after["num_examples"], after["temperature"]
  print(f"\nheld-out accuracy, {n} problems, {k} samples each at temperature {t}:", flush=True)
  names = [f"avg@{k}", f"pass@{k}", f"maj@{k}"] + sorted(x for x in credit_eval if x in after)
  for name in names:
    if not isinstance(after.get(name), (int, float)):
      continue
    line = f"  {name:28s}"
    line += f" before RL {before[name]:.3f} ->" if before and name in before else ""
    print(f"{line} after RL {after[name]:.3f}", flush=True)
  first, last = summary.get("credit_first") or {}, summary.get("credit_last") or {}
  shown = list(last)  # the credit function's summary metrics (its `summary` attribute)
  if shown:
    print("during RL (training rollouts, first -> last RL step):", flush=True)
    for name in shown:
      print(f"  {name:28s} {first.get(name, float('nan')):.3f} -> {last[name]:.3f}", flush=True)
  print(f"held-out {k and f'avg@{k}'}: " + (f"{before[f'avg@{k}']:.3f} -> " if before else "")
        + f"{after[f'avg@{k}']:.3f}; wall time {summary['wall_s']:.0f} s", flush=True)
