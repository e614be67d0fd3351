"""Runs untrusted Python programs against tests: limits, isolation, and guaranteed clean-up.

How one run is built (`run_program`):

  trainer ─Popen(new session)─► launcher `python -I -S -c _LAUNCHER` (trusted, as root):
      unshare(NEWNET | NEWPID | NEWNS); every mount read-only except the run's temp dir;
      hide_paths covered by empty tmpfs
      fork ─► pid 1 of the new pid namespace: rlimits, setgroups([]), setgid/setuid(run uid),
              no_new_privs, chdir(temp dir), exec `python -I solution.py`

Why a launcher and not `preexec_fn`: the trainer is multithreaded (JAX), and Python documents
`preexec_fn` as unsafe with threads (the child may deadlock before exec). The launcher is a
fresh single-threaded process, so the parent side is a plain fork+exec (and the rlimits are
set there, between fork and exec, where `preexec_fn` would have set them).

Protections, each reported per run in `RunResult.protections`:
  * network: a fresh network namespace (only a downed loopback): every connect fails.
  * processes: a fresh pid namespace; when the program (its pid 1) exits or is killed, the
    kernel kills every process it left behind, including ones that called setsid(). Each run
    gets its own unused uid, so RLIMIT_NPROC (counted per uid) bounds a fork bomb to
    `max_procs` and does not starve other runs; after the run every process of that uid is
    killed (a sweep of /proc) before `run_program` returns.
  * files: a private mount namespace in which every mount is remounted read-only except the
    temp dir (cwd, HOME and TMPDIR); the program also runs as the unprivileged run uid, so it
    cannot remount. When the interpreter lives where that uid cannot read it (e.g. under
    /root), its installation is bind-mounted read-only at `<tmp>/.python`.
  * reads: world-readable files stay readable; `hide_paths` (default /root and /home) are
    covered by an empty tmpfs. Pass the directory holding the tests' expected outputs, or a
    program could read them and hack its reward.
  * resources: RLIMIT_CPU, AS (memory), NPROC (only with a dedicated uid: as root it is not
    enforced, and for a shared uid it would count the trainer's own threads), FSIZE, NOFILE,
    CORE=0; a wall-clock deadline kills the process group; output is capped while it is read.

Fallback: without root (or when unshare/mount fail) the kernel protections above that failed are
missing; then an audit hook (`sys.addaudithook`, installed before the program runs) blocks
sockets, subprocesses, fork, ctypes and writes outside the temp dir. An audit hook is a Python
level guard, not a security boundary; the report says which protections were active.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import json
import math
import os
import random
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Sequence

from si_jax.verify.types import Verdict

__all__ = ["Limits", "RunResult", "TestCase", "run_program", "score_program", "CodeVerifier",
           "extract_code", "normalize_output"]


@dataclasses.dataclass(frozen=True)
class Limits:
  """Resource limits of one program run.

  cpu_s: CPU seconds (RLIMIT_CPU, per process). wall_s: wall-clock seconds from just before the
  program's exec (interpreter start-up included). memory_mb: address space (RLIMIT_AS).
  max_procs: processes + threads of the run's uid (RLIMIT_NPROC). max_file_mb: largest file
  it may write (RLIMIT_FSIZE). max_output_bytes: stdout + stderr. max_open_files: RLIMIT_NOFILE.
  """

  cpu_s: float = 2.0
  wall_s: float = 4.0
  memory_mb: int = 512
  max_procs: int = 32
  max_file_mb: int = 16
  max_output_bytes: int = 1 << 20
  max_open_files: int = 64

  def __post_init__(self):
    for name in ("cpu_s", "wall_s", "memory_mb", "max_procs", "max_file_mb", "max_output_bytes",
                 "max_open_files"):
      if getattr(self, name) <= 0:
        raise ValueError(f"Limits.{name} must be > 0, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class RunResult:
  """What one run produced.

  status: 'ok' | 'runtime_error' (nonzero exit, signal) | 'timeout' (wall or CPU limit) |
    'memory' (MemoryError) | 'output_limit' | 'file_limit' | 'killed' (a SIGKILL the harness
    did not send: CPU hard limit after an ignored SIGXCPU, or the OOM killer) |
    'sandbox_error' (the sandbox itself failed to start the program; see stderr).
  returncode: the program's exit code (negative: killed by that signal); None if unknown.
  protections: which isolation was active (see the module docstring).
  """

  stdout: str
  stderr: str
  returncode: int | None
  status: str
  wall_s: float = 0.0
  protections: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class TestCase:
  """One test of a program: feed `stdin`, expect `expected_stdout` (whitespace-normalized)."""

  __test__ = False  # not a pytest class

  stdin: str
  expected_stdout: str


# ---------------------------------------------------------------------------------------------
# The launcher: a fresh single-threaded `python -I -S` that sets up isolation and execs the
# program. It reports JSON lines on `report_fd`: {"started": ..., "protections": ...} before
# the exec, {"exit": code} when the program ends, or {"error": msg}.

_LAUNCHER = r"""
import ctypes, json, os, re, resource, sys
cfg = json.loads(sys.argv[1])
rep = cfg["report_fd"]
def report(obj):
  os.write(rep, (json.dumps(obj) + "\n").encode())
