"""Tests for the emoji source on the real emoji-datasource-google and -twitter@16.0.0 packages."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from clip_jax.data import (build_source, emoji, load_eval_split, make_tokenizer,
                           make_train_iterator, transforms)
from clip_jax.registry import ConfigError


@pytest.fixture(scope="module")
def source(emoji_config):
  return build_source(emoji_config.data)


def test_entries_images_and_decoded_cache(source, emoji_cache_dir):
  assert len(source.meta) == 1911  # emoji.json of the pinned 16.0.0 release
  assert len(source.entries) == sum(bool(e["has_img_google"]) for e in source.meta)
  num_variants = sum(v["has_img_google"] for e in source.meta
                     for v in (e.get("skin_variations") or {}).values())
  assert num_variants > 1000
  assert len(source.files) == len(source.entries) + num_variants
  assert source.images.shape == (len(source.files), 32, 32, 3)
  assert source.images.dtype == np.uint8
  # The google style's cache paths, as before the twitter style existed.
  assert (emoji_cache_dir / "emoji-datasource-google-16.0.0.tgz").is_file()
  cached = emoji_cache_dir / "emoji-datasource-google-16.0.0" / "images-32px-v1.npy"
  mtime = cached.stat().st_mtime_ns
  again = emoji.build(emoji_config_copy(source, emoji_cache_dir))  # a fresh build, same cache
  assert cached.stat().st_mtime_ns == mtime  # loaded, not re-decoded
  np.testing.assert_array_equal(again.images[::97], source.images[::97])
  assert not list(emoji_cache_dir.glob(".*.tmp")) and not list(emoji_cache_dir.glob("*/.*.tmp"))


def emoji_config_copy(source, cache_dir):
  import ml_collections  # pylint: disable=g-import-not-at-top
  return ml_collections.ConfigDict(dict(
      name="emoji", cache_dir=str(cache_dir), image_size=source.image_size,
      heldout_fraction=source.heldout_fraction))


def test_heldout_split_is_large_enough_fixed_and_disjoint(source):
  base = [i for i, e in enumerate(source.entries) if e.category != emoji.COMPONENT]
  heldout = set(source.heldout_ids)
  assert len(heldout) >= 0.15 * len(base) and len(heldout) < 0.16 * len(base)
  assert heldout <= set(base)  # "Component" swatches are never held out
  train = set(source.train_ids)
  assert not train & heldout and len(train) + len(heldout) > 0.99 * len(source.entries)
  # No training caption is any caption (name or short name) of a held-out emoji.
  heldout_captions = {c for i in heldout for c in source.entries[i].captions}
  assert not set(source.train_captions()) & heldout_captions
  # No training unit owns an image (base or skin variation) of a held-out emoji.
  train_images = set(np.concatenate(source.train_image_lists).tolist())
  heldout_images = set(np.concatenate([source.entry_images[i] for i in heldout]).tolist())
  assert not train_images & heldout_images
  digests = emoji.image_digests(source.root, source.style.image_dir, source.files)
  assert not {digests[k] for k in train_images} & {digests[k] for k in heldout_images}
  # Only the few training emoji that share artwork with a held-out emoji lose images.
  assert len(train_images) + len(heldout_images) > 0.99 * len(source.files)
  # The split depends on each emoji's code points only (not on the order of emoji.json), and a
  # larger fraction only adds held-out emoji.
  shuffled = [source.entries[i] for i in np.random.default_rng(0).permutation(len(source.entries))]
  assert {shuffled[i].unified for i in emoji.split_entries(shuffled, 0.15)[1]} == {
      source.entries[i].unified for i in heldout}
  assert heldout < set(emoji.split_entries(source.entries, 0.3)[1])


def test_training_examples_come_from_training_emoji_only(source):
  units = np.arange(source.num_train)
  heldout_captions = {c for i in source.heldout_ids for c in source.entries[i].captions}
  heldout_pixels = {source.images[k].tobytes()
                    for i in source.heldout_ids for k in source.entry_images[i]}
  for u in (0.0, 0.5, 0.999):
    images, captions = source.train_examples(units, np.full((len(units), 2), u))
    assert not set(captions) & heldout_captions
    assert not {img.tobytes() for img in images} & heldout_pixels
  # Draws reach every image variant and every caption of a unit.
  unit = next(k for k, imgs in enumerate(source.train_image_lists)
              if len(imgs) == 6 and len({source.images[i].tobytes() for i in imgs}) == 6)
  draws = np.stack([np.arange(6) / 6 + 0.01, np.zeros(6)], axis=1)
  images, _ = source.train_examples(np.full(6, unit), draws)
  assert len({img.tobytes() for img in images}) == 6


def test_heldout_eval_set(source, emoji_config):
  ev = load_eval_split(emoji_config.data, split="heldout")
  n = len(source.heldout_ids)
  assert ev.images.shape == (n, 32, 32, 3) and ev.images.dtype == np.float32
  assert ev.images.min() >= -1.0 and ev.images.max() <= 1.0
  np.testing.assert_array_equal(ev.text_image, np.arange(n))
  by_unified = {e["unified"]: e for e in source.meta}
  categories, names = ev.labels["category"]
  assert "Smileys & Emotion" in names and "Component" not in names and len(names) == 9
  for k, i in enumerate(source.heldout_ids):
    meta = by_unified[source.entries[i].unified]
    assert ev.texts[k] == re.sub(r"\s+", " ", meta["name"]).strip().lower()
    assert names[categories[k]] == meta["category"]
  assert ev.labels["subcategory"][0].shape == (n,)
  assert len(load_eval_split(emoji_config.data, split="train").texts) > 1500


def test_transparent_pixels_are_white(source, emoji_config):
  ev = load_eval_split(emoji_config.data, split="heldout")
  png_dir = source.root / source.style.image_dir
  checked = 0
  for k, i in enumerate(source.heldout_ids[:80]):
    raw = np.asarray(transforms.Image.open(png_dir / source.entries[i].images[0]).convert("RGBA"))
    native = transforms.to_float(transforms.decode_image(png_dir / source.entries[i].images[0], 64))
    assert np.all(native[raw[..., 3] == 0] == 1.0)
    if np.all(raw[:8, :8, 3] == 0):  # a transparent corner stays pure white after resizing
      assert np.all(ev.images[k, 0, 0] == 1.0)
      checked += 1
  assert checked > 20


def test_tokenizer_never_saw_heldout_only_words(source, emoji_config):
  tok = make_tokenizer(emoji_config.data)
  assert tok.vocab_size <= emoji_config.data.tokenizer.vocab_size
  train_words = {w for c in source.train_captions() for w in c.split()}
  heldout_words = {w for i in source.heldout_ids for c in source.entries[i].captions
                   for w in c.split()}
  # A word no training word starts with cannot be a single "Ġword" token of a BPE fitted on the
  # training captions only.
  unseen = sorted(w for w in heldout_words - train_words
                  if len(w) >= 4 and w.isalpha() and not any(t.startswith(w) for t in train_words))
  assert len(unseen) >= 10, unseen
  for word in unseen:
    assert len(tok.tokens(word)) > 1, (word, tok.tokens(word))
    assert tok.decode(tok.encode([word])[0]) == word
  # Words seen in training are mostly single tokens, so the check above is not vacuous.
  frequent = [w for w in train_words if sum(w in c.split() for c in source.train_captions()) >= 5]
  assert np.mean([len(tok.tokens(w)) == 1 for w in frequent]) > 0.9


def test_emoji_training_stream(source, emoji_config):
  tok = make_tokenizer(emoji_config.data)
  it = make_train_iterator(emoji_config, tok)
  assert it.epoch_length == (source.num_train // 64) * 64
  whole = [next(it) for _ in range(2)]
  state = json.loads(json.dumps(it.get_state()))
  following = next(it)
  for batch in whole:
    assert batch["image"].shape == (64, 32, 32, 3) and batch["text"].shape == (64, 16)
    assert batch["image"].dtype == np.float32 and batch["text"].dtype == np.int32
  parts = [make_train_iterator(emoji_config, tok, p, 2) for p in range(2)]
  for k in range(2):
    halves = [next(p) for p in parts]
    for key in ("image", "text"):
      np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), whole[k][key])
  resumed = make_train_iterator(emoji_config, tok)
  resumed.set_state(state)
  nxt = next(resumed)
  np.testing.assert_array_equal(nxt["image"], following["image"])
  np.testing.assert_array_equal(nxt["text"], following["text"])


@pytest.fixture(scope="module")
def twitter(emoji_config):
  data = emoji_config.data.copy_and_resolve_references()
  data.style = "twitter"
  return build_source(data)


def test_twitter_style_same_emoji_and_split_other_art(source, twitter, emoji_cache_dir):
  assert twitter.root == emoji_cache_dir / "emoji-datasource-twitter-16.0.0"
  assert (twitter.root / "images-32px-v1.npy").is_file() and source.root != twitter.root
  assert twitter.meta == source.meta and all(e["has_img_twitter"] for e in twitter.meta)
  assert twitter.entries == source.entries and twitter.files == source.files  # names, captions
  assert twitter.heldout_ids == source.heldout_ids
  heldout, google_heldout = twitter.eval_split("heldout"), source.eval_split("heldout")
  assert heldout.texts == google_heldout.texts
  # The same file names, other art: no image is pixel-identical across the styles.
  assert not any(np.array_equal(t, g) for t, g in zip(twitter.images, source.images))
  assert not np.any(np.all(heldout.images == google_heldout.images, axis=(1, 2, 3)))
  # Training drops the family emoji that Twemoji draws like a held-out one (module docstring).
  dropped = set(source.train_ids) - set(twitter.train_ids)
  assert set(twitter.train_ids) < set(source.train_ids) and len(dropped) == 21
  assert all(source.entries[i].text.startswith("family") for i in dropped)


def test_config_errors(emoji_config):
  data = emoji_config.data.copy_and_resolve_references()
  for bad in (0.0, 1.0, -0.2):
    data.heldout_fraction = bad
    with pytest.raises(ConfigError, match="config.data.heldout_fraction"):
      build_source(data)
  data.heldout_fraction = 0.15
  data.style = "apple"
  with pytest.raises(ConfigError, match="config.data.style.*'google', 'twitter'"):
    build_source(data)
  data.style = "google"
  with pytest.raises(ConfigError, match="heldout.*train"):
    load_eval_split(data, split="test")
