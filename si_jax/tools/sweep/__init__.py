"""si-sweep: runs a grid of si-train config overrides and tabulates the results over seeds.

  si-sweep --config experiments/configs/arith_si.py:smoke --root runs/sweep1 \\
      --grid rl.loss=grpo,gspo --grid seed=0,1,2 [--set rl.steps=10 ...]
  si-sweep --sweep experiments/sweeps/arith_losses.py --root runs/sweep2
  si-sweep ... --launcher slurm --hosts 2 --dry_run      # print one command per run
  si-sweep --root runs/sweep1 --summarize                 # only collect and print the table

A sweep is a config (`file[:arg]`, as si-train takes it), ordered axes (`--grid field=v1,v2`;
the runs are their cartesian product), fixed overrides (`--set field=value`) and the seed axis
(default `seed`), over which the table averages. Values are read as si-train reads them: ints,
floats, `true`/`false`, strings, and `(1,2)` is one tuple value. A sweep file
(`experiments/sweeps/*.py`) returns the same as a dict from `get_sweep()`: `config`, `grid`
(field -> list of values), `set` (dict), optional `seed_axis` and `name`; `--grid` / `--set` on
the command line add to it or replace its entries.

Every run's config is built and validated exactly as si-train builds it (ml_collections' own
flag parsing, then `configs.validate`) before anything starts: a mistake is one line on stderr,
exit code 2, naming the culprit (`--grid rl.lso: unknown config field config.rl.lso; did you
mean config.rl.loss?`).

Layout of a root: `<root>/sweep.json` (config, axes, runs; a different sweep on the same root
is refused, naming what differs), one workdir per run named from its grid values
(`rl.loss=gspo,seed=1`), and `summary.json` / `summary.md` with one row per setting of the
non-seed axes, each metric as `mean ± std (n)` over seeds (std with ddof=1).

Runs (`--launcher local`, the default) go one after another as `python -m si_jax.cli.train` (=
si-train) subprocesses, output appended to `<workdir>/train.log`. A run with `summary.json` is
finished and skipped; one with checkpoints but no summary is resumed (si-train resumes a
workdir by itself); a failed run is reported and the sweep goes on (exit code 1 at the end).
`--launcher slurm` submits one job per unfinished run whose earlier job
(`<workdir>/slurm_job`) is no longer in `squeue` (collect with `--summarize` once they are
done); `--launcher tpu_pod` runs each on a TPU pod slice, one after another. Both go through
`si-launch` (si_jax/tools/launch/, the one home of how a run is started; `--launch_args` passes it
more options, `--dry_run` prints its command line per run). Roots other than local paths
(`gs://...`) are for `--dry_run` only: this tool reads run state with plain file access. Runs
with the same shapes recompile the same programs; `export JAX_COMPILATION_CACHE_DIR=...` lets
them share compilations.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import hashlib
import itertools
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from typing import Any, Sequence

from si_jax.tools import launch
from si_jax import tables

SWEEP_FILE = "sweep.json"
SUMMARY_FILE = "summary.json"  # a run's (written by si-train) and the root's (written here)
TABLE_FILE = "summary.md"
RUN_LOG = "train.log"
SLURM_JOB_FILE = "slurm_job"  # in a workdir: the id of the job si-sweep submitted for it
LAUNCHERS = ("local", "slurm", "tpu_pod")
SWEEP_KEYS = ("config", "grid", "set", "seed_axis", "name")
_NAME_MAX = 200  # characters of a run directory name (filesystems allow 255 bytes)


class SweepError(Exception):
  """A mistake in the sweep or its command line: one line on stderr, exit code 2."""


# ----------------------------------------------------------------------------- values


def split_values(text: str) -> list[str]:
  """`a,(1,2),'x,y'` -> ['a', '(1,2)', "'x,y'"]: commas inside brackets or quotes stay."""
  out, depth, quote, cur = [], 0, "", []
  for ch in text:
    if quote:
      quote = "" if ch == quote else quote
    elif ch in "'\"":
      quote = ch
    elif ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == "," and depth == 0:
      out.append("".join(cur))
      cur = []
      continue
    cur.append(ch)
  out.append("".join(cur))
  return out


def parse_value(text: str) -> Any:
  """A command-line value as si-train's flags read it: a Python literal, `true` / `false`, or
  else the string itself."""
  if text in ("true", "false"):
    return text == "true"
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def format_value(v: Any) -> str:
  """The command-line text of a value (`--config.<field>=<text>`); parse_value reads it back
  (strings that read as literals, like '1', stay strings for si-train's str fields)."""
  if isinstance(v, bool):
    return "true" if v else "false"
  if isinstance(v, str):
    return v
  return repr(v)


def value_token(v: Any) -> str:
  """A value as part of a directory name: `gspo`, `0.001`, `true`, `(1,2)` -> `1_2`."""
  if isinstance(v, (tuple, list)):
    return "_".join(value_token(x) for x in v)
  return re.sub(r"[^A-Za-z0-9._+@-]", "_", format_value(v))


def _jsonable(v: Any) -> Any:
  return json.loads(json.dumps(v))


# ----------------------------------------------------------------------------- the sweep


@dataclasses.dataclass
class RunSpec:
  """One run: its directory name and its grid values (axis order)."""
  name: str
  values: dict[str, Any]


@dataclasses.dataclass
class Sweep:
  """A config, ordered axes, fixed overrides and the seed axis (see the module docstring).

  `labels` names where each axis / fixed field came from, for error messages: key
  `grid:<field>` or `set:<field>`, value `--grid rl.loss` or `<file>: grid rl.loss`.
  """
  config: str
  grid: dict[str, list[Any]]
  set: dict[str, Any] = dataclasses.field(default_factory=dict)
  seed_axis: str = "seed"
  name: str = ""
  labels: dict[str, str] = dataclasses.field(default_factory=dict)

  def label(self, field: str, kind: str) -> str:
    return self.labels.get(f"{kind}:{field}", f"--{kind} {field}")

  def runs(self) -> list[RunSpec]:
    """The cartesian product of the axes, first axis slowest, each with its directory name."""
    axes = list(self.grid)
    combos = [dict(zip(axes, vs)) for vs in itertools.product(*self.grid.values())]
    names = [",".join(f"{a}={value_token(v)}" for a, v in c.items()) or "base" for c in combos]
    digest = lambda c: hashlib.sha1(json.dumps(_jsonable(c), sort_keys=True).encode()).hexdigest()
    out = []
    for name, combo in zip(names, combos):
      if len(name) > _NAME_MAX or names.count(name) > 1:  # too long, or two values look alike
        name = f"{name[:_NAME_MAX - 9]}-{digest(combo)[:8]}"
      out.append(RunSpec(name, combo))
    return out

  def overrides(self, run: RunSpec) -> list[tuple[str, Any]]:
    """(field, value) of one run: the fixed ones, then its grid values."""
    return list(self.set.items()) + list(run.values.items())

  def record(self) -> dict[str, Any]:
    """What identifies the sweep (sweep.json minus its run list), JSON-ready."""
    path, sep, arg = self.config.partition(":")
    return _jsonable(dict(name=self.name, config=os.path.normpath(path) + sep + arg,
                          grid=self.grid, set=self.set, seed_axis=self.seed_axis))


def load_sweep_file(path: str) -> dict[str, Any]:
  """`get_sweep()` of a sweep file, its keys checked."""
  if not os.path.exists(path):
    raise SweepError(f"--sweep: no such file {path!r}")
  from si_jax import configs  # local: as in load_config
  module = configs.load_file(path, "_si_sweep")
  if not hasattr(module, "get_sweep"):
    raise SweepError(f"--sweep {path}: defines no get_sweep()")
  d = module.get_sweep()
  if not isinstance(d, dict):
    raise SweepError(f"--sweep {path}: get_sweep() must return a dict, got {type(d).__name__}")
  for k in d:
    if k not in SWEEP_KEYS:
      close = difflib.get_close_matches(k, SWEEP_KEYS, n=1)
      hint = f"; did you mean {close[0]!r}?" if close else f"; known: {list(SWEEP_KEYS)}"
      raise SweepError(f"--sweep {path}: unknown key {k!r}{hint}")
  if not isinstance(d.get("config"), str):
    raise SweepError(f"--sweep {path}: 'config' must be a config file path (file[:arg])")
  for key in ("grid", "set"):
    if not isinstance(d.get(key, {}), dict):
      raise SweepError(f"--sweep {path}: {key!r} must be a dict of field -> "
                       f"{'list of values' if key == 'grid' else 'value'}")
  for field, values in d.get("grid", {}).items():
    if not isinstance(values, list):
      raise SweepError(f"--sweep {path}: grid {field}: must be a list of values, got "
                       f"{type(values).__name__} (a tuple is one value)")
  return d


def _field_value(text: str, flag: str) -> tuple[str, str]:
  field, eq, value = text.partition("=")
  if not eq or not field:
    raise SweepError(f"{flag} {text}: expected FIELD=VALUE{'S' if flag == '--grid' else ''}")
  return field.strip().removeprefix("config."), value


def make_sweep(config: str | None, sweep_file: str | None, grid: Sequence[str] = (),
               sets: Sequence[str] = (), seed_axis: str | None = None,
               name: str | None = None) -> Sweep:
  """A Sweep from a sweep file and/or the command line's --config / --grid / --set."""
  if bool(config) == bool(sweep_file):
    raise SweepError("give either --config or --sweep")
  labels: dict[str, str] = {}
  if sweep_file:
    d = load_sweep_file(sweep_file)
    config = d["config"]
    axes = {f: list(v) for f, v in d.get("grid", {}).items()}
    fixed = dict(d.get("set", {}))
    labels.update({f"grid:{f}": f"{sweep_file}: grid {f}" for f in axes})
    labels.update({f"set:{f}": f"{sweep_file}: set {f}" for f in fixed})
    labels["config"] = f"{sweep_file}: config"
    seed_axis = seed_axis or d.get("seed_axis")
    name = name or d.get("name") or os.path.splitext(os.path.basename(sweep_file))[0]
  else:
    axes, fixed = {}, {}
  cli_axes = set()
  for text in grid:
    field, values = _field_value(text, "--grid")
    if field in cli_axes:
      raise SweepError(f"--grid {field}: given twice")
    cli_axes.add(field)
    if not values:
      raise SweepError(f"--grid {field}: no values")
    axes[field] = [parse_value(v.strip()) for v in split_values(values)]  # replaces the file's
    labels[f"grid:{field}"] = f"--grid {field}"
  for text in sets:
    field, value = _field_value(text, "--set")
    fixed[field] = parse_value(value)
    labels[f"set:{field}"] = f"--set {field}"
  for field, values in axes.items():
    label = labels[f"grid:{field}"]
    if not values:
      raise SweepError(f"{label}: no values")
    texts = [format_value(v) for v in values]
    for i, t in enumerate(texts):
      if t in texts[:i]:  # the same command line twice
        raise SweepError(f"{label}: value {t!r} appears twice")
    if field in fixed:
      raise SweepError(f"{label}: also fixed by {labels[f'set:{field}']}; a field is an axis "
                       f"or fixed, not both")
  return Sweep(config=config, grid=axes, set=fixed, seed_axis=seed_axis or "seed",
               name=name or "", labels=labels)


# ----------------------------------------------------------------------------- validation


def load_config(spec: str, overrides: Sequence[tuple[str, Any]] = ()):
  """The config si-train would run: `spec` (file[:arg]) with `--config.<field>=<value>`
  overrides, parsed by ml_collections' own flags (same types, same errors), not validated."""
  from absl import flags
  from ml_collections import config_flags
  fv = flags.FlagValues()
  argv = ["si-train", f"--config={spec}"] + [f"--config.{f}={format_value(v)}"
                                             for f, v in overrides]
  holder = config_flags.DEFINE_config_file("config", None, flag_values=fv, lock_config=True,
                                           sys_argv=argv)
  with warnings.catch_warnings():  # ml_collections loads the file with load_module()
    warnings.simplefilter("ignore", DeprecationWarning)
    fv(argv)
  return holder.value


def _culprit(sweep: Sweep, run: RunSpec, message: str) -> str:
  """Who a failed run's error is about: an override whose field the message names, else the
  run."""
  for field, value in reversed(sweep.overrides(run)):
    if re.search(rf"(--)?config\.{re.escape(field)}\b", message):
      kind = "grid" if field in sweep.grid else "set"
      return f"{sweep.label(field, kind)}={format_value(value)}"
  return f"run {run.name}"


def validate(sweep: Sweep) -> list[RunSpec]:
  """Checks every field and every run's config before anything runs; returns the runs."""
  from absl import flags
  from ml_collections.config_flags import config_flags
  from si_jax import configs
  path = sweep.config.partition(":")[0]
  label = sweep.labels.get("config", "--config")
  if not os.path.exists(path):
    raise SweepError(f"{label}: no such file {path!r} (relative to {os.getcwd()})")
  try:
    base = load_config(sweep.config)
  except (ValueError, flags.Error) as e:
    raise SweepError(f"{label} {sweep.config}: {e}") from None
  for kind, fields in (("set", sweep.set), ("grid", sweep.grid)):
    for field in fields:
      msg = configs.unknown_field_message(base, field)
      if msg:
        raise SweepError(f"{sweep.label(field, kind)}: {msg}")
  if sweep.seed_axis not in sweep.grid and sweep.seed_axis != "seed":
    raise SweepError(f"--seed_axis {sweep.seed_axis}: not an axis of the grid "
                     f"({', '.join(sweep.grid) or 'none'})")
  runs = sweep.runs()
  for run in runs:
    try:
      configs.validate(load_config(sweep.config, sweep.overrides(run)))
    except (ValueError, TypeError, KeyError, flags.Error,
            config_flags.UnsupportedOperationError) as e:
      msg = (e.args[0] if isinstance(e, KeyError) else str(e)).split(". (Note")[0]
      msg = re.sub(r"^flag --config\.[^:]*: ", "", msg)
      raise SweepError(f"{_culprit(sweep, run, str(e))}: {msg}") from None
  return runs


# ----------------------------------------------------------------------------- commands


def train_args(sweep: Sweep, run: RunSpec, root: str) -> list[str]:
  """si-train's arguments for one run."""
  return (["--config", sweep.config, "--workdir", os.path.join(root, run.name)]
          + [f"--config.{f}={format_value(v)}" for f, v in sweep.overrides(run)])


@dataclasses.dataclass
class Launcher:
  """How a run is started (si_jax/tools/launch/ builds every command). local: si-train here;
  slurm: `si-launch slurm --nodes=hosts ... -- ARGS` (one sbatch); tpu_pod: `si-launch tpu_pod
  --tpu=TPU --zone=ZONE ... -- ARGS`. `launch_args`: more si-launch options, one string."""
  kind: str = "local"
  hosts: int = 1
  tpu: str = ""
  zone: str = ""
  sbatch_args: str = ""
  launch_args: str = ""

  def check(self) -> None:
    if self.kind not in LAUNCHERS:
      raise SweepError(f"--launcher {self.kind}: must be one of {list(LAUNCHERS)}")
    if self.hosts < 1:
      raise SweepError(f"--hosts {self.hosts}: must be >= 1")
    if self.hosts != 1 and self.kind != "slurm":
      raise SweepError(f"--hosts {self.hosts}: only --launcher slurm takes a host count (a TPU "
                       f"pod runs on every host of the slice --tpu names)")
    if self.kind == "tpu_pod" and not (self.tpu and self.zone):
      raise SweepError("--launcher tpu_pod: needs --tpu NAME and --zone ZONE")
    if self.kind != "tpu_pod" and (self.tpu or self.zone):
      raise SweepError("--tpu / --zone: only for --launcher tpu_pod")
    if self.sbatch_args and self.kind != "slurm":
      raise SweepError("--sbatch_args: only for --launcher slurm")
    if self.launch_args and self.kind == "local":
      raise SweepError("--launch_args: only for --launcher slurm or tpu_pod")
    if self.kind != "local":  # si-launch's own checks, on a stand-in run
      try:
        launch.plan(self.launch_argv(["--config", "c.py", "--workdir", "gs://w"], "check"))
      except launch.LaunchError as e:
        msg = re.sub(r"^si-launch( \w+)?: ", "", str(e))
        raise SweepError(f"--launcher {self.kind} (si-launch): {msg}") from None

  def launch_argv(self, args: list[str], job_name: str) -> list[str]:
    """si-launch's arguments for a run with si-train arguments `args`."""
    try:
      extra = shlex.split(self.launch_args)
    except ValueError as e:
      raise SweepError(f"--launch_args {self.launch_args!r}: {e}") from None
    if self.kind == "slurm":
      head = ["slurm", f"--nodes={self.hosts}", f"--job_name={job_name}"]
      head += [f"--sbatch_args={self.sbatch_args}"] if self.sbatch_args else []
    else:
      head = ["tpu_pod", f"--tpu={self.tpu}", f"--zone={self.zone}"]
    return head + extra + ["--"] + args

  def command(self, args: list[str], job_name: str, *, display: bool = False) -> list[str]:
    """The argv that starts a run with si-train arguments `args`. `display`: the command as a
    user types it (`si-train ...`, `si-launch ...`) instead of this interpreter's `-m ...`."""
    if self.kind == "local":
      argv = launch.local_commands(args)[0].argv
      return ["si-train"] + args if display else argv
    head = ["si-launch"] if display else [sys.executable, "-m", "si_jax.tools.launch"]
    return head + self.launch_argv(args, job_name)


# ----------------------------------------------------------------------------- the root


def check_root(root: str, sweep: Sweep, runs: list[RunSpec]) -> dict[str, Any]:
  """sweep.json's content for this sweep; refuses a root that holds a different sweep."""
  record = dict(sweep.record(), runs=[dict(name=r.name, values=r.values) for r in runs])
  record = _jsonable(record)
  path = os.path.join(root, SWEEP_FILE)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      old = json.load(f)
    diff = [f"{k}: {json.dumps(old.get(k))} -> {json.dumps(record[k])}"
            for k in ("config", "grid", "set", "seed_axis") if old.get(k) != record[k]]
    if diff:
      raise SweepError(f"--root {root} holds a different sweep ({path}): {'; '.join(diff)}; "
                       f"use a new --root")
  return record


def _job_name(sweep: Sweep, run: RunSpec) -> str:
  return f"{sweep.name or 'si-sweep'}:{run.name}"


def run_state(workdir: str) -> tuple[str, int | None]:
  """('finished', None) | ('resume', latest checkpoint step) | ('new', None)."""
  if os.path.exists(os.path.join(workdir, SUMMARY_FILE)):
    return "finished", None
  ckpt = os.path.join(workdir, "checkpoints")
  steps = [int(n) for n in os.listdir(ckpt) if n.isdigit()] if os.path.isdir(ckpt) else []
  return ("resume", max(steps)) if steps else ("new", None)


def _short_result(workdir: str) -> str:
  try:
    with open(os.path.join(workdir, SUMMARY_FILE), encoding="utf-8") as f:
      after = json.load(f).get("eval_after") or {}
  except (OSError, ValueError):
    return ""
  key = next((k for k in after if k.startswith("avg@")), None)
  return f", held-out {key} {after[key]:.3f}" if key else ""


def _active_job(workdir: str) -> str | None:
  """The SLURM job id an earlier si-sweep submitted for `workdir`, if it is still queued or
  running (`squeue` lists it; without squeue it is taken as active)."""
  path = os.path.join(workdir, SLURM_JOB_FILE)
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    job = f.read().strip()
  try:
    res = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i"], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL)
  except FileNotFoundError:
    return job
  return job if res.stdout.split() else None


def _submit(cmd: list[str], workdir: str, head: str) -> bool:
  """sbatch one run unless its earlier job is still active; records the job id in the workdir.
  False if sbatch failed."""
  job = _active_job(workdir)
  if job:
    print(f"{head} job {job} is still queued or running, not submitted again (delete "
          f"{os.path.join(workdir, SLURM_JOB_FILE)} to resubmit)", flush=True)
    return True
  res = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
  out = (res.stdout.strip() or res.stderr.strip()).replace("\n", " ")
  if res.returncode != 0:
    print(f"{head} FAILED to submit (exit code {res.returncode}): {out}", flush=True)
    return False
  m = re.search(r"(\d+)\s*$", res.stdout.strip())
  if m:
    with open(os.path.join(workdir, SLURM_JOB_FILE), "w", encoding="utf-8") as f:
      f.write(m.group(1) + "\n")
  print(f"{head} submitted: {out}", flush=True)
  return True


def execute(sweep: Sweep, runs: list[RunSpec], root: str, launcher: Launcher) -> int:
  """Starts every unfinished run, one after another, one progress line each. Returns the
  number of failed runs."""
  failed = 0
  for i, run in enumerate(runs, start=1):
    workdir = os.path.join(root, run.name)
    state, step = run_state(workdir)
    head = f"[{i}/{len(runs)}] {run.name}:"
    if state == "finished":
      print(f"{head} finished, skipped", flush=True)
      continue
    cmd = launcher.command(train_args(sweep, run, root), _job_name(sweep, run))
    os.makedirs(workdir, exist_ok=True)
    if launcher.kind == "slurm":
      failed += not _submit(cmd, workdir, head)
      continue
    what = f"resuming from step {step}" if state == "resume" else "running"
    t0 = time.perf_counter()
    log_path = os.path.join(workdir, RUN_LOG)
    print(f"{head} {what} ...", end="", flush=True)
    with open(log_path, "a", encoding="utf-8") as log:
      log.write(f"=== si-sweep {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(cmd)}\n")
      log.flush()
      rc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=log,
                          stderr=subprocess.STDOUT).returncode
    dt = time.perf_counter() - t0
    if rc == 0 and run_state(workdir)[0] == "finished":
      print(f" done in {dt:.0f} s{_short_result(workdir)}", flush=True)
    else:
      failed += 1
      print(f" FAILED (exit code {rc}) after {dt:.0f} s; see {log_path}", flush=True)
  return failed