try:
  libc = ctypes.CDLL(None, use_errno=True)
  libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                         ctypes.c_void_p]
  def err():
    return os.strerror(ctypes.get_errno())
  libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG = SIGKILL: die with the trainer
  if os.getppid() != cfg["parent_pid"]:
    os._exit(125)
  prot = {"netns": False, "pidns": False, "mountns": False, "readonly_fs": False, "uid": None,
          "nproc_limit": False, "audit_hook": False}
  if cfg["namespaces"]:
    for key, flag in (("netns", 0x40000000), ("pidns", 0x20000000), ("mountns", 0x00020000)):
      if libc.unshare(flag) == 0:
        prot[key] = True
      else:
        prot[key + "_error"] = err()
  work = cfg["workdir"]
  python = cfg["python"]
  if prot["mountns"]:
    MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 1, 2, 4, 8, 32, 4096
    MS_NOATIME, MS_NODIRATIME, MS_REC, MS_PRIVATE = 1024, 2048, 16384, 1 << 18
    MS_RELATIME, MS_STRICTATIME = 1 << 21, 1 << 24
    def mount(src, dst, flags):
      return libc.mount(src and src.encode(), dst.encode(), None, flags, None) == 0
    ok = mount(None, "/", MS_REC | MS_PRIVATE) and mount(work, work, MS_BIND)
    if ok and cfg["bind_python"]:
      src, dst = cfg["bind_python"]
      ok = mount(src, dst, MS_BIND | MS_REC)
      prot["python_bind"] = ok
    failed = []
    hidden = []
    for path in cfg["hide_paths"] if ok else ():
      ro = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
      if libc.mount(b"tmpfs", path.encode(), b"tmpfs", ro, b"size=4k,mode=755") == 0:
        hidden.append(path)
      else:
        failed.append("hide " + path + ": " + err())
    prot["hidden"] = hidden
    if ok:
      keep = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
              "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME}
      with open("/proc/self/mountinfo") as f:
        lines = f.read().splitlines()
      for line in lines:
        fields = line.split()
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        if point == work:
          continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for opt in fields[5].split(","):
          flags |= keep.get(opt, 0)
        if not mount(None, point, flags):
          failed.append(point + ": " + err())
    else:
      failed.append("bind: " + err())
    prot["readonly_fs"] = ok and not failed
    if failed:
      prot["readonly_errors"] = failed[:5]
  uid = cfg["uid"]
  prot["uid"] = uid
  prot["nproc_limit"] = uid is not None
  guard = cfg["audit_hook"]
  if guard is None:  # auto: the Python-level guard stands in for any missing kernel protection
    guard = not (prot["netns"] and prot["pidns"] and prot["readonly_fs"] and uid is not None)
  prot["audit_hook"] = guard
  argv = cfg["argv_guarded"] if guard else cfg["argv"]
  pid = os.fork()
  if pid == 0:
    try:
      libc.prctl(1, 9, 0, 0, 0)  # die with the launcher (which dies with the trainer)
      lim = cfg["limits"]
      def setlim(res, soft, hard=None):
        resource.setrlimit(res, (soft, soft if hard is None else hard))
      setlim(resource.RLIMIT_CPU, lim["cpu"], lim["cpu"] + 1)
      setlim(resource.RLIMIT_AS, lim["as"])
      setlim(resource.RLIMIT_FSIZE, lim["fsize"])
      setlim(resource.RLIMIT_NOFILE, lim["nofile"])
      setlim(resource.RLIMIT_CORE, 0)
      if uid is not None:
        setlim(resource.RLIMIT_NPROC, lim["nproc"])
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
      libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
      os.chdir(work)
      report({"started": True, "protections": prot, "pid": os.getpid()})
      os.set_inheritable(rep, False)
      os.execve(argv[0], argv, cfg["env"])
    except BaseException as e:
      report({"error": "launcher child: %s: %s" % (type(e).__name__, e)})
      os._exit(126)
  report({"child_pid": pid})
  _, status, usage = os.wait4(pid, 0)
  report({"exit": os.waitstatus_to_exitcode(status),
          "cpu_s": usage.ru_utime + usage.ru_stime})
