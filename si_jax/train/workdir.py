"""What a run is built from: its tokenizer, its model, its workdir's config, its checkpoints.

Shared by si-train (`si_jax.train.trainer`), si-eval and si-convert, which import this module and
not each other, so the layers stay one-way.

`model.init_from` may be an HF model directory, an si-convert params directory, or another
si-train workdir (its latest checkpoint: how methods share one cold start; a LoRA run's is its
base merged with its adapters).

Tokenizer: `tokenizer.path` if set; else the tokenizer of `model.init_from` when that directory
has one (for a workdir: that run's tokenizer); else the one `tokenizer.build` names, built into `<workdir>/tokenizer`. A tokenizer that
does not belong to the model (vocabulary larger than the embedding table; none of the model's
end-of-sequence ids among the tokenizer's stop ids; another vocabulary size or other special
tokens than the tokenizer the model directory ships) is refused, naming both.

A workdir's `config.json` is the config of the run that wrote its checkpoints. A different config
on a workdir that holds a checkpoint is refused, naming the fields that differ (except
`RESUME_FIELDS`, which only steer the resume); a workdir without a checkpoint (a run that died
before its first save) is simply taken over.

Workdir files go through `etils.epath`, so a workdir may be `gs://...` where its filesystem
backend is installed (`pip install -e .[gcs]`: gcsfs for epath, google-cloud-storage for
TensorBoard; Orbax writes the checkpoints through tensorstore's own GCS driver). In a
multi-process run process 0 writes and the others wait.

Inputs: `model.init_from` may be remote (`gs://bucket/Qwen3-32B`, any epath URI): each host
stages its own local copy once (`stage`, under $SI_STAGE_DIR or ~/.cache/si_jax/staged; a
remote si-train workdir is read in place through Orbax). A local init_from, and a task's
local `manual_dir` / `data_dir`, must be on storage every host sees: a multi-process run
checks that each exists on every host before any work and names the hosts where it does not
(`check_inputs_on_every_host`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from typing import Any

import jax
import numpy as np
from etils import epath

from si_jax import checkpoint as ckpt_lib
from si_jax import configs
from si_jax import multihost
from si_jax import sharding as shd
from si_jax.models import config as model_config
from si_jax.models import lora as lora_lib
from si_jax import train_state as ts
from si_jax.tokenizer import Tokenizer

INIT_PURPOSE = 3  # PRNG purpose of parameter init (shared with the trainer's purposes)
LORA_PURPOSE = 5  # PRNG purpose of LoRA adapter init (the trainer's are 1-4 and >= 10)
CONFIG_FILE = "config.json"
CHECKPOINTS = "checkpoints"
# Fields that say how a workdir is resumed, not what the run is: they may differ between starts.
RESUME_FIELDS = ("checkpoint.on_corrupt", "checkpoint.async_save")


_quiet = [0]  # > 0 while another run is read as model.init_from: its parts are not announced
STAGE_ENV = "SI_STAGE_DIR"
STAGED_MARK = ".si_staged.json"  # the listing a complete staged copy was made from


def is_remote(path: str | os.PathLike) -> bool:
  return "://" in os.fspath(path)


def _listing(root: epath.Path) -> dict[str, int]:
  """{relative file path: size} of every file under `root` (epath: local or remote)."""
  out: dict[str, int] = {}
  todo = [root]
  while todo:
    d = todo.pop()
    for p in d.iterdir():
      if p.is_dir():
        todo.append(p)
      else:
        out[os.fspath(p)[len(os.fspath(root)):].lstrip("/")] = p.stat().length
  return dict(sorted(out.items()))


def stage(path: str, stage_dir: str | None = None) -> str:
  """A local copy of the remote directory `path` (gs://..., any epath URI): made once per host
  (checked by the file names and sizes; a changed source is copied again), into a temporary
  directory renamed when complete, so a killed copy is never used. Local paths come back as
  they are. Returns the local directory."""
  if not is_remote(path):
    return path
  src = epath.Path(path)
  if not src.is_dir():
    raise FileNotFoundError(f"{path}: no such directory to stage (config.model.init_from)")
  listing = _listing(src)
  root = stage_dir or os.environ.get(STAGE_ENV) or os.path.expanduser(
      os.path.join("~", ".cache", "si_jax", "staged"))
  key = hashlib.sha256(path.rstrip("/").encode()).hexdigest()[:12]
  dst = os.path.join(root, f"{os.path.basename(path.rstrip('/'))}-{key}")
  mark = os.path.join(dst, STAGED_MARK)
  if os.path.exists(mark):
    with open(mark, encoding="utf-8") as f:
      if json.load(f) == listing:
        return dst
  os.makedirs(root, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=os.path.basename(dst) + ".tmp-", dir=root)
  announce(f"staging {path} ({sum(listing.values()) / 1e9:.2f} GB, {len(listing)} files) to "
           f"{dst}")
  for rel in listing:
    os.makedirs(os.path.dirname(os.path.join(tmp, rel)), exist_ok=True)
    with (src / rel).open("rb") as fin, open(os.path.join(tmp, rel), "wb") as fout:
      shutil.copyfileobj(fin, fout, 16 << 20)
  with open(os.path.join(tmp, STAGED_MARK), "w", encoding="utf-8") as f:
    json.dump(listing, f)
  shutil.rmtree(dst, ignore_errors=True)  # a stale copy (the source changed)
  try:
    os.replace(tmp, dst)
  except OSError:  # another process of this host staged it meanwhile
    shutil.rmtree(tmp, ignore_errors=True)
  return dst


def _init_dir(config) -> str:
  """config.model.init_from as a local directory: staged when remote and not a workdir."""
  init = config.model.init_from
  if init and is_remote(init) and not is_workdir(init):
    return stage(init)
  return init


def inputs_to_check(config) -> dict[str, str]:
  """{config field: local path} a run reads on every host: model.init_from (remote ones are
  staged), tokenizer.path, sft data files and the task's manual_dir / data_dir when set."""
  fields = {"model.init_from": config.model.init_from, "tokenizer.path": config.tokenizer.path,
            "sft.data_path": config.sft.data_path,
            "sft.repair_data_path": config.sft.repair_data_path}
  kwargs = config.task.kwargs
  for name in ("manual_dir", "data_dir"):
    if kwargs.get(name):
      fields[f"task.kwargs.{name}"] = kwargs[name]
  return {k: os.path.expanduser(os.fspath(v)) for k, v in fields.items()
          if v and not is_remote(v)}


def check_inputs_on_every_host(config) -> None:
  """In a multi-process run, every host must see the local inputs of `inputs_to_check`: one
  all-gather of which exist, then an error naming the field, the path and the hosts that lack
  it (before any work; else each host would fail or wait on its own)."""
  if multihost.process_count() == 1:
    return
  paths = inputs_to_check(config)
  names = sorted(paths)
  have = multihost.allgather(np.array([os.path.exists(paths[n]) for n in names], bool))
  for j, name in enumerate(names):
    missing = [p for p in range(have.shape[0]) if not have[p, j]]
    if missing:
      raise ValueError(
          f"config.{name}={paths[name]!r} does not exist on process(es) {missing} of "
          f"{have.shape[0]} (one per host): a multi-host run reads it on every host, so it "
          f"must be on storage every host sees (a shared filesystem), or for "
          f"config.model.init_from a gs:// directory, which each host stages "
          f"(launch/README.md, storage)")


@contextlib.contextmanager
def _nested():
  _quiet[0] += 1
  try:
    yield
  finally:
    _quiet[0] -= 1


def announce(line: str) -> None:
  """One line of what the run was built from (stdout, process 0; not for nested reads)."""
  if not _quiet[0] and multihost.is_primary():
    print(line, flush=True)


def describe_model(cfg: model_config.ModelConfig) -> str:
  return (f"{cfg.family}, {cfg.num_layers} layers, d={cfg.hidden_size}, vocab "
          f"{cfg.vocab_size}, {cfg.num_params() / 1e6:.2f}M params, {cfg.param_dtype}")


def describe_tokenizer(tok: Tokenizer) -> str:
  return f"{tok.vocab_size} tokens, eos {tok.eos_id}, stops on {list(tok.stop_ids)}"


def _has_tokenizer(path: str) -> bool:
  return os.path.exists(os.path.join(path, "tokenizer.json"))


def is_workdir(path: str) -> bool:
  """A si-train workdir (config.json and at least one checkpoint)."""
  return bool(path) and (epath.Path(path) / CONFIG_FILE).exists() and has_checkpoint(path)


def setup_tokenizer(config, workdir: str | None) -> Tokenizer:
  """The run's tokenizer (see the module docstring); says which one in one line."""
  tok, source = _find_tokenizer(config, workdir)
  announce(f"tokenizer: {source}: {describe_tokenizer(tok)}")
  return tok


def _find_tokenizer(config, workdir: str | None) -> tuple[Tokenizer, str]:
  if config.tokenizer.path:
    return (Tokenizer.from_dir(config.tokenizer.path),
            f"{config.tokenizer.path} (config.tokenizer.path)")
  init = config.model.init_from
  if is_workdir(init):  # the tokenizer of the run we start from
    tok, source = _find_tokenizer(read_config(init), init)
    return tok, f"{source}, of the run config.model.init_from={init}"
  local = _init_dir(config)
  if local and _has_tokenizer(local):
    staged = f", staged to {local}" if local != init else ""
    return Tokenizer.from_dir(local), f"{init} (the model's own{staged})"
  if config.tokenizer.build == "arith":
    from si_jax.tokenizer import build_char_tokenizer
    if workdir is None:
      raise ValueError("config.tokenizer.build needs a workdir to build the tokenizer into")
    path = os.path.join(workdir, "tokenizer")
    if not _has_tokenizer(path) and multihost.is_primary():
      build_char_tokenizer(path)
    multihost.sync("tokenizer")  # the others read what process 0 wrote
    return Tokenizer.from_dir(path), f"{path} (built: config.tokenizer.build='arith')"
  if config.tokenizer.build:
    raise ValueError(f"config.tokenizer.build: unknown tokenizer {config.tokenizer.build!r} "
                     f"(known: 'arith'); or set config.tokenizer.path")
  raise ValueError(f"config.model.init_from={init!r} has no tokenizer.json and "
                   f"config.tokenizer.path is empty: name the model's tokenizer directory")


def model_eos_ids(model_dir: str) -> set[int]:
  """End-of-sequence ids an HF model directory declares (config.json, generation_config.json)."""
  out: set[int] = set()
  for name in ("config.json", "generation_config.json"):
    path = os.path.join(model_dir, name)
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        eos = json.load(f).get("eos_token_id")
      out.update([eos] if isinstance(eos, int) else [int(e) for e in eos or []])
  return out


def check_tokenizer_fits(tok: Tokenizer, cfg: model_config.ModelConfig, model_dir: str = ""):
  """Refuses a tokenizer/model pair that does not belong together, naming both."""
  where = f"model {model_dir!r}" if model_dir else "the model"
  if tok.vocab_size > cfg.vocab_size:
    raise ValueError(f"tokenizer {tok.path!r} has {tok.vocab_size} tokens but {where} embeds "
                     f"only {cfg.vocab_size}: they do not belong together (set "
                     f"config.tokenizer.path to the model's tokenizer)")
  if model_dir and _has_tokenizer(model_dir) and os.path.realpath(tok.path or "") != \
      os.path.realpath(model_dir):
    own = Tokenizer.from_dir(model_dir)
    specials = lambda t: {s: t.hf.convert_tokens_to_ids(s) for s in t.hf.all_special_tokens}
    if own.vocab_size != tok.vocab_size or specials(own) != specials(tok):
      raise ValueError(f"tokenizer {tok.path!r} ({tok.vocab_size} tokens, specials "
                       f"{specials(tok)}) is not the tokenizer of {where} ({own.vocab_size} "
                       f"tokens, specials {specials(own)}): they do not belong together (leave "
                       f"config.tokenizer.path empty to use the model's own)")
  if model_dir:
    eos = model_eos_ids(model_dir)
    stops = set(tok.stop_ids) | {tok.eos_id}
    if eos and not eos & stops:
      raise ValueError(f"tokenizer {tok.path!r} stops on ids {sorted(stops)} but {where} "
                       f"ends sequences with {sorted(eos)}: they do not belong together (set "
                       f"config.tokenizer.path to the model's tokenizer)")


def model_config_for(config, tokenizer: Tokenizer) -> model_config.ModelConfig:
  over = dict(config.model.overrides)
  if over.get("vocab_size", 0) in (0, None):
    over["vocab_size"] = -(-tokenizer.vocab_size // 8) * 8
  try:
    return model_config.preset(config.model.preset, config.model.family, **over)
  except TypeError as e:
    raise ValueError(f"config.model.overrides: {e}") from None


def _check_overrides(config, cfg: model_config.ModelConfig):
  """With init_from, overrides may only restate the checkpoint's values."""
  for k, v in dict(config.model.overrides).items():
    if k == "vocab_size" and v in (0, None):
      continue
    if not hasattr(cfg, k):
      raise ValueError(f"config.model.overrides.{k}: not a ModelConfig field")
    have = getattr(cfg, k)
    if (list(have) if isinstance(have, tuple) else have) != (list(v) if isinstance(v, tuple)
                                                              else v):
      raise ValueError(
          f"config.model.overrides.{k}={v!r} differs from {have!r} in the checkpoint "
          f"config.model.init_from={config.model.init_from!r}; a loaded model keeps its "
          f"architecture: drop the override")


def _compute_options(config, cfg: model_config.ModelConfig) -> model_config.ModelConfig:
  """How the model computes (not what it is): config.model.attention / attention_block_size /
  dtype (None: the model's own)."""
  m = config.model  # workdirs written before these fields existed take the defaults
  return cfg.replace(attention=m.get("attention", "auto"),
                     attention_block_size=m.get("attention_block_size", 128),
                     dtype=m.get("dtype") or cfg.dtype)


def _stored_as(config, cfg: model_config.ModelConfig, params):
  """config.model.param_dtype (None: as loaded or initialized): params cast on their devices."""
  dtype = config.model.get("param_dtype")
  if not dtype or dtype == cfg.param_dtype:
    return cfg, params
  cfg = cfg.replace(param_dtype=dtype)
  return cfg, jax.tree.map(lambda x: x.astype(cfg.jnp_param_dtype), params)


def setup_model(config, tokenizer: Tokenizer, mesh, seed: int | None = None):
  """(model config, params placed on the mesh); says which model in one line."""
  cfg, params, source = _load_or_init(config, tokenizer, mesh, seed)
  cfg, params = _stored_as(config, cfg, params)
  announce(f"model: {source}: {describe_model(cfg)}")
  return _compute_options(config, cfg), params


def setup_adapters(config, cfg: model_config.ModelConfig, mesh):
  """(LoraConfig, fresh adapters placed on the mesh) of `config.model.lora`, or (None, None)
  when LoRA is off. The adapters' init key comes from config.seed."""
  lc = lora_lib.from_config(config.model.get("lora"))
  if lc is None:
    return None, None
  key = jax.random.fold_in(jax.random.key(config.seed), LORA_PURPOSE)
  return lc, lora_lib.init_sharded(cfg, lc, mesh, key)


def _load_or_init(config, tokenizer: Tokenizer, mesh, seed: int | None):
  """(model config, params, where they came from)."""
  if config.model.init_from:
    path = config.model.init_from
    if not is_workdir(path):
      path = _init_dir(config)  # a remote HF or si-convert directory: this host's copy
    shard = lambda c: shd.param_shardings(c, mesh)
    if is_workdir(path):  # the latest checkpoint of another run (e.g. a shared cold start)
      with _nested():
        run = load_run(path)
      cfg, params = run["model_cfg"], jax.device_put(run["params"], shard(run["model_cfg"]))
      check_tokenizer_fits(tokenizer, cfg)
      source = f"{path}, checkpoint {run['step']} of that run (config.model.init_from)"
    elif os.path.exists(os.path.join(path, "model_config.json")):
      from si_jax.models import convert
      cfg, params = convert.load_params(path, shardings=shard)
      check_tokenizer_fits(tokenizer, cfg)
      source = f"{path} (si-convert params directory, config.model.init_from)"
    else:
      from si_jax.models import hf
      cfg, params = hf.load_hf(path, shardings=shard)
      check_tokenizer_fits(tokenizer, cfg, path)
      source = f"{path} (HF directory, config.model.init_from)"
    _check_overrides(config, cfg)
  else:
    cfg = model_config_for(config, tokenizer)
    seed = config.seed if seed is None else seed
    key = jax.random.fold_in(jax.random.key(seed), INIT_PURPOSE)
    params = shd.init_sharded_params(cfg, mesh, key)
    check_tokenizer_fits(tokenizer, cfg)
    source = f"new, random init from config.model.preset={config.model.preset!r} (seed {seed})"
  return cfg, params, source


def has_repair_cold_start(config, _depth: int = 0) -> bool:
  """Whether the repair mode was cold-started on error -> repair pairs: by this run's SFT
  (sft.steps > 0 with sft.repair_pairs or sft.repair_data_path) or by the run whose workdir
  model.init_from names."""
  sft = config.sft
  if sft.steps and (sft.repair_pairs or sft.repair_data_path):
    return True
  init = config.model.init_from
  return bool(_depth < 8 and is_workdir(init) and
              has_repair_cold_start(read_config(init), _depth + 1))


def warn_without_repair_cold_start(config) -> None:
  """SI's repair mode repairs zero-shot without a cold start on repair pairs: say so."""
  if (config.rl.credit != "si" or not config.rl.steps
      or config.si.get("correction", "repair") != "repair" or has_repair_cold_start(config)):
    return
  if multihost.is_primary():
    print("si-train: warning: config.rl.credit='si' repairs failures with the model's repair "
          "mode, but it has had no cold start on repair pairs (config.sft.repair_pairs=0, no "
          "config.sft.repair_data_path, and config.model.init_from is not the workdir of a run "
          "that had them): its repairs are zero-shot", file=sys.stderr, flush=True)


_ABSENT = object()


def _diff(a, b, prefix="", defaults=None) -> list[str]:
  """Dotted paths where config dicts a (saved) and b (new) differ. A field absent from `a` that
  `b` sets to its schema default (`defaults`, base_config's) is no difference: the field was
  added to the schema after `a` was written, and its default is what that run did."""
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for k in sorted(set(a) | set(b)):
      d = defaults.get(k, _ABSENT) if isinstance(defaults, dict) else _ABSENT
      if k not in a and d is not _ABSENT and b.get(k) == d:
        continue
      out += _diff(a.get(k), b.get(k), f"{prefix}{k}.", None if d is _ABSENT else d)
    return out
  return [] if a == b else [prefix.rstrip(".")]


def has_checkpoint(workdir: str) -> bool:
  d = epath.Path(workdir) / CHECKPOINTS
  return d.is_dir() and any(p.name.isdigit() for p in d.iterdir())


def claim(config, workdir: str) -> None:
  """Makes `workdir` this run's: writes config.json, or checks it against the config of the
  run whose checkpoints the workdir holds (see the module docstring)."""
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  path = epath.Path(workdir) / CONFIG_FILE
  new = configs.to_dict(config)
  if path.exists() and has_checkpoint(workdir):
    old = json.loads(path.read_text())
    diff = [d for d in _diff(old, new, defaults=configs.to_dict(configs.base_config()))
            if d not in RESUME_FIELDS]
    if diff:
      raise ValueError(
          f"{workdir} holds a run with a different config ({path}); differing fields: "
          f"{', '.join('config.' + d for d in diff[:10])}. Resume with the same config or use "
          f"a new --workdir.")
    return
  if multihost.is_primary():
    tmp = path.parent / (CONFIG_FILE + ".tmp")
    tmp.write_text(configs.to_json(config))
    tmp.replace(path)
  multihost.sync("claim")


def read_config(workdir: str):
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f"{workdir} is not a si-train workdir: no {CONFIG_FILE}")
  return configs.from_json(path.read_text())


def load_run(workdir: str, step: int | None = None, mesh=None) -> dict[str, Any]:
  """Config, tokenizer, model config and params of a training run's checkpoint (si-eval,
  si-convert). Params are placed on `mesh` (default: one device), sharded by the param rules.
  A LoRA run's params are its base (re-read from its model.init_from) merged with the
  checkpoint's adapters."""
  config = read_config(workdir)
  tok = setup_tokenizer(config, workdir)
  mesh = shd.make_mesh(devices=jax.devices()[:1]) if mesh is None else mesh
  with _nested():  # the params the checkpoint's replace (with LoRA: the base they adapt)
    cfg, params = setup_model(config, tok, mesh)
  lc, adapters = setup_adapters(config, cfg, mesh)
  trained = params if lc is None else adapters
  master = ts.master_weights_for(config, jax.tree.leaves(trained)[0].dtype)
  state = ts.create(trained, ts.optimizer_from_config(config.sft.optim, 1, master), mesh)
  ck = ckpt_lib.Checkpointer(os.path.join(workdir, CHECKPOINTS))
  try:
    step = ck.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{workdir}/{CHECKPOINTS} has no checkpoint")
    state, meta = ck.restore(ts.abstract_state(state), step)
  finally:
    ck.close()
  if lc is None:
    params = state.params
  else:
    params = lora_lib.make_merge_fn(lc, jax.tree.map(lambda x: x.sharding, params))(
        params, state.params)
  announce(f"model: {workdir}, checkpoint {step} (checksums verified"
           f"{'; LoRA adapters merged into the base' if lc is not None else ''}): "
           f"{describe_model(cfg)}")
  return dict(config=config, tokenizer=tok, model_cfg=cfg, params=params, step=step,
              meta=meta)