# ----------------------------------------------------------------------------- the table


def lookup(record: dict[str, Any], key: str) -> Any:
  """A dotted path into a run record {'summary': ..., 'last': ...}: `eval_after.avg@4`,
  `credit_last.si/repair_success` (into summary.json) or `last.reward` (the last metrics.jsonl
  row). Keys that contain dots themselves are matched whole. None where missing."""
  node: Any = record.get("last") if key.startswith("last.") else record.get("summary")
  parts = key.split(".")[1:] if key.startswith("last.") else key.split(".")
  while parts:
    if not isinstance(node, dict):
      return None
    for n in range(len(parts), 0, -1):  # longest key first
      k = ".".join(parts[:n])
      if k in node:
        node, parts = node[k], parts[n:]
        break
    else:
      return None
  return node


def default_metrics(records: list[dict[str, Any]]) -> list[str]:
  """Held-out eval_after avg@k / pass@k / maj@k, eval_before avg@k, steps, wall_s and every
  credit_last si/* metric present in any run."""
  ks: set[int] = set()
  si: set[str] = set()
  for r in records:
    s = r.get("summary") or {}
    for k in list(s.get("eval_after") or {}) + list(s.get("eval_before") or {}):
      m = re.fullmatch(r"(avg|pass|maj)@(\d+)", k)
      if m:
        ks.add(int(m.group(2)))
    si.update(k for k in s.get("credit_last") or {} if k.startswith("si/"))
  out = [f"eval_after.{m}@{k}" for k in sorted(ks) for m in ("avg", "pass", "maj")]
  out += [f"eval_before.avg@{k}" for k in sorted(ks)]
  return out + ["steps", "wall_s"] + [f"credit_last.{k}" for k in sorted(si)]


