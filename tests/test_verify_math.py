"""Tests of si_jax.verify.pool and si_jax.verify.math: extraction, the pool, the verifier table."""

import math
import os
import signal
import sys
import time

import pytest

from si_jax.verify import math as math_lib
from si_jax.verify.math import MathVerifier, brace_depth, extract_answer, extract_boxed
from si_jax.verify.pool import WorkerPool
from si_jax.verify.types import Verdict

# ---------------------------------------------------------------------------------------------
# extract_boxed / extract_answer


@pytest.mark.parametrize("text, expected", [
    ("so \\boxed{42}.", "42"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{1} then \\boxed{2}", "2"),  # last wins
    ("\\fbox{7}", "7"),
    ("\\boxed{3} and finally \\fbox{4}", "4"),
    ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # escaped braces do not count
    ("\\boxed{a\\\\}b}", "a\\\\"),  # `\\` is a LaTeX newline, the `}` after it closes
    ("\\boxed 5 apples", "5"),
    ("\\boxed{}", ""),
    ("\\boxed{3", None),  # unbalanced: truncated generation
    ("\\boxed{2} ... \\boxed{3", None),  # the last box decides even when it is broken
    ("no box here", None),
    ("", None),
    ("\\boxedx{3}", None),  # another macro
    ("\\boxed{1} \\boxedx{3}", "1"),
])
def test_extract_boxed(text, expected):
  assert extract_boxed(text) == expected


def _lines_run(fn, *args) -> int:
  """How many lines of si_jax/verify/math.py `fn(*args)` executes: its work, counted the same
  on any machine at any load (a clock would not be)."""
  count = 0

  def local(frame, event, arg):
    nonlocal count
    count += event == "line"
    return local

  def tracer(frame, event, arg):
    return local if frame.f_code.co_filename == math_lib.__file__ else None

  before = sys.gettrace()  # a coverage tool's tracer, if any, is put back
  sys.settrace(tracer)
  try:
    fn(*args)
  finally:
    sys.settrace(before)
  return count


_DEEP_INPUTS = {  # n -> a text of size O(n) that a recursive or quadratic scan would choke on
    "balanced": lambda n: "\\boxed{" + "{" * n + "1" + "}" * n + "}",
    "unbalanced": lambda n: "\\boxed{" + "{" * n,
    "many_boxes": lambda n: "\\boxed{" * n,
}


def test_extract_boxed_is_recursion_free():
  # 200k levels: far past Python's recursion limit, so a recursive parser would raise.
  deep = _DEEP_INPUTS["balanced"](200_000)
  assert extract_boxed(deep) == "{" * 200_000 + "1" + "}" * 200_000
  assert extract_boxed(_DEEP_INPUTS["unbalanced"](200_000)) is None
  assert extract_boxed(_DEEP_INPUTS["many_boxes"](100_000)) is None


@pytest.mark.parametrize("shape", sorted(_DEEP_INPUTS))
def test_extract_boxed_work_is_linear(shape):
  # Work counted in executed lines, not timed: twice the input may cost at most twice the
  # lines (plus a constant); a quadratic scan would cost four times as many.
  make = _DEEP_INPUTS[shape]
  small, large = (_lines_run(extract_boxed, make(n)) for n in (5_000, 10_000))
  assert large <= 2 * small + 50, (small, large)


@pytest.mark.parametrize("text, expected", [
    ("work\n#### 42", "42"),
    ("#### 1\nmore\n#### 2\n", "2"),
    ("The answer is 12.", "12"),
    ("Final answer: $\\frac{3}{4}$", "\\frac{3}{4}"),
    ("answer: 7\nso the answer is 8", "8"),
    ("\\boxed{5}\n#### 6", "5"),  # a box beats the other forms
    ("nothing", None),
    ("#### ", None),
])
def test_extract_answer(text, expected):
  assert extract_answer(text) == expected


def test_brace_depth():
  assert brace_depth("1") == 0
  assert brace_depth("\\frac{1}{2}") == 1
  assert brace_depth("{(1)}[2]") == 2
  assert brace_depth("}}}{") == 1


# ---------------------------------------------------------------------------------------------
# WorkerPool (functions at module level: the workers import them by name)


def _double(x):
  return 2 * x


def _sleep_then(x):
  time.sleep(x)
  return x


def _stuck(x):
  # Like C code that never returns to the interpreter: the soft timer's signal is never handled.
  signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
  time.sleep(x)
  return x


def _die(code):
  os._exit(code)


def _segfault(_):
  os.kill(os.getpid(), signal.SIGSEGV)


def _raise(msg):
  raise ValueError(msg)


def _pid(_):
  return os.getpid()


def _gone(pid):
  """The process no longer exists, not even as a zombie."""
  return not os.path.exists(f"/proc/{pid}")


@pytest.fixture(scope="module")
def pool():
  with WorkerPool(2, max_tasks_per_worker=1000, preload=("math_verify",)) as p:
    p.wait_ready()
    yield p


def test_pool_map_keeps_order(pool):
  assert pool.map(_double, list(range(20)), timeout_s=10) == [(True, 2 * i) for i in range(20)]
  assert pool.map(_double, [], timeout_s=1) == []


def test_pool_errors_do_not_kill_workers(pool):
  before = pool.pids()
  res = pool.map(_raise, ["boom"], timeout_s=10)
  assert res == [(False, "error: ValueError: boom")]
  assert pool.pids() == before


def test_pool_soft_timeout_interrupts_python_without_a_new_worker():
  # The soft timer fires at 3 s and the hard deadline is at 30 s: the interrupted worker has
  # 27 s to answer before it would be killed, and the short call 3 s to finish, so the outcome
  # does not depend on how loaded the machine is (the module pool's soft timer, at 0.8 of a
  # 1 s timeout, left the interrupted worker 0.2 s).
  with WorkerPool(2, soft_timeout_fraction=0.1) as p:
    p.wait_ready()
    before = p.pids()
    res = p.map(_sleep_then, [30.0, 0.01], timeout_s=30.0)
    assert res == [(False, "timeout"), (True, 0.01)]
    assert p.pids() == before  # interrupted, not killed: the worker is reused
    assert p.stats["soft_timeouts"] == 1 and p.stats["timeouts"] == 0


def test_pool_hard_timeout_kills_and_replaces_the_worker(pool):
  before = pool.pids()
  timeouts = pool.stats["timeouts"]
  res = pool.map(_stuck, [30.0, 30.0], timeout_s=1.0)
  # Both stuck "in C" (the soft timer's signal is blocked). Had the pool waited for them, they
  # would have answered (True, 30.0) after 30 s: "timeout" shows they were killed at the
  # deadline, whatever the machine's speed.
  assert res == [(False, "timeout"), (False, "timeout")]
  assert pool.stats["timeouts"] == timeouts + 2
  after = pool.pids()
  assert set(after).isdisjoint(before)
  deadline = time.monotonic() + 60  # a guard against a hang only: they are reaped at once
  while not all(_gone(p) for p in before) and time.monotonic() < deadline:
    time.sleep(0.05)
  assert all(_gone(p) for p in before), "killed workers must be reaped"
  assert pool.map(_double, [4], timeout_s=10) == [(True, 8)]


@pytest.mark.parametrize("fn, arg", [(_die, 3), (_segfault, None)])
def test_pool_crash_is_reported_and_worker_replaced(pool, fn, arg):
  res = pool.map(fn, [arg], timeout_s=10)
  assert res == [(False, "crashed")]
  assert pool.map(_double, [1, 2, 3], timeout_s=10) == [(True, 2), (True, 4), (True, 6)]


def test_pool_recycles_workers_and_leaves_no_processes():
  with WorkerPool(1, max_tasks_per_worker=2, preload=("math_verify",)) as p:
    pids = [v for _, v in p.map(_pid, list(range(6)), timeout_s=20)]
    all_pids = set(pids) | set(p.pids())
    assert len(set(pids)) == 3  # 6 tasks, a new worker every 2
    assert p.stats["recycled"] == 3
  assert all(_gone(pid) for pid in all_pids)
  with pytest.raises(RuntimeError, match="closed"):
    p.map(_double, [1], timeout_s=1)
  p.close()  # idempotent


def test_pool_rejects_bad_arguments():
  with pytest.raises(ValueError, match="num_workers"):
    WorkerPool(0)
  with pytest.raises(ValueError, match="context"):
    WorkerPool(1, context="fork")


# ---------------------------------------------------------------------------------------------
# MathVerifier: one batch over the whole table (adversarial cases included), then per-case checks.

_TIMEOUT_S = 2.0  # tight: the pathological cases below are cut off here
_ROOMY_S = 120.0  # for the cases whose verdict must not depend on the machine's speed
_WORKERS = 2
_HUGE = "lorem ipsum " * 300_000  # ~3.6 MB of text
_PATHOLOGICAL = {"timeout", "wrong_answer"}  # may finish on a fast machine, must not hang
_BROKEN = {"parse_error", "wrong_answer"}

# (id, completion, gold, expected reason or set of acceptable reasons)
CASES = [
    # equivalent forms
    ("frac_vs_decimal", "so \\boxed{\\frac{1}{2}}", "0.5", "correct"),
    ("decimal_vs_frac", "\\boxed{0.5}", "\\frac{1}{2}", "correct"),
    ("dfrac_vs_slash", "\\boxed{\\dfrac{1}{2}}", "1/2", "correct"),
    ("frac12_short", "\\boxed{\\frac12}", "\\frac{1}{2}", "correct"),
    ("sqrt_simplified", "\\boxed{2\\sqrt{2}}", "\\sqrt{8}", "correct"),
    ("sqrt_unsimplified", "\\boxed{\\sqrt{8}}", "2\\sqrt2", "correct"),
    ("sqrt_frac", "\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{1}{2}\\sqrt{3}", "correct"),
    ("unit_cm", "\\boxed{5\\text{ cm}}", "5", "correct"),
    ("unit_dollars", "\\boxed{10 \\text{ dollars}}", "10", "correct"),
    ("percent_same", "\\boxed{50\\%}", "50\\%", "correct"),
    ("percent_vs_decimal", "\\boxed{0.5}", "50\\%", "correct"),
    ("set_order", "\\boxed{\\{1,2\\}}", "\\{2,1\\}", "correct"),
    ("interval_spaces", "\\boxed{[0,1)}", "[0, 1)", "correct"),
    ("interval_infinity", "\\boxed{(-\\infty, 2]}", "(-\\infty,2]", "correct"),
    ("tuple", "\\boxed{\\left(\\frac{1}{2}, 3\\right)}", "(0.5, 3)", "correct"),
    ("negative", "\\boxed{-3}", "-3", "correct"),
    ("negative_decimal", "\\boxed{-3.0}", "-3", "correct"),
    ("negative_frac", "\\boxed{\\frac{-1}{2}}", "-\\frac{1}{2}", "correct"),
    ("sci_latex", "\\boxed{1.5\\times 10^{3}}", "1500", "correct"),
    ("sci_plain", "\\boxed{1.5e3}", "1500", "correct"),
    ("sci_negative_exp", "\\boxed{2.5 \\cdot 10^{-2}}", "0.025", "correct"),
    ("thousands_sep", "\\boxed{1,000}", "1000", "correct"),
    ("equation_rhs", "\\boxed{x=3}", "3", "correct"),
    ("pi", "\\boxed{\\pi}", "\\pi", "correct"),
    ("power", "\\boxed{3^{2}}", "9", "correct"),
    ("polynomial_order", "\\boxed{2x+1}", "1+2x", "correct"),
    ("fbox", "\\fbox{7}", "7", "correct"),
    ("boxed_no_braces", "the result is \\boxed 5", "5", "correct"),
    ("boxed_in_math", "$x = \\boxed{\\sqrt{2}}$", "\\sqrt{2}", "correct"),
    ("gsm8k", "3 + 4 = 7 apples\n#### 7", "7", "correct"),
    ("answer_is_line", "Adding them: the answer is 12.", "12", "correct"),
    ("answer_colon_latex", "Answer: $\\frac{3}{4}$", "0.75", "correct"),
    ("gold_boxed", "\\boxed{4}", "\\boxed{4}", "correct"),
    ("last_box_wins_right", "first \\boxed{3}, corrected: \\boxed{4}", "4", "correct"),
    # wrong answers
    ("wrong_int", "\\boxed{5}", "6", "wrong_answer"),
    ("wrong_sign", "\\boxed{-5}", "5", "wrong_answer"),
    ("wrong_rounding", "\\boxed{0.33}", "\\frac{1}{3}", "wrong_answer"),
    ("wrong_tuple_order", "\\boxed{(2,1)}", "(1,2)", "wrong_answer"),
    ("wrong_set", "\\boxed{\\{1,3\\}}", "\\{1,2\\}", "wrong_answer"),
    ("wrong_interval_end", "\\boxed{[0,1]}", "[0,1)", "wrong_answer"),
    ("wrong_sqrt", "\\boxed{2\\sqrt{3}}", "\\sqrt{6}", "wrong_answer"),
    ("last_box_wins_wrong", "first \\boxed{3}, corrected: \\boxed{4}", "3", "wrong_answer"),
    ("gsm8k_wrong", "#### 41", "42", "wrong_answer"),
    # no answer / malformed
    ("empty", "", "1", "no_answer"),
    ("no_box", "I don't know.", "1", "no_answer"),
    ("empty_box", "\\boxed{}", "1", "no_answer"),
    ("unbalanced_box", "so \\boxed{3", "3", "no_answer"),
    ("huge_no_answer", _HUGE, "1", "no_answer"),
    ("huge_then_box", _HUGE + "\\boxed{7}", "7", "correct"),
    ("stray_braces_around", "}}}}{{{{ \\boxed{1} }}}{{", "1", "correct"),
    ("deep_braces_balanced", "\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}", "1",
     "parse_error"),
    ("deep_braces_unbalanced", "\\boxed{" + "{" * 5000 + "1", "1", "no_answer"),
    ("moderately_deep_braces", "\\boxed{" + "{" * 14 + "1" + "}" * 14 + "}", "1",
     {"timeout", "correct"}),
    ("long_answer", "\\boxed{" + "1+" * 1000 + "1}", "1001", "parse_error"),
    ("empty_frac", "\\boxed{\\frac{}{}}", "1", _BROKEN),
    ("nonsense_parens", "\\boxed{)(}", "1", _BROKEN),
    ("tower_9", "\\boxed{9^{9^{9^9}}}", "1", _PATHOLOGICAL),
    ("tower_10", "\\boxed{10^{10^{10}}}", "5", _PATHOLOGICAL),
    ("power_2_2_30", "\\boxed{2^{2^{30}}}", "4", _PATHOLOGICAL),
    ("factorial_huge", "\\boxed{1000000!}", "1", _PATHOLOGICAL),
    ("gold_empty", "\\boxed{1}", "", "gold_parse_error"),
    # a normal case after the adversarial ones
    ("normal_after", "\\boxed{\\frac{2}{4}}", "0.5", "correct"),
]


def _timed_out_allowed(expected) -> bool:
  """Whether a case's verdict may be a timeout (it is pathological): such cases are scored
  only under the tight limit; every other case must get its one verdict at any speed."""
  return isinstance(expected, set) and "timeout" in expected


@pytest.fixture(scope="module")
def table_results():
  """Scores the whole table in one batch under the tight limit (adversarial cases included),
  then, on the same pool, every case that is not pathological again with a roomy limit.

  Returns ({id: tight Verdict}, {id: roomy Verdict}, wall seconds of the tight batch, the
  verdicts of a normal call after both, the pool's stats)."""
  with MathVerifier(num_workers=_WORKERS, timeout_s=_TIMEOUT_S) as v:
    v.pool.wait_ready()
    t = time.monotonic()
    verdicts = v.score([c[1] for c in CASES], [c[2] for c in CASES])
    wall = time.monotonic() - t
    tight = {c[0]: verdict for c, verdict in zip(CASES, verdicts)}
    # A slow or loaded machine can push any case past 2 s; under a roomy limit only a hang
    # could, so there the verdict depends on the answer alone.
    v.timeout_s = _ROOMY_S
    steady = [c for c in CASES if not _timed_out_allowed(c[3])]
    roomy = dict(zip([c[0] for c in steady],
                     v.score([c[1] for c in steady], [c[2] for c in steady])))
    # The pool survived: a normal call after the batches still scores correctly.
    after = v.score(["\\boxed{\\sqrt{4}}", "\\boxed{3}"], ["2", "4"])
    yield tight, roomy, wall, after, dict(v.pool.stats)


def test_table_size():
  assert len(CASES) >= 50
  assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case_id, completion, gold, expected", CASES, ids=[c[0] for c in CASES])
def test_math_verifier_case(table_results, case_id, completion, gold, expected):
  del completion, gold
  tight, roomy = table_results[0][case_id], table_results[1].get(case_id)
  allowed = expected if isinstance(expected, set) else {expected}
  for verdict in (tight, roomy):
    assert verdict is None or isinstance(verdict, Verdict)
  if _timed_out_allowed(expected):
    assert roomy is None
  else:  # its one verdict, at any speed; in the tight batch, that or a cut-off
    assert roomy.reason in allowed, f"{case_id}: got {roomy}"
    allowed = allowed | {"timeout"}
  assert tight.reason in allowed, f"{case_id}: got {tight} under {_TIMEOUT_S} s"
  for verdict in (tight, roomy):
    if verdict is not None:
      assert verdict.reward == (1.0 if verdict.reason == "correct" else 0.0)


def test_math_verifier_batch_is_bounded_and_pool_survives(table_results):
  tight, _, wall, after, stats = table_results
  # Every call ends by its deadline, so the batch is bounded by the calls' deadlines; the
  # margin is for what they exclude (replacing killed workers, the prefilter) and only guards
  # against a hang: it is not a speed requirement.
  n_pool = len(CASES)  # an upper bound on the calls that reach the pool
  bound = _TIMEOUT_S * math.ceil(n_pool / _WORKERS) + 120.0
  assert wall < bound, f"batch took {wall:.1f} s, bound {bound:.1f} s"
  # Each "timeout" verdict came from the pool's deadline: a soft interrupt or a kill (the
  # roomy batch and the call after it have none: see test_math_verifier_case).
  n_timeouts = sum(v.reason == "timeout" for v in tight.values())
  assert stats.get("timeouts", 0) + stats.get("soft_timeouts", 0) == n_timeouts
  assert after == [Verdict(1.0, "correct"), Verdict(0.0, "wrong_answer")]
  assert stats.get("crashes", 0) == 0


def test_math_verifier_rejects_mismatched_lengths(table_results):
  del table_results
  with MathVerifier(num_workers=1, timeout_s=1.0) as v:
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
      v.score(["a", "b"], ["1"])
    assert v.score([], []) == []
    assert v.score(["no answer"], ["1"]) == [Verdict(0.0, "no_answer")]
