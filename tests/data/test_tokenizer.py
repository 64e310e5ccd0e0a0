"""Tests for clip_jax.data.tokenizer: fixed-length rows, EOS, truncation, caching, no leaks,
and caption text that spells a special token."""

from __future__ import annotations

import json
import unicodedata

import ml_collections
import numpy as np
import pytest
import tokenizers

from clip_jax.data import make_tokenizer, registry, tokenizer as tokenizer_lib
from clip_jax.models import pooling
from clip_jax.registry import ConfigError


def _check_rows(ids: np.ndarray, tok) -> None:
  """Every row: tokens, then EOS as the last non-pad token, then only pads."""
  for row in ids:
    nonpad = np.flatnonzero(row != tok.pad_id)
    assert len(nonpad) >= 1
    last = nonpad[-1]
    assert row[last] == tok.eos_id
    assert np.array_equal(nonpad, np.arange(last + 1)), row  # no pad before the end
    assert np.all(row[:last] != tok.eos_id)


@pytest.mark.parametrize("name", ["bpe", "bytes"])
def test_encode_shape_pad_eos_and_truncation(synthetic_config, name):
  synthetic_config.data.tokenizer.name = name
  tok = make_tokenizer(synthetic_config.data)
  assert tok.pad_id == 0
  assert tok.vocab_size <= synthetic_config.data.tokenizer.vocab_size
  long_text = "a large red circle next to a small blue square on a white ground"
  texts = ["red circle", "", long_text, "RED Circle"]
  ids = tok.encode(texts)
  assert ids.dtype == np.int32 and ids.shape == (4, synthetic_config.data.max_len)
  assert ids.min() >= 0 and ids.max() < tok.vocab_size
  _check_rows(ids, tok)
  assert ids[1, 0] == tok.eos_id and np.all(ids[1, 1:] == 0)  # empty text: EOS only
  # Truncation keeps EOS in the last slot; the kept prefix equals the untruncated prefix.
  assert ids[2, -1] == tok.eos_id and np.all(ids[2] != tok.pad_id)
  tok_long = make_tokenizer(_with_max_len(synthetic_config.data, 64))
  full = tok_long.encode([long_text])[0]
  np.testing.assert_array_equal(ids[2, :-1], full[:synthetic_config.data.max_len - 1])
  np.testing.assert_array_equal(ids[3], ids[0])  # lowercased
  assert tok.decode(ids[0]) == "red circle"
  assert tok.encode([]).shape == (0, synthetic_config.data.max_len)
  with pytest.raises(TypeError):
    tok.encode("a red circle")


def _with_max_len(data_config, max_len):
  data_config = data_config.copy_and_resolve_references()
  data_config.max_len = max_len
  return data_config


def test_bpe_cache_round_trip(synthetic_config):
  tok = make_tokenizer(synthetic_config.data)
  files = list((registry.cache.resolve_cache_dir(synthetic_config.data) / "tokenizers").iterdir())
  assert len(files) == 1 and files[0].name.startswith("synthetic-bpe320-")
  texts = ["a small purple triangle", "a large black square", "zebra crossing 42!"]
  registry.clear_source_memo()
  loaded = make_tokenizer(synthetic_config.data)  # loads the cached file (no refit)
  assert loaded.hf.to_str() == tok.hf.to_str()
  np.testing.assert_array_equal(loaded.encode(texts), tok.encode(texts))
  # Refitting from scratch gives the same tokenizer: fitting is deterministic.
  refit = tokenizer_lib.BpeTokenizer.fit(
      registry.build_source(synthetic_config.data).train_captions(), 320, tok.max_len)
  assert refit.hf.to_str() == tok.hf.to_str()
  # A different vocabulary size is a different cache entry.
  synthetic_config.data.tokenizer.vocab_size = 400
  make_tokenizer(synthetic_config.data)
  assert len(list(files[0].parent.iterdir())) == 2


def test_unseen_words_encode_to_known_subwords(synthetic_config):
  synthetic_config.data.max_len = 32
  tok = make_tokenizer(synthetic_config.data)
  captions = registry.build_source(synthetic_config.data).train_captions()
  seen = {w for c in captions for w in c.split()}
  for word in ["zebra", "smiley", "über"]:
    assert word not in seen
    ids = tok.encode([word])[0]
    body = ids[:np.flatnonzero(ids == tok.eos_id)[0]]
    assert len(body) > 1  # not a whole token: split into subwords / bytes
    assert tokenizer_lib.UNK_ID not in body
    assert tok.decode(ids) == word
  # A seen word is a single token (with its leading-space marker).
  assert len(tok.tokens("circle")) == 1