def _number(v: Any) -> float | None:
  if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
    return None
  return float(v)


def stats(values: list[float]) -> dict[str, Any]:
  """mean, std over seeds (ddof=1; None for n < 2), n."""
  n = len(values)
  return dict(mean=statistics.fmean(values) if n else None,
              std=statistics.stdev(values) if n > 1 else None, n=n, values=values)


def format_cell(s: dict[str, Any]) -> str:
  """`0.5 ± 0.1 (3)`; `0.5 (1)` for one seed; `-` for none."""
  if not s["n"]:
    return "-"
  std = f" ± {s['std']:.4g}" if s["std"] is not None else ""
  return f"{s['mean']:.4g}{std} ({s['n']})"


def summary_table(records: list[dict[str, Any]], axes: Sequence[str], seed_axis: str,
                  metrics: Sequence[str] = ()) -> dict[str, Any]:
  """One row per setting of the non-seed axes (in run order), each metric's stats over the
  seed axis.

  Args:
    records: per run {'name', 'values' (axis -> value), 'summary' (its summary.json or None
      when unfinished), 'last' (its last metrics.jsonl row or None)}.
    axes: the grid's axes, in order.
    seed_axis: the axis averaged over (absent from `axes`: each run is its own row).
    metrics: columns; default `default_metrics(records)`.
  """
  metrics = list(metrics) or default_metrics(records)
  group_axes = [a for a in axes if a != seed_axis]
  rows: dict[str, dict[str, Any]] = {}
  for r in records:
    setting = {a: r["values"][a] for a in group_axes}
    key = json.dumps(_jsonable(setting))
    row = rows.setdefault(key, dict(setting=setting, runs=[], finished=0, cells={}))
    row["runs"].append(r["name"])
    row["finished"] += r.get("summary") is not None
  for row in rows.values():
    members = [r for r in records if r["name"] in row["runs"] and r.get("summary") is not None]
    for m in metrics:
      vals = [v for r in members if (v := _number(lookup(r, m))) is not None]
      row["cells"][m] = stats(vals)
  return dict(axes=group_axes, seed_axis=seed_axis, metrics=metrics, rows=list(rows.values()))


