"""SentencePiece tokenizers ("sentencepiece", "siglip"): a `.model` file, as big_vision's SigLIP
text towers use (e.g. its c4_en model), read with the `sentencepiece` library; "siglip" makes the
rows those models expect (below).

    config.data.tokenizer = dict(name="sentencepiece", path="/models/c4_en.model")

Rows are [BOS if `add_bos`, ids..., EOS, 0...]: the model's own EOS id ends every text (a model
without an EOS piece is refused), and a longer text keeps its first ids. SentencePiece never turns
caption text into a control piece ("<s>", "</s>", "<pad>" spelled in a caption are ordinary
characters), so the row layout is always `encode`'s own. Rows are padded with id 0 whatever the
model's pad id (clip_jax's text towers find the padding by position).

To make a model from captions (deterministic for a given list and settings):

    from clip_jax.data.spm_tokenizer import fit_sentencepiece
    fit_sentencepiece(captions, vocab_size=8000, path="/models/captions.model")

Its ids: 0 pad, 1 EOS, 2 unknown, no BOS (big_vision's layout), then the pieces.

Config fields: `SentencePieceFields`.

"siglip" is the same library with the rows of Hugging Face's `SiglipTokenizer` (transformers
5.25), which SigLIP's released text towers (HF's and big_vision's) were trained on:

    config.data.tokenizer = dict(name="siglip", path="/models/siglip/spiece.model")
    config.data.max_len = 64  # the released models' context length (So400m/14-224: 16)

The text is lowercased, stripped of ASCII punctuation and its whitespace runs made one space
(`clean_text(text, "siglip")`); rows are [ids..., EOS, EOS...]: padded with the EOS id (HF's pad
token is "</s>", id 1 of SigLIP's model), a longer text keeping its first max_len - 1 ids. The
one difference from HF: a caption that spells a special piece ("</s>", "<unk>") is ordinary
text here, while HF turns it into that id. Fields: `SiglipFields`.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable

import sentencepiece

from clip_jax import schema
from clip_jax.data import cache
from clip_jax.data.text_clean import CLEAN_MODES, clean_text
from clip_jax.data.tokenizer import TOKENIZER_PATH, TOKENIZERS, Tokenizer
from clip_jax.registry import ConfigError


@dataclasses.dataclass(frozen=True, kw_only=True)
class SentencePieceFields:
  """`config.data.tokenizer` of "sentencepiece".

  Attributes:
    path: the SentencePiece `.model` file.
    clean: text cleaning before encoding (`clip_jax.data.text_clean`).
    add_bos: put the model's BOS id first in every row (the model must have one).
  """

  path: str = schema.field(check=schema.existing_file("a SentencePiece .model file"))
  clean: str = schema.field("none", schema.one_of(*CLEAN_MODES))
  add_bos: bool = False


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model with clip_jax's row layout (module docstring).

  Args:
    path: the `.model` file.
    max_len: the length of every encoded row.
    clean: a `CLEAN_MODES` name.
    add_bos: put the model's BOS id first.

  Raises:
    ConfigError: the file is not a SentencePiece model, or it lacks the EOS (or, with `add_bos`,
      the BOS) piece.
  """

  def __init__(self, path: str | Path, max_len: int, clean: str = "none", add_bos: bool = False):
    super().__init__(max_len)
    try:
      self.sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
    except Exception as e:  # noqa: BLE001  (the library raises plain RuntimeErrors and OSErrors)
      raise ConfigError(f"{TOKENIZER_PATH}.path = {str(path)!r} is not a SentencePiece model "
                        f"({type(e).__name__}: {e})") from None
    self.clean = clean
    self.eos_id = self.sp.eos_id()
    if self.eos_id < 0:
      raise ConfigError(f"{TOKENIZER_PATH}.path = {str(path)!r} has no EOS piece; clip_jax ends "
                        "every text with EOS (fit the model with an eos_id, as fit_sentencepiece "
                        "does)")
    named = {"[EOS]": self.eos_id}
    if add_bos:
      if self.sp.bos_id() < 0:
        raise ConfigError(f"{TOKENIZER_PATH}.add_bos = True but {str(path)!r} has no BOS piece; "
                          "set add_bos = False")
      self.bos_id = named["[BOS]"] = self.sp.bos_id()
    if self.sp.pad_id() == self.pad_id:
      named["[PAD]"] = self.pad_id
    self.special_tokens = MappingProxyType(named)

  @property
  def vocab_size(self) -> int:
    return self.sp.get_piece_size()

  def _ids(self, texts: list[str]) -> list[list[int]]:
    return self.sp.encode([clean_text(t, self.clean) for t in texts])

  def _text(self, ids: list[int]) -> str:
    return self.sp.decode(ids)


