"""The "csv" source (clip_jax.data.table): paths, determinism, bad input, errors, held-out split."""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from clip_jax.data import build_source, make_tokenizer, make_train_iterator, transforms
from clip_jax.data.registry import clear_source_memo
from clip_jax.registry import ConfigError


def batches(config, steps, process_index=0, process_count=1):
  it = make_train_iterator(config, make_tokenizer(config.data), process_index, process_count)
  return [next(it) for _ in range(steps)]


def test_same_seed_same_batches_and_relative_paths(photo_table, file_config, monkeypatch,
                                                   tmp_path):
  # Relative image paths resolve against the table's folder, not the working directory; an
  # absolute path is kept.
  lines = photo_table.read_text().splitlines()
  lines[1] = f"{photo_table.parent / 'imgs' / '0.png'},photo number 0"
  photo_table.write_text("\n".join(lines) + "\n")
  monkeypatch.chdir(tmp_path)
  config = file_config(name="csv", path=str(photo_table))
  source = build_source(config.data)
  assert source.num_train == 12 and sum(source.skipped.values()) == 0
  assert source.samples[0].path == str(photo_table.parent / "imgs" / "0.png")
  assert source.samples[1].path == str(photo_table.parent / "imgs" / "1.jpg")
  first = batches(config, 4)
  clear_source_memo()
  again = batches(config, 4)
  halves = [batches(config, 4, p, 2) for p in range(2)]
  for k in range(4):
    np.testing.assert_array_equal(first[k]["image"], again[k]["image"])
    np.testing.assert_array_equal(first[k]["text"], again[k]["text"])
    np.testing.assert_array_equal(
        first[k]["image"], np.concatenate([halves[0][k]["image"], halves[1][k]["image"]]))
  config.seed = 4
  assert not np.array_equal(batches(config, 1)[0]["image"], first[0]["image"])


def test_bad_rows_are_skipped_counted_and_batches_stay_full(photo_table, file_config):
  imgs = photo_table.parent / "imgs"
  (imgs / "1.jpg").write_bytes((imgs / "1.jpg").read_bytes()[:60])  # truncated JPEG
  (imgs / "2.png").write_bytes(b"")  # zero bytes
  (imgs / "3.jpg").write_bytes(b"not an image at all")  # a text file named .jpg
  lines = photo_table.read_text().splitlines()
  lines[5] = "imgs/4.png,"  # empty caption
  lines[6] = "imgs/gone.png,photo number 5"  # missing file
  lines[7] = "imgs/6.png,a,b"  # a row with an extra field
  photo_table.write_text("\n".join(lines) + "\n")
  config = file_config(name="csv", path=str(photo_table), max_skip_fraction=0.75)
  source = build_source(config.data)
  assert source.num_train == 8  # 12 rows, 4 skipped at start-up
  expected = dict.fromkeys(source.skipped, 0)
  expected.update(caption_empty=1, image_missing=1, image_empty=1, bad_row=1)
  assert source.skipped == expected
  # Units 1 and 2 (1.jpg and 3.jpg) fail at read time: both become unit 3 (7.jpg).
  images, captions = source.train_examples(np.array([1, 2, 3]), np.zeros((3, 2)))
  assert captions == ["photo number 7"] * 3
  np.testing.assert_array_equal(images[0], images[2])
  expected.update(image_decode=2)
  assert source.skipped == expected
  for batch in batches(config, 6):  # three epochs of 8 units: full batches throughout
    assert batch["image"].shape == (4, 8, 8, 3)
  assert source.skipped == expected  # each failing unit counted once


