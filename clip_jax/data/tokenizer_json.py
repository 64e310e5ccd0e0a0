"""Hugging Face tokenizers from a `tokenizer.json` file ("tokenizer_json"): WordPiece (BERT,
MiniLM), byte-level BPE (RoBERTa, GPT-2), Unigram, read with the `tokenizers` library.

    config.data.tokenizer = dict(name="tokenizer_json", path="/models/minilm/tokenizer.json")

Rows are laid out as the file's own post-processor lays out a single text, then padded with 0:
BERT's `[CLS] text [SEP] 0 ...` (ids 101, ..., 102, 0 for MiniLM). The start and end tokens are
read from that post-processor (what it adds around an empty text), or named by `bos_token` /
`eos_token`. A text longer than the row keeps its first `max_len - 2` ids (`max_len - 1` without
a start token), as the library's own truncation keeps them.

Special tokens only come from `encode`: the file's special added tokens ("[CLS]", "[SEP]",
"[PAD]", "[MASK]", "<s>", ...) are removed from the pipeline before encoding, so caption text that
spells one encodes as ordinary characters (BERT: "[", "sep", "]"), as in every clip_jax tokenizer.
(Hugging Face itself would match them in the text.) The rows are padded with id 0 whatever the
file's padding token is: clip_jax's text towers find the padding by position (the zeros after the
last non-zero id).

Config fields: `TokenizerJsonFields`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import MappingProxyType
from typing import Any

import tokenizers

from clip_jax import schema
from clip_jax.data.text_clean import CLEAN_MODES, clean_text
from clip_jax.data.tokenizer import TOKENIZER_PATH, TOKENIZERS, Tokenizer
from clip_jax.registry import ConfigError

AUTO = "auto"


@dataclasses.dataclass(frozen=True, kw_only=True)
class TokenizerJsonFields:
  """`config.data.tokenizer` of "tokenizer_json".

  Attributes:
    path: the `tokenizer.json` file.
    clean: text cleaning before the file's own normaliser (`clip_jax.data.text_clean`).
    bos_token: the start token put first: "auto" = the one the file's post-processor puts before
      a text (none if it puts none), "" = none, or a token of the vocabulary.
    eos_token: the end token put after the text: "auto" = the one the post-processor puts after
      a text, or a token of the vocabulary.
  """

  path: str = schema.field(check=schema.existing_file("a Hugging Face tokenizer.json file"))
  clean: str = schema.field("none", schema.one_of(*CLEAN_MODES))
  bos_token: str = AUTO
  eos_token: str = AUTO


class TokenizerJsonTokenizer(Tokenizer):
  """A `tokenizer.json` tokenizer with clip_jax's row layout (module docstring).

  Args:
    path: the `tokenizer.json` file.
    max_len: the length of every encoded row.
    clean: a `CLEAN_MODES` name.
    bos_token, eos_token: as `TokenizerJsonFields`.

  Raises:
    ConfigError: the file is not a tokenizer.json, a named token is not in its vocabulary, or no
      end token can be found (naming `config.data.tokenizer.<field>`).
  """

  def __init__(self, path: str | Path, max_len: int, clean: str = "none",
               bos_token: str = AUTO, eos_token: str = AUTO):
    super().__init__(max_len)
    try:
      spec = json.loads(Path(path).read_text(encoding="utf-8"))
      full = tokenizers.Tokenizer.from_str(json.dumps(spec))
    except Exception as e:  # noqa: BLE001  (the library raises plain Exceptions)
      raise ConfigError(f"{TOKENIZER_PATH}.path = {str(path)!r} is not a Hugging Face "
                        f"tokenizer.json ({type(e).__name__}: {e})") from None
    self.clean = clean
    full.no_padding()
    full.no_truncation()
    around = full.encode("", add_special_tokens=True).ids  # what the post-processor adds
    self.bos_id = self._token_id(full, bos_token, "bos_token",
                                 around[0] if len(around) > 1 else None)
    self.eos_id = self._token_id(full, eos_token, "eos_token", around[-1] if around else None)
    if self.eos_id is None:
      raise ConfigError(f"{TOKENIZER_PATH}.path = {str(path)!r} adds no end token to a text; name "
                        f"one in {TOKENIZER_PATH}.eos_token (e.g. '[SEP]' or '</s>')")
    specials = {t["content"]: t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
    named = {"[EOS]": self.eos_id}
    if self.bos_id is not None:
      named["[BOS]"] = self.bos_id
    if self.pad_id in specials.values():
      named["[PAD]"] = self.pad_id  # id 0 is the file's padding token (BERT's [PAD])
    self.special_tokens = MappingProxyType(named)
    self._vocab_size = full.get_vocab_size(with_added_tokens=True)
    # The pipeline that encodes caption text: no special added tokens, no post-processor, no
    # padding or truncation of its own.
    spec["added_tokens"] = [t for t in spec.get("added_tokens", []) if not t.get("special")]
    spec.update(post_processor=None, padding=None, truncation=None)
    self.hf = tokenizers.Tokenizer.from_str(json.dumps(spec))

  @staticmethod
  def _token_id(full: Any, token: str, field: str, auto: int | None) -> int | None:
    if token == AUTO:
      return auto
    if token == "":
      return None
    token_id = full.token_to_id(token)
    if token_id is None:
      raise ConfigError(f"{TOKENIZER_PATH}.{field} = {token!r} is not a token of the "
                        "tokenizer.json vocabulary")
    return token_id

  @property
  def vocab_size(self) -> int:
    return self._vocab_size

  def _ids(self, texts: list[str]) -> list[list[int]]:
    texts = [clean_text(t, self.clean) for t in texts]
    return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

  def _text(self, ids: list[int]) -> str:
    return self.hf.decode(ids)


@TOKENIZERS.register("tokenizer_json", fields=TokenizerJsonFields)
def _make(section: Any, *, max_len: int, data_config: Any) -> TokenizerJsonTokenizer:
  del data_config  # needs no training data
  f: TokenizerJsonFields = TOKENIZERS.parse(section, TOKENIZER_PATH, name="tokenizer_json")
  return TokenizerJsonTokenizer(f.path, max_len, f.clean, f.bos_token, f.eos_token)
