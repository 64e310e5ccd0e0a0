"""Tests for clip_jax.data.tokenizer: fixed-length rows, EOS, truncation, caching, no leaks."""

from __future__ import annotations

import numpy as np
import pytest

from clip_jax.data import make_tokenizer, registry, tokenizer as tokenizer_lib
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
  tok_long = tokenizer_lib.TOKENIZERS.get(name)(
      _with_max_len(synthetic_config.data, 64))
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
  data.tokenizer.name = "sentencepiece"
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
