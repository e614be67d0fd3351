"""Credit reports: what SI's repair credit did at an RL step, token by token, for a reader.

Input: per step, `Credit.details` of the repair credit (one dict per kept repair, see
`repair._details`) and the credit's metrics; the run's tokenizer and the task's step mode.
Output: text (credited tokens in [brackets]) or one self-contained HTML page (inline CSS, no
scripts, nothing fetched) that answers "is the credit on the tokens that decided the outcome?":

  per step   the credit metrics (requests, kept, active-token ratio, K* per rung, audit blocks
             by reason, localization), next to the values the run logged for that step
  per pair   a summary line ("credited: 1 token on the failure at -1 (line 2, the true first
             wrong line) / 1 on the repair at +1 (line 2)"); the failure and its repair side by
             side, one row per step of `segment_steps` (the task's step mode), every token decoded
             on its own and coloured by its advantage (red < 0, green > 0, stronger = larger |A|,
             none = 0), the true first wrong step banded; K* and its rung; the anchor; every
             candidate of the request with its audit verdict; the policy continuation that
             verified the truncation rung, its prefix (taken from the repair) set apart.

A token belongs to the step holding its first character (as the localization metric counts).
"""

from __future__ import annotations

import bisect
import dataclasses
import html
from typing import Any, Sequence

import numpy as np

from si_jax.data.steps import resolve_mode, segment_steps
from si_jax.si import locate as locate_lib

__all__ = ["StepReport", "Side", "side", "token_steps", "pair_summary", "verdict", "marked",
           "header_line", "render_text", "render_html", "LOGGED_KEYS"]

# The metrics a step's header shows, with the run's logged value beside them where it has one.
LOGGED_KEYS = ("accuracy", "si/failed", "si/requests", "si/kept", "si/repair_success",
               "si/active_token_ratio", "si/kstar_at_k", "si/kstar_at_2k", "si/kstar_at_all",
               "si/kstar_mean", "si/audit_block_rate", "si/localization_precision")


@dataclasses.dataclass
class StepReport:
  """One re-run RL step.

  step: the checkpoint step whose sampling and credit were re-run.
  metrics: the re-run's metrics (`Credit.metrics` plus "accuracy", the rollouts' success rate).
  details: `Credit.details` (one dict per kept repair).
  logged: the run's own metrics.jsonl row for this RL step (None: the run never took it, e.g.
    the checkpoint at its end).
  """

  step: int
  metrics: dict[str, Any]
  details: list[dict]
  logged: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class Side:
  """One trajectory of a pair, token by token ([T] each).

  texts: each token decoded on its own (special tokens by name); special: True for those.
  adv: the advantage on each token (0 off the gate); gate: True on the credited tokens.
  step: index of the step (`segment_steps(decode(ids), mode)`) holding each token.
  num_steps: steps of the text; unit: "line" when the steps are lines, else "step".
  """

  ids: list[int]
  texts: list[str]
  special: list[bool]
  adv: np.ndarray
  gate: np.ndarray
  step: np.ndarray
  num_steps: int
  unit: str

  @property
  def credited_steps(self) -> list[int]:
    """0-based steps holding credited tokens, in order."""
    return sorted({int(s) for s in self.step[self.gate]})


def token_steps(tokenizer, ids: Sequence[int], text: str, starts: Sequence[int]) -> np.ndarray:
  """[T] step index of every token: the step holding its first character, given the steps'
  start offsets in text = decode(ids). Binary searches on decoded prefixes, so a long response
  costs O(steps * log T) decodes."""
  bounds = [min(len(ids), locate_lib.char_to_token(tokenizer, ids, s - 1) + 1)
            for s in starts[1:]]  # tokens starting before step i's first character
  return np.asarray([bisect.bisect_right(bounds, j) for j in range(len(ids))], np.int32)


def side(tokenizer, ids: Sequence[int], adv: Sequence[float] | None,
         gate: Sequence[float] | None, step_mode: str) -> Side:
  """A trajectory's tokens with their credit (adv / gate: per token, None or empty = none)."""
  ids = [int(t) for t in ids]
  n = len(ids)
  adv_ = np.zeros(n, np.float32) if adv is None or not len(adv) else np.asarray(adv, np.float32)
  gate_ = (adv_ != 0) if gate is None or not len(gate) else np.asarray(gate) > 0
  texts, special = [], []
  for t in ids:
    s = tokenizer.decode([t])
    texts.append(s if s else tokenizer.decode([t], skip_special=False))
    special.append(not s)
  text = tokenizer.decode(ids)
  mode = resolve_mode(text, step_mode)
  steps = segment_steps(text, mode)
  step = (token_steps(tokenizer, ids, text, [s.start for s in steps]) if steps
          else np.zeros(n, np.int32))
  return Side(ids=ids, texts=texts, special=special, adv=adv_, gate=gate_, step=step,
              num_steps=max(len(steps), 1), unit="line" if mode == "lines" else "step")


