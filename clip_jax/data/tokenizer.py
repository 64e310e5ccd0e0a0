"""Offline text tokenizers, selected by `config.data.tokenizer.name`.

* "bpe": a small byte-level BPE (HuggingFace `tokenizers`) fitted on the training captions of the
  configured source on first use, then saved as JSON in the cache directory and loaded from there.
  NFKC + lowercase normalisation; GPT-2 style pre-tokenisation (words, numbers, punctuation, each
  word carrying its leading space); the 256 byte symbols are in the base vocabulary, so any text
  encodes without unknown tokens (unseen words fall back to known subwords or bytes).
* "bytes": no fitting; a token per UTF-8 byte of the lowercased text.
* "clip_bpe": the BPE of OpenAI's CLIP, with the ids open_clip 3.3.0's tokenizer gives (vocabulary
  49408; its merges file `bpe_simple_vocab_16e6.txt.gz` is read from
  `config.data.tokenizer.merges_path`, or found in an installed `open_clip_torch`). Rows are
  [<start_of_text>, text..., <end_of_text>, 0...]; see `ClipBpeTokenizer`.

All share pad id 0. "bytes" and "bpe" use EOS id 1 (and "bpe" reserves id 2 for an unknown token,
which no text produces); "clip_bpe" uses CLIP's ids (EOS 49407, a BOS 49406 first). `encode` keeps
the first `max_len - 1` ids of [BOS] + text, appends EOS and pads, so EOS is always the last
non-pad token. Padding is the run of pad ids after EOS: in CLIP's vocabulary id 0 is also the
token "!", which can occur inside the text (the text tower finds the padding by position, see
`clip_jax.models.pooling.token_lengths`).

Special ids come only from `encode` itself, never from caption text: a caption that spells a
special token ("a [PAD] b", "[EOS]", "<end_of_text>") encodes as ordinary characters, exactly as
"a [pad] b" does. The BPE's reserved tokens therefore live in its model vocabulary only and are
not registered as HuggingFace added tokens, which `tokenizers` would match in the raw text.
(open_clip itself turns a caption's "<start_of_text>" / "<end_of_text>" into the special ids;
"clip_bpe" deliberately does not.)

    from clip_jax.data import load_tokenizer
    tok = load_tokenizer("clip_bpe", context_length=77)  # any name that needs no training data
    tok.encode(["a photo of a cat"])  # int32 [1, 77]
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import gzip
import hashlib
import json
import logging
from importlib.util import find_spec
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import numpy as np
import regex
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from clip_jax import fs, schema
from clip_jax.data import cache
from clip_jax.data import registry as data_registry
from clip_jax.data.text_clean import clean_text
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
    pad_id: 0 ("siglip": its EOS id, as Hugging Face's SiglipTokenizer pads).
    eos_id: the end-of-text id, appended to every text.
    bos_id: the start-of-text id put before every text, or None (no BOS).
    special_tokens: every reserved id, by its name (e.g. "[PAD]" -> 0). `encode` puts these ids
      only where it places them itself (BOS first, EOS after the text, pads after EOS); `_ids`
      never returns one, whatever the text, including text that spells a name. ("clip_bpe"
      lists no "[PAD]": its pad id 0 is also CLIP's token "!".)
  """
  pad_id: int = PAD_ID
  eos_id: int = EOS_ID
  bos_id: int | None = None
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

    Each row holds BOS (if any) and the text's tokens, together cut to max_len - 1 ids, then
    EOS, then pad_id.
    """
    if isinstance(texts, (str, bytes)):
      raise TypeError("encode takes a sequence of texts, not a single string; use encode([text])")
    texts = list(texts)
    out = np.full((len(texts), self.max_len), self.pad_id, dtype=np.int32)
    start = [] if self.bos_id is None else [self.bos_id]
    for row, ids in zip(out, self._ids(texts), strict=True):
      ids = (start + ids)[:self.max_len - 1] + [self.eos_id]
      row[:len(ids)] = ids
    return out

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """The text of one row of ids (without a leading BOS), read up to the first EOS or, where
    the pad id is no token of the text, the first pad."""
    ids = [int(i) for i in np.asarray(ids).reshape(-1).tolist()]
    if ids[:1] == [self.bos_id]:
      ids = ids[1:]
    ends = (self.eos_id,) if "[PAD]" not in self.special_tokens else (self.eos_id, self.pad_id)
    kept = []
    for i in ids:
      if i in ends:
        break
      kept.append(i)
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


CLIP_MERGES_FILE = "bpe_simple_vocab_16e6.txt.gz"
CLIP_VOCAB_SIZE = 49408
_CLIP_BOS, _CLIP_EOS = "<start_of_text>", "<end_of_text>"  # CLIP's last two ids
_CLIP_SUFFIX = "</w>"  # marks the last symbol of a word
# CLIP's words: contractions, letter runs, single digits, runs of other non-space characters.
_CLIP_WORDS = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                            regex.IGNORECASE)


def _byte_symbols() -> list[tuple[int, str]]:
  """(byte, its printable symbol) for the 256 bytes, in CLIP's id order: the bytes that are
  printable Latin-1 characters stand for themselves and come first; each other byte b stands for
  chr(256 + n), n counting those bytes in order."""
  kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
          *range(ord("®"), ord("ÿ") + 1)]
  others = [b for b in range(256) if b not in set(kept)]
  return [(b, chr(b)) for b in kept] + [(b, chr(256 + n)) for n, b in enumerate(others)]


def clip_clean(text: str) -> str:
  """CLIP's text cleaning: ftfy.fix_text, HTML entities unescaped twice, whitespace runs to one
  space, trimmed, lowercased (`clean_text(text, "lower")`)."""
  return clean_text(text, "lower")


@functools.lru_cache(maxsize=2)
def _clip_hf_tokenizer(merges_path: str) -> Any:
  """The CLIP BPE as a `tokenizers.Tokenizer` (byte symbols + BPE only; no normaliser, no
  pre-splitting, no added tokens), read from a merges file; cached by path.

  Ids: the 256 byte symbols, the same with "</w>", one per merge (the file's first 48894 merges,
  in order), then <start_of_text> and <end_of_text>: 49408 in all.
  """
  lines = gzip.decompress(Path(merges_path).read_bytes()).decode("utf-8").split("\n")
  merges = [tuple(line.split()) for line in lines[1:1 + CLIP_VOCAB_SIZE - 2 * 256 - 2]]
  symbols = [symbol for _, symbol in _byte_symbols()]
  tokens = [*symbols, *(s + _CLIP_SUFFIX for s in symbols), *("".join(m) for m in merges),
            _CLIP_BOS, _CLIP_EOS]
  vocab = {token: i for i, token in enumerate(tokens)}
  if len(vocab) != CLIP_VOCAB_SIZE or any(len(m) != 2 for m in merges):
    raise ConfigError(f"{TOKENIZER_PATH}.merges_path = {merges_path!r} is not CLIP's merges file "
                      f"({CLIP_MERGES_FILE}: a header line, then at least "
                      f"{CLIP_VOCAB_SIZE - 2 * 256 - 2} lines of two symbols)")
  hf = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, end_of_word_suffix=_CLIP_SUFFIX,
                                       continuing_subword_prefix=""))
  hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  return hf


class ClipBpeTokenizer(Tokenizer):
  """CLIP's BPE, with the ids of open_clip 3.3.0's tokenizer (vocab_size 49408).

  The text is cleaned as CLIP does (`clip_clean`) and cut into words with CLIP's pattern (Python
  `regex`, as open_clip: HuggingFace's own regex engine differs on some rare characters); the
  words' UTF-8 bytes go through the BPE of `tokenizers`. Rows are [BOS 49406, ids..., EOS 49407,
  0...]; a longer text keeps its first max_len - 2 ids (open_clip cuts the same way).

  Two things to know when using the ids:
    * id 0 is both the pad and CLIP's token "!": padding is the run of zeros after EOS, not every
      zero (the text tower masks and pools by position, `clip_jax.models.pooling.token_lengths`).
    * caption text that spells "<start_of_text>" or "<end_of_text>" encodes as those characters
      (the module's special-token rule); open_clip would give the special ids there.

  Args:
    merges_path: CLIP's `bpe_simple_vocab_16e6.txt.gz`.
    max_len: the length of every encoded row (CLIP: 77).
  """
  eos_id = CLIP_VOCAB_SIZE - 1
  bos_id = CLIP_VOCAB_SIZE - 2
  special_tokens = MappingProxyType({"[BOS]": CLIP_VOCAB_SIZE - 2, "[EOS]": CLIP_VOCAB_SIZE - 1})

  def __init__(self, merges_path: str | Path, max_len: int):
    super().__init__(max_len)
    self.hf = _clip_hf_tokenizer(str(merges_path))
    self._bytes_of = {symbol: b for b, symbol in _byte_symbols()}

  @property
  def vocab_size(self) -> int:
    return CLIP_VOCAB_SIZE

  def _ids(self, texts: list[str]) -> list[list[int]]:
    words = [_CLIP_WORDS.findall(clip_clean(t)) for t in texts]
    return [e.ids for e in self.hf.encode_batch(words, is_pretokenized=True,
                                                add_special_tokens=False)]

  def _text(self, ids: list[int]) -> str:
    """Words joined by single spaces (CLIP's ids do not keep the original spacing)."""
    symbols = "".join(self.hf.id_to_token(i) for i in ids if i < self.bos_id)
    words = symbols.split(_CLIP_SUFFIX)
    return " ".join(bytes(self._bytes_of[c] for c in w).decode("utf-8", "replace")
                    for w in words).strip()


def find_clip_merges() -> Path | None:
  """CLIP's merges file inside an installed `open_clip_torch`, found without importing open_clip
  (which imports torch and torchvision); None when there is none."""
  spec = find_spec("open_clip")
  for folder in (spec.submodule_search_locations or []) if spec is not None else []:
    path = Path(folder) / CLIP_MERGES_FILE
    if path.is_file():
      return path
  return None


def _clip_merges_path(value: Any, path: str) -> str:
  """The check of `merges_path`: an existing file, or "" resolved by `find_clip_merges`."""
  value = schema.string()(value, path)
  how = (f"install open_clip_torch (`pip install --no-deps open_clip_torch==3.3.0`, which ships "
         f"{CLIP_MERGES_FILE}) or set {path} to the file (it is in the open_clip_torch wheel: "
         f"`unzip -j open_clip_torch-3.3.0-py3-none-any.whl open_clip/{CLIP_MERGES_FILE}`)")
  if not value:
    found = find_clip_merges()
    if found is None:
      raise ConfigError(f"{path} = '' looks for CLIP's merges file in an installed open_clip_torch,"
                        f" and there is none; {how}")
    return str(found)
  if not Path(value).expanduser().is_file():
    raise ConfigError(f"{path} = {value!r}: no such file; {how}")
  return str(Path(value).expanduser())


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClipBpeFields:
  """`config.data.tokenizer` of "clip_bpe": merges_path, CLIP's `bpe_simple_vocab_16e6.txt.gz`
  ("" = the one in an installed open_clip_torch; parsing resolves it and checks it exists)."""

  merges_path: str = schema.field("", _clip_merges_path)


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


# A factory makes the tokenizer from its parsed fields, the row length and `config.data` (None
# from `load_tokenizer`, which takes no name in FITTED_ON_CAPTIONS).
FITTED_ON_CAPTIONS = frozenset({"bpe"})


@TOKENIZERS.register("bytes", fields=BytesFields)
def _make_bytes(section: Any, *, max_len: int, data_config: Any) -> ByteTokenizer:
  del section, data_config  # no fields of its own
  return ByteTokenizer(max_len)


@TOKENIZERS.register("clip_bpe", fields=ClipBpeFields)
def _make_clip_bpe(section: Any, *, max_len: int, data_config: Any) -> ClipBpeTokenizer:
  del data_config
  fields: ClipBpeFields = TOKENIZERS.parse(section, TOKENIZER_PATH, name="clip_bpe")
  return ClipBpeTokenizer(fields.merges_path, max_len)


@TOKENIZERS.register("bpe", fields=BpeFields)
def _make_bpe(section: Any, *, max_len: int, data_config: Any) -> BpeTokenizer:
  vocab_size = TOKENIZERS.parse(section, TOKENIZER_PATH, name="bpe").vocab_size
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


RUN_TOKENIZER_FILE = "tokenizer.json"  # a run's fitted tokenizer, in its workdir


def make_tokenizer(data_config: Any, run_dir: str | None = None) -> Tokenizer:
  """The tokenizer named by `config.data.tokenizer.name`, for rows of `config.data.max_len`.

  "bpe" fits on the training captions of the configured source on first use (a few tens of
  milliseconds for the emoji demo) and caches the result; later calls load it. With `run_dir`
  (a run's workdir, local or object storage), a fitted tokenizer is also kept there as
  `tokenizer.json` with the fields it was made from, and read back from there when the fields
  are the same: a run's evaluation then needs neither its training data nor the cache.

  Raises:
    ConfigError: naming `config.data.<field>` or `config.data.tokenizer.<field>` (see
      `parse_data`), or a `vocab_size` smaller than the tokenizer's vocabulary.
  """
  _, data = data_registry.parse_data(data_config)
  section = data_registry.plain(data.tokenizer)
  if section.get("name") not in FITTED_ON_CAPTIONS or run_dir is None:
    return _build(data.tokenizer, data.max_len, data_config)
  path = fs.join(run_dir, RUN_TOKENIZER_FILE)
  if fs.exists(path):
    saved = json.loads(fs.read_text(path))
    if saved.get("fields") == section:
      return BpeTokenizer(tokenizers.Tokenizer.from_str(saved["tokenizer"]), data.max_len)
  tokenizer = _build(data.tokenizer, data.max_len, data_config)
  fs.makedirs(run_dir)
  fs.write_atomic(path, json.dumps({"fields": section, "tokenizer": tokenizer.hf.to_str()},
                                   ensure_ascii=False).encode("utf-8"))
  return tokenizer


def load_tokenizer(name: str, context_length: int = 77, **fields: Any) -> Tokenizer:
  """A tokenizer by name, without a training config, for rows of `context_length` (CLIP: 77).

      tok = load_tokenizer("clip_bpe", context_length=77)  # merges_path="..." to pick the file
      tok.encode(["a photo of a cat"])  # int32 [1, 77]

  Args:
    name: a registered tokenizer that needs no training data ("bytes", "clip_bpe").
    context_length: the length of every encoded row, in [2, 2**20].
    **fields: the tokenizer's `config.data.tokenizer` fields (e.g. merges_path).

  Raises:
    ConfigError: an unknown name or field, a bad value (named as in a config:
      `config.data.tokenizer.<field>`), or "bpe", which is fitted on a source's captions (use
      `make_tokenizer(config.data)`).
  """
  TOKENIZERS.get(name, f"{TOKENIZER_PATH}.name")
  if name in FITTED_ON_CAPTIONS:
    raise ConfigError(
        f"{TOKENIZER_PATH}.name = {name!r} is fitted on the training captions of config.data's "
        "source; build it with make_tokenizer(config.data) (load_tokenizer takes the tokenizers "
        f"that need no training data: {', '.join(sorted(set(TOKENIZERS) - FITTED_ON_CAPTIONS))})")
  max_len = schema.integer(2, 1 << 20)(context_length, "context_length")
  return _build({"name": name, **fields}, max_len, None)


def _build(section: Mapping[str, Any], max_len: int, data_config: Any) -> Tokenizer:
  """Parses a tokenizer section, makes the tokenizer and checks its optional `vocab_size`."""
  fields = TOKENIZERS.parse(section, TOKENIZER_PATH)
  name = section["name"]
  tokenizer = TOKENIZERS.get(name)(section, max_len=max_len, data_config=data_config)
  limit = getattr(fields, "vocab_size", None)
  if limit is not None and tokenizer.vocab_size > limit:
    raise ConfigError(f"{TOKENIZER_PATH}.vocab_size = {limit} is smaller than the "
                      f"{name!r} tokenizer's vocabulary ({tokenizer.vocab_size})")
  return tokenizer
