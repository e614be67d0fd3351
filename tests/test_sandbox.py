"""Tests of si_jax.verify.sandbox: hostile programs fail within limits and leave nothing behind."""

import dataclasses
import os
import shutil
import socket
import tempfile
import textwrap
import threading
import uuid

import pytest

from si_jax.verify import sandbox
from si_jax.verify.sandbox import (CodeVerifier, Limits, TestCase, extract_code,
                                   normalize_output, run_program, score_program)
from si_jax.verify.types import Verdict

# Two kinds of limits, so that no verdict depends on how fast (or how loaded) the machine is.
# TIGHT: for programs that must hit a limit (a loop, a sleep, a fork bomb): they never end on
# their own, so the verdict is the same however slow the machine; the limits keep them short.
# ROOMY: for programs that must finish (or fail on their own): a loaded 2-core machine can make
# Python's start-up alone take seconds of wall time, so a tight wall limit could turn a correct
# run into a timeout. No test asserts an upper bound on elapsed time.
TIGHT = Limits(cpu_s=1.0, wall_s=2.0, memory_mb=256, max_procs=16)
ROOMY = Limits(cpu_s=10.0, wall_s=120.0, memory_mb=256, max_procs=16)
IS_ROOT = os.geteuid() == 0

ECHO_DOUBLE = "n = int(input())\nprint(n * 2)\n"


def _procs_with(marker: str) -> list[int]:
  pids = []
  for name in os.listdir("/proc"):
    if name.isdigit():
      try:
        with open(f"/proc/{name}/cmdline", "rb") as f:
          if marker.encode() in f.read():
            pids.append(int(name))
      except OSError:
        pass
  return pids


def _assert_nothing_left(res: sandbox.RunResult, marker: str | None = None) -> None:
  uid = res.protections.get("uid")
  if uid is not None:
    assert sandbox._uid_pids(uid) == [], "a process (or zombie) of the run's uid remains"
  assert "leftover_processes" not in res.protections
  if marker:
    assert _procs_with(marker) == []


def _run(source, stdin="", limits=ROOMY, **kw):
  return run_program(textwrap.dedent(source), stdin, limits, **kw)


# ---------------------------------------------------------------------------------------------


def test_protections_reported():
  res = _run("print('hi')")
  assert res.status == "ok" and res.stdout == "hi\n"
  p = res.protections
  if IS_ROOT:  # this project's machines: the kernel protections must all be on
    assert p["netns"] and p["pidns"] and p["mountns"] and p["readonly_fs"], p
    assert p["uid"] is not None and p["nproc_limit"] and not p["audit_hook"], p
  else:  # elsewhere: the fallback guard must be on
    assert p["audit_hook"], p


def test_correct_program_passes():
  tests = [TestCase("21\n", "42\n"), TestCase("-3", "-6"), TestCase("0\n", "0")]
  assert score_program(ECHO_DOUBLE, tests, ROOMY) == Verdict(1.0, "correct")


def test_partial_and_wrong_output():
  tests = [TestCase("1", "2"), TestCase("2", "5")]
  assert score_program(ECHO_DOUBLE, tests, ROOMY) == Verdict(0.5, "wrong_answer")


def test_output_comparison_normalizes_whitespace():
  assert normalize_output("1  2\n3\t4  \n\n\n") == ["1 2", "3 4"]
  assert normalize_output("1 2\n3 4") == normalize_output("  1 2\r\n3 4\r\n")
  assert normalize_output("12") != normalize_output("1 2")


def test_isolated_environment_and_temp_dir():
  res = _run("""
      import os, sys
      print(os.getcwd() == os.environ['HOME'] == os.environ['TMPDIR'])
      open('scratch.txt', 'w').write('ok')
      print(open('scratch.txt').read())
      allowed = ('PATH', 'HOME', 'TMPDIR', 'LANG', 'LC_ALL', 'LC_CTYPE')
      print(sorted(k for k in os.environ if k not in allowed))
      print(sys.flags.isolated)
  """)
  assert res.status == "ok", res.stderr
  assert res.stdout.split() == ["True", "ok", "[]", "1"]


def test_infinite_loop_times_out():
  res = _run("while True:\n  pass\n", limits=TIGHT)
  assert res.status == "timeout"
  _assert_nothing_left(res)
  assert score_program("while True: pass", [TestCase("", "")], TIGHT).reason == "timeout"


