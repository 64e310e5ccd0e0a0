"""The tokenizers read from files ("tokenizer_json", "sentencepiece") and caption cleaning,
against the libraries' own encodings of the same texts."""

from __future__ import annotations

import json

import ml_collections
import numpy as np
import pytest
import sentencepiece
import tokenizers

from clip_jax.data import load_tokenizer, make_tokenizer
from clip_jax.data.spm_tokenizer import SentencePieceTokenizer, fit_sentencepiece
from clip_jax.data.text_clean import clean_text
from clip_jax.registry import ConfigError

from tests.conftest import SPM_CAPTIONS

TEXTS = ("Hello World!", "a photo of a CAT.", "", "  spaces\tand\nnewlines  ",
         "Ünïcödé àccents and emoji 🙂", "x" * 300, "don't stop", "naïve café 北京",
         "a small photo of a red cat", "1234567890 numbers")


def _library_rows(ids_per_text: list[list[int]], max_len: int, bos: list[int],
                  eos: int) -> np.ndarray:
  """The reference layout: [bos] + ids cut to max_len - 1 ids, then EOS, then zeros."""
  out = np.zeros((len(ids_per_text), max_len), np.int32)
  for row, ids in zip(out, ids_per_text):
    ids = (bos + ids)[:max_len - 1] + [eos]
    row[:len(ids)] = ids
  return out


@pytest.mark.parametrize("max_len", [8, 64])
def test_tokenizer_json_matches_the_library_with_its_post_processor(minilm_tokenizer_json,
                                                                    max_len):
  tok = load_tokenizer("tokenizer_json", context_length=max_len, path=minilm_tokenizer_json)
  ref = tokenizers.Tokenizer.from_file(minilm_tokenizer_json)
  ref.no_padding()
  ref.enable_truncation(max_len)  # keeps [CLS] and [SEP], cuts the text between them
  want = np.zeros((len(TEXTS), max_len), np.int32)
  for row, text in zip(want, TEXTS):
    ids = ref.encode(text).ids
    row[:len(ids)] = ids
  np.testing.assert_array_equal(tok.encode(TEXTS), want)
  assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (101, 102, 30522)  # [CLS], [SEP]
  assert tok.decode(tok.encode(["Hello World!"])[0]) == "hello world!"


def test_tokenizer_json_spelled_special_tokens_are_text(minilm_tokenizer_json):
  tok = load_tokenizer("tokenizer_json", context_length=16, path=minilm_tokenizer_json)
  ref = tokenizers.Tokenizer.from_file(minilm_tokenizer_json)
  assert 102 in ref.encode("a [SEP] b", add_special_tokens=False).ids  # the library matches it
  ids = tok.encode(["a [SEP] b", "a [sep] b"])
  np.testing.assert_array_equal(ids[0], ids[1])
  assert (ids[0] == 102).sum() == 1 and (ids[0] == 101).sum() == 1  # only encode's own


def test_tokenizer_json_tokens_by_name_and_errors(minilm_tokenizer_json, tmp_path):
  tok = load_tokenizer("tokenizer_json", context_length=6, path=minilm_tokenizer_json,
                       bos_token="", eos_token="[MASK]")
  assert tok.bos_id is None and tok.eos_id == 103
  np.testing.assert_array_equal(tok.encode(["hello world"])[0], [7592, 2088, 103, 0, 0, 0])
  with pytest.raises(ConfigError, match=r"tokenizer.eos_token = '<eos>' is not a token"):
    load_tokenizer("tokenizer_json", path=minilm_tokenizer_json, eos_token="<eos>")
  with pytest.raises(ConfigError, match=r"tokenizer.path = '.*missing.json': no such file"):
    load_tokenizer("tokenizer_json", path=str(tmp_path / "missing.json"))
  bad = tmp_path / "bad.json"
  bad.write_text("{}")
  with pytest.raises(ConfigError, match="is not a Hugging Face tokenizer.json"):
    load_tokenizer("tokenizer_json", path=str(bad))
  # A file whose post-processor adds nothing needs eos_token.
  spec = json.loads(open(minilm_tokenizer_json, encoding="utf-8").read())
  spec["post_processor"] = None
  plain = tmp_path / "plain.json"
  plain.write_text(json.dumps(spec))
  with pytest.raises(ConfigError, match="adds no end token.*eos_token"):
    load_tokenizer("tokenizer_json", path=str(plain))
  assert load_tokenizer("tokenizer_json", path=str(plain), eos_token="[SEP]").bos_id is None


