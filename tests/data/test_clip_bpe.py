"""Tests for the "clip_bpe" tokenizer: the ids of open_clip 3.3.0's tokenizer, the merges file
found or named, `load_tokenizer`, and a training config that uses it.

The reference is open_clip's own `open_clip/tokenizer.py`, read from the open_clip_torch wheel
and loaded by file path (importing the open_clip package needs torchvision); where PyTorch is not
installed, the few torch calls of its `__call__` run on a NumPy stand-in. Without the wheel the
tests are skipped with the reason, and fail under CLIP_JAX_REQUIRE_PARITY=1 (CI); see the
`open_clip_wheel` fixture in tests/conftest.py.
"""

from __future__ import annotations

import importlib.util
import pathlib
import re
import sys
import types
from unittest import mock

import numpy as np
import pytest

from clip_jax import config as config_lib
from clip_jax.data import load_tokenizer, make_tokenizer, tokenizer as tokenizer_lib
from clip_jax.data.pipeline import train_batch_spec
from clip_jax.models import abstract_model, parse_model_config
from clip_jax.registry import ConfigError
from clip_jax.training import state as state_lib
from clip_jax.training.trainer import check_vocab

TINY = pathlib.Path(__file__).resolve().parents[1] / "configs" / "tiny.py"
CONTEXT = 77
SOT, EOT = 49406, 49407
MERGES_FIELD = "config.data.tokenizer.merges_path"

# Hand-picked texts; `_generated` adds seeded random ones.
HAND = [
    "", " ", "\t\n  ", "a photo of a cat", "A Photo Of A CAT", "a  photo\tof\n\na   cat  ",
    "It's a dog's life, isn't it? We'll see; they'd've gone. I'M HERE", "don't won't can't",
    "rock 'n' roll", "'s 't 're 've 'm 'll 'd", "o'clock o’clock “quoted” ‘single’",
    "café naïve résumé über Ångström façade jalapeño", "Ⅻ ½ ² ³ ① ﬁ ﬂ ﬀ", "Ｆｕｌｌｗｉｄｔｈ！",
    "日本語のテキスト", "中文字符测试一下", "한국어 텍스트", "Русский текст", "Ελληνικά κείμενα",
    "עברית", "العربية", "हिन्दी", "ไทย", "😀😃😄 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️", "a🐱b", "I ♥ NY ★★★",
    "wow!!!", "wow!(", "hi!;)", "!!!", "!", "?!?!", "...", "--", "a-b_c.d/e\\f", "#hashtag @user",
    "$100.00 99% 3.14159 1,000,000 1e-9 0x1F", "2024-01-02T03:04:05Z", "12345678901234567890",
    "&amp; &lt;b&gt;bold&lt;/b&gt; &quot;q&quot; &#39;s &#x263A; &nbsp;x", "&amp;amp;lt;",
    "<p>html <br/> tags</p>", "naÃ¯ve cafÃ©", "\u00a0non\u00a0breaking\u2003spaces\u3000",
    "zero\u200bwidth", "tab\tand\rcarriage", "control\x00\x01\x07chars\x1f", "soft\u00adhyphen",
    "combining e\u0301 vs é", "İstanbul ǅ ß ẞ ſ", "aaaaaaaaaaaaaaaaaaaaaaaa", "abababababab",
    "supercalifragilisticexpialidocious", "pneumonoultramicroscopicsilicovolcanoconiosis",
    "http://example.com/path?q=1&r=2#frag", "user@example.com", "C++ C# .NET F# x86_64",
    "<|endoftext|> [CLS] [SEP] <s> </s> [PAD] [EOS]", "</w>", "a</w>b", "word</w>",
    " ".join(["a long caption that keeps going"] * 20),
    "x" * 400, "🙂" * 100, " ".join(str(i) for i in range(100)),
]
# Texts spelling CLIP's special tokens: open_clip gives the special ids there, "clip_bpe" the
# characters (the special-token rule of clip_jax.data.tokenizer).
SPECIAL_SPELLINGS = ["<start_of_text>", "<end_of_text>", "a <end_of_text> b",
                     "<START_OF_TEXT>x<End_Of_Text>", "&lt;end_of_text&gt;"]


