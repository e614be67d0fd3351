"""Tests for the SI alignment stage: si_jax.si.align, .truncate and .token_credit.

Hand-made token sequences first (each edit kind, edits at the ends, adjacent operations merging
into one edit), then properties on random sequences against a dynamic-programming Levenshtein
written here, then truncation with a stub verifier, then the array code on 1 and 8 devices, and
one end-to-end run from id lists to sharded advantages.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from si_jax import sharding
from si_jax.tools.bench import align as align_bench
from si_jax.si.align import Alignment, align, align_many, edit_masks, graft
from si_jax.si.token_credit import edit_arrays, make_credit_fn, token_credit
from si_jax.si.truncate import adaptive_truncation


def levenshtein_dp(a, b) -> int:
  """Reference Levenshtein distance: the textbook O(len_a * len_b) table."""
  prev = list(range(len(b) + 1))
  for i in range(1, len(a) + 1):
    cur = [i] + [0] * len(b)
    for j in range(1, len(b) + 1):
      cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
    prev = cur
  return prev[-1]


def edits_of(al: Alignment) -> list[tuple[int, int, int, int]]:
  return list(zip(al.a_start.tolist(), al.a_end.tolist(), al.b_start.tolist(),
                  al.b_end.tolist()))


def random_pairs(n: int, seed: int, max_len: int = 40, vocab: int = 4):
  """Seeded random id-list pairs, lengths 0..max_len, small vocab so matches happen."""
  rng = np.random.default_rng(seed)
  return [(rng.integers(0, vocab, rng.integers(0, max_len + 1)).tolist(),
           rng.integers(0, vocab, rng.integers(0, max_len + 1)).tolist()) for _ in range(n)]


# --- hand-made alignments ---------------------------------------------------------------------

# (name, failed, repaired, edits [(a_start, a_end, b_start, b_end)], distance)
HAND_MADE = [
    ("substitution", [1, 2, 3, 4, 5], [1, 2, 9, 4, 5], [(2, 3, 2, 3)], 1),
    ("insertion", [1, 2, 3], [1, 2, 7, 8, 3], [(2, 2, 2, 4)], 2),
    ("deletion", [1, 2, 3, 4], [1, 4], [(1, 3, 1, 1)], 2),
    ("two separated edits", [1, 2, 3, 4, 5, 6], [1, 9, 3, 4, 6], [(1, 2, 1, 2), (4, 5, 4, 4)],
     2),
    ("change at the very start", [1, 2, 3], [7, 2, 3], [(0, 1, 0, 1)], 1),
    ("change at the very end", [1, 2, 3], [1, 2, 3, 8], [(3, 3, 3, 4)], 1),
    ("substitution + insertion are one edit", [1, 2, 3], [1, 8, 9, 3], [(1, 2, 1, 3)], 2),
    ("identical", [5, 6, 7], [5, 6, 7], [], 0),
    ("empty failed", [], [1, 2], [(0, 0, 0, 2)], 2),
    ("empty repaired", [1, 2], [], [(0, 2, 0, 0)], 2),
    ("both empty", [], [], [], 0),
]


@pytest.mark.parametrize("name, a, b, edits, distance", HAND_MADE, ids=[c[0] for c in HAND_MADE])
def test_hand_made_edits(name, a, b, edits, distance):
  al = align(a, b)
  assert edits_of(al) == edits
  assert al.distance == distance == levenshtein_dp(a, b)
  assert (al.len_a, al.len_b, al.num_edits) == (len(a), len(b), len(edits))
  for x in (al.a_start, al.a_end, al.b_start, al.b_end):
    assert x.dtype == np.int32 and x.shape == (len(edits),)


@pytest.mark.parametrize("name, a, b, edits, distance", HAND_MADE, ids=[c[0] for c in HAND_MADE])
def test_hand_made_masks_mark_exactly_the_changed_tokens(name, a, b, edits, distance):
  g_minus, g_plus = edit_masks(align(a, b))
  want_minus = np.zeros(len(a), bool)
  want_plus = np.zeros(len(b), bool)
  for a0, a1, b0, b1 in edits:
    want_minus[a0:a1] = True
    want_plus[b0:b1] = True
  np.testing.assert_array_equal(g_minus, want_minus)
  np.testing.assert_array_equal(g_plus, want_plus)


def test_masks_by_hand_with_two_edits():
  a, b = [1, 2, 3, 4, 5, 6], [1, 9, 3, 4, 6]  # 2 -> 9, then 5 deleted
  al = align(a, b)
  assert [m.tolist() for m in edit_masks(al)] == [[0, 1, 0, 0, 1, 0], [0, 1, 0, 0, 0]]
  assert [m.tolist() for m in edit_masks(al, k=1)] == [[0, 1, 0, 0, 0, 0], [0, 1, 0, 0, 0]]
  assert [m.sum() for m in edit_masks(al, k=0)] == [0, 0]
  assert [m.tolist() for m in edit_masks(al, k=5)] == [m.tolist() for m in edit_masks(al)]


def test_normalized_distance():
  assert align([1, 2, 3, 4], [1, 4]).normalized_distance == 0.5
  assert align([1], [2, 3, 4, 5]).normalized_distance == 4 / 4
  assert align([], []).normalized_distance == 0.0


def test_graft_by_hand():
  a, b = [1, 2, 3, 4, 5, 6], [1, 9, 3, 4, 6]
  al = align(a, b)
  assert graft(a, b, al, 0) == a
  assert graft(a, b, al, 1) == [1, 9, 3, 4, 5, 6]  # only 2 -> 9
  assert graft(a, b, al, 2) == b
  assert graft(a, b, al, 7) == b
  assert graft(np.asarray(a), np.asarray(b), al, 1) == [1, 9, 3, 4, 5, 6]


# --- properties on random sequences -----------------------------------------------------------


def test_distance_equals_dynamic_programming():
  for a, b in random_pairs(300, seed=0) + random_pairs(50, seed=1, vocab=50):
    assert align(a, b).distance == levenshtein_dp(a, b), (a, b)


def test_edits_are_ordered_disjoint_and_separated_by_equal_tokens():
  for a, b in random_pairs(300, seed=2):
    al = align(a, b)
    for e in range(al.num_edits):
      assert al.a_start[e] <= al.a_end[e] and al.b_start[e] <= al.b_end[e]
      assert al.a_end[e] - al.a_start[e] + al.b_end[e] - al.b_start[e] > 0  # changes something
      if e:  # a positive run of equal tokens, as long on both sides, lies between edits
        gap = al.a_start[e] - al.a_end[e - 1]
        assert gap > 0 and al.b_start[e] - al.b_end[e - 1] == gap
    if al.num_edits:
      assert al.a_start[0] == al.b_start[0]  # the same prefix precedes the first edit
      assert al.len_a - al.a_end[-1] == al.len_b - al.b_end[-1]


def test_applying_every_edit_gives_the_repair_and_each_graft_its_prefix_of_edits():
  for a, b in random_pairs(300, seed=3):
    al = align(a, b)
    assert graft(a, b, al, al.num_edits) == b
    assert graft(a, b, al, 0) == a
    for k in range(1, al.num_edits):
      # Applying edit by edit from the failed sequence: the equal gaps come from the failed side.
      expect = list(a[:al.a_start[0]])
      for e in range(k):
        expect += b[al.b_start[e]:al.b_end[e]]
        nxt = al.a_start[e + 1]
        expect += a[al.a_end[e]:nxt]
      expect += a[al.a_start[k]:]
      assert graft(a, b, al, k) == expect


def test_unmasked_tokens_of_both_sides_are_the_same_sequence():
  for a, b in random_pairs(300, seed=4):
    al = align(a, b)
    g_minus, g_plus = edit_masks(al)
    kept_a = [t for t, m in zip(a, g_minus) if not m]
    kept_b = [t for t, m in zip(b, g_plus) if not m]
    assert kept_a == kept_b
    # Every changed token is counted by the distance: substitutions on both sides, indels once.
    assert max(g_minus.sum(), g_plus.sum()) <= al.distance <= g_minus.sum() + g_plus.sum()
    for k in range(al.num_edits + 1):
      gm, gp = edit_masks(al, k)
      assert gm.sum() == sum(al.a_end[:k] - al.a_start[:k])
      assert gp.sum() == sum(al.b_end[:k] - al.b_start[:k])


def test_numpy_inputs_align_like_lists():
  pairs = random_pairs(100, seed=5, vocab=6)
  big = 0x10FFFF  # code point limit of the str path: larger ids take the list path
  pairs += [([0xD800, 1, 0xDFFF, 2], [0xD800, 3, 2]), ([big + 5, 1, big + 6], [big + 5, big + 6]),
            ([], [7])]
  for a, b in pairs:
    want = align(a, b)
    for dtype in (np.int32, np.int64, np.uint32):
      got = align(np.asarray(a, dtype), np.asarray(b, dtype))
      assert edits_of(got) == edits_of(want) and got.distance == want.distance
      assert (got.len_a, got.len_b) == (want.len_a, want.len_b)


def test_score_hint_changes_speed_not_the_alignment():
  for a, b in random_pairs(100, seed=6, vocab=8):
    want = edits_of(align(a, b, score_hint=None))
    for hint in (1, 4, 1000):
      assert edits_of(align(a, b, score_hint=hint)) == want


def test_align_many_is_align_of_each_pair():
  pairs = random_pairs(20, seed=7)
  assert [edits_of(x) for x in align_many(pairs)] == [edits_of(align(a, b)) for a, b in pairs]


@pytest.mark.parametrize("failed, message", [
    (np.zeros((2, 3), np.int32), "failed_ids must be a 1-D sequence"),
    (np.asarray([1.0, 2.0]), "failed_ids must be a 1-D sequence of integer token ids"),
    (np.asarray([3, -1]), "failed_ids has a negative token id -1 at position 1"),
])
def test_bad_inputs_are_named(failed, message):
  with pytest.raises(ValueError, match=message):
    align(failed, [1, 2])


def test_alignment_checks_its_bounds():
  al = Alignment(a_start=[1], a_end=[2], b_start=[1], b_end=[3], distance=2, len_a=3, len_b=4)
  assert al.a_start.dtype == np.int32 and al.num_edits == 1
  with pytest.raises(ValueError, match=r"must be 1-D of one length, got shapes \[\(2,\), \(1,\)"):
    Alignment(a_start=[1, 5], a_end=[2], b_start=[1], b_end=[3], distance=2, len_a=3, len_b=4)


def test_graft_and_masks_refuse_bad_k_and_foreign_sequences():
  al = align([1, 2, 3], [1, 3])
  with pytest.raises(ValueError, match="graft: k must be >= 0, got -1"):
    graft([1, 2, 3], [1, 3], al, -1)
  with pytest.raises(ValueError, match=r"lengths \(2, 2\) do not match .*len_a=3, len_b=2"):
    graft([1, 2], [1, 3], al, 1)
  with pytest.raises(ValueError, match="edit_masks: k must be >= 0 or None, got -2"):
    edit_masks(al, -2)


# --- adaptive truncation ----------------------------------------------------------------------

MARK = 99


def marked_pair(num_edits: int, marker_edit: int | None) -> tuple[list[int], list[int]]:
  """num_edits separated substitutions t -> t + 50; edit `marker_edit` writes MARK instead."""
  failed = list(range(1, 2 * num_edits + 2))  # 1..2n+1: substitute the even positions
  repaired = list(failed)
  for e in range(num_edits):
    repaired[2 * e + 1] = MARK if e == marker_edit else failed[2 * e + 1] + 50
  return failed, repaired


class StubVerifier:
  """Accepts a graft iff it contains MARK; records every batch it is called with."""

  def __init__(self):
    self.batches: list[list[list[int]]] = []

  def __call__(self, pairs, grafts):
    assert len(pairs) == len(grafts)
    self.batches.append([list(g) for g in grafts])
    return [MARK in g for g in grafts]


def run_truncation(specs, k):
  pairs = [marked_pair(n, m) for n, m in specs]
  failed, repaired = [p[0] for p in pairs], [p[1] for p in pairs]
  alignments = align_many(pairs)
  assert [a.num_edits for a in alignments] == [n for n, _ in specs]
  verify = StubVerifier()
  kstar, stats = adaptive_truncation(failed, repaired, alignments, verify, k)
  return kstar, stats, verify.batches, (failed, repaired, alignments)


def test_truncation_picks_k_2k_or_all_as_the_verifier_dictates():
  # (num_edits, edit holding the marker), K = 2:
  specs = [(5, 1),     # marker among the first 2 edits -> K* = 2
           (5, 3),     # among the first 4 -> K* = 4
           (5, 4),     # only the full repair has it -> all = 5
           (2, 0),     # num_edits <= K: straight to all, never verified
           (3, 2),     # fails at K, num_edits <= 2K: all without a second call
           (9, None)]  # never verifies -> all
  kstar, stats, batches, (failed, repaired, alignments) = run_truncation(specs, k=2)
  assert kstar == [2, 4, 5, 2, 3, 9]
  assert (stats.at_k, stats.at_2k, stats.at_all) == (1, 1, 4)
  assert stats.kstar == tuple(kstar)
  # Batched: one call at K with every pair that has more than K edits, one at 2K with those
  # that failed at K and have more than 2K edits.
  assert len(batches) == stats.verify_calls == 2
  assert batches[0] == [graft(failed[i], repaired[i], alignments[i], 2) for i in (0, 1, 2, 4, 5)]
  assert batches[1] == [graft(failed[i], repaired[i], alignments[i], 4) for i in (1, 2, 5)]
  assert stats.grafts_verified == 8
  metrics = stats.metrics()
  assert metrics["si/kstar_at_k"] == 1 and metrics["si/kstar_mean"] == pytest.approx(25 / 6)
  assert metrics["si/kstar_at_k_share"] == pytest.approx(2 / 6)  # (5, 1) and (2, 0): K* <= 2


def test_truncation_calls_the_verifier_only_when_needed():
  # Everything verifies at K: one call, holding only the pair with more than K edits.
  kstar, stats, batches, _ = run_truncation([(3, 0), (4, 2)], k=3)
  assert kstar == [3, 3] and len(batches) == 1 and len(batches[0]) == 1
  assert (stats.at_k, stats.at_2k, stats.at_all) == (1, 0, 1)  # (3, 0): num_edits <= K
  # Nobody has more than K edits: no call at all.
  kstar, stats, batches, _ = run_truncation([(1, 0), (2, None)], k=2)
  assert kstar == [1, 2] and batches == [] and stats.verify_calls == 0
  kstar, stats, batches, _ = run_truncation([], k=1)
  assert kstar == [] and batches == [] and stats.metrics()["si/kstar_mean"] == 0.0


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_truncation_refuses_k_below_one(k):
  with pytest.raises(ValueError, match=r"adaptive_truncation: k must be an int >= 1, got"):
    adaptive_truncation([], [], [], StubVerifier(), k)


def test_truncation_names_a_verifier_that_miscounts():
  failed, repaired = marked_pair(3, 0)
  al = align(failed, repaired)
  with pytest.raises(ValueError, match="verify returned 0 results for 1 grafts at K=1"):
    adaptive_truncation([failed], [repaired], [al], lambda pairs, grafts: [], 1)
  with pytest.raises(TypeError, match="verify result 0 at K=1 must be a bool, got int"):
    adaptive_truncation([failed], [repaired], [al], lambda pairs, grafts: [1], 1)
  with pytest.raises(ValueError, match="1 failed, 1 repaired and 2 alignments"):
    adaptive_truncation([failed], [repaired], [al, al], StubVerifier(), 1)


# --- truncation by continuation ---------------------------------------------------------------


class ChainPolicy:
  """A scripted policy on a propagating chain: the failure is 1..n with value v_j at position j,
  every value after a wrong one is computed from it (so every later value differs too). Its
  continuation of a prefix recomputes the rest from the last value of the prefix, rightly
  when `competent`; a continuation verifies iff the whole sequence is the correct chain.
  attempt() returns, per prefix, the fraction of its `samples` continuations that verify."""

  def __init__(self, correct, competent=True, samples=2):
    self.correct, self.competent, self.samples = correct, competent, samples
    self.calls = []

  def __call__(self, pairs, prefixes, rung):
    self.calls.append((rung, list(pairs), [list(p) for p in prefixes]))
    out = []
    for i, prefix in zip(pairs, prefixes):
      good = self.correct[i]
      right = prefix == good[:len(prefix)]
      ok = [right and self.competent] * (self.samples - 1) + [False]  # one sample errs
      out.append(sum(ok) / self.samples)
    return out


def _propagated(n_values: int, wrong_at: int):
  """(failed, repaired): a chain whose value at `wrong_at` is wrong and propagates: every later
  value is shifted too, so the repair differs from the failure at every value from there on
  (separated by the unchanged operator tokens: one edit per value)."""
  correct, failed = [], []
  for j in range(n_values):
    correct += [100 + j, 7]            # value, then an operator token both sides share
    failed += [100 + j + (50 if j >= wrong_at else 0), 7]
  return failed, correct


def test_continuation_truncation_credits_a_propagated_mistake_at_its_first_edit():
  """The graft of the first edit keeps the failure's later (wrong-carried) values and never
  verifies: K* = all. The policy continuing the repair's prefix after the first edit
  recomputes them: K* = K = 1. A policy that never finishes right leaves K* = all."""
  from si_jax.si.truncate import continuation_truncation
  pairs = [_propagated(5, 1), _propagated(4, 0), _propagated(3, 2)]
  failed, repaired = [p[0] for p in pairs], [p[1] for p in pairs]
  alignments = align_many(pairs)
  assert [a.num_edits for a in alignments] == [4, 4, 1]

  def graft_ok(rows, grafts):
    return [g == repaired[i] for i, g in zip(rows, grafts)]

  kstar, _ = adaptive_truncation(failed, repaired, alignments, graft_ok, 1)
  assert kstar == [4, 4, 1]  # by graft: all edits, the downstream values are credited too

  policy = ChainPolicy(repaired)
  kstar, stats = continuation_truncation(repaired, alignments, policy, 1, pass_frac=0.5)
  assert kstar == [1, 1, 1] and (stats.at_k, stats.at_2k, stats.at_all) == (2, 0, 1)
  # one call per rung, the prefix ends with the first edit's repaired value
  (rung, rows, prefixes), (rung2, rows2, _) = policy.calls
  assert (rung, rows, rung2, rows2) == (0, [0, 1], 1, [])  # rung 2K: called with no pairs
  assert prefixes[0] == repaired[0][:int(alignments[0].b_end[0])] == [100, 7, 101]
  # a pass fraction above what the continuations reach: the rung does not pass
  kstar, _ = continuation_truncation(repaired, alignments, ChainPolicy(repaired), 1,
                                     pass_frac=1.0)
  assert kstar == [4, 4, 1]
  kstar, stats = continuation_truncation(repaired, alignments,
                                         ChainPolicy(repaired, competent=False), 1, 1e-9)
  assert kstar == [4, 4, 1] and stats.at_all == 3
  with pytest.raises(ValueError, match="pass_frac must be in"):
    continuation_truncation(repaired, alignments, policy, 1, pass_frac=0.0)
  # an edit that only deletes (the failure's first line is extra): the prefix still holds the
  # repair's token at that point, never nothing (which any solve from scratch would pass)
  from si_jax.si.truncate import prefix_end
  extra = align([9, 9, 100, 7, 101], [100, 7, 101])
  assert (extra.b_start[0], extra.b_end[0], prefix_end(extra, 1)) == (0, 0, 1)
  with pytest.raises(ValueError, match="attempt returned 1 results for 2 prefixes at K=1"):
    continuation_truncation(repaired, alignments, lambda p, x, r: [1.0], 1, 0.5)


def test_both_sides_gates_the_divergent_token_of_an_insertion_and_a_deletion():
  """An insertion has no failed-side token and a deletion no repaired-side token; with
  both_sides the token each side emitted where the other diverged carries the credit."""
  skip = align([5, 6, 8, 9], [5, 6, 7, 8, 9])  # the failure skipped 7 (an insertion)
  assert (skip.a_start[0], skip.a_end[0], skip.b_start[0], skip.b_end[0]) == (2, 2, 2, 3)
  assert edit_arrays([skip], "failed")[1].tolist() == [[2]]  # empty: [2, 2)
  start, end = edit_arrays([skip], "failed", both_sides=True)
  assert (start.tolist(), end.tolist()) == ([[2]], [[3]])  # the failure's 8, where 7 was due
  assert edit_arrays([skip], "repaired", both_sides=True)[1].tolist() == [[3]]  # unchanged
  extra = align([5, 6, 7, 8, 9], [5, 6, 8, 9])  # the failure wrote a step too many
  start, end = edit_arrays([extra], "repaired", both_sides=True)
  assert (start.tolist(), end.tolist()) == ([[2]], [[3]])  # the repair's 8, where 7 was
  tail = align([5, 6], [5, 6, 7])  # an insertion at the very end: the failure's last token
  start, end = edit_arrays([tail], "failed", both_sides=True)
  assert (start.tolist(), end.tolist()) == ([[1]], [[2]])
  # placed in rows, the failed row of the skipped step is gated on its 8
  credit = make_credit_fn(sharding.make_mesh(devices=jax.devices()[:1]))
  s, e = edit_arrays([skip], "failed", both_sides=True)
  gate, adv = credit(s, e, np.array([1], np.int32), np.array([3], np.int32),
                     np.array([-1.0], np.float32), width=8)
  assert gate.tolist() == [[0, 0, 0, 0, 0, 1, 0, 0]] and adv[0, 5] == -1.0


# --- token credit: edits -> gates and advantages in packed rows -------------------------------


def placed(alignments, kstar, offsets, width, side):
  """Reference: edit_masks of each row written at its offset into [R, width] float32."""
  out = np.zeros((len(alignments), width), np.float32)
  for r, (al, k, off) in enumerate(zip(alignments, kstar, offsets)):
    mask = edit_masks(al, int(k))[0 if side == "failed" else 1]
    out[r, off:off + len(mask)] = mask
  return out


def test_token_credit_by_hand():
  # One row: edit covers response tokens [1, 3), the response starts at column 2 of 6.
  gate, adv = token_credit(np.array([[1]]), np.array([[3]]), np.array([1]), np.array([2]),
                           np.array([-0.5], np.float32), width=6)
  np.testing.assert_array_equal(gate, [[0, 0, 0, 1, 1, 0]])
  np.testing.assert_array_equal(adv, [[0, 0, 0, -0.5, -0.5, 0]])
  assert gate.dtype == adv.dtype == np.float32
  # Two edits, only the first active; an empty padding edit gates nothing.
  gate, _ = token_credit(np.array([[0, 3, 0]]), np.array([[1, 4, 0]]), np.array([1]),
                         np.array([0]), np.array([1.0]), width=5)
  np.testing.assert_array_equal(gate, [[1, 0, 0, 0, 0]])


def test_edit_arrays_pad_with_empty_edits():
  als = align_many([([1, 2, 3, 4, 5, 6], [1, 9, 3, 4, 6]), ([1, 2], [1, 2]), ([1], [1, 7])])
  start, end = edit_arrays(als, "failed")
  assert start.dtype == end.dtype == np.int32 and start.shape == (3, 2)
  assert start.tolist() == [[1, 4], [0, 0], [1, 0]] and end.tolist() == [[2, 5], [0, 0], [1, 0]]
  start, end = edit_arrays(als, "repaired", e_max=3)
  assert start.tolist() == [[1, 4, 0], [0, 0, 0], [1, 0, 0]]
  assert end.tolist() == [[2, 4, 0], [0, 0, 0], [2, 0, 0]]
  assert edit_arrays(align_many([([1], [2])] * 2), "failed")[0].shape == (2, 1)
  three = align(list(range(10)), [0, 9, 2, 9, 4, 9])
  assert three.num_edits == 3 and edit_arrays([three], "failed")[0].shape == (1, 4)  # bucket
  with pytest.raises(ValueError, match="e_max=1 but alignment 0 has 2 edits"):
    edit_arrays(als, "failed", e_max=1)
  with pytest.raises(ValueError, match="side must be 'failed' or 'repaired', got 'both'"):
    edit_arrays(als, "both")


def hand_made_rows():
  """8 rows: the hand-made cases (minus 'both empty') with varied K* and offsets."""
  cases = [c for c in HAND_MADE if c[0] != "both empty"][:8]
  als = align_many([(a, b) for _, a, b, _, _ in cases])
  kstar = np.array([al.num_edits for al in als], np.int32)
  kstar[3] = 1  # two separated edits, only the first active
  offsets = np.array([0, 1, 2, 3, 4, 5, 6, 7], np.int32)
  return als, kstar, offsets


@pytest.mark.parametrize("devices", [1, 8])
def test_credit_fn_equals_edit_masks_placed_at_the_offsets(devices):
  mesh = sharding.make_mesh(data=devices, devices=jax.devices()[:devices])
  credit = make_credit_fn(mesh)
  als, kstar, offsets = hand_made_rows()
  width = 16
  for side, value in (("failed", -1.5), ("repaired", 2.0)):
    start, end = edit_arrays(als, side)
    values = np.full(len(als), value, np.float32)
    gate, adv = credit(start, end, kstar, offsets, values, width=width)
    want = placed(als, kstar, offsets, width, side)
    np.testing.assert_array_equal(np.asarray(gate), want)
    np.testing.assert_array_equal(np.asarray(adv), value * want)
    assert gate.shape == adv.shape == (len(als), width)


def test_credit_fn_pads_rows_to_a_rung_of_the_mesh_one_program_per_rung():
  """3, 5, 6 or 7 pairs on 8 devices run in the 8-row program (empty rows added and dropped):
  the number of kept repairs varies every step, the compiled shapes do not."""
  from si_jax import compilation
  credit = make_credit_fn(sharding.make_mesh(data=8))
  pairs = align_many(random_pairs(7, seed=8))
  compiles = []
  for n in (3, 5, 6, 7):
    als = pairs[:n]
    kstar = np.array([al.num_edits for al in als], np.int32)
    offsets = (np.arange(n, dtype=np.int32) * 3) % 10
    start, end = edit_arrays(als, "repaired", e_max=16)
    with compilation.counter().since() as c:
      gate, _ = credit(start, end, kstar, offsets, np.ones(n, np.float32), width=50)
    compiles.append(c[0].compiles)
    np.testing.assert_array_equal(gate, placed(als, kstar, offsets, 50, "repaired"))
  assert compiles[1:] == [0, 0, 0]


def test_credit_fn_many_edits_span_several_chunks():
  # 40 alternating substitutions: E_max 64 = 4 chunks of the kernel's scan.
  a = list(range(100))
  b = [t + 1000 if t % 2 and t < 80 else t for t in a]
  als = [align(a, b), align(a, a)]
  assert als[0].num_edits == 40
  from si_jax import compilation
  credit = make_credit_fn(sharding.make_mesh(devices=jax.devices()[:1]))
  start, end = edit_arrays(als, "failed")
  credit(start[:, :4], end[:, :4], np.array([4, 0]), np.array([3, 3]), np.ones(2), width=103)
  for kstar in ([40, 0], [33, 0], [17, 0], [16, 3]):
    with compilation.counter().since() as c:  # the program of K* <= 16 serves every K*
      gate, adv = credit(start, end, np.array(kstar), np.array([3, 3]), np.full(2, -0.5),
                         width=103)
    assert c[0].compiles == 0, (kstar, c[0])
    want = placed(als, kstar, [3, 3], 103, "failed")
    np.testing.assert_array_equal(np.asarray(gate), want)
    np.testing.assert_array_equal(np.asarray(adv), -0.5 * want)


@pytest.mark.parametrize("change, message", [
    (dict(offset=np.array([0, 10])), "row 1 has an edit ending at column 14 > width 12"),
    (dict(kstar=np.array([1, -1])), "kstar of row 1 is negative"),
    (dict(value=np.ones(3)), r"value must be \[R\] = \(2,\), got \(3,\)"),
    (dict(end=np.array([[0], [4]])), "row 0 has an edit with end < start"),
])
def test_credit_fn_names_bad_rows(change, message):
  args = dict(start=np.array([[1], [2]]), end=np.array([[3], [4]]), kstar=np.array([1, 1]),
              offset=np.array([0, 0]), value=np.ones(2))
  args.update(change)
  credit = make_credit_fn(sharding.make_mesh(devices=jax.devices()[:1]))
  with pytest.raises(ValueError, match=message):
    credit(**args, width=12)


# --- end to end -------------------------------------------------------------------------------


def ladder(num_edits: int, marker_edit: int | None, k: int) -> int:
  """K* by the rule of DESIGN 5.2 step 5 for a marked pair under StubVerifier."""
  verifies = lambda kk: marker_edit is not None and marker_edit < kk
  if num_edits <= k:
    return num_edits
  if verifies(k):
    return k
  if num_edits > 2 * k and verifies(2 * k):
    return 2 * k
  return num_edits


def test_end_to_end_from_id_lists_to_advantages_on_8_devices():
  """Pairs -> alignments -> adaptive truncation -> packed gates on an 8-device data mesh."""
  rng = np.random.default_rng(9)
  specs = []
  for _ in range(16):
    n = int(rng.integers(0, 9))
    specs.append((n, int(rng.integers(0, n)) if n and rng.random() < 0.7 else None))
  k = 2
  kstar, stats, batches, (failed, repaired, alignments) = run_truncation(specs, k)
  assert kstar == [ladder(n, m, k) for n, m in specs]
  assert len(batches) == stats.verify_calls <= 2

  mesh = sharding.make_mesh(data=8)
  credit = make_credit_fn(mesh)
  offsets = rng.integers(0, 10, len(specs)).astype(np.int32)  # left-padded prompts of any width
  width = 10 + max(len(r) for r in failed + repaired)
  for side, value in (("failed", -1.0), ("repaired", 1.0)):
    start, end = edit_arrays(alignments, side)
    gate, adv = credit(start, end, np.asarray(kstar), offsets,
                       np.full(len(specs), value, np.float32), width=width)
    want = placed(alignments, kstar, offsets, width, side)
    np.testing.assert_array_equal(np.asarray(adv), value * want)
    # Each gated row holds exactly its first K* edits' tokens (substitutions: 1 token each).
    np.testing.assert_array_equal(np.asarray(gate).sum(axis=1), kstar)


def test_bench_pairs_are_seeded_with_a_handful_of_short_edits():
  pairs = align_bench.make_pairs(30, 300, seed=1)
  assert pairs == align_bench.make_pairs(30, 300, seed=1)
  assert pairs != align_bench.make_pairs(30, 300, seed=2)
  for a, b in pairs:
    al = align(a, b)
    assert len(a) == 300 and 1 <= al.num_edits <= 10 and 1 <= al.distance <= 10 * 30
    assert all(0 <= t < 32_000 for t in a + b)