except BaseException as e:
  report({"error": "launcher: %s: %s" % (type(e).__name__, e)})
  os._exit(125)
"""

# Fallback guard, run by the program's interpreter before the program (only when a kernel
# protection is missing, or when asked). argv: [-c, solution.py].
_AUDIT_PRELUDE = r"""
import os, sys
_ROOT = os.path.realpath(os.getcwd())
_BLOCKED = frozenset((
    "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
    "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo", "os.fork",
    "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen",
    "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "os.kill", "os.killpg", "pty.spawn"))
_BLOCKED_IMPORTS = frozenset(("_posixsubprocess", "_ctypes", "_socket", "_multiprocessing"))
_PATH_EVENTS = {"os.remove": 1, "os.rename": 2, "os.mkdir": 1, "os.rmdir": 1, "os.chmod": 1,
                "os.chown": 1, "os.symlink": 2, "os.link": 2, "os.truncate": 1, "os.utime": 1,
                "os.chflags": 1, "os.lchflags": 1, "os.setxattr": 1, "os.removexattr": 1,
                "shutil.rmtree": 1, "shutil.move": 2, "shutil.copyfile": 2}
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
def _inside(p):
  if isinstance(p, int):
    return True  # an already open fd
  try:
    p = os.path.realpath(os.fsdecode(p))
  except Exception:
    return False
  return p == _ROOT or p.startswith(_ROOT + os.sep)
def _hook(event, args, _deny=PermissionError):
  if event in _BLOCKED:
    raise _deny("sandbox: %s is not allowed" % event)
  if event == "import" and args[0] in _BLOCKED_IMPORTS:
    raise _deny("sandbox: import of %s is not allowed" % args[0])
  if event == "open":
    path, mode, flags = args
    writing = bool((isinstance(mode, str) and any(c in mode for c in "wax+"))
                   or (isinstance(flags, int) and flags & _WRITE))
    if writing and path is not None and not _inside(path):
      raise _deny("sandbox: writing %r is not allowed" % (path,))
  n = _PATH_EVENTS.get(event)
  if n:
    for p in args[:n]:
      if p is not None and not _inside(p):
        raise _deny("sandbox: %s on %r is not allowed" % (event, p))
sys.addaudithook(_hook)
del _hook
sys.argv = sys.argv[1:]
_src = open(sys.argv[0], encoding="utf-8").read()
_g = {"__name__": "__main__", "__file__": sys.argv[0], "__builtins__": __builtins__}
exec(compile(_src, sys.argv[0], "exec"), _g)
"""

_SETUP_TIMEOUT_S = 20.0  # launcher start-up (a loaded machine) before the program starts
# after the program exits, how long to drain its pipes (EOF comes at once unless something
# still holds them; a starved supervisor must not drop output written before the exit)
_EXIT_GRACE_S = 2.0


# ---------------------------------------------------------------------------------------------
# Uids, interpreter, clean-up.

_uid_lock = threading.Lock()
_uid_base = random.SystemRandom().randrange(1 << 24, 1 << 30)
_uid_counter = itertools.count()


def _new_uid() -> int:
  """A uid no one uses: random base per process + a counter (never reused in this process)."""
  with _uid_lock:
    return _uid_base + next(_uid_counter)


def _world_accessible(path: str) -> bool:
  """Whether an unprivileged uid can traverse to and read/execute `path`."""
  path = os.path.realpath(path)
  parts = path.split(os.sep)
  for i in range(2, len(parts) + 1):
    p = os.sep.join(parts[:i]) or os.sep
    try:
      mode = os.stat(p).st_mode
    except OSError:
      return False
    if not mode & 0o001:  # o+x on every directory (and the binary)
      return False
  return True


def _uid_pids(uid: int) -> list[tuple[int, str]]:
  """(pid, state) of every process whose real uid is `uid` (from /proc)."""
  found = []
  for name in os.listdir("/proc"):
    if not name.isdigit():
      continue
    try:
      with open(f"/proc/{name}/status") as f:
        status = f.read()
    except OSError:
      continue
    m = re.search(r"^Uid:\s+(\d+)", status, re.M)
    if m and int(m.group(1)) == uid:
      s = re.search(r"^State:\s+(\S)", status, re.M)
      found.append((int(name), s.group(1) if s else "?"))
  return found


def _kill_uid(uid: int, timeout_s: float = 2.0) -> int:
  """SIGKILLs every live process of `uid` until none is left; returns how many remain."""
  deadline = time.monotonic() + timeout_s
  while True:
    live = [pid for pid, state in _uid_pids(uid) if state not in ("Z", "X")]
    if not live:
      return 0
    for pid in live:
      try:
        os.kill(pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
    if time.monotonic() > deadline:
      return len(live)
    time.sleep(0.01)


def _killpg(pgid: int) -> None:
  try:
    os.killpg(pgid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass


# ---------------------------------------------------------------------------------------------
# run_program.


def run_program(source: str, stdin: str = "", limits: Limits = Limits(), *,
                namespaces: bool = True, drop_privileges: bool = True,
                audit_hook: bool | None = None,
                hide_paths: Sequence[str] = ("/root", "/home")) -> RunResult:
  """Runs `source` with `python -I` on `stdin` in a fresh sandbox; see the module docstring.

  namespaces: use net/pid/mount namespaces where the kernel allows.
  drop_privileges: when root, run the program as a fresh unprivileged uid.
  audit_hook: install the Python-level guard; None = only when a kernel protection is missing.
  hide_paths: directories covered by an empty read-only tmpfs (mount namespace only), so the
    program cannot read them: pass the data directory that holds the tests' expected outputs
    (a program that reads them would hack its reward). "/" and ancestors of the temp dir are
    never hidden.
  Never raises on anything the program does; sandbox failures give status 'sandbox_error'.
  """
  t0 = time.monotonic()
  workdir = tempfile.mkdtemp(prefix="si_sandbox_")
  stdin_file = tempfile.TemporaryFile()  # outside workdir: the program sees only its stdin
  is_root = os.geteuid() == 0
  uid = _new_uid() if (drop_privileges and is_root) else None
  try:
    with open(os.path.join(workdir, "solution.py"), "w", encoding="utf-8") as f:
      f.write(source)
    stdin_file.write(stdin.encode("utf-8"))
    stdin_file.seek(0)
    python = os.path.realpath(sys.executable)
    bind_python = None
    if uid is not None and not _world_accessible(python):
      prefix = os.path.realpath(sys.base_prefix)
      if namespaces and python.startswith(prefix + os.sep):
        dst = os.path.join(workdir, ".python")
        os.mkdir(dst)
        bind_python = (prefix, dst)
        python = dst + python[len(prefix):]
      else:
        uid = None  # the run uid could not start the interpreter
    if uid is not None:
      os.chown(workdir, uid, uid)
      os.chown(os.path.join(workdir, "solution.py"), uid, uid)
    os.chmod(workdir, 0o700)
    # Never hide "/" or a directory that holds the temp dir or (unless bind-mounted, which
    # happens before hiding) the interpreter.
    keep = [os.path.realpath(workdir)]
    if bind_python is None:
      keep += [python, os.path.realpath(sys.base_prefix)]
    hide = []
    for path in hide_paths:
      real = os.path.realpath(path)
      if (os.path.isdir(real) and real != os.sep
          and not any(k == real or k.startswith(real + os.sep) for k in keep)):
        hide.append(real)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir,
           "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    rep_r, rep_w = os.pipe()
    cfg = {
        "report_fd": rep_w, "parent_pid": os.getpid(), "namespaces": namespaces,
        "workdir": workdir, "python": python, "bind_python": bind_python, "uid": uid,
        "audit_hook": audit_hook, "hide_paths": hide, "env": env,
        "argv": [python, "-I", "solution.py"],
        "argv_guarded": [python, "-I", "-c", _AUDIT_PRELUDE, "solution.py"],
        "limits": {"cpu": max(1, math.ceil(limits.cpu_s)), "as": limits.memory_mb << 20,
                   "fsize": limits.max_file_mb << 20, "nofile": limits.max_open_files,
                   "nproc": limits.max_procs},
    }
    try:
      proc = subprocess.Popen(
          [os.path.realpath(sys.executable), "-I", "-S", "-c", _LAUNCHER, json.dumps(cfg)],
          stdin=stdin_file, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(rep_w,),
          start_new_session=True, cwd="/", env={"PATH": env["PATH"], "LANG": "C.UTF-8"})
    except OSError as e:
      os.close(rep_r)
      os.close(rep_w)
      return RunResult("", f"sandbox: cannot start the launcher: {e}", None, "sandbox_error",
                       time.monotonic() - t0)
    os.close(rep_w)
    return _supervise(proc, rep_r, limits, uid, t0)
  finally:
    stdin_file.close()
    shutil.rmtree(workdir, ignore_errors=True)


def _supervise(proc: subprocess.Popen, rep_r: int, limits: Limits, uid: int | None,
               t0: float) -> RunResult:
  """Reads output and reports until the run ends or a limit is hit; then kills and reaps all."""
  out, err, rep = bytearray(), bytearray(), bytearray()
  sel = selectors.DefaultSelector()
  for fobj, buf in ((proc.stdout, out), (proc.stderr, err), (rep_r, rep)):
    os.set_blocking(fobj if isinstance(fobj, int) else fobj.fileno(), False)
    sel.register(fobj, selectors.EVENT_READ, buf)
  deadline = t0 + _SETUP_TIMEOUT_S + limits.wall_s
  started = exited = False
  child_pid = None
  limit_hit = None
  try:
    while sel.get_map():
      now = time.monotonic()
      if now >= deadline:
        limit_hit = "timeout" if started and not exited else limit_hit
        break
      for key, _ in sel.select(timeout=deadline - now):
        fd = key.fd
        try:
          chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
          continue
        if not chunk:
          sel.unregister(key.fileobj)
          continue
        key.data.extend(chunk)
        if key.data is rep:
          for msg in _messages(rep):
            if msg.get("started") and not started:
              started = True
              deadline = time.monotonic() + limits.wall_s
            if "child_pid" in msg:
              child_pid = msg["child_pid"]
            if "exit" in msg and not exited:
              exited = True
              deadline = min(deadline, time.monotonic() + _EXIT_GRACE_S)
        elif len(out) + len(err) > limits.max_output_bytes:
          limit_hit = "output_limit"
          break
      if limit_hit:
        break
  finally:
    sel.close()
    # Kill order matters: first the program (pid 1 of its namespace: the kernel then kills
    # the whole namespace), then let the launcher reap it and exit, and only then kill the
    # process group. Killing the launcher first would orphan the program to the system init,
    # which need not reap it (this machine's does not: zombies would pile up).
    if child_pid is not None and not exited:  # not reaped yet, so the pid is still its own
      try:
        os.kill(child_pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
    try:  # the launcher reaps the program and exits at once; a starved one gets time to
      proc.wait(timeout=_SETUP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
      pass
    _killpg(proc.pid)
    proc.wait()
    leftover = _kill_uid(uid) if uid is not None else 0
    for f in (proc.stdout, proc.stderr):
      f.close()
    os.close(rep_r)
  # Collect what the launcher said.
  protections, exit_code, error, cpu_used = {}, None, None, 0.0
  for msg in _messages(rep):
    protections.update(msg.get("protections", {}))
    if "exit" in msg:
      exit_code = msg["exit"]
      cpu_used = float(msg.get("cpu_s", 0.0))
    if "error" in msg:
      error = msg["error"]
  if leftover:
    protections["leftover_processes"] = leftover
  stdout = bytes(out[:limits.max_output_bytes]).decode("utf-8", errors="replace")
  stderr = bytes(err[:limits.max_output_bytes]).decode("utf-8", errors="replace")
  wall = time.monotonic() - t0
  if error is not None and not started:
    return RunResult(stdout, f"sandbox: {error}\n{stderr}", None, "sandbox_error", wall,
                     protections)
  if limit_hit is not None:
    status = limit_hit
  elif exit_code is None:
    status = "sandbox_error" if not started else "timeout"
    if not started:
      stderr = f"sandbox: the launcher did not start the program\n{stderr}"
  else:
    status = _status(exit_code, stderr)
    # A SIGKILL we did not send, after the program used up its CPU seconds, is RLIMIT_CPU's
    # hard limit (the soft limit's SIGXCPU came too late on a loaded machine): a timeout.
    if status == "killed" and cpu_used >= limits.cpu_s:
      status = "timeout"
  return RunResult(stdout, stderr, exit_code, status, wall, protections)


def _messages(rep: bytearray) -> list[dict]:
  """The complete JSON lines the launcher wrote so far."""
  msgs = []
  for line in bytes(rep).split(b"\n")[:-1]:
    try:
      msg = json.loads(line)
    except ValueError:
      continue
    if isinstance(msg, dict):
      msgs.append(msg)
  return msgs


def _status(exit_code: int, stderr: str) -> str:
  if exit_code == 0:
    return "ok"
  if exit_code == -signal.SIGXCPU:
    return "timeout"  # RLIMIT_CPU
  if exit_code == -signal.SIGXFSZ:
    return "file_limit"
  if exit_code == -signal.SIGKILL:
    return "killed"  # not sent by us: the CPU hard limit (SIGXCPU ignored) or the OOM killer
  tail = stderr[-2000:]
  if "MemoryError" in tail or "Cannot allocate memory" in tail:
    return "memory"
  return "runtime_error"


# ---------------------------------------------------------------------------------------------
# Scoring.


def normalize_output(text: str) -> list[str]:
  """Lines with runs of whitespace collapsed, trailing blank lines dropped."""
  lines = [" ".join(line.split()) for line in text.strip().splitlines()]
  return lines


def score_program(source: str, tests: Sequence[TestCase], limits: Limits = Limits(), *,
                  stop_on_timeout: bool = True, **run_kwargs: Any) -> Verdict:
  """reward = fraction of tests whose normalized stdout matches; reason = first failure's kind.

  stop_on_timeout: after a test times out, the remaining tests are not run and count as failed
  (an infinite loop would otherwise cost `wall_s` per test). This can only lower the reward of
  a program that times out on one input yet passes later ones.
  """
  if not tests:
    raise ValueError("score_program: tests is empty; a program needs at least one test")
  passed, reason = 0, None
  for test in tests:
    res = run_program(source, test.stdin, limits, **run_kwargs)
    if res.status == "ok" and normalize_output(res.stdout) == normalize_output(
        test.expected_stdout):
      passed += 1
      continue
    if reason is None:
      reason = "wrong_answer" if res.status == "ok" else res.status
    if res.status == "timeout" and stop_on_timeout:
      break
  reward = passed / len(tests)
  return Verdict(reward, "correct" if passed == len(tests) else reason)


class CodeVerifier:
  """Scores programs against their tests, at most `max_concurrency` programs at a time."""

  def __init__(self, limits: Limits = Limits(), max_concurrency: int = 2, *,
               stop_on_timeout: bool = True, **run_kwargs: Any):
    if max_concurrency < 1:
      raise ValueError(f"CodeVerifier max_concurrency must be >= 1, got {max_concurrency}")
    self.limits = limits
    self.stop_on_timeout = stop_on_timeout
    self._run_kwargs = run_kwargs
    self._executor = concurrent.futures.ThreadPoolExecutor(max_concurrency,
                                                           thread_name_prefix="sandbox")

  def _score_one(self, program: str | None, tests: Sequence[TestCase]) -> Verdict:
    if not program or not program.strip():
      return Verdict(0.0, "no_code")
    return score_program(program, tests, self.limits, stop_on_timeout=self.stop_on_timeout,
                         **self._run_kwargs)

  def score(self, programs: Sequence[str | None],
            tests_list: Sequence[Sequence[TestCase]]) -> list[Verdict]:
    """Verdict of programs[i] (source, or None when no code was found) on tests_list[i]."""
    if len(programs) != len(tests_list):
      raise ValueError(f"CodeVerifier.score: {len(programs)} programs but {len(tests_list)} "
                       "test lists")
    futures = [self._executor.submit(self._score_one, p, t) for p, t in zip(programs, tests_list)]
    return [f.result() for f in futures]

  def close(self) -> None:
    self._executor.shutdown(wait=True)

  def __enter__(self) -> "CodeVerifier":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


# ---------------------------------------------------------------------------------------------
# Extraction.

_FENCE_RE = re.compile(r"^[ \t]*```[ \t]*([\w+#.-]*)[ \t]*$", re.MULTILINE)
_PYTHON_TAGS = ("python", "python3", "py")


def extract_code(completion: str) -> str | None:
  """The last complete ```python (or ```py / ```python3) fenced block, else the last complete
  unlabeled ``` block, else None. An unclosed final fence (a truncated generation) is ignored."""
  if not completion:
    return None
  blocks: list[tuple[str, str]] = []
  open_tag, open_end = None, None
  for m in _FENCE_RE.finditer(completion):
    if open_end is None:
      open_tag, open_end = m.group(1).lower(), m.end()
    else:
      if m.group(1):  # a labeled fence while one is open: treat it as a new opening
        open_tag, open_end = m.group(1).lower(), m.end()
        continue
      blocks.append((open_tag, completion[open_end:m.start()].strip("\n")))
      open_tag, open_end = None, None
  for want in (_PYTHON_TAGS, ("",)):
    for tag, body in reversed(blocks):
      if tag in want and body.strip():
        return body
  return None