def markdown_table(table: dict[str, Any]) -> str:
  """The table as markdown: the non-seed axes, finished / total runs, then the metrics."""
  return tables.markdown_table(
      table["axes"] + ["runs"] + table["metrics"],
      [[format_value(row["setting"][a]) for a in table["axes"]]
       + [f"{row['finished']}/{len(row['runs'])}"]
       + [format_cell(row["cells"][m]) for m in table["metrics"]] for row in table["rows"]])


def collect(root: str, sweep_record: dict[str, Any]) -> list[dict[str, Any]]:
  """Each run of sweep.json with its summary.json and last metrics.jsonl row (None where
  missing)."""
  from si_jax import metrics as metrics_lib
  out = []
  for r in sweep_record["runs"]:
    workdir = os.path.join(root, r["name"])
    summary, last = None, None
    path = os.path.join(workdir, SUMMARY_FILE)
    if os.path.exists(path):
      try:
        with open(path, encoding="utf-8") as f:
          summary = json.load(f)
      except ValueError as e:  # being written right now (a run of another launcher)
        print(f"si-sweep: warning: {path} is not JSON ({e}); counted as unfinished",
              file=sys.stderr)
        out.append(dict(name=r["name"], values=r["values"], summary=None, last=None))
        continue
      try:
        rows = metrics_lib.read_metrics(workdir)
      except ValueError as e:
        print(f"si-sweep: warning: {e}", file=sys.stderr)
        rows = []
      last = rows[-1] if rows else None
    out.append(dict(name=r["name"], values=r["values"], summary=summary, last=last))
  return out


