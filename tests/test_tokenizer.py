"""The tiny tokenizer is a normal HF tokenizer dir; the wrapper works for it and for BPE ones."""

import json
import os
import random

import numpy as np
import pytest
import transformers

from si_jax.data import arith
from si_jax.si import prompts
from si_jax.data.steps import segment_steps, token_step_index
from si_jax.tokenizer import (CHATML_TEMPLATE, DEFAULT_ALPHABET, IM_END, IM_START, PAD, UNK,
                              Tokenizer, build_char_tokenizer)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
  return build_char_tokenizer(str(tmp_path_factory.mktemp("char_tok")))


@pytest.fixture(scope="module")
def tok(tok_dir):
  return Tokenizer.from_dir(tok_dir)


def test_loads_with_autotokenizer_and_applies_chatml(tok_dir):
  hf = transformers.AutoTokenizer.from_pretrained(tok_dir)
  assert hf.convert_tokens_to_ids([PAD, IM_START, IM_END, "<|endoftext|>"]) == [0, 1, 2, 3]
  text = hf.apply_chat_template([{"role": "user", "content": "Start at 7."}], tokenize=False,
                                add_generation_prompt=True)
  assert text == "<|im_start|>user\nStart at 7.<|im_end|>\n<|im_start|>assistant\n"
  assert os.path.exists(os.path.join(tok_dir, "tokenizer.json"))


def test_ids_and_attributes(tok):
  assert (tok.pad_id, tok.eos_id, tok.stop_ids) == (0, 2, (2, 3))
  assert tok.vocab_size == len(tok.hf) > len(DEFAULT_ALPHABET)
  # Digits are single tokens; listed words standing alone are single tokens.
  assert len(tok.encode("1234567890")) == 10
  assert len(tok.encode("Multiply")) == 1 and len(tok.encode("Multiplyx")) == 9
  assert tok.encode("Start at 12.") == [tok.encode(p)[0] for p in
                                         ["Start", " ", "at", " ", "1", "2", "."]]


def test_round_trip_of_the_arith_language(tok):
  cfg = arith.ArithConfig(modulus=None, num_steps=(1, 6), operand_range=(0, 99))
  pairs = arith.repair_pairs(cfg, 30, seed=3)
  texts = [t for p in pairs for t in (p.example.prompt, p.failed, p.anchor,
                                      prompts.repair_prompt(p.example.prompt, p.failed, p.anchor))]
  texts += [arith.solve(ex, style) for ex in arith.ArithDataset(cfg, "test")[:50]
            for style in arith.STYLES]
  for text in texts:
    ids = tok.encode(text)
    assert UNK not in tok.hf.convert_ids_to_tokens(ids)
    assert tok.decode(ids) == text


def test_round_trip_of_random_strings_over_the_alphabet(tok):
  rng = random.Random(0)
  for _ in range(200):
    s = "".join(rng.choice(DEFAULT_ALPHABET) for _ in range(rng.randint(0, 40)))
    assert tok.decode(tok.encode(s)) == s
    assert tok.decode(np.asarray(tok.encode(s), np.int32)) == s


def test_unknown_chars_are_not_dropped(tok):
  ids = tok.encode("a\u00e9b")
  assert len(ids) == 3
  assert tok.decode(ids) == "a<|unk|>b"


def test_prompt_ids_and_specials_in_decode(tok):
  ids = tok.prompt_ids("Add 5.", system="Be brief.")
  assert ids[0] == 1 and ids[-3:] == tok.encode("<|im_start|>assistant\n")
  assert tok.decode(ids, skip_special=False) == (
      "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nAdd 5.<|im_end|>\n"
      "<|im_start|>assistant\n")
  assert tok.decode(ids) == "system\nBe brief.\nuser\nAdd 5.\nassistant\n"


def test_offsets_map_tokens_to_arith_steps(tok):
  text = "7 + 5 = 2\n2*3=6\nAnswer: 6"
  ids, offsets = tok.encode_with_offsets(text)
  assert offsets.shape == (len(ids), 2) and offsets.dtype == np.int32
  assert "".join(text[s:e] for s, e in offsets) == text
  idx = token_step_index(offsets, segment_steps(text, "lines"))
  pieces = tok.hf.convert_ids_to_tokens(ids)
  assert [p for p, i in zip(pieces, idx) if i == 1] == list("2*3=6\n")
  assert [p for p, i in zip(pieces, idx) if i == 2] == ["Answer", ":", " ", "6"]
  assert (idx[:10] == 0).all()


def test_bad_arguments_say_what(tmp_path):
  with pytest.raises(ValueError, match="not in the alphabet"):
    build_char_tokenizer(str(tmp_path / "a"), alphabet="0123456789", words=("Add",))
  with pytest.raises(ValueError, match="letters, digits"):
    build_char_tokenizer(str(tmp_path / "b"), words=("Answer:",))
  with pytest.raises(FileNotFoundError, match="not a directory"):
    Tokenizer.from_dir(str(tmp_path / "missing"))


def test_extra_special_tokens(tmp_path):
  t = Tokenizer.from_dir(build_char_tokenizer(str(tmp_path), extra_tokens=("<think>",)))
  ids = t.encode("<think>7")
  assert ids == [4, t.encode("7")[0]]
  assert t.decode(ids) == "7" and t.decode(ids, skip_special=False) == "<think>7"


def _bpe_dir(path):
  """A byte-level BPE tokenizer with Qwen's specials, no pad token, and a generation config."""
  from tokenizers import Tokenizer as RawTokenizer, decoders, models, pre_tokenizers, trainers

  raw = RawTokenizer(models.BPE())
  raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  raw.decoder = decoders.ByteLevel()
  specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
  trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  corpus = ["First, we add three and four. That gives seven.\n\nThen we multiply by two."] * 20
  raw.train_from_iterator(corpus, trainer)
  hf = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>")
  hf.chat_template = CHATML_TEMPLATE
  hf.save_pretrained(path)
  with open(os.path.join(path, "generation_config.json"), "w") as f:
    json.dump({"eos_token_id": [2, 0]}, f)
  return path


def test_wrapper_on_a_byte_level_bpe_tokenizer(tmp_path):
  t = Tokenizer.from_dir(_bpe_dir(str(tmp_path)))
  assert t.stop_ids == (2, 0) and t.eos_id == 2
  assert t.pad_id == t.eos_id  # no pad token: falls back to eos
  text = "First, we add.\n\nThen we multiply: 7*2 = 14 \u00e9"
  ids, offsets = t.encode_with_offsets(text)
  assert t.decode(ids) == text
  steps = segment_steps(text)
  idx = token_step_index(offsets, steps)
  first_then = int(np.argmax(offsets[:, 0] >= steps[1].start))
  assert (idx[:first_then] == 0).all() and (idx[first_then:] == 1).all()
  assert t.decode(t.prompt_ids("hi")) == "user\nhi\nassistant\n"
  with pytest.raises(ValueError, match="not in its vocabulary"):
    Tokenizer(t.hf, stop_tokens=["<|eot_id|>"])
  assert Tokenizer(t.hf, stop_tokens=["<|endoftext|>"]).stop_ids == (0,)
