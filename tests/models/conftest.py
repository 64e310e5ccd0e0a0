"""Shared tiny model configs and batches for the model tests (width 32, depth 2, 16x16 images)."""

from __future__ import annotations

import types

import ml_collections
import numpy as np
import pytest

BATCH = 4
IMAGE_SIZE = 16
TEXT_LEN = 8
VOCAB = 64
EMBED_DIM = 16
WIDTH = 32


def tiny_image_tower(**overrides) -> ml_collections.ConfigDict:
  kwargs = dict(name="vit", patch_size=4, width=WIDTH, depth=2, num_heads=4, mlp_ratio=2.0,
                pooling="map")
  kwargs.update(overrides)
  return ml_collections.ConfigDict(kwargs)


def tiny_text_tower(**overrides) -> ml_collections.ConfigDict:
  kwargs = dict(name="text_transformer", vocab_size=VOCAB, context_length=TEXT_LEN, width=WIDTH,
                depth=2, num_heads=4, mlp_ratio=2.0, causal=True, pooling="eos")
  kwargs.update(overrides)
  return ml_collections.ConfigDict(kwargs)


def tiny_model_config(**overrides) -> ml_collections.ConfigDict:
  """config.model for a tiny image-text model; keyword overrides replace top-level fields."""
  config = ml_collections.ConfigDict()
  config.embed_dim = EMBED_DIM
  config.dtype = "float32"
  config.remat = False
  config.towers = ml_collections.ConfigDict()
  config.towers.image = tiny_image_tower()
  config.towers.text = tiny_text_tower()
  for key, value in overrides.items():
    config[key] = value
  return config


def random_tokens(rng: np.random.Generator, batch: int = BATCH, length: int = TEXT_LEN,
                  min_len: int = 2) -> np.ndarray:
  """int32 [batch, length] ids in [1, VOCAB) followed by padding (0); lengths vary by row."""
  tokens = rng.integers(1, VOCAB, size=(batch, length)).astype(np.int32)
  lengths = rng.integers(min_len, length + 1, size=batch)
  lengths[0] = length  # one row without padding
  for row, n in enumerate(lengths):
    tokens[row, n:] = 0
  return tokens


@pytest.fixture
def batch() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  return {
      "image": rng.uniform(-1, 1, size=(BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32),
      "text": random_tokens(rng),
      "instance_id": np.arange(BATCH, dtype=np.int32),
  }


@pytest.fixture
def tiny():
  """The helpers above, for test modules (conftest is not importable under importlib mode)."""
  return types.SimpleNamespace(
      model_config=tiny_model_config, image_tower=tiny_image_tower, text_tower=tiny_text_tower,
      random_tokens=random_tokens, batch=BATCH, image_size=IMAGE_SIZE, text_len=TEXT_LEN,
      vocab=VOCAB, embed_dim=EMBED_DIM, width=WIDTH)
