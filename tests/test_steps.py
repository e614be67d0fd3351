"""Step segmentation: spans cover the text, and tokens map to the step of their first char."""

import numpy as np
import pytest

from si_jax.data.steps import Step, resolve_mode, segment_steps, token_step_index


def _texts(steps):
  return [s.text for s in steps]


def _assert_covers(text, steps):
  if not text:
    assert steps == []
    return
  assert steps[0].start == 0 and steps[-1].end == len(text)
  for a, b in zip(steps, steps[1:]):
    assert a.end == b.start
  for s in steps:
    assert s.start < s.end and s.text == text[s.start:s.end]


def test_lines_one_step_per_line_separators_attach_to_previous():
  text = "7+5=2\n2*3=6\n\n6-4=2\nAnswer: 2"
  steps = segment_steps(text, "lines")
  assert _texts(steps) == ["7+5=2\n", "2*3=6\n\n", "6-4=2\n", "Answer: 2"]
  assert steps[1] == Step(6, 13, "2*3=6\n\n")
  _assert_covers(text, steps)


def test_leading_whitespace_joins_first_step_and_trailing_joins_last():
  text = "\n  \n  a\nb\n\n"
  assert _texts(segment_steps(text, "lines")) == ["\n  \n  a\n", "b\n\n"]


def test_paragraphs_split_on_blank_lines_only():
  text = "First we add.\nSo 3.\n\nThen multiply.\n \nDone: 6"
  steps = segment_steps(text, "paragraphs")
  assert _texts(steps) == ["First we add.\nSo 3.\n\n", "Then multiply.\n \n", "Done: 6"]
  assert resolve_mode(text) == "paragraphs"
  _assert_covers(text, steps)


def test_markers_split_at_step_k_and_keep_a_preamble_with_content():
  text = "Let me think.\nStep 1: add 3.\nstill step one\nStep 2. times 2\n**Step 3:** done"
  steps = segment_steps(text)
  assert resolve_mode(text) == "markers"
  assert _texts(steps) == ["Let me think.\n", "Step 1: add 3.\nstill step one\n",
                           "Step 2. times 2\n", "**Step 3:** done"]
  # A whitespace-only preamble folds into the first step.
  assert _texts(segment_steps("\n\nStep 1: a\nStep 2: b", "markers")) == ["\n\nStep 1: a\n",
                                                                          "Step 2: b"]


def test_auto_falls_back_to_lines():
  assert resolve_mode("a\nb") == "lines"
  assert resolve_mode("a\nb\n\n") == "lines"  # trailing blank lines are not paragraph breaks
  with pytest.raises(ValueError, match="mode must be one of"):
    segment_steps("a", "sentences")


@pytest.mark.parametrize("text", ["", " ", "\n\n", "x", "no newline at all", "\n\nx\n\n"])
def test_degenerate_texts(text):
  steps = segment_steps(text)
  _assert_covers(text, steps)
  assert len(steps) == (1 if text else 0)


def test_cover_property_on_random_texts():
  rng = np.random.default_rng(0)
  alphabet = list("ab \n\n\t") + ["Step 1:", "Step 2.", "\n\n"]
  for _ in range(300):
    text = "".join(rng.choice(alphabet, size=rng.integers(0, 30)))
    for mode in ("auto", "lines", "paragraphs", "markers"):
      _assert_covers(text, segment_steps(text, mode))


def test_token_step_index_by_first_char_and_specials():
  text = "7+5=2\n2*3=6\nAnswer: 6"
  steps = segment_steps(text, "lines")  # starts 0, 6, 12
  offsets = np.array([[0, 0],    # special token: -1
                      [0, 1], [5, 6],  # '7', '\n' of step 0
                      [6, 7],  # '2' of step 1
                      [11, 13],  # '\nA' straddles: first char is step 1's newline
                      [12, 18], [20, 21],  # step 2
                      [21, 22]])  # past the end: -1
  np.testing.assert_array_equal(token_step_index(offsets, steps),
                                [-1, 0, 0, 1, 1, 2, 2, -1])
  assert token_step_index(offsets, steps).dtype == np.int32
  assert token_step_index(np.zeros((0, 2)), steps).shape == (0,)
  np.testing.assert_array_equal(token_step_index(offsets[:2], []), [-1, -1])
  with pytest.raises(ValueError, match=r"\[T, 2\]"):
    token_step_index(np.zeros((3, 3)), steps)