def _generated(n: int, seed: int = 0) -> list[str]:
  """`n` random texts mixing ASCII, Latin, Greek, Cyrillic, CJK, kana, Hangul, Arabic, Devanagari,
  emoji, punctuation and whitespace runs, 0 to 90 characters."""
  rng = np.random.default_rng(seed)
  blocks = [(0x20, 0x7F), (0x20, 0x7F), (0xA0, 0x250), (0x370, 0x400), (0x400, 0x500),
            (0x4E00, 0x5200), (0x3040, 0x3100), (0xAC00, 0xAE00), (0x600, 0x700), (0x900, 0x980),
            (0x1F300, 0x1F700), (0x2000, 0x2070), (0x0, 0x20)]
  texts = []
  for _ in range(n):
    chars = []
    for _ in range(rng.integers(0, 91)):
      low, high = blocks[rng.integers(len(blocks))]
      chars.append(chr(rng.integers(low, high)))
    texts.append("".join(chars))
  return texts


TEXTS = HAND + _generated(200)


@pytest.fixture(scope="module")
def open_clip_tokenizer(open_clip_dir):
  """open_clip 3.3.0's `SimpleTokenizer()` (CLIP's merges file beside it), loaded by path."""
  try:
    import torch  # noqa: F401
    stand_ins = {}
  except ImportError:
    torch = types.ModuleType("torch")  # what open_clip/tokenizer.py's __call__ uses
    torch.zeros = lambda *shape, dtype=None: np.zeros(shape, np.int64)
    torch.tensor = np.asarray
    torch.long = np.int64
    torch.Tensor = torch.LongTensor = np.ndarray
    stand_ins = {"torch": torch}
  spec = importlib.util.spec_from_file_location("open_clip_tokenizer_for_parity",
                                                open_clip_dir / "tokenizer.py")
  module = importlib.util.module_from_spec(spec)
  with mock.patch.dict(sys.modules, stand_ins):
    spec.loader.exec_module(module)
  return module.SimpleTokenizer()


@pytest.fixture(scope="module")
def clip_tok(clip_merges_path):
  return load_tokenizer("clip_bpe", context_length=CONTEXT, merges_path=clip_merges_path)


def _spaced_specials(text: str) -> str:
  """`text` with each spelled special token's "<" set apart: for open_clip, the same words as
  the special token's characters (CLIP's pattern splits "<" from the letters anyway)."""
  return re.sub(r"(<|&lt;)(?=(start|end)_of_text(>|&gt;))", r"\1 ", text, flags=re.IGNORECASE)


def test_ids_equal_open_clip(clip_tok, open_clip_tokenizer):
  ours = clip_tok.encode(TEXTS)
  theirs = np.asarray(open_clip_tokenizer(TEXTS, context_length=CONTEXT))
  assert ours.dtype == np.int32 and ours.shape == (len(TEXTS), CONTEXT)
  for text, a, b in zip(TEXTS, ours, theirs, strict=True):
    np.testing.assert_array_equal(a, b, err_msg=repr(text))
  assert len(TEXTS) >= 250
  # The texts cover truncation (open_clip keeps SOT + 75 ids + EOT) and "!" as id 0 inside a text.
  truncated = ours[:, -1] == EOT
  assert truncated.sum() >= 4 and np.all(ours[truncated, 0] == SOT)
  assert any(0 in row[1:np.flatnonzero(row == EOT)[0]] for row in ours)


def test_spelled_special_tokens_are_text(clip_tok, open_clip_tokenizer):
  """Deliberate difference: open_clip turns "<end_of_text>" in a caption into the special id;
  "clip_bpe" encodes its characters, as open_clip does once "<" is set apart."""
  ours = clip_tok.encode(SPECIAL_SPELLINGS)
  theirs = np.asarray(open_clip_tokenizer(SPECIAL_SPELLINGS, context_length=CONTEXT))
  spaced = np.asarray(open_clip_tokenizer([_spaced_specials(t) for t in SPECIAL_SPELLINGS],
                                          context_length=CONTEXT))
  np.testing.assert_array_equal(ours, spaced)
  for text, row, their_row in zip(SPECIAL_SPELLINGS, ours, theirs, strict=True):
    end = np.flatnonzero(row == EOT)[0]
    assert row[0] == SOT and not np.isin(row[1:end], [SOT, EOT]).any(), text
    assert np.isin(their_row[1:-1], [SOT, EOT]).any(), text  # open_clip: special ids inside
  assert clip_tok.decode(ours[2]) == "a < end _ of _ text > b"