def summarize(root: str, extra_metrics: Sequence[str] = ()) -> str:
  """Collects the runs of `root`, writes summary.json and summary.md there; returns the
  markdown. Columns: `default_metrics` plus `extra_metrics` (--metric)."""
  path = os.path.join(root, SWEEP_FILE)
  if not os.path.exists(path):
    raise SweepError(f"--root {root}: no {SWEEP_FILE} (not a si-sweep root)")
  with open(path, encoding="utf-8") as f:
    record = json.load(f)
  records = collect(root, record)
  metrics = default_metrics(records)
  metrics += [m for m in extra_metrics if m not in metrics]
  table = summary_table(records, list(record["grid"]), record["seed_axis"], metrics)
  fixed = ", ".join(f"{k}={format_value(v)}" for k, v in record["set"].items()) or "none"
  md = (f"# sweep {record.get('name') or os.path.basename(os.path.normpath(root))}\n\n"
        f"config {record['config']}; fixed: {fixed}; each cell: mean ± std (n) over "
        f"{record['seed_axis']} (std with ddof=1)\n\n" + markdown_table(table) + "\n")
  tables.write_json(os.path.join(root, SUMMARY_FILE), dict(table, runs=records))
  with open(os.path.join(root, TABLE_FILE), "w", encoding="utf-8") as f:
    f.write(md)
  return md