def fit_sentencepiece(captions: Iterable[str], vocab_size: int, path: str | Path, *,
                      model_type: str = "unigram", character_coverage: float = 1.0) -> Path:
  """Fits a SentencePiece model on `captions` and writes it to `path` (atomically).

  Args:
    captions: the training texts, as they will be encoded (clean them first if the tokenizer's
      `clean` will).
    vocab_size: the number of pieces, including the 3 reserved ids (0 pad, 1 EOS, 2 unknown); a
      corpus too small for it gives fewer pieces rather than failing.
    path: the `.model` file to write.
    model_type: "unigram" (SentencePiece's default, big_vision's) or "bpe".
    character_coverage: the share of characters the pieces cover (1.0 keeps them all).

  Returns:
    The path written.
  """
  model = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(list(captions)), model_writer=model, vocab_size=vocab_size,
      model_type=model_type, character_coverage=character_coverage, pad_id=0, eos_id=1,
      unk_id=2, bos_id=-1, hard_vocab_limit=False, num_threads=1, minloglevel=2)
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  cache.atomic_write_bytes(path, model.getvalue())
  return path


@TOKENIZERS.register("sentencepiece", fields=SentencePieceFields)
def _make(section: Any, *, max_len: int, data_config: Any) -> SentencePieceTokenizer:
  del data_config  # needs no training data
  f: SentencePieceFields = TOKENIZERS.parse(section, TOKENIZER_PATH, name="sentencepiece")
  return SentencePieceTokenizer(f.path, max_len, f.clean, f.add_bos)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SiglipFields:
  """`config.data.tokenizer` of "siglip": path, SigLIP's SentencePiece model (HF's
  spiece.model; big_vision's c4_en.model)."""

  path: str = schema.field(check=schema.existing_file("a SentencePiece .model file"))


class SiglipTokenizer(SentencePieceTokenizer):
  """The rows of Hugging Face's `SiglipTokenizer(vocab_file=path)(texts, padding="max_length",
  max_length=max_len, truncation=True)` (module docstring): "siglip" cleaning, EOS last, padded
  with the EOS id. For text towers that attend to every position and pool the last one, as
  SigLIP's do (`key_mask=False`, `pooling="last_position"`); a tower that finds the padding by
  id 0 (`pooling="eos"`, a key mask) would find none in these rows.

  Raises:
    ConfigError as `SentencePieceTokenizer`.
  """

  def __init__(self, path: str | Path, max_len: int):
    super().__init__(path, max_len, clean="siglip")
    self.pad_id = self.eos_id
    self.special_tokens = MappingProxyType({"[EOS]": self.eos_id, "[PAD]": self.eos_id})


@TOKENIZERS.register("siglip", fields=SiglipFields)
def _make_siglip(section: Any, *, max_len: int, data_config: Any) -> SiglipTokenizer:
  del data_config  # needs no training data
  f: SiglipFields = TOKENIZERS.parse(section, TOKENIZER_PATH, name="siglip")
  return SiglipTokenizer(f.path, max_len)