def test_jsonl_captions_and_missing_caption(tmp_path, photo_table, file_config):
  table = photo_table.parent / "train.jsonl"
  rows = [{"image": "imgs/0.png", "text": ["a", "b"]}, {"image": "imgs/1.jpg"},
          {"image": "imgs/2.png", "text": "c"}]
  table.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
  source = build_source(file_config(name="csv", path=str(table), image_key="image",
                                    caption_key="text", max_skip_fraction=0.8).data)
  assert [s.captions for s in source.samples] == [("a", "b"), ("c",)]
  assert source.skipped["caption_missing"] == 1 and source.skipped["bad_row"] == 1
  _, captions = source.train_examples(np.array([0, 0]), np.array([[0.0, 0.2], [0.0, 0.7]]))
  assert captions == ["a", "b"]


def test_too_many_skips_stop_naming_the_rows(photo_table, file_config):
  imgs = photo_table.parent / "imgs"
  for i in (0, 2):
    os.remove(imgs / f"{i}.png")
  with pytest.raises(ConfigError, match=r"2 of 12 samples \(16.7%\).*max_skip_fraction = 0.1"
                     r".*image_missing 2.*train.csv:2 \(imgs/0.png\)"):
    build_source(file_config(name="csv", path=str(photo_table)).data).num_train  # indexes
  # Read-time failures count too: 1 missing + 1 corrupt of 12 is over 0.1 once the corrupt one
  # is read.
  (imgs / "0.png").write_bytes((imgs / "4.png").read_bytes())
  (imgs / "1.jpg").write_bytes(b"garbage")
  source = build_source(file_config(name="csv", path=str(photo_table)).data)
  source.train_examples(np.array([2]), np.zeros((1, 2)))
  with pytest.raises(ConfigError, match=r"image_missing 1, image_decode 1.*imgs/1.jpg"):
    source.train_examples(np.array([1]), np.zeros((1, 2)))


@pytest.mark.parametrize("data, message", [
    (dict(path=""), r"config.data.path is required"),
    (dict(path="/nowhere/x.csv"), r"config.data.path = '/nowhere/x.csv' cannot be read"),
    (dict(image_key="file"), r"config.data.image_key = 'file' is not a column.*'filepath'"),
    (dict(eval_path="/nowhere/v.csv"), r"config.data.eval_path = '/nowhere/v.csv': no such"),
])
def test_config_errors_name_the_field(photo_table, file_config, data, message):
  with pytest.raises(ConfigError, match=message):
    build_source(file_config(**{"name": "csv", "path": str(photo_table), **data}).data).num_train


def test_heldout_groups_by_image_and_cuts_deterministically(photo_table, file_config):
  lines = photo_table.read_text().splitlines()
  table = photo_table.parent / "eval.csv"
  # Rows 1 and 2 show the same image (another path to a copy): one image with both captions.
  (photo_table.parent / "imgs" / "copy.png").write_bytes(
      (photo_table.parent / "imgs" / "0.png").read_bytes())
  table.write_text("\n".join(lines[:4] + ["imgs/copy.png,the same photo"]) + "\n")
  config = file_config(name="csv", path=str(photo_table), eval_path=str(table))
  heldout = build_source(config.data).eval_split("heldout")
  assert heldout.images.shape == (3, 8, 8, 3)
  assert heldout.texts == ["photo number 0", "the same photo", "photo number 1", "photo number 2"]
  np.testing.assert_array_equal(heldout.text_image, [0, 0, 1, 2])
  # The cut keeps the same images whatever the row order.
  config.data.num_eval = 2
  kept = build_source(config.data).eval_split("heldout").texts
  table.write_text("\n".join(lines[:1] + lines[3:0:-1]) + "\n")
  assert sorted(build_source(config.data).eval_split("heldout").texts) == sorted(
      t for t in kept if t != "the same photo")


def test_center_crop_keeps_the_middle():
  pixels = np.zeros((20, 40, 3), np.uint8)
  pixels[:, 10:30] = 200  # the central square is grey, the sides black
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, format="PNG")
  crop = transforms.decode_image(out.getvalue(), 10, crop="center")
  squash = transforms.decode_image(out.getvalue(), 10)
  assert crop.shape == squash.shape == (10, 10, 3)
  assert crop.min() > 180 and squash.min() < 50  # (Lanczos rings a little at the edge)
