"""Collects a sweep's results and tabulates them over seeds: `summary.json` / `summary.md` in the
root with one row per setting of the non-seed axes, each metric as `mean ± std (n)` over the seed
axis (std with ddof=1).
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import sys
from typing import Any, Sequence

from si_jax import tables
from si_jax.tools.sweep.root import SUMMARY_FILE, SWEEP_FILE, TABLE_FILE
from si_jax.tools.sweep.spec import SweepError
from si_jax.tools.sweep.values import format_value, jsonable


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
    key = json.dumps(jsonable(setting))
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