def _plural(n: int, word: str) -> str:
  return f"{n} {word}" + ("" if n == 1 else "s")


def _ranges(steps: Sequence[int]) -> str:
  """1-based step numbers of 0-based indices, runs joined: [1, 2, 3, 5] -> '2-4, 6'."""
  out, i = [], 0
  while i < len(steps):
    j = i
    while j + 1 < len(steps) and steps[j + 1] == steps[j] + 1:
      j += 1
    out.append(f"{steps[i] + 1}" if i == j else f"{steps[i] + 1}-{steps[j] + 1}")
    i = j + 1
  return ", ".join(out)


def _where(s: Side) -> str:
  st = s.credited_steps
  return f"{s.unit}{'s' if len(st) > 1 else ''} {_ranges(st)}"


def _values(s: Side) -> str:
  """The advantages on the credited tokens: ' at -1' (one value), ' at -1..-0.5', '' (none)."""
  v = s.adv[s.gate]
  v = v[v != 0]
  if not v.size:
    return " as SFT targets" if s.gate.any() else ""
  lo, hi = float(v.min()), float(v.max())
  return f" at {lo:+.3g}" if lo == hi else f" at {lo:+.3g}..{hi:+.3g}"


def pair_summary(failed: Side, repaired: Side, first_wrong: int | None) -> str:
  """One line: how many tokens are credited on each side, where, and where the credit on the
  failure lies against the task's true first wrong step (0-based; None: unknown)."""
  nf, nr = int(failed.gate.sum()), int(repaired.gate.sum())
  u = failed.unit
  if not nf:
    left = "no token on the failure"
  else:
    st = failed.credited_steps
    where = _where(failed)
    if first_wrong is None:
      rel = f"{where}; the true first wrong {u} is unknown"
    else:
      fw = first_wrong + 1
      if st == [first_wrong]:
        rel = f"{where}, the true first wrong {u}"
      elif st[0] == first_wrong:
        rel = f"{where}; starts on the true first wrong {u}, {fw}"
      elif st[0] < first_wrong:
        rel = f"{where}; starts before the true first wrong {u}, {fw}"
      else:
        rel = f"{where}; misses the true first wrong {u}, {fw}"
    left = f"{_plural(nf, 'token')} on the failure{_values(failed)} ({rel})"
  right = (f"{nr} on the repair{_values(repaired)} ({_where(repaired)})" if nr
           else "none on the repair")
  return f"credited: {left} / {right}"


def verdict(cand: dict) -> str:
  """A candidate's audit verdict: kept / blocked: <reason> / not verified / not kept."""
  if cand["kept"]:
    return "kept"
  if cand["reason"] is not None:
    return f"blocked: {cand['reason']}" + ("" if cand["verified"] else ", not verified")
  if not cand["verified"]:
    return "not verified"
  return "verified and passed, not kept (a larger edit)"


def _sides(d: dict, tokenizer, step_mode: str) -> tuple[Side, Side]:
  return (side(tokenizer, d["failed"], d["minus_adv"], d.get("minus_mask"), step_mode),
          side(tokenizer, d["repaired"], d["plus_adv"], d.get("plus_mask"), step_mode))


def _kstar(d: dict) -> str:
  return f"K* = {d['kstar']} of {_plural(d['num_edits'], 'edit')} (rung {d['rung']})"


def _split_continuation(d: dict, tokenizer) -> tuple[str | None, str]:
  """(the repair prefix the policy was given, what the policy wrote) of the continuation; the
  prefix is None where it is not known, and empty where edit K* ends before the repair's
  first token (the first edit deletes the failure's first tokens)."""
  text, p = d["continuation"], d.get("continuation_prefix")
  if p is not None:
    prefix = tokenizer.decode(d["repaired"][:p])
    if text.startswith(prefix):
      return prefix, text[len(prefix):]
  return None, text


_EMPTY_PREFIX = ("the policy was given no repair token (edit K* ends before the repair's first "
                 "token): it solved the problem from scratch")


def _no_continuation(d: dict, truncation: str) -> str:
  if truncation == "graft":
    return "none: truncation by graft (si.truncation = graft) samples no continuation"
  if d["rung"] == "all":
    return (f"none: K* = all {_plural(d['num_edits'], 'edit')} (the repair's own "
            f"verification stands; no shorter rung was tried or passed)")
  return "none recorded"