def test_sentencepiece_matches_the_library(spm_model_path, synthetic_config):
  synthetic_config.data.max_len = 9
  synthetic_config.data.tokenizer = ml_collections.ConfigDict(
      dict(name="sentencepiece", path=spm_model_path))
  tok = make_tokenizer(synthetic_config.data)
  sp = sentencepiece.SentencePieceProcessor(model_file=spm_model_path)
  texts = list(SPM_CAPTIONS[:5]) + list(TEXTS)
  want = _library_rows(sp.encode(texts), 9, [], sp.eos_id())
  np.testing.assert_array_equal(tok.encode(texts), want)
  assert (tok.eos_id, sp.pad_id(), sp.unk_id(), sp.bos_id()) == (1, 0, 2, -1)
  assert tok.vocab_size == sp.get_piece_size()
  long = load_tokenizer("sentencepiece", context_length=32, path=spm_model_path)
  assert long.decode(long.encode(["a small photo of a red cat"])[0]) == "a small photo of a red cat"
  # Control pieces spelled in a caption are text: no id 1 (EOS) but encode's own.
  row = tok.encode(["</s> <pad> a cat"])[0]
  assert (row == tok.eos_id).sum() == 1


def test_sentencepiece_errors(spm_model_path, tmp_path):
  with pytest.raises(ConfigError, match="add_bos = True but .* has no BOS piece"):
    load_tokenizer("sentencepiece", path=spm_model_path, add_bos=True)
  junk = tmp_path / "junk.model"
  junk.write_bytes(b"not a model")
  with pytest.raises(ConfigError, match="is not a SentencePiece model"):
    SentencePieceTokenizer(junk, 8)
  with pytest.raises(ConfigError, match="tokenizer.clean must be one of"):
    load_tokenizer("sentencepiece", path=spm_model_path, clean="upper")


def test_fit_sentencepiece_is_deterministic(spm_model_path, tmp_path):
  again = fit_sentencepiece(SPM_CAPTIONS, vocab_size=64, path=tmp_path / "again.model")
  assert again.read_bytes() == open(spm_model_path, "rb").read()


@pytest.mark.parametrize("mode, want", [
    ("none", "  Caf\u00c3\u00a9 &amp;amp; TEA,  please!\n"),
    ("whitespace", "Café & TEA, please!"),
    ("lower", "café & tea, please!"),
    ("canonicalize", "café tea please"),
    ("siglip", "caf\u00e3\u00a9 ampamp tea please"),  # HF SiglipTokenizer's: no ftfy, no html
])
def test_clean_text_modes(mode, want):
  text = "  Caf\u00c3\u00a9 &amp;amp; TEA,  please!\n"  # mojibake of "Café", a double-escaped &
  assert clean_text(text, mode) == want


def test_clean_option_reaches_the_ids(spm_model_path):
  plain = load_tokenizer("sentencepiece", context_length=12, path=spm_model_path)
  canon = load_tokenizer("sentencepiece", context_length=12, path=spm_model_path,
                         clean="canonicalize")
  np.testing.assert_array_equal(canon.encode(["A RED, CAT!"]), plain.encode(["a red cat"]))
  assert not np.array_equal(plain.encode(["A RED, CAT!"]), plain.encode(["a red cat"]))


# Texts for "siglip" against HF's SiglipTokenizer: punctuation, capitals, whitespace runs,
# unicode (accents, CJK, emoji, a non-breaking space, zero-width and line separators), a
# literal "▁", characters the model has no piece for, the empty string, and a text cut at 64.
SIGLIP_TEXTS = (
    "a photo of a cat", "A Photo, of a CAT!!", "", "   ", "!!!", "hello   world\n\tnew line",
    "café crème brûlée", "日本の猫です", "x▁y", "▁leading piece mark", "émoji 🐱 cat",
    "it's a dog's life", "tab\there", "non\u00a0breaking space", "ÜBER Straße", "İstanbul",
    "\u2028line separator", "zero\u200bwidth", "a-b_c (d) [e] {f}", "1/2 + 3 = 4.5%",
    "&amp; an html entity", "#hashtag @user ~tilde",
    " ".join(["the quick brown fox jumps over the lazy dog"] * 12))


def test_siglip_matches_hf_siglip_tokenizer(tmp_path, parity_missing):
  try:
    from transformers import SiglipTokenizer
  except ImportError:
    parity_missing("transformers", "pip install transformers==5.25.0")
  corpus = [clean_text(t, "siglip") for t in SIGLIP_TEXTS] + list(SPM_CAPTIONS)
  path = str(fit_sentencepiece(corpus, vocab_size=200, path=tmp_path / "siglip.model"))
  want = SiglipTokenizer(vocab_file=path)(list(SIGLIP_TEXTS), padding="max_length",
                                          max_length=64, truncation=True)["input_ids"]
  tok = load_tokenizer("siglip", context_length=64, path=path)
  got = tok.encode(SIGLIP_TEXTS)
  np.testing.assert_array_equal(got, np.asarray(want, np.int32))
  assert (tok.pad_id, tok.eos_id) == (1, 1)
  assert got[-1, -1] == 1 and (got[-1] != 1).sum() == 63  # cut: 63 ids, then EOS
  assert tok.decode(got[1]) == "a photo of a cat"
