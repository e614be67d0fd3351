"""The sweep: a config (`file[:arg]`, as si-train takes it), ordered axes (`--grid
field=v1,v2`; the runs are their cartesian product), fixed overrides (`--set field=value`) and the
seed axis (default `seed`), over which the table averages. Values are read as si-train reads them
(values.py). A sweep file (`experiments/sweeps/*.py`) returns the same as a dict from
`get_sweep()`: `config`, `grid` (field -> list of values), `set` (dict), optional `seed_axis` and
`name`; `--grid` / `--set` on the command line add to it or replace its entries. Each run's
workdir is named from its grid values (`rl.loss=gspo,seed=1`).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import os
from typing import Any, Sequence

from si_jax.tools.sweep.values import format_value, jsonable, parse_value, split_values, value_token

SWEEP_KEYS = ("config", "grid", "set", "seed_axis", "name")
_NAME_MAX = 200  # characters of a run directory name (filesystems allow 255 bytes)


class SweepError(Exception):
  """A mistake in the sweep or its command line: one line on stderr, exit code 2."""


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
    digest = lambda c: hashlib.sha1(json.dumps(jsonable(c), sort_keys=True).encode()).hexdigest()
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
    return jsonable(dict(name=self.name, config=os.path.normpath(path) + sep + arg,
                         grid=self.grid, set=self.set, seed_axis=self.seed_axis))


def load_sweep_file(path: str) -> dict[str, Any]:
  """`get_sweep()` of a sweep file, its keys checked."""
  if not os.path.exists(path):
    raise SweepError(f"--sweep: no such file {path!r}")
  from si_jax import configs  # local: as in check.load_config
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
