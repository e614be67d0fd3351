"""Tests for si_jax.metrics: JSONL + TensorBoard writers, truncation on resume, progress, timer;
and the one JSONL reader (si_jax.jsonl) with its readers (metrics, SFT data files)."""

import glob
import io
import json
import os
import re
import struct
import time

import jax.numpy as jnp
import numpy as np
import pytest

from si_jax import jsonl
from si_jax.metrics import METRICS_FILE, MetricsWriter, Progress, Timer, read_metrics


def _masked_crc(data: bytes) -> int:
  from tensorboardX.crc32c import crc32c
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_events(path: str) -> list:
  """Event protos of one TensorBoard event file, checking the TFRecord framing and CRCs."""
  from tensorboardX.proto.event_pb2 import Event
  events = []
  with open(path, "rb") as f:
    data = f.read()
  pos = 0
  while pos < len(data):
    header = data[pos:pos + 8]
    (length,) = struct.unpack("<Q", header)
    (length_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
    assert length_crc == _masked_crc(header), f"{path}@{pos}: bad length crc"
    body = data[pos + 12:pos + 12 + length]
    (body_crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
    assert body_crc == _masked_crc(body), f"{path}@{pos}: bad body crc"
    event = Event()
    event.ParseFromString(body)
    events.append(event)
    pos += 16 + length
  return events


def tb_scalars(workdir) -> dict:
  """{(tag, step): value} over all event files under workdir/tb."""
  out = {}
  files = sorted(glob.glob(os.path.join(workdir, "tb", "events.out.tfevents.*")))
  assert files, os.listdir(workdir)
  for path in files:
    for event in read_events(path):
      for value in event.summary.value:
        out[(value.tag, event.step)] = value.simple_value
  return out


# --- JSONL + TensorBoard ------------------------------------------------------------------------


def test_write_jsonl_and_tensorboard(tmp_path):
  writer = MetricsWriter(tmp_path)
  writer.write(1, {"reward": 0.25, "accuracy": np.float32(0.5), "tokens": 128})
  # Flushed at every write: visible before close.
  assert read_metrics(tmp_path) == [{"step": 1, "reward": 0.25, "accuracy": 0.5, "tokens": 128}]
  writer.write(2, {"reward": jnp.asarray(0.75), "accuracy": np.float64(1.0), "done": True,
                   "count": np.int64(3)})
  writer.close()
  writer.close()  # idempotent

  with open(tmp_path / METRICS_FILE) as f:
    lines = f.read().splitlines()
  assert [json.loads(line) for line in lines] == [
      {"step": 1, "reward": 0.25, "accuracy": 0.5, "tokens": 128},
      {"step": 2, "reward": 0.75, "accuracy": 1.0, "done": 1, "count": 3},
  ]
  scalars = tb_scalars(tmp_path)
  assert scalars == {
      ("reward", 1): 0.25, ("accuracy", 1): 0.5, ("tokens", 1): 128.0,
      ("reward", 2): 0.75, ("accuracy", 2): 1.0, ("done", 2): 1.0, ("count", 2): 3.0,
  }


def test_tensorboard_off_writes_no_event_files(tmp_path):
  with MetricsWriter(tmp_path, tensorboard=False) as writer:
    writer.write(0, {"loss": 1.5})
  assert read_metrics(tmp_path) == [{"step": 0, "loss": 1.5}]
  assert not os.path.exists(tmp_path / "tb")


def test_disabled_writer_writes_nothing(tmp_path):
  with MetricsWriter(tmp_path / "run", enabled=False) as writer:
    writer.write(1, {"loss": 1.0})
    assert writer.truncate_after(0) == 0
  assert not os.path.exists(tmp_path / "run")
  assert read_metrics(tmp_path / "run") == []


def test_write_rejects_bad_metrics(tmp_path):
  with MetricsWriter(tmp_path, tensorboard=False) as writer:
    with pytest.raises(TypeError, match=r"step=3\): metric 'hist' must be a real scalar, got "
                                        r"ndarray of shape \(2,\)"):
      writer.write(3, {"hist": np.zeros(2)})
    with pytest.raises(TypeError, match="metric 'name' must be a real scalar, got str"):
      writer.write(3, {"name": "x"})
    with pytest.raises(ValueError, match="other than 'step', got 'step'"):
      writer.write(3, {"step": 4})
  assert read_metrics(tmp_path) == []  # nothing half-written
  writer_closed = MetricsWriter(tmp_path, tensorboard=False)
  writer_closed.close()
  with pytest.raises(RuntimeError, match="after close"):
    writer_closed.write(1, {"a": 1.0})


# --- resume -------------------------------------------------------------------------------------


def test_truncate_after_drops_replayed_steps(tmp_path):
  with MetricsWriter(tmp_path) as writer:
    for step in range(1, 6):
      writer.write(step, {"reward": step / 10})
  # A new process resumes from the checkpoint of step 3 and replays steps 4, 5 with new values.
  with MetricsWriter(tmp_path) as writer:
    assert writer.truncate_after(3) == 2
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    for step in (4, 5):
      writer.write(step, {"reward": step})
  records = read_metrics(tmp_path)
  assert [r["step"] for r in records] == [1, 2, 3, 4, 5]  # one line per step
  assert [r["reward"] for r in records] == [0.1, 0.2, 0.3, 4, 5]
  assert not os.path.exists(str(tmp_path / METRICS_FILE) + ".tmp")

  # TensorBoard: the first run's file keeps its events; the resumed writer's file starts by
  # purging steps >= 4, then holds the replayed values.
  files = glob.glob(os.path.join(tmp_path, "tb", "events.out.tfevents.*"))
  events = sorted((read_events(path) for path in files), key=lambda ev: ev[0].wall_time)
  assert len(events) == 2, files
  scalars = lambda evs: [(v.tag, e.step, round(v.simple_value, 6)) for e in evs
                         for v in e.summary.value]
  assert scalars(events[0]) == [("reward", s, s / 10) for s in range(1, 6)]
  assert scalars(events[1]) == [("reward", 4, 4.0), ("reward", 5, 5.0)]
  first_log = [e for e in events[1] if e.HasField("session_log")][0]
  assert first_log.step == 4 and first_log.session_log.status == first_log.session_log.START
  assert events[1].index(first_log) < min(i for i, e in enumerate(events[1]) if e.summary.value)


def test_partial_last_line_is_ignored_and_repaired(tmp_path):
  path = tmp_path / METRICS_FILE
  path.write_text('{"step": 1, "a": 1.0}\n{"step": 2, "a": 2.0}\n{"step": 3, "a"')  # killed
  assert read_metrics(tmp_path) == [{"step": 1, "a": 1.0}, {"step": 2, "a": 2.0}]
  with MetricsWriter(tmp_path, tensorboard=False) as writer:
    writer.write(3, {"a": 3.5})
  assert read_metrics(tmp_path) == [{"step": 1, "a": 1.0}, {"step": 2, "a": 2.0},
                                    {"step": 3, "a": 3.5}]


def test_read_metrics_names_file_and_line_of_a_bad_line(tmp_path):
  (tmp_path / METRICS_FILE).write_text('{"step": 1}\nnot json\n{"step": 3}\n')
  with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON line"):
    read_metrics(tmp_path)
  (tmp_path / METRICS_FILE).write_text('{"step": 1}\n{"loss": 3}\n')
  with pytest.raises(ValueError, match=r"metrics.jsonl:2: expected an object with a 'step' key"):
    read_metrics(tmp_path)
  assert read_metrics(tmp_path / "missing") == []


def test_jsonl_read_skips_blank_lines_and_names_file_line_and_key(tmp_path):
  path = tmp_path / "rows.jsonl"
  path.write_text('{"a": "x", "b": null}\n\n  \n{"a": "y"}')  # no newline after the last row
  fields = {"a": str, "b": (int, type(None))}  # b: may be null or absent
  assert jsonl.read(path, fields) == [{"a": "x", "b": None}, {"a": "y"}]
  assert jsonl.read(str(path), fields, drop_partial_tail=True) == [{"a": "x", "b": None}]
  for text, error in [
      ('{"a": "x"}\n{"a": ', r"rows.jsonl:2: not a JSON line \(Expecting value\): '{\"a\": '"),
      ('{"a": "x"}\n\n[1]\n', r"rows.jsonl:3: expected a JSON object, got list: '\[1\]'"),
      ('{"b": 1}\n', r"""rows.jsonl:1: expected an object with a 'a' key, got '{"b": 1}'"""),
      ('{"a": 1}\n', r"rows.jsonl:1: field 'a' must be str, got int"),
      ('{"a": "x", "b": "1"}\n', r"rows.jsonl:1: field 'b' must be int or NoneType, got str")]:
    path.write_text(text)
    with pytest.raises(ValueError, match=error):
      jsonl.read(path, fields)
  with pytest.raises(FileNotFoundError):
    jsonl.read(tmp_path / "missing.jsonl")


def test_sft_data_files_are_read_by_the_jsonl_reader(tmp_path):
  from si_jax.train import sft
  path = tmp_path / "sft.jsonl"
  path.write_text('{"prompt": "1+1?", "response": "2"}\n\n{"prompt": "2+2?", "response": "4"}')
  assert sft.file_pairs(str(path)) == [("1+1?", "2"), ("2+2?", "4")]
  path.write_text('{"problem": "p", "failed": "f", "repaired": "r"}\n')
  assert sft.file_repair_pairs(str(path)) == [{"problem": "p", "failed": "f", "repaired": "r"}]
  path.write_text('{"problem": "p", "failed": "f", "anchor": null, "repaired": 3}\n')
  with pytest.raises(ValueError, match=r"sft.jsonl:1: field 'repaired' must be str, got int"):
    sft.file_repair_pairs(str(path))
  path.write_text('{"prompt": "1+1?"}\n')
  with pytest.raises(ValueError, match=r"sft.jsonl:1: expected an object with a 'response' key"):
    sft.file_pairs(str(path))
  path.write_text("\n")
  with pytest.raises(ValueError, match=r"sft.jsonl: no rows"):
    sft.file_pairs(str(path))


# --- progress -----------------------------------------------------------------------------------


class FakeClock:

  def __init__(self):
    self.t = 100.0

  def __call__(self):
    return self.t


class TTYStream(io.StringIO):

  def isatty(self):
    return True


def test_progress_plain_lines_every_k_steps():
  clock, out = FakeClock(), io.StringIO()
  progress = Progress(100, every=25, stream=out, clock=clock)
  for step in range(1, 101):
    clock.t += 0.5  # 2 steps/s
    progress.update(step, reward=0.123456, accuracy=0.5)
  progress.close()
  lines = out.getvalue().splitlines()
  assert [line.split(" | ")[0] for line in lines] == [
      "step 1/100", "step 25/100", "step 50/100", "step 75/100", "step 100/100"]
  assert lines[2] == "step 50/100 | 2 steps/s | ETA 0:00:25 | reward=0.1235 accuracy=0.5"
  assert lines[-1] == "step 100/100 | 2 steps/s | ETA 0:00:00 | reward=0.1235 accuracy=0.5"
  assert "\r" not in out.getvalue()


def _frames(text: str) -> list[str]:
  """The successive redraws of a tqdm bar: the text between carriage returns, without the
  spaces tqdm pads a frame with when it is shorter than the one before it (the rate's digits
  vary with timing, so the padding does too)."""
  assert text.startswith("\r"), text[:80]
  return [re.sub(r" +(\n?)$", r"\1", f) for f in text[1:].split("\r")]


def test_progress_on_a_terminal_is_a_tqdm_bar_counted_from_the_resume_step():
  out = TTYStream()
  progress = Progress(10, start_step=6, stream=out)
  progress.update(8, loss=12.5)
  progress.update(9)
  text = out.getvalue()
  assert "\n" not in text  # redrawn in place
  frames = _frames(text)
  # The bar opens at the resume step, then one redraw per update, values as the postfix.
  assert [f.split("|")[2].split()[0] for f in frames] == ["6/10", "8/10", "9/10"]
  assert all(f.startswith("step:") for f in frames)
  assert frames[0].startswith("step:  60%") and frames[2].startswith("step:  90%")
  # the rate reads "N step/s", or "N s/step" below one step per second (a loaded machine)
  assert re.search(r"(step/s|s/step), loss=12\.5\]$", frames[1]) and "loss" not in frames[2]
  progress.close()
  assert _frames(out.getvalue())[-1].endswith("]\n")
  progress.close()  # nothing pending: no second newline
  assert out.getvalue().count("\n") == 1


def test_progress_bar_ends_its_line_at_the_last_step():
  out = TTYStream()
  progress = Progress(3, stream=out)
  for step in (1, 2, 3):
    progress.update(step, reward=0.5)
  text = out.getvalue()
  assert text.endswith("\n") and text.count("\n") == 1
  last = _frames(text)[-1]
  assert last.startswith("step: 100%") and "3/3" in last and last.endswith("reward=0.5]\n")
  progress.close()
  assert out.getvalue() == text


def test_progress_before_any_time_passes_shows_unknown_rate():
  out = io.StringIO()
  clock = FakeClock()
  Progress(5, stream=out, clock=clock).update(0)
  assert out.getvalue() == "step 0/5 | ? steps/s | ETA ?\n"
  with pytest.raises(ValueError, match="total_steps must be >= 1, got 0"):
    Progress(0)


# --- timer --------------------------------------------------------------------------------------


def test_timer_accumulates_sections_in_first_use_order():
  clock = FakeClock()
  timer = Timer(clock=clock)
  for _ in range(2):
    with timer("rollout"):
      clock.t += 1.5
      with timer("verify"):  # nested: counted in both
        clock.t += 0.25
    with timer("update"):
      clock.t += 0.5
  with pytest.raises(RuntimeError):
    with timer("update"):
      clock.t += 1.0
      raise RuntimeError("boom")  # time until the exception still counts
  assert timer.summary() == {"rollout": 3.5, "verify": 0.5, "update": 2.0}
  assert list(timer.summary()) == ["rollout", "verify", "update"]
  assert timer.summary(prefix="time/") == {"time/rollout": 3.5, "time/verify": 0.5,
                                           "time/update": 2.0}
  assert timer.counts() == {"verify": 2, "rollout": 2, "update": 3}
  timer.reset()
  assert timer.summary() == {} and timer.counts() == {}


def test_timer_default_clock_is_perf_counter(monkeypatch):
  clock = FakeClock()
  monkeypatch.setattr(time, "perf_counter", clock)
  timer = Timer()
  with timer("work"):
    clock.t += 0.75
  with timer("work"):
    clock.t += 0.125
  assert timer.summary() == {"work": 0.875} and timer.counts() == {"work": 2}


def test_rollout_times_sampling_and_accumulates_verify_seconds(monkeypatch):
  """rl.rollout.score adds its seconds to the 'verify' already in Rollouts.timing (the trainer
  logs them as time/rollout and time/verify)."""
  from si_jax.rl import rollout
  from si_jax.verify.types import Verdict
  clock = FakeClock()
  monkeypatch.setattr(time, "perf_counter", clock)

  class Task:

    def score(self, examples, texts):
      clock.t += 0.25
      return [Verdict(reward=1.0, reason="correct") for _ in texts]

  ro = rollout.Rollouts(examples=["e"], group_size=2, prompt_ids=[[1]], response_ids=[[2], [3]],
                        logprobs=[], texts=["a", "b"], verdicts=[],
                        rewards=np.zeros((1, 2), np.float32), finished=np.ones(2, bool),
                        timing={"sample": 2.0})
  rollout.score(ro, Task())
  rollout.score(ro, Task())
  assert ro.timing == {"sample": 2.0, "verify": 0.5}
  assert ro.rewards.tolist() == [[1.0, 1.0]]
