"""The "tfds" source on two tiny TFDS datasets prepared here in the ArrayRecord format (without
TensorFlow: the images are given to TFDS already PNG-encoded): a captions dataset with a bad
record, and a classification dataset."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from clip_jax.data import load_eval_split, make_tokenizer, make_train_iterator
from clip_jax.data import registry as data_registry
from clip_jax.registry import ConfigError

from tests.data.conftest import COLOURS, NAMES


def config(data_dir, tmp_path, **data):
  c = ml_collections.ConfigDict()
  c.seed, c.batch_size = 0, 4
  c.data = ml_collections.ConfigDict(dict(
      name="tfds", data_dir=data_dir, image_size=8, max_len=24, cache_dir=str(tmp_path),
      tokenizer=ml_collections.ConfigDict(dict(name="bytes")), **data))
  return c


def test_captions_dataset_trains_skips_and_resumes(tfds_data_dir, tmp_path):
  cfg = config(tfds_data_dir, tmp_path, dataset="clip_jax_tiny_captions",
               text_key="captions/text", eval_split="val", max_skip_fraction=0.5)
  data_registry.clear_source_memo()
  tok = make_tokenizer(cfg.data)
  it = make_train_iterator(cfg, tok)
  batches = [next(it) for _ in range(4)]  # 16 rows over 8 records: every record is drawn
  source = data_registry.build_source(cfg.data)
  assert source.num_train == 8
  assert source.skipped["image_decode"] == 1 and source.skipped["caption_empty"] == 1
  texts = {tok.decode(row) for b in batches for row in b["text"]}
  assert texts <= {f"a {n} card" for n in NAMES} | set(NAMES) and len(texts) > 4
  assert not texts & {"a cyan card", "cyan", "a grey card", "grey"}  # records 5 and 6
  # Exact resume: a new iterator moved to the state after batch 1 gives batch 2.
  again = make_train_iterator(cfg, tok)
  next(again)
  state = again.get_state()
  other = make_train_iterator(cfg, tok)
  other.set_state(state)
  np.testing.assert_array_equal(next(other)["image"], batches[1]["image"])
  eval_set = load_eval_split(cfg.data, "heldout")
  assert eval_set.images.shape == (3, 8, 8, 3) and len(eval_set.texts) == 6
  assert eval_set.text_image.tolist() == [0, 0, 1, 1, 2, 2]
  assert set(eval_set.texts) == {"a red card", "red", "a green card", "green", "a blue card",
                                 "blue"}
  # The images are the records' colours, centre-cropped: flat.
  assert np.allclose(eval_set.images.std(axis=(1, 2)), 0.0, atol=1e-6)


def test_classification_dataset_captions_by_label(tfds_data_dir, tmp_path):
  cfg = config(tfds_data_dir, tmp_path, dataset="clip_jax_tiny_classes", label_key="label",
               caption_templates=("a {} card.",), eval_split="test", num_eval=4)
  data_registry.clear_source_memo()
  tok = make_tokenizer(cfg.data)
  batch = next(make_train_iterator(cfg, tok))
  assert {tok.decode(r) for r in batch["text"]} <= {"a dark red card.", "a green card.",
                                                    "a blue card."}
  eval_set = load_eval_split(cfg.data, "heldout")
  labels, names = eval_set.labels["label"]
  assert names == ["dark red", "green", "blue"] and len(labels) == 4  # num_eval
  assert eval_set.texts == [f"a {names[i]} card." for i in labels]
  # Each image is its class's colour (TFDS stores the records in its own order).
  colours = (eval_set.images[:, 0, 0] + 1) * 127.5
  np.testing.assert_allclose(colours, np.array(COLOURS)[labels], atol=1.0)


def test_config_errors_name_the_field(tfds_data_dir, tmp_path):
  data_registry.clear_source_memo()
  with pytest.raises(ConfigError, match="text_key and config.data.label_key are both empty"):
    data_registry.build_source(
        config(tfds_data_dir, tmp_path, dataset="clip_jax_tiny_classes").data)
  with pytest.raises(ConfigError, match=r"config.data.dataset: cannot open TFDS dataset "
                                        r"'no_such_dataset'.*array_record"):
    data_registry.build_source(config(tfds_data_dir, tmp_path, dataset="no_such_dataset",
                                      label_key="label").data).num_train
  with pytest.raises(ConfigError, match="label_key = 'captions' is not a class-label feature"):
    data_registry.build_source(config(tfds_data_dir, tmp_path, dataset="clip_jax_tiny_captions",
                                      label_key="captions").data).train_examples([0], [[0, 0]])