def test_tokenizer_config_errors(synthetic_config):
  data = synthetic_config.data
  data.tokenizer.name = "wordpiece"
  with pytest.raises(ConfigError, match="config.data.tokenizer.name"):
    make_tokenizer(data)
  data.tokenizer.name = "bpe"
  data.tokenizer.vocab_size = 100
  with pytest.raises(ConfigError, match="config.data.tokenizer.vocab_size"):
    make_tokenizer(data)
  data.tokenizer.name = "bytes"
  with pytest.raises(ConfigError, match="config.data.tokenizer.vocab_size"):
    make_tokenizer(data)
  data.tokenizer.vocab_size = 1024
  data.max_len = 1
  with pytest.raises(ConfigError, match="config.data.max_len"):
    make_tokenizer(data)


def _body(row: np.ndarray, tok) -> np.ndarray:
  """The text's ids: the row up to its first EOS."""
  return row[:np.flatnonzero(row == tok.eos_id)[0]]


def test_bpe_special_token_text_encodes_as_ordinary_text(synthetic_config):
  synthetic_config.data.max_len = 32
  tok = make_tokenizer(synthetic_config.data)
  ids = tok.encode(["a [PAD] b", "a [pad] b", "[EOS]", "[eos]", "[UNK]", "[unk]"])
  np.testing.assert_array_equal(ids[0], ids[1])
  assert tok.pad_id not in _body(ids[0], tok) and tok.decode(ids[0]) == "a [pad] b"
  np.testing.assert_array_equal(ids[2], ids[3])
  end = len(tok.tokens("[eos]"))  # " [eos]" is 6 symbols: the EOS sits right after them
  assert end == 6
  np.testing.assert_array_equal(np.flatnonzero(ids[2] == tok.eos_id), [end])
  np.testing.assert_array_equal(ids[4], ids[5])
  assert tokenizer_lib.UNK_ID not in ids[4]
  # The text tower pools at the last non-pad token: that must be the EOS of each row.
  rows = tok.encode(["[PAD] a red circle", "a red circle [PAD]", "[PAD]", "[EOS] [PAD]"])
  eos_at = [np.flatnonzero(row == tok.eos_id)[0] for row in rows]
  np.testing.assert_array_equal(np.asarray(pooling.last_token_index(rows)), eos_at)
  np.testing.assert_array_equal(_body(rows[2], tok), _body(tok.encode(["[pad]"])[0], tok))


def test_bytes_control_characters_are_bytes(synthetic_config):
  synthetic_config.data.tokenizer.name = "bytes"
  tok = make_tokenizer(synthetic_config.data)
  # NUL and SOH have the byte values of the pad and EOS ids: they must still be shifted bytes.
  row = tok.encode(["\x00\x01[PAD]"])[0]
  expected = [0 + 2, 1 + 2] + [b + 2 for b in b"[pad]"] + [tok.eos_id]
  np.testing.assert_array_equal(row[:len(expected)], expected)
  assert np.all(row[len(expected):] == tok.pad_id)


def test_bpe_rejects_matchable_special_tokens_and_missing_bytes(synthetic_config):
  tok = make_tokenizer(synthetic_config.data)
  hf = tokenizers.Tokenizer.from_str(tok.hf.to_str())
  hf.add_special_tokens(["[PAD]"])  # now matched in raw text as id 0
  assert hf.encode("a [PAD]", add_special_tokens=False).ids[-1] == tok.pad_id
  with pytest.raises(ValueError, match="added tokens"):
    tokenizer_lib.BpeTokenizer(hf, tok.max_len)
  specials_only = tokenizers.Tokenizer(tokenizers.models.BPE(
      vocab={"[PAD]": 0, "[EOS]": 1, "[UNK]": 2}, merges=[], unk_token="[UNK]"))
  with pytest.raises(ValueError, match="lacks byte symbols"):
    tokenizer_lib.BpeTokenizer(specials_only, tok.max_len)


# Special-token spellings of well-known tokenizers, fed to every tokenizer besides its own.
_OTHER_SPECIALS = ("<|endoftext|>", "<|startoftext|>", "<pad>", "<unk>", "<s>", "</s>", "<mask>",
                   "[MASK]", "[CLS]", "[SEP]", "[BOS]", "<start_of_text>", "<end_of_text>")
# The tokenizers read from a file, and the fixture giving each one's file.
_FILE_TOKENIZERS = {"tokenizer_json": "minilm_tokenizer_json", "sentencepiece": "spm_model_path",
                    "siglip": "spm_model_path"}
_SURROUNDINGS = ("{}", "a {} b", "x{}y", " {} ", "{}{}", "\n{}\t", "{} red circle {}")


