"""Offline text tokenizers, selected by `config.data.tokenizer.name`.

* "bpe": a small byte-level BPE (HuggingFace `tokenizers`) fitted on the training captions of the
  configured source on first use, then saved as JSON in the cache directory and loaded from there.
  NFKC + lowercase normalisation; GPT-2 style pre-tokenisation (words, numbers, punctuation, each
  word carrying its leading space); the 256 byte symbols are in the base vocabulary, so any text
  encodes without unknown tokens (unseen words fall back to known subwords or bytes).
* "bytes": no fitting; a token per UTF-8 byte of the lowercased text.

Both share: pad id 0, EOS id 1 (and "bpe" reserves id 2 for an unknown token, which no text
produces). `encode` truncates the text to `max_len - 1` tokens, appends EOS and pads, so EOS is
always the last non-pad token.

Special ids come only from `encode` itself, never from caption text: a caption that spells a
special token ("a [PAD] b", "[EOS]") encodes as ordinary characters, exactly as "a [pad] b" does.
The BPE's reserved tokens therefore live in its model vocabulary only and are not registered as
HuggingFace added tokens, which `tokenizers` would match in the raw text.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from clip_jax import schema
from clip_jax.data import cache
from clip_jax.data import registry as data_registry
from clip_jax.registry import ConfigError, Registry

TOKENIZERS: Registry = Registry("tokenizer", "config.data.tokenizer.name")
TOKENIZER_PATH = "config.data.tokenizer"

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
_SPECIAL_TOKENS = ("[PAD]", "[EOS]", "[UNK]")  # ids 0, 1, 2 in the BPE vocabulary
_BPE_FORMAT = 2  # bump when the fitting recipe changes, to invalidate cached tokenizers


class Tokenizer(abc.ABC):
  """Texts -> fixed-length int32 token ids.

  Attributes:
    max_len: the length L of every encoded row.
    pad_id: 0.
    eos_id: the end-of-text id, appended to every text.
    special_tokens: every reserved id, by its name (e.g. "[PAD]" -> 0). `encode` puts these ids
      only where it places them itself (EOS after the text, pads after EOS); `_ids` never returns
      one, whatever the text, including text that spells a name.
  """
  pad_id: int = PAD_ID
  eos_id: int = EOS_ID
  special_tokens: Mapping[str, int] = MappingProxyType({"[PAD]": PAD_ID, "[EOS]": EOS_ID})

  def __init__(self, max_len: int):
    self.max_len = max_len

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """The number of ids; every id is in [0, vocab_size)."""

  @abc.abstractmethod
  def _ids(self, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without EOS or padding; never an id of `special_tokens`."""

  @abc.abstractmethod
  def _text(self, ids: list[int]) -> str:
    """The text of ids that hold no pad or EOS."""

  def encode(self, texts: Sequence[str]) -> np.ndarray:
    """Encodes texts to int32 [N, max_len].

    Each row holds the text's tokens (truncated to max_len - 1), then EOS, then pad (0).
    """
    if isinstance(texts, (str, bytes)):
      raise TypeError("encode takes a sequence of texts, not a single string; use encode([text])")
    texts = list(texts)
    out = np.full((len(texts), self.max_len), self.pad_id, dtype=np.int32)
    for row, ids in zip(out, self._ids(texts), strict=True):
      ids = ids[:self.max_len - 1] + [self.eos_id]
      row[:len(ids)] = ids
    return out

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """The text of one row of ids, read up to the first EOS or pad."""
    kept = []
    for i in np.asarray(ids).reshape(-1).tolist():
      if i in (self.pad_id, self.eos_id):
        break
      kept.append(int(i))
    return self._text(kept)


class ByteTokenizer(Tokenizer):
  """One token per UTF-8 byte of the lowercased text: id = byte + 2 (vocab_size 258)."""
  offset = 2

  @property
  def vocab_size(self) -> int:
    return 256 + self.offset

  def _ids(self, texts: list[str]) -> list[list[int]]:
    return [[b + self.offset for b in t.lower().encode("utf-8")] for t in texts]

  def _text(self, ids: list[int]) -> str:
    return bytes(i - self.offset for i in ids if i >= self.offset).decode("utf-8", "replace")