def test_merges_file_found_in_installed_open_clip(clip_tok, clip_merges_path, tmp_path,
                                                  monkeypatch):
  package = tmp_path / "open_clip"  # an installed open_clip_torch that must not be imported
  package.mkdir()
  (package / "__init__.py").write_text("raise ImportError('open_clip must not be imported')\n")
  found = package / tokenizer_lib.CLIP_MERGES_FILE
  found.write_bytes(open(clip_merges_path, "rb").read())
  monkeypatch.syspath_prepend(str(tmp_path))
  assert tokenizer_lib.find_clip_merges() == found
  tok = load_tokenizer("clip_bpe")
  assert "open_clip" not in sys.modules
  assert tok.max_len == CONTEXT
  np.testing.assert_array_equal(tok.encode(TEXTS[:20]), clip_tok.encode(TEXTS[:20]))


def test_missing_merges_file_names_the_field(monkeypatch, tmp_path):
  with pytest.raises(ConfigError, match=rf"{MERGES_FIELD} = '.*nope.gz': no such file.*"
                                        "pip install --no-deps open_clip_torch"):
    load_tokenizer("clip_bpe", merges_path=str(tmp_path / "nope.gz"))
  monkeypatch.setattr(tokenizer_lib, "find_spec", lambda name: None)  # no open_clip installed
  assert tokenizer_lib.find_clip_merges() is None
  with pytest.raises(ConfigError, match=rf"{MERGES_FIELD} = ''.*pip install --no-deps open_clip_torch"):
    load_tokenizer("clip_bpe")


def test_load_tokenizer(clip_tok):
  ids = clip_tok.encode(["a photo of a cat"])
  assert ids.dtype == np.int32 and ids.shape == (1, CONTEXT)
  np.testing.assert_array_equal(ids[0, :7], [SOT, 320, 1125, 539, 320, 2368, EOT])
  assert not ids[0, 7:].any()
  assert (clip_tok.pad_id, clip_tok.eos_id, clip_tok.bos_id, clip_tok.vocab_size) == (
      0, EOT, SOT, 49408)
  assert clip_tok.decode(clip_tok.encode(["Wow!( A  Cat"])[0]) == "wow !( a cat"
  short = load_tokenizer("bytes", context_length=4).encode(["abc"])
  np.testing.assert_array_equal(short, [[ord("a") + 2, ord("b") + 2, ord("c") + 2, 1]])
  with pytest.raises(ConfigError, match=r"'bpe' is fitted .*make_tokenizer\(config\.data\)"):
    load_tokenizer("bpe", vocab_size=300)
  with pytest.raises(ConfigError, match=r"config\.data\.tokenizer\.name = 'gpt2'"):
    load_tokenizer("gpt2")
  with pytest.raises(ConfigError, match=r"config\.data\.tokenizer\.vocab_sise"):
    load_tokenizer("bytes", vocab_sise=300)
  with pytest.raises(ConfigError, match=r"context_length"):
    load_tokenizer("bytes", context_length=1)


def test_training_config_with_clip_bpe(clip_tok, clip_merges_path):
  """A training config that tokenizes with clip_bpe: config.data.max_len is the rows' length
  and must fit the text tower's context_length; the tower's vocab_size covers CLIP's ids."""
  config = config_lib.load_config_file(str(TINY))
  config.data.tokenizer = dict(name="clip_bpe", merges_path=clip_merges_path)
  config.data.max_len = CONTEXT
  config.model.towers.text.update(vocab_size=49408, context_length=CONTEXT)
  config = config_lib.with_defaults(config)
  config_lib.validate_config(config, num_devices=8)
  tok = make_tokenizer(config.data)
  check_vocab(config, tok)
  spec = train_batch_spec(config)
  assert spec["text"].shape == (config.batch_size, CONTEXT)
  model_spec = parse_model_config(config.model)
  abstract_model(model_spec, state_lib.sample_inputs(spec, ("image", "text")))
  np.testing.assert_array_equal(tok.encode(TEXTS[:8]), clip_tok.encode(TEXTS[:8]))

  config.model.towers.text.context_length = CONTEXT - 1
  with pytest.raises(ConfigError, match=r"config\.data\.max_len .*77.*context_length = 76"):
    abstract_model(parse_model_config(config.model),
                   state_lib.sample_inputs(spec, ("image", "text")))
  config.model.towers.text.update(vocab_size=49407, context_length=CONTEXT)
  with pytest.raises(ConfigError, match=r"vocab_size = 49407 .*at least 49408"):
    check_vocab(config, tok)
  config.data.tokenizer.merges_path = clip_merges_path + ".missing"
  with pytest.raises(ConfigError, match=MERGES_FIELD):
    config_lib.validate_config(config, num_devices=8)