def _fullwidth(text: str) -> str:
  """ASCII punctuation and letters as their fullwidth forms (NFKC maps them back)."""
  return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


def _spellings(literal: str) -> list[str]:
  split = literal[:1] + " " + literal[1:-1] + "\n" + literal[-1:]  # split across whitespace
  return [literal, literal.lower(), literal.upper(), literal.title(), literal.swapcase(),
          _fullwidth(literal), split]


def _nfkc_lower(text: str) -> str:
  return unicodedata.normalize("NFKC", text).lower()


def _squash(text: str) -> str:
  """NFKC, lowercase, without whitespace."""
  return "".join(_nfkc_lower(text).split())


@pytest.mark.parametrize("name", tokenizer_lib.TOKENIZERS.names())
def test_no_text_produces_a_special_id(synthetic_config, name, request):
  synthetic_config.data.tokenizer.name = name
  if name == "clip_bpe":  # CLIP's merges file (from the open_clip_torch wheel), no vocab_size
    synthetic_config.data.tokenizer = ml_collections.ConfigDict(
        dict(name=name, merges_path=request.getfixturevalue("clip_merges_path")))
  elif name in _FILE_TOKENIZERS:  # MiniLM's tokenizer.json; a SentencePiece model (twice)
    synthetic_config.data.tokenizer = ml_collections.ConfigDict(
        dict(name=name, path=request.getfixturevalue(_FILE_TOKENIZERS[name])))
  synthetic_config.data.max_len = 160  # the longest text: 102 bytes
  tok = make_tokenizer(synthetic_config.data)
  assert tok.special_tokens["[EOS]"] == tok.eos_id
  assert tok.special_tokens.get("[PAD]", tok.pad_id) == tok.pad_id  # clip_bpe: "!" is id 0
  start = 0 if tok.bos_id is None else 1
  clean = tokenizer_lib.clip_clean if name == "clip_bpe" else str
  literals = sorted(set(tok.special_tokens) | set(_OTHER_SPECIALS))
  spelled = [(s, form.format(s, s)) for lit in literals for s in _spellings(lit)
             for form in _SURROUNDINGS]
  spelled.append(("".join(literals), "".join(literals)[:40]))
  spelled += [(chr(i), chr(i)) for i in range(4)]  # control characters with small code points
  texts = [text for _, text in spelled]
  ids = tok.encode(texts)
  special = np.array(sorted(set(tok.special_tokens.values())))
  pooled_at = np.asarray(pooling.last_token_index(ids))
  for (literal, text), row, pool in zip(spelled, ids, pooled_at, strict=True):
    length = int(np.flatnonzero(row == tok.eos_id)[0]) + 1  # up to the first EOS
    assert length < tok.max_len, text  # not truncated: the whole text is checked
    assert np.all(row[length:] == tok.pad_id), (text, row)
    assert row[:start].tolist() == [tok.bos_id][:start], (text, row)
    assert not np.isin(row[start:length - 1], special).any(), (text, row)
    if tok.pad_id != tok.eos_id:  # "siglip" pads with EOS, for towers that pool the last position
      assert pool == length - 1, (text, row)
    # clip_bpe drops control characters (CLIP's cleaning) and decodes words spaced apart. The
    # file tokenizers' small or foreign vocabularies turn some characters into an unknown piece.
    if name not in _FILE_TOKENIZERS:
      assert _squash(clean(literal[:40])) in _squash(tok.decode(row)), (text, tok.decode(row))


def test_a_fitted_tokenizer_is_kept_with_the_run(synthetic_config, tmp_path, monkeypatch):
  run = tmp_path / "run"
  tok = make_tokenizer(synthetic_config.data, run_dir=str(run))
  saved = json.loads((run / "tokenizer.json").read_text())
  assert saved["fields"] == {"name": "bpe", "vocab_size": 320}

  def gone(*args, **kwargs):
    raise AssertionError("the training data was read")

  # Read back from the run, with neither the source nor the fitting needed.
  with monkeypatch.context() as m:
    m.setattr(registry, "build_source", gone)
    m.setattr(tokenizer_lib.BpeTokenizer, "fit", gone)
    again = make_tokenizer(synthetic_config.data, run_dir=str(run))
  assert again.hf.to_str() == tok.hf.to_str()
  # Other tokenizer fields: fitted anew, and the run's file replaced.
  synthetic_config.data.tokenizer.vocab_size = 300
  other = make_tokenizer(synthetic_config.data, run_dir=str(run))
  assert json.loads((run / "tokenizer.json").read_text())["fields"]["vocab_size"] == 300
  assert other.vocab_size <= 300