def test_sleeping_program_is_killed_at_wall_limit():
  # It uses no CPU, so only the wall limit can stop it; not killed, it would exit 0 after 60 s
  # ("ok"). "timeout" shows the deadline fired, and the run lasted at least the limit.
  res = _run("import time\ntime.sleep(60)\n", limits=TIGHT)
  assert res.status == "timeout", res
  assert res.wall_s >= TIGHT.wall_s
  _assert_nothing_left(res)


def test_fork_bomb_is_contained():
  marker = f"h2bomb_{uuid.uuid4().hex}"
  res = _run(f"""
      import os, sys
      sys.argv[0] = {marker!r}
      while True:
        try:
          os.fork()
        except OSError:
          pass
  """, limits=TIGHT)
  assert res.status in ("timeout", "runtime_error"), res
  _assert_nothing_left(res)
  v = score_program("import os\nwhile True: os.fork()\n", [TestCase("", "x")], TIGHT)
  assert v.reward == 0.0


def test_daemonized_child_does_not_survive():
  marker = f"h2daemon_{uuid.uuid4().hex}"
  res = _run(f"""
      import os, sys, time
      try:
        if os.fork() == 0:
          os.setsid()  # leaves the process group: only the pid namespace or uid sweep catch it
          if os.fork() == 0:
            sleeper = 'import time; time.sleep(30)'
            os.execv(sys.executable, [sys.executable, '-c', sleeper, {marker!r}])
          os._exit(0)
      except OSError as e:
        print('blocked', e)
      print('parent done')
  """)
  assert res.status == "ok" and "parent done" in res.stdout, res
  _assert_nothing_left(res, marker)  # already when run_program returns


def test_memory_bomb_fails():
  res = _run("a = []\nwhile True:\n  a.append(' ' * 10**6)\n")
  assert res.status == "memory", res
  _assert_nothing_left(res)
  res = _run("x = bytearray(10**10)\n")
  assert res.status == "memory", res


def test_write_outside_temp_dir_fails():
  # World-writable places an unprivileged uid could write to: /tmp, /dev/shm and a 0777 dir.
  open_dir = tempfile.mkdtemp(prefix="h2_open_")
  os.chmod(open_dir, 0o777)
  targets = [f"/tmp/h2_escape_{uuid.uuid4().hex}", f"/dev/shm/h2_escape_{uuid.uuid4().hex}",
             os.path.join(open_dir, "escape.txt")]
  try:
    for target in targets:
      res = _run(f"open({target!r}, 'w').write('pwned')\n")
      assert res.status == "runtime_error", (target, res)
      assert ("Read-only file system" in res.stderr or "Permission denied" in res.stderr
              or "not allowed" in res.stderr), res.stderr
      assert not os.path.exists(target)
    res = _run(f"import os\nos.mkdir({os.path.join(open_dir, 'd')!r})\n")
    assert res.status == "runtime_error"
    assert os.listdir(open_dir) == []
  finally:
    shutil.rmtree(open_dir)


def test_network_connection_fails():
  server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  server.bind(("127.0.0.1", 0))
  server.listen(1)
  server.settimeout(0.0)
  port = server.getsockname()[1]
  try:
    res = _run(f"""
        import socket
        s = socket.create_connection(('127.0.0.1', {port}), timeout=1)
        s.sendall(b'leak')
        print('connected')
    """)
    assert res.status == "runtime_error", res
    assert "connected" not in res.stdout
    with pytest.raises(BlockingIOError):
      server.accept()  # nobody connected
  finally:
    server.close()


def test_output_limit():
  # Roomy time limits: only the output cap can stop this program.
  res = _run("while True:\n  print('x' * 1000)\n",
             limits=dataclasses.replace(ROOMY, max_output_bytes=10_000))
  assert res.status == "output_limit"
  assert len(res.stdout) <= 10_000
  _assert_nothing_left(res)


def test_runtime_error_and_syntax_error():
  assert _run("raise SystemExit(3)").returncode == 3
  assert _run("1/0").status == "runtime_error"
  assert _run("def (:").status == "runtime_error"