# ----------------------------------------------------------------------------- the CLI


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="si-sweep", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", help="experiment config file[:arg], as si-train takes it")
  p.add_argument("--sweep", help="sweep file (experiments/sweeps/*.py) with get_sweep()")
  p.add_argument("--root", required=True, help="directory of the sweep's runs")
  p.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2,...",
                 help="an axis (repeatable); runs = the product of the axes")
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="a field fixed for every run (repeatable)")
  p.add_argument("--seed_axis", default=None, help="axis averaged over (default: seed)")
  p.add_argument("--name", default=None, help="sweep name (default: the sweep file's)")
  p.add_argument("--launcher", default="local", choices=LAUNCHERS)
  p.add_argument("--hosts", type=int, default=1, help="slurm: nodes per run (sbatch --nodes)")
  p.add_argument("--tpu", default="", help="tpu_pod: TPU VM name")
  p.add_argument("--zone", default="", help="tpu_pod: its zone")
  p.add_argument("--sbatch_args", default="", help="slurm: more sbatch options, one string")
  p.add_argument("--launch_args", default="",
                 help="slurm, tpu_pod: more si-launch options, one string "
                      "(--accelerator_type=v5p-16 --source=none)")
  p.add_argument("--dry_run", action="store_true", help="print one command per run, run none")
  p.add_argument("--summarize", action="store_true",
                 help="only collect the finished runs of --root and write the table")
  p.add_argument("--metric", action="append", default=[],
                 help="extra column (repeatable): a dotted path into summary.json "
                      "(eval_after.avg@4) or last.<metric> (last metrics.jsonl row)")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  """si-sweep; returns the exit code (2 for a mistake in the sweep, 1 if a run failed)."""
  try:
    return _main(_parser().parse_args(argv))
  except SweepError as e:
    if os.environ.get("SI_TRACEBACK") == "1":
      raise
    print(f"si-sweep: error: {e}", file=sys.stderr, flush=True)
    return 2


