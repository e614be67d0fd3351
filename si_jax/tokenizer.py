"""Tokenizers: a tiny one for the synthetic tasks, and one wrapper over any HF tokenizer directory.

`build_char_tokenizer` writes a normal HF tokenizer directory (`tokenizer.json`,
`tokenizer_config.json`, `chat_template.jinja`) that `transformers.AutoTokenizer` loads. Its
vocabulary is small: special tokens, `<|unk|>`, one token per character of an alphabet (so every
digit is its own token) and a few whole words of the synthetic language and the SI prompts
(`Multiply`, `Answer`, `Repair`, ...), which keeps sequences short for a tiny model. A word is
one token only where it stands alone (`Add` in "Add 5.", not in "Address"); elsewhere its
characters are. A character outside the alphabet becomes `<|unk|>`, a normal token that decodes
to the text "<|unk|>" (never dropped silently). Any string over the alphabet round-trips:
`decode(encode(s)) == s`.

The chat template is Qwen's ChatML:
  <|im_start|>user\\n{content}<|im_end|>\\n<|im_start|>assistant\\n

`Tokenizer` wraps any HF tokenizer directory (this one, or a real Qwen/Llama one) with what the
trainer and sampler need: ids without added BOS/EOS, chat prompts, stop ids, char offsets.
"""

from __future__ import annotations

import json
import os
import re
from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "PAD", "IM_START", "IM_END", "ENDOFTEXT", "UNK", "SPECIAL_TOKENS", "CHATML_TEMPLATE",
    "DEFAULT_ALPHABET", "DEFAULT_WORDS", "build_char_tokenizer", "Tokenizer",
]

PAD = "<|pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"
UNK = "<|unk|>"
SPECIAL_TOKENS = (PAD, IM_START, IM_END, ENDOFTEXT)  # ids 0, 1, 2, 3 in this order

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")

# Printable ASCII, newline and tab.
DEFAULT_ALPHABET = "".join(chr(c) for c in range(32, 127)) + "\n\t"

# Whole-word tokens: chat roles, the arithmetic task's language (si_jax/data/arith/) and the
# words of the SI prompts (si_jax/si/prompts.py). tests/test_arith.py checks that every word
# those modules write is here.
DEFAULT_WORDS = (
    "system", "user", "assistant",
    "Mod", "Start", "at", "Add", "Subtract", "Multiply", "by", "Answer", "Step",
    "Repair", "the", "failed", "solution", "fix", "its", "first", "wrong", "step", "keep",
    "steps", "before", "it", "Problem", "Failed", "Reference", "Solution",
    "The", "final", "answer", "is", "Which", "one", "Reply", "boxed",
    "Part",  # last: the ids of the words before it are those of tokenizers built without it
)

# End-of-turn / end-of-text tokens of common families, used as stop ids where the vocab has them.
_KNOWN_STOP_TOKENS = (IM_END, ENDOFTEXT, "<|eot_id|>", "<|end_of_text|>", "<|eom_id|>",
                      "<end_of_turn>")
_WORD_RE = re.compile(r"\w+")


def build_char_tokenizer(out_dir: str, alphabet: str = DEFAULT_ALPHABET,
                         extra_tokens: Sequence[str] = (),
                         words: Sequence[str] = DEFAULT_WORDS,
                         chat_template: str = CHATML_TEMPLATE) -> str:
  """Builds the tiny tokenizer and saves it as an HF tokenizer directory.

  Args:
    out_dir: where to save (created if missing).
    alphabet: the characters that get a token each (duplicates are ignored).
    extra_tokens: more special tokens (never split, skipped by `decode(skip_special=True)`),
      e.g. '<think>'. They get the ids after the four SPECIAL_TOKENS.
    words: whole-word tokens (letters, digits, '_'); each must be spelled with `alphabet`.
    chat_template: a Jinja chat template (default: ChatML).

  Returns:
    out_dir.

  Ids: SPECIAL_TOKENS are 0..3 (pad, im_start, im_end, endoftext), then extra_tokens, then
  `<|unk|>`, then the alphabet in order, then the words.
  """
  from tokenizers import Regex, Tokenizer as _RawTokenizer, decoders, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast

  if not alphabet:
    raise ValueError("build_char_tokenizer: alphabet is empty")
  specials = list(SPECIAL_TOKENS) + [t for t in extra_tokens if t not in SPECIAL_TOKENS]
  for tok in extra_tokens:
    if not isinstance(tok, str) or not tok:
      raise ValueError(f"build_char_tokenizer: extra_tokens must be non-empty strings, got {tok!r}")
  for word in words:
    if not isinstance(word, str) or not _WORD_RE.fullmatch(word):
      raise ValueError(f"build_char_tokenizer: words must be made of letters, digits or '_', "
                       f"got {word!r}")
    missing = sorted(set(word) - set(alphabet))
    if missing:
      raise ValueError(f"build_char_tokenizer: word {word!r} uses characters {missing} that are "
                       f"not in the alphabet")

  vocab: dict[str, int] = {}
  for tok in specials + [UNK] + list(alphabet) + list(words):
    vocab.setdefault(tok, len(vocab))
  raw = _RawTokenizer(models.WordLevel(vocab, unk_token=UNK))
  # Pieces: a listed word standing alone, else one character ([\s\S] also matches '\n').
  word_alts = [rf"\b{re.escape(w)}\b" for w in sorted(set(words), key=len, reverse=True)]
  raw.pre_tokenizer = pre_tokenizers.Split(Regex("|".join(word_alts + [r"[\s\S]"])),
                                           behavior="isolated")
  raw.decoder = decoders.Fuse()  # concatenate pieces, no spaces in between
  raw.add_special_tokens(specials)

  hf = PreTrainedTokenizerFast(
      tokenizer_object=raw, pad_token=PAD, eos_token=IM_END,
      additional_special_tokens=[t for t in specials if t not in (PAD, IM_END)])
  hf.chat_template = chat_template
  os.makedirs(out_dir, exist_ok=True)
  hf.save_pretrained(out_dir)
  return out_dir