# ----------------------------------------------------------------------------- text


def marked(s: Side) -> str:
  """The decoded tokens, runs of credited tokens in [brackets], line breaks as ' | '."""
  out, run = [], []
  for t, g in zip(s.texts, s.gate):
    if g:
      run.append(t)
      continue
    if run:
      out.append("[" + "".join(run) + "]")
      run = []
    out.append(t)
  if run:
    out.append("[" + "".join(run) + "]")
  return "".join(out).replace("\n", " | ")


def header_line(r: StepReport) -> str:
  m = r.metrics
  return (f"step {r.step}: accuracy {m.get('accuracy', float('nan')):.3f}, "
          f"{m.get('si/requests', 0)} repair requests, {m.get('si/kept', 0)} kept, "
          f"active-token ratio {m.get('si/active_token_ratio', float('nan')):.3f}, "
          f"K* at K / 2K / all {m.get('si/kstar_at_k', 0)} / {m.get('si/kstar_at_2k', 0)} / "
          f"{m.get('si/kstar_at_all', 0)}, audit blocks {m.get('si/audit_block_rate', 0):.2f}")


def render_text(reports: Sequence[StepReport], tokenizer, step_mode: str, n: int,
                truncation: str = "continue") -> str:
  """Per step its header line, then up to n pairs: summary, failure and repair with the
  credited tokens in [brackets], the candidates' verdicts, the continuation."""
  out = []
  for r in reports:
    out.append(header_line(r) + ("" if r.logged is not None else
                                  " (a step the run did not take)"))
    if not r.details:
      out.append("no kept repairs at this step")
    for i, d in enumerate(r.details[:n]):
      f, rp = _sides(d, tokenizer, step_mode)
      out.append(f"\n--- pair {i + 1} ({d['example']}): {_kstar(d)}")
      out.append(pair_summary(f, rp, d["first_wrong"]))
      out.append("failed:  " + marked(f))
      out.append("repair:  " + marked(rp))
      out.append("candidates: " + "; ".join(verdict(c) for c in d["candidates"]))
      if d["continuation"] is None:
        out.append("continuation: " + _no_continuation(d, truncation))
      else:
        prefix, rest = _split_continuation(d, tokenizer)
        out.append("continuation (the repair's prefix in \u00ab\u00bb, then the policy's): "
                   + (rest if prefix is None else f"\u00ab{prefix}\u00bb{rest}").replace(
                       "\n", " | ") + (f" ({_EMPTY_PREFIX})" if prefix == "" else ""))
    out.append("")
  return "\n".join(out)


# ----------------------------------------------------------------------------- HTML

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em auto;
 max-width:1400px;padding:0 1em;color:#1f2328}