def test_fallback_audit_hook_guards():
  """Without namespaces and uid (a non-root machine), the audit hook still blocks the basics."""
  kw = dict(namespaces=False, drop_privileges=False, audit_hook=True)
  res = _run("print(input())", "hello", **kw)
  assert res.status == "ok" and res.stdout == "hello\n", res
  assert res.protections["audit_hook"] and not res.protections["netns"]
  target = f"/tmp/h2_escape_{uuid.uuid4().hex}"
  assert _run(f"open({target!r}, 'w').write('x')", **kw).status == "runtime_error"
  assert not os.path.exists(target)
  assert _run("open('inside.txt', 'w').write('x')", **kw).status == "ok"
  res = _run("import socket\nsocket.create_connection(('127.0.0.1', 9))", **kw)
  assert res.status == "runtime_error" and "not allowed" in res.stderr
  res = _run("import os\nos.fork()", **kw)
  assert res.status == "runtime_error" and "not allowed" in res.stderr
  res = _run("import subprocess\nsubprocess.run(['true'])", **kw)
  assert res.status == "runtime_error" and "not allowed" in res.stderr


def test_code_verifier_batch_after_hostile_programs(monkeypatch):
  tests = [TestCase("2", "4"), TestCase("5", "10")]
  loop = "while True: pass"
  programs = [ECHO_DOUBLE, None, "print(int(input()) + 2)", loop, ECHO_DOUBLE]
  # Every run is counted instead of timed: the loop's second test is never run (it stopped at
  # its first timeout), and no more than max_concurrency programs run at once.
  runs, lock, running = [], threading.Lock(), [0, 0]  # running: now, most at once
  real_run = sandbox.run_program

  def counted_run(source, *args, **kwargs):
    with lock:
      running[0] += 1
      running[1] = max(running[1], running[0])
    try:
      res = real_run(source, *args, **kwargs)
    finally:
      with lock:
        running[0] -= 1
    runs.append((source, res.status))
    return res

  monkeypatch.setattr(sandbox, "run_program", counted_run)
  # The correct programs get a roomy wall limit; the loop is stopped by its CPU seconds, which
  # a loaded machine does not inflate the way it inflates wall time.
  limits = Limits(cpu_s=2.0, wall_s=120.0, memory_mb=256, max_procs=16)
  with CodeVerifier(limits, max_concurrency=2) as verifier:
    verdicts = verifier.score(programs, [tests] * len(programs))
  assert verdicts == [Verdict(1.0, "correct"), Verdict(0.0, "no_code"),
                      Verdict(0.5, "wrong_answer"), Verdict(0.0, "timeout"),
                      Verdict(1.0, "correct")]
  assert [status for source, status in runs if source == loop] == ["timeout"]
  assert len(runs) == 2 + 0 + 2 + 1 + 2 and running[1] <= 2
  with pytest.raises(ValueError, match="2 programs but 1 test lists"):
    CodeVerifier(ROOMY).score(["a", "b"], [tests])


@pytest.mark.parametrize("completion, expected", [
    ("text\n```python\nprint(1)\n```\nmore", "print(1)"),
    ("```python\na = 1\n```\n```python\nb = 2\n```", "b = 2"),  # last block
    ("```py\nx\n```", "x"),
    ("```python\nreal\n```\n```text\noutput\n```", "real"),  # python label beats others
    ("```\nplain\n```", "plain"),  # unlabeled block as a fallback
    ("```python\ndone\n```\n```python\ntruncated", "done"),  # unclosed last fence ignored
    ("no code", None),
    ("", None),
])
def test_extract_code(completion, expected):
  assert extract_code(completion) == expected


def test_limits_validation():
  with pytest.raises(ValueError, match="Limits.wall_s must be > 0, got 0"):
    Limits(wall_s=0)


def test_hidden_paths_cannot_be_read():
  secret_dir = tempfile.mkdtemp(prefix="h2_secret_")  # world-readable, like a shared data dir
  try:
    os.chmod(secret_dir, 0o755)
    secret = os.path.join(secret_dir, "expected_outputs.txt")
    with open(secret, "w") as f:
      f.write("42\n")
    os.chmod(secret, 0o644)
    reader = f"print(open({secret!r}).read().strip())"
    shown = _run(reader)
    assert shown.status == "ok" and shown.stdout == "42\n", shown  # the control: readable
    hidden = _run(reader, hide_paths=[secret_dir])
    if hidden.protections["mountns"]:
      assert hidden.protections["hidden"] == [os.path.realpath(secret_dir)]
      assert hidden.status == "runtime_error" and "No such file" in hidden.stderr, hidden
    else:  # documented limitation: without a mount namespace nothing can be hidden
      assert hidden.stdout == "42\n"
  finally:
    shutil.rmtree(secret_dir)