def _as_int_list(ids) -> list[int]:
  return [int(i) for i in np.asarray(ids).reshape(-1)]


class Tokenizer:
  """What si_jax needs from a tokenizer, over any HF (fast) tokenizer.

  Attributes:
    hf: the underlying `transformers` tokenizer.
    vocab_size: number of ids the tokenizer can produce (`len(hf)`, added tokens included);
      a model's embedding table may be larger (Qwen pads it), never smaller.
    eos_id: the tokenizer's eos token, else the first stop id.
    pad_id: the pad token, else eos_id (Llama-3 has no pad token).
    stop_ids: ids that end a response: eos, the `eos_token_id`s of a `generation_config.json`
      next to the tokenizer, and the end-of-turn tokens of known families present in the vocab
      (<|im_end|>, <|endoftext|>, <|eot_id|>, ...), or exactly those named by `stop_tokens`.
  """

  def __init__(self, hf, stop_tokens: Iterable[str] | None = None, path: str = "",
               extra_stop_ids: Iterable[int] = ()):
    self.hf = hf
    self.path = path
    where = f"tokenizer at {path!r}" if path else "tokenizer"
    vocab = hf.get_vocab()
    if stop_tokens is not None:
      stops = []
      for tok in stop_tokens:
        if tok not in vocab:
          raise ValueError(f"{where}: stop token {tok!r} is not in its vocabulary")
        stops.append(vocab[tok])
    else:
      stops = [hf.eos_token_id] if hf.eos_token_id is not None else []
      stops += [int(i) for i in extra_stop_ids]
      stops += [vocab[t] for t in _KNOWN_STOP_TOKENS if t in vocab]
    self.stop_ids: tuple[int, ...] = tuple(dict.fromkeys(int(i) for i in stops))
    if not self.stop_ids:
      raise ValueError(f"{where} has no eos token and none of {_KNOWN_STOP_TOKENS}; "
                       f"name the tokens that end a response with stop_tokens=")
    self.eos_id: int = int(hf.eos_token_id) if hf.eos_token_id is not None else self.stop_ids[0]
    self.pad_id: int = int(hf.pad_token_id) if hf.pad_token_id is not None else self.eos_id
    self.vocab_size: int = len(hf)

  @classmethod
  def from_dir(cls, path: str, stop_tokens: Iterable[str] | None = None) -> "Tokenizer":
    """Loads an HF tokenizer directory with `AutoTokenizer` (fast tokenizers only)."""
    from transformers import AutoTokenizer

    if not os.path.isdir(path):
      raise FileNotFoundError(f"Tokenizer.from_dir: {path!r} is not a directory")
    hf = AutoTokenizer.from_pretrained(path)
    if not getattr(hf, "is_fast", False):
      raise ValueError(f"Tokenizer.from_dir: the tokenizer at {path!r} is not a fast "
                       f"(tokenizers-backed) one; char offsets need a tokenizer.json")
    extra = []
    gen_cfg = os.path.join(path, "generation_config.json")
    if os.path.exists(gen_cfg):
      with open(gen_cfg, encoding="utf-8") as f:
        eos = json.load(f).get("eos_token_id")
      extra = [eos] if isinstance(eos, int) else list(eos or [])
    return cls(hf, stop_tokens=stop_tokens, path=path, extra_stop_ids=extra)

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, no BOS/EOS added (special-token strings map to their ids)."""
    return list(self.hf.encode(text, add_special_tokens=False))

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """`encode` of every text, in one call of the fast tokenizer."""
    if not texts:
      return []
    return [list(x) for x in self.hf(list(texts), add_special_tokens=False)["input_ids"]]

  def encode_with_offsets(self, text: str) -> tuple[list[int], np.ndarray]:
    """(ids, offsets): offsets [T, 2] int32 are each token's (start, end) char span in `text`."""
    enc = self.hf(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int32).reshape(len(ids), 2)
    return ids, offsets

  def decode(self, ids, skip_special: bool = True) -> str:
    """Text of `ids` (a sequence or array of ints); special tokens dropped if skip_special."""
    return self.hf.decode(_as_int_list(ids), skip_special_tokens=skip_special,
                          clean_up_tokenization_spaces=False)

  def prompt_text(self, user_text: str, system: str | None = None, **template_kwargs) -> str:
    """The chat template applied to one user turn, ending with the assistant generation prompt."""
    if not getattr(self.hf, "chat_template", None):
      raise ValueError(f"tokenizer at {self.path!r} has no chat template")
    messages = [] if system is None else [{"role": "system", "content": system}]
    messages.append({"role": "user", "content": user_text})
    return self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                       **template_kwargs)

  def prompt_ids(self, user_text: str, system: str | None = None, **template_kwargs) -> list[int]:
    """Ids of `prompt_text` (the template writes any BOS itself, so none is added here)."""
    return self.encode(self.prompt_text(user_text, system, **template_kwargs))

  def __repr__(self):
    return (f"Tokenizer(path={self.path!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id}, "
            f"pad_id={self.pad_id}, stop_ids={self.stop_ids})")