h1{font-size:1.4em}h2{font-size:1.2em;margin-top:2em;border-bottom:2px solid #d0d7de}
h3{font-size:1.05em;margin:.2em 0}h4{font-size:.95em;margin:.8em 0 .3em}
code,pre,.traj{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px}
pre{white-space:pre-wrap;margin:.2em 0;background:#f6f8fa;padding:.4em .6em;border-radius:4px}
table.m{border-collapse:collapse;margin:.5em 0}
table.m td,table.m th{border:1px solid #d0d7de;padding:.15em .6em;text-align:right}
table.m th{background:#f6f8fa}table.m td:first-child{text-align:left}
.diff{color:#b42318;font-weight:600}
.pair{border:1px solid #d0d7de;border-radius:6px;padding:.6em .9em;margin:1em 0}
.sum{font-weight:600;margin:.3em 0}
.sides{display:grid;grid-template-columns:1fr 1fr;gap:1em}
@media (max-width:900px){.sides{grid-template-columns:1fr}}
.traj{border:1px solid #d0d7de;border-radius:4px;padding:.2em 0}
.ln{display:grid;grid-template-columns:2.6em 1fr;border-left:4px solid transparent}
.ln .no{color:#8c959f;text-align:right;padding-right:.5em;user-select:none}
.ln .tx{white-space:pre-wrap;word-break:break-all}
.ln.fw{background:#fff8c5;border-left-color:#d4a72c}
.t{border-radius:2px}
.t.g0{outline:1px dashed #57606a}
.t.sp{font-size:.8em;color:#57606a;border:1px solid #d0d7de;padding:0 2px}
.legend span.sw{display:inline-block;padding:0 .5em;margin-right:.3em;border-radius:2px;
 font-family:ui-monospace,monospace}
.v-kept{color:#1a7f37;font-weight:600}.v-blocked{color:#b42318}.v-nv{color:#57606a}
.pfx{background:#ddf4ff}
ul.c{margin:.2em 0;padding-left:1.2em}
.muted{color:#57606a}
"""


def _color(a: float, scale: float) -> str:
  alpha = 0.25 + 0.75 * min(1.0, abs(a) / scale) if scale > 0 else 0.6
  rgb = "207,34,46" if a < 0 else "26,127,55"
  return f"rgba({rgb},{alpha:.2f})"


def _token(s: Side, j: int, scale: float) -> str:
  a, g = float(s.adv[j]), bool(s.gate[j])
  text = s.texts[j] or "\u2205"
  if g:
    text = text.replace("\n", "\u21b5\n")
  cls = "t" + (" c" if g else "") + (" sp" if s.special[j] else "") + (
      " g0" if g and a == 0 else "")
  style = f' style="background:{_color(a, scale)}"' if a != 0 else ""
  title = f"token {j}, id {s.ids[j]}" + (f", advantage {a:+.4g}" if a else "") + (
      ", credited" if g else "")
  return f'<span class="{cls}"{style} title="{title}">{html.escape(text)}</span>'


def _trajectory(s: Side, scale: float, first_wrong: int | None) -> str:
  rows: list[list[str]] = [[] for _ in range(s.num_steps)]
  for j in range(len(s.ids)):
    rows[min(int(s.step[j]), s.num_steps - 1)].append(_token(s, j, scale))
  out = []
  for i, toks in enumerate(rows):
    fw = first_wrong is not None and i == first_wrong
    title = f' title="the true first wrong {s.unit}"' if fw else ""
    out.append(f'<div class="ln{" fw" if fw else ""}"{title}><span class="no">{i + 1}</span>'
               f'<span class="tx">{"".join(toks)}</span></div>')
  return f'<div class="traj">{"".join(out)}</div>'


def _fmt(v) -> str:
  if v is None:
    return "\u2013"
  if isinstance(v, float) and v == v and v % 1:
    return f"{v:.3f}"
  return f"{v:.0f}" if isinstance(v, float) and v == v else str(v)


def _same(a, b) -> bool:
  """Equal metric values; None (not logged: the run drops NaN metrics) equals NaN."""
  a, b = (float("nan") if x is None else float(x) for x in (a, b))
  return (a != a and b != b) or abs(a - b) <= 1e-6 * max(1.0, abs(a))


def _pre(text: str) -> str:
  return (f"<pre>{html.escape(text)}</pre>" if text
          else '<p class="muted">(empty)</p>')


def _metrics_table(r: StepReport) -> str:
  m, lg = r.metrics, r.logged
  blocks = {k for src in (m, lg or {}) for k, v in src.items()  # the reasons that blocked any
            if k.startswith("si/audit_block/") and v}
  keys = list(LOGGED_KEYS) + sorted(blocks)
  head = "<tr><th>metric</th><th>re-run</th>" + ("<th>logged by the run</th>" if lg else "")
  rows, differ = [head + "</tr>"], []
  for k in keys:
    if k not in m and (lg is None or k not in lg):
      continue
    cell = f"<td>{html.escape(k)}</td><td>{_fmt(m.get(k))}</td>"
    if lg is not None:
      same = _same(m.get(k), lg.get(k))
      if not same:
        differ.append(k)
      cell += f'<td{"" if same else " class=diff"}>{_fmt(lg.get(k))}</td>'
    rows.append(f"<tr>{cell}</tr>")
  if lg is None:
    note = ("The run did not take this step (no logged row): this is the credit it would "
            "assign next.")
  elif differ:
    note = (f"The re-run differs from the run's logged step in {', '.join(differ)} "
            f"(different hardware or library versions can change sampling).")
  else:
    note = "The re-run reproduces the run's logged metrics for this step."
  return f'<table class="m">{"".join(rows)}</table><p class="muted">{html.escape(note)}</p>'


def _candidates(d: dict) -> str:
  items = []
  for j, c in enumerate(d["candidates"]):
    v = verdict(c)
    cls = ("v-kept" if c["kept"] else "v-blocked" if c["reason"] is not None else "v-nv")
    items.append(f'<li><span class="verdict {cls}">{html.escape(v)}</span>'
                 f'{_pre(c["text"])}</li>')
  return f'<ul class="c">{"".join(items)}</ul>'


def _pair(step: int, i: int, d: dict, tokenizer, step_mode: str, scale: float,
          truncation: str) -> str:
  f, rp = _sides(d, tokenizer, step_mode)
  fw = d["first_wrong"]
  fw_note = ("the true first wrong " + f.unit + " unknown" if fw is None
             else f"the true first wrong {f.unit}: {fw + 1} (banded)")
  if d["continuation"] is not None:
    prefix, rest = _split_continuation(d, tokenizer)
    cont = (f'<h4>the policy continuation that verified rung {d["rung"]} <span class="muted">'
            f'(<span class="pfx">the repair\'s prefix</span>, then the policy\'s own)</span></h4>'
            f'<pre><span class="pfx" title="the repair up to the end of edit K*">'
            f'{html.escape(prefix or "")}</span>{html.escape(rest)}</pre>'
            + (f'<p class="muted">{html.escape(_EMPTY_PREFIX)}</p>' if prefix == "" else "")
            + ('<p class="muted">the policy added no text: it stopped right after the prefix</p>'
               if prefix and not rest else ""))
  else:
    cont = (f'<h4>policy continuation</h4>'
            f'<p class="muted">{html.escape(_no_continuation(d, truncation))}</p>')
  anchor = (_pre(d["anchor"]) if d["anchor"] is not None
            else '<p class="muted">none (the group had no correct rollout)</p>')
  return (
      f'<section class="pair" id="s{step}-p{i + 1}">'
      f'<h3>pair {i + 1} \u00b7 {html.escape(str(d["example"]))} \u00b7 {_kstar(d)}</h3>'
      f'<p class="sum">{html.escape(pair_summary(f, rp, fw))}</p>'
      f'<details><summary>problem</summary><pre>{html.escape(d["problem"])}</pre></details>'
      f'<div class="sides"><div><h4>failed rollout <span class="muted">'
      f'({len(f.ids)} tokens; {fw_note})</span></h4>{_trajectory(f, scale, fw)}</div>'
      f'<div><h4>kept repair <span class="muted">({len(rp.ids)} tokens)</span></h4>'
      f'{_trajectory(rp, scale, None)}</div></div>'
      f'<h4>anchor (the correct sibling in the repair prompt)</h4>{anchor}'
      f'<h4>candidates of this request (audit verdicts)</h4>{_candidates(d)}'
      f'{cont}</section>')


def _legend(scale: float) -> str:
  sw = []
  for a in (-scale, -scale / 2, scale / 2, scale):
    sw.append(f'<span class="sw" style="background:{_color(a, scale)}">{a:+.3g}</span>')
  return (f'<p class="legend">advantage per token: {"".join(sw)}'
          f'<span class="sw" style="border:1px solid #d0d7de">0</span> (not credited) '
          f'<span class="sw" style="outline:1px dashed #57606a">gated, no advantage</span> '
          f'<span class="sw" style="background:#fff8c5;border-left:4px solid #d4a72c">'
          f'true first wrong step</span> '
          f'<span class="sw" style="font-size:.8em;border:1px solid #d0d7de">special token'
          f'</span> \u21b5 = a credited line break, \u2205 = a token that decodes to nothing. '
          f'Hover a token for its position, id and advantage.</p>')


def render_html(reports: Sequence[StepReport], tokenizer, step_mode: str, n: int, *,
                title: str, settings: Sequence[tuple[str, Any]] = (),
                truncation: str = "continue") -> str:
  """The whole report as one HTML page (see the module docstring); up to n pairs per step."""
  adv = [abs(a) for r in reports for d in r.details[:n] for a in d["minus_adv"] + d["plus_adv"]]
  scale = max(adv) if adv else 1.0
  toc = " \u00b7 ".join(f'<a href="#step-{r.step}">step {r.step}</a> ({r.metrics.get("si/kept", 0)}'
                        f' kept)' for r in reports)
  conf = ", ".join(f"{html.escape(k)} = <code>{html.escape(str(v))}</code>"
                   for k, v in settings)
  body = []
  for r in reports:
    body.append(f'<h2 id="step-{r.step}">step {r.step}</h2>'
                f'<p>{html.escape(header_line(r))}</p>{_metrics_table(r)}')
    if not r.details:
      body.append('<p class="muted">no kept repairs at this step</p>')
    elif len(r.details) > n:
      body.append(f'<p class="muted">showing {n} of {len(r.details)} kept repairs (--n)</p>')
    for i, d in enumerate(r.details[:n]):
      body.append(_pair(r.step, i, d, tokenizer, step_mode, scale, truncation))
  return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
          f'<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>'
          f'<h1>{html.escape(title)}</h1><p>{conf}</p><p>{toc}</p>{_legend(scale)}'
          f'{"".join(body)}</body></html>\n')
