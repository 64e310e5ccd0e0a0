"""The "image_folder" source: class subfolders as labels and captions, a held-out folder for
zero-shot classification, evaluation-only use, and the errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clip_jax.data import load_eval_split, make_tokenizer, make_train_iterator
from clip_jax.data.registry import build_source, clear_source_memo
from clip_jax.registry import ConfigError

COLOURS = {"dark_red": (150, 0, 0), "green": (0, 200, 0), "blue": (0, 0, 220)}


def write_folder(root, per_class=4, broken=False):
  """root/<class>/<i>.png|jpg in each class's colour (sizes vary), and a stray text file."""
  for name, colour in COLOURS.items():
    (root / name).mkdir(parents=True)
    for i in range(per_class):
      pixels = np.full((10 + i, 14, 3), colour, np.uint8)
      Image.fromarray(pixels).save(root / name / f"{i}.{'png' if i % 2 else 'JPG'}")
    (root / name / "notes.txt").write_text("not an image")
  if broken:
    (root / "green" / "9.png").write_bytes(b"\x89PNG truncated")
  return root


@pytest.fixture
def folders(tmp_path):
  return write_folder(tmp_path / "train", broken=True), write_folder(tmp_path / "val", 5)


def test_classes_are_labels_and_captions(folders, file_config):
  train, val = folders
  config = file_config(name="image_folder", path=str(train), eval_path=str(val), num_eval=9,
                       caption_templates=("a {} card.", "{}"), max_skip_fraction=0.2)
  clear_source_memo()
  source = build_source(config.data)
  assert source.num_train == 13
  tok = make_tokenizer(config.data)
  it = make_train_iterator(config, tok)
  texts = {tok.decode(row) for _ in range(6) for row in next(it)["text"]}
  assert texts <= {"a blue card.", "blue", "a dark red card.", "dark red", "a green card.",
                   "green"} and len(texts) > 3
  assert source.skipped["image_decode"] == 1  # green/9.png, replaced by the next unit
  eval_set = load_eval_split(config.data, "heldout")
  labels, names = eval_set.labels["class"]
  assert names == ["blue", "dark red", "green"] and len(labels) == 9  # num_eval of 15
  assert len(set(labels.tolist())) == 3  # the cut is spread over the classes
  assert eval_set.texts == [f"a {names[c]} card." for c in labels]
  colours = np.round((eval_set.images[:, 5, 5] + 1) * 127.5)
  want = np.array([COLOURS[n.replace(" ", "_")] for n in names])[labels]
  np.testing.assert_allclose(colours, want, atol=2)  # each image is its class's colour


def test_evaluation_only_and_errors(folders, file_config, tmp_path):
  train, val = folders
  clear_source_memo()
  only_eval = file_config(name="image_folder", eval_path=str(val))
  assert build_source(only_eval.data).num_train == 0
  assert load_eval_split(only_eval.data, "heldout").labels["class"][1] == ["blue", "dark red",
                                                                           "green"]
  with pytest.raises(ConfigError, match="path and config.data.eval_path are both empty"):
    build_source(file_config(name="image_folder").data)
  with pytest.raises(ConfigError, match=r"config.data.path = '.*nowhere': no such folder"):
    build_source(file_config(name="image_folder", path=str(tmp_path / "nowhere")).data).num_train
  # Evaluation reads only the held-out folder: it works with the training folder gone.
  config = file_config(name="image_folder", path=str(train), eval_path=str(val))
  train.rename(tmp_path / "moved")
  assert load_eval_split(config.data, "heldout").images.shape == (15, 8, 8, 3)