class BpeTokenizer(Tokenizer):
  """Byte-level BPE (HuggingFace `tokenizers`); see the module docstring.

  Args:
    hf_tokenizer: a `tokenizers.Tokenizer` whose model vocabulary maps "[PAD]", "[EOS]", "[UNK]"
      to ids 0, 1, 2 and holds every byte-level symbol, and that has no added tokens.
    max_len: the length of every encoded row.

  Raises:
    ValueError: hf_tokenizer breaks one of these rules (an added token would be matched in the
      caption text; a missing byte symbol would encode as the unknown id).
  """
  special_tokens = MappingProxyType({token: i for i, token in enumerate(_SPECIAL_TOKENS)})

  def __init__(self, hf_tokenizer: Any, max_len: int):
    super().__init__(max_len)
    self.hf = hf_tokenizer
    for i, token in enumerate(_SPECIAL_TOKENS):
      if hf_tokenizer.token_to_id(token) != i:
        raise ValueError(f"BPE tokenizer must map {token} to id {i}, it maps it to "
                         f"{hf_tokenizer.token_to_id(token)}")
    added = [t.content for t in hf_tokenizer.get_added_tokens_decoder().values()]
    if added:
      raise ValueError(f"BPE tokenizer has added tokens {added}, which would be matched in caption "
                       "text; keep special tokens in the model vocabulary only (BpeTokenizer.fit)")
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    missing = [s for s in alphabet if hf_tokenizer.token_to_id(s) is None]
    if missing:
      raise ValueError(f"BPE tokenizer lacks byte symbols {sorted(missing)}; text holding those "
                       "bytes would encode as [UNK]")
    self.unk_id = UNK_ID

  @classmethod
  def fit(cls, captions: Sequence[str], vocab_size: int, max_len: int) -> BpeTokenizer:
    """Fits a byte-level BPE with at most `vocab_size` ids on `captions` (deterministic).

    The trainer reserves ids 0-2 for the special tokens and also registers them as added tokens;
    the result wraps the trained model in a fresh pipeline, so that it keeps the ids but drops the
    added tokens (which would turn caption text such as "[PAD]" into id 0).
    """
    hf = _bpe_pipeline(models.BPE(unk_token=_SPECIAL_TOKENS[UNK_ID]))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, show_progress=False,
        special_tokens=list(_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(list(captions), trainer=trainer)
    return cls(_bpe_pipeline(hf.model), max_len)

  @classmethod
  def load(cls, path: Path, max_len: int) -> BpeTokenizer:
    return cls(tokenizers.Tokenizer.from_file(str(path)), max_len)

  def save(self, path: Path) -> None:
    """Saves the tokenizer as JSON, atomically."""
    cache.atomic_write_text(Path(path), self.hf.to_str())

  @property
  def vocab_size(self) -> int:
    return self.hf.get_vocab_size(with_added_tokens=True)

  def _ids(self, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

  def tokens(self, text: str) -> list[str]:
    """The subword strings of one text (byte-level symbols; a leading space shows as 'Ġ')."""
    return self.hf.encode(text, add_special_tokens=False).tokens

  def _text(self, ids: list[int]) -> str:
    return self.hf.decode(ids).strip()


def _bpe_pipeline(model: Any) -> Any:
  """A `tokenizers.Tokenizer` around a BPE model: NFKC + lowercase, byte-level, no added tokens."""
  hf = tokenizers.Tokenizer(model)
  hf.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
  hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
  hf.decoder = decoders.ByteLevel()
  return hf


@dataclasses.dataclass(frozen=True, kw_only=True)
class BytesFields:
  """`config.data.tokenizer` of "bytes": vocab_size, optional (None: unchecked); when set, at
  least the tokenizer's vocabulary (which `make_tokenizer` checks)."""

  vocab_size: int | None = schema.field(None, schema.integer(low=256 + ByteTokenizer.offset))


@dataclasses.dataclass(frozen=True, kw_only=True)
class BpeFields:
  """`config.data.tokenizer` of "bpe": vocab_size, the size the BPE is fitted to (including the
  256 byte symbols and 3 reserved tokens), in [259, 2**20]."""

  vocab_size: int = schema.field(check=schema.integer(256 + len(_SPECIAL_TOKENS), 1 << 20))


@TOKENIZERS.register("bytes", fields=BytesFields)
def _make_bytes(data_config: Any) -> ByteTokenizer:
  return ByteTokenizer(data_registry.parse_data(data_config)[1].max_len)


@TOKENIZERS.register("bpe", fields=BpeFields)
def _make_bpe(data_config: Any) -> BpeTokenizer:
  _, data = data_registry.parse_data(data_config)
  vocab_size = TOKENIZERS.parse(data.tokenizer, TOKENIZER_PATH, name="bpe").vocab_size
  max_len = data.max_len
  source = data_registry.build_source(data_config)
  captions = source.train_captions()
  key = hashlib.sha256(json.dumps(
      {"format": _BPE_FORMAT, "vocab_size": vocab_size, "captions": captions},
      ensure_ascii=False).encode("utf-8")).hexdigest()[:16]
  path = bpe_cache_path(data_config, source.name, vocab_size, key)
  if path.is_file():
    try:
      return BpeTokenizer.load(path, max_len)
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("Refitting the tokenizer: cannot load %s (%s)", path, e)
  tokenizer = BpeTokenizer.fit(captions, vocab_size, max_len)
  path.parent.mkdir(parents=True, exist_ok=True)
  tokenizer.save(path)
  return tokenizer


def bpe_cache_path(data_config: Any, source_name: str, vocab_size: int, key: str) -> Path:
  """The JSON file of a fitted BPE: <cache>/tokenizers/<source>-bpe<vocab>-<captions hash>.json."""
  return cache.resolve_cache_dir(data_config) / "tokenizers" / (
      f"{source_name}-bpe{vocab_size}-{key}.json")


def make_tokenizer(data_config: Any) -> Tokenizer:
  """The tokenizer named by `config.data.tokenizer.name`, for rows of `config.data.max_len`.

  "bpe" fits on the training captions of the configured source on first use (a few tens of
  milliseconds for the emoji demo) and caches the result; later calls load it.

  Raises:
    ConfigError: naming `config.data.<field>` or `config.data.tokenizer.<field>` (see
      `parse_data`), or a `vocab_size` smaller than the tokenizer's vocabulary.
  """
  _, data = data_registry.parse_data(data_config)
  fields = TOKENIZERS.parse(data.tokenizer, TOKENIZER_PATH)
  name = data.tokenizer["name"]
  tokenizer = TOKENIZERS.get(name)(data_config)
  limit = getattr(fields, "vocab_size", None)
  if limit is not None and tokenizer.vocab_size > limit:
    raise ConfigError(f"{TOKENIZER_PATH}.vocab_size = {limit} is smaller than the "
                      f"{name!r} tokenizer's vocabulary ({tokenizer.vocab_size})")
  return tokenizer