def _main(args: argparse.Namespace) -> int:
  if args.summarize:
    extra = [f for f in ("config", "sweep", "grid", "set", "dry_run") if getattr(args, f)]
    if extra:
      raise SweepError(f"--summarize reads {args.root}/{SWEEP_FILE}; it takes no --{extra[0]}")
    print(summarize(args.root, args.metric), end="", flush=True)
    return 0
  sweep = make_sweep(args.config, args.sweep, args.grid, args.set, args.seed_axis, args.name)
  launcher = Launcher(args.launcher, args.hosts, args.tpu, args.zone, args.sbatch_args,
                      args.launch_args)
  launcher.check()
  runs = validate(sweep)
  if args.dry_run:
    for run in runs:
      cmd = launcher.command(train_args(sweep, run, args.root), _job_name(sweep, run),
                             display=True)
      print(shlex.join(cmd), flush=True)
    return 0
  if "://" in args.root:
    raise SweepError(f"--root {args.root}: si-sweep reads run state with plain file access; "
                     f"a remote root is for --dry_run only")
  record = check_root(args.root, sweep, runs)
  os.makedirs(args.root, exist_ok=True)
  tables.write_json(os.path.join(args.root, SWEEP_FILE), record)
  print(f"si-sweep: {len(runs)} runs under {args.root} ({args.launcher})", flush=True)
  failed = execute(sweep, runs, args.root, launcher)
  if args.launcher == "slurm":
    print(f"collect the results when the jobs finish: si-sweep --root "
          f"{shlex.quote(args.root)} --summarize", flush=True)
  else:
    print("\n" + summarize(args.root, args.metric), end="", flush=True)
  if failed:
    print(f"si-sweep: {failed} of {len(runs)} runs failed", file=sys.stderr, flush=True)
  return 1 if failed else 0


def run() -> None:
  """Console-script entry point (`si-sweep`)."""
  try:
    code = main()
  except BrokenPipeError:  # `si-sweep ... --dry_run | head`
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    code = 1
  except KeyboardInterrupt:
    print("\nsi-sweep: interrupted; the same command resumes the sweep", file=sys.stderr)
    code = 130
  sys.exit(code)


if __name__ == "__main__":
  run()
