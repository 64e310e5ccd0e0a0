"""Tests for extra image views (config.data.extra_views) and several captions per unit
(config.data.captions_per_example) in the training stream."""

from __future__ import annotations

import json

import ml_collections
import numpy as np
import pytest

from clip_jax.data import (DataSource, TrainIterator, build_source, make_tokenizer,
                           make_train_iterator, synthetic, tokenizer as tokenizer_lib)
from clip_jax.registry import ConfigError


def _take(it, k):
  return [next(it) for _ in range(k)]


def _bytes_config(config, **data):
  """`config` with the byte tokenizer (no fitting) and the given data fields."""
  config.data.tokenizer = ml_collections.ConfigDict(dict(name="bytes"))
  for key, value in data.items():
    config.data[key] = value
  return config


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b, strict=True):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def _concat(parts):
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class MultiCaptionSource(DataSource):
  """Unit u: images whose first pixel is u and second pixel the image index; (u % 3) + 1
  captions "u<u> c<j>"; one extra view "negative" (255 - image)."""
  name = "multi_caption"
  image_size = 4

  def __init__(self, n):
    self.n = n
    self.requested = []

  @property
  def num_train(self):
    return self.n

  def captions(self, u):
    return [f"u{u} c{j}" for j in range(u % 3 + 1)]

  def train_captions(self):
    return [c for u in range(self.n) for c in self.captions(u)]

  def _images(self, units, draws):
    images = np.zeros((len(units), 4, 4, 3), np.uint8)
    images[:, 0, 0, 0] = units
    images[:, 0, 1, 0] = np.floor(draws[:, 0] * 2)  # two images per unit
    return images

  def train_examples(self, units, draws):
    self.requested.append(np.asarray(units).copy())
    caps = [self.captions(u) for u in np.asarray(units).tolist()]
    return self._images(units, draws), [c[int(d * len(c))] for c, d in zip(caps, draws[:, 1])]

  @property
  def view_names(self):
    return ("negative",)

  def train_view(self, view, units, draws):
    return 255 - self._images(units, draws)

  @property
  def eval_splits(self):
    return ()

  def eval_split(self, split):
    raise self.unknown_split(split)


def _pixel(images, y, x):
  return np.round((images[:, y, x, 0] + 1) * 127.5).astype(int)


# ------------------------------------------------------------------------------ extra views


def test_sketch_view_is_the_same_shape_as_an_outline(synthetic_config):
  config = _bytes_config(synthetic_config, extra_views=("sketch", "gray"))
  batch = next(make_train_iterator(config, make_tokenizer(config.data)))
  assert batch.keys() == {"image", "text", "sketch", "gray"}
  image, sketch, gray = batch["image"], batch["sketch"], batch["gray"]
  for view in (sketch, gray):
    assert view.shape == image.shape and view.dtype == np.float32
    assert view.min() >= -1.0 and view.max() <= 1.0
  inked = lambda x: (x < 1.0).any(-1)  # non-white pixels, [b, H, W]
  for i in range(len(image)):
    # Every inked pixel of the sketch is on the shape; the outline leaves its centre white (a
    # shape a few pixels wide is all outline), so the sketches cover less than the shapes.
    assert inked(sketch)[i].any() and np.all(inked(image)[i] | ~inked(sketch)[i])
    # The sketch has no colour (R = G = B); gray is the filled shape in grey.
    np.testing.assert_array_equal(sketch[i, ..., 0], sketch[i, ..., 2])
    np.testing.assert_array_equal(inked(gray)[i], inked(image)[i])
    np.testing.assert_array_equal(gray[i, ..., 0], gray[i, ..., 1])
  assert inked(sketch).sum() < inked(image).sum()
  assert not np.array_equal(sketch, image) and not np.array_equal(gray, image)


def test_views_follow_the_stream_slices_resume_and_augment(synthetic_config):
  config = _bytes_config(synthetic_config, extra_views=("sketch",), augment=True)
  tok = make_tokenizer(config.data)
  it = make_train_iterator(config, tok)
  whole = _take(it, 3)
  _assert_same_batches(whole, _take(make_train_iterator(config, tok), 3))  # deterministic
  state = json.loads(json.dumps(it.get_state()))
  following = _take(it, 2)
  for count in (2, 4):
    parts = [_take(make_train_iterator(config, tok, p, count), 3) for p in range(count)]
    _assert_same_batches([_concat([parts[p][k] for p in range(count)]) for k in range(3)], whole)
    hosts = [make_train_iterator(config, tok, p, count) for p in range(count)]
    for host in hosts:
      host.set_state(state)
    _assert_same_batches([_concat([next(h) for h in hosts]) for _ in range(2)], following)
  # Without extra views the other keys are unchanged; with augment, a row's sketch is shifted
  # exactly like its image (the unshifted sketch, shifted by the image's shift, matches).
  config.data.extra_views = ()
  plain = _take(make_train_iterator(config, tok), 3)
  for a, b in zip(plain, whole, strict=True):
    assert a.keys() == {"image", "text"}
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["text"], b["text"])
  config.data.augment = False
  config.data.extra_views = ("sketch",)
  unshifted = next(make_train_iterator(config, tok))
  inked = lambda x: (x < 1.0).any(-1)
  for i in range(len(unshifted["image"])):
    shift = _find_shift(inked(unshifted["image"][i]), inked(whole[0]["image"][i]))
    moved = np.roll(inked(unshifted["sketch"][i]), shift, axis=(0, 1))
    np.testing.assert_array_equal(moved & _inside(shift, moved.shape),
                                  inked(whole[0]["sketch"][i]))


def _inside(shift, shape):
  """bool [H, W]: the pixels that a (dy, dx) shift fills from inside the original image."""
  h, w = shape
  y, x = np.arange(h)[:, None] - shift[0], np.arange(w)[None, :] - shift[1]
  return (y >= 0) & (y < h) & (x >= 0) & (x < w)


def _find_shift(before, after):
  """The (dy, dx) whole-pixel shift that turns mask `before` into `after` (must be unique)."""
  h, w = before.shape
  found = [(dy, dx) for dy in range(-h // 4, h // 4 + 1) for dx in range(-w // 4, w // 4 + 1)
           if np.array_equal(np.roll(before, (dy, dx), axis=(0, 1)) & _inside((dy, dx), (h, w)),
                             after)]
  assert found, "the augmented image is not a shift of the plain one"
  return found[0]


def test_custom_source_views_and_view_errors(synthetic_config):
  tok = tokenizer_lib.ByteTokenizer(max_len=8)
  source = MultiCaptionSource(12)
  it = TrainIterator(source, tok, global_batch_size=4, seed=0, extra_views=("negative",))
  batch = next(it)
  np.testing.assert_array_equal(batch["negative"], -batch["image"])
  with pytest.raises(ConfigError, match=r"config.data.extra_views.*'sketch'.*'negative'"):
    TrainIterator(source, tok, global_batch_size=4, seed=0, extra_views=("sketch",))
  for bad in (("text",), ("instance_id",)):
    with pytest.raises(ConfigError, match="config.data.extra_views cannot hold"):
      TrainIterator(source, tok, global_batch_size=4, seed=0, extra_views=bad)
  with pytest.raises(ConfigError, match="twice"):
    TrainIterator(source, tok, global_batch_size=4, seed=0, extra_views=("negative",) * 2)
  config = _bytes_config(synthetic_config, extra_views=("outline",))
  with pytest.raises(ConfigError, match=r"config.data.extra_views.*'sketch', 'gray'"):
    make_train_iterator(config, make_tokenizer(config.data))
  with config.data.ignore_type():
    config.data.extra_views = 3
  with pytest.raises(ConfigError, match="config.data.extra_views = 3"):
    make_train_iterator(config, make_tokenizer(config.data))
  with config.data.ignore_type():
    config.data.extra_views = "sketch"  # one name, as from --config.data.extra_views=sketch
  assert "sketch" in next(make_train_iterator(config, make_tokenizer(config.data)))


def test_view_fields_do_not_rebuild_the_source(synthetic_config):
  source = build_source(synthetic_config.data)
  synthetic_config.data.extra_views = ("sketch",)
  synthetic_config.data.captions_per_example = 2
  assert build_source(synthetic_config.data) is source
  assert isinstance(source, synthetic.SyntheticSource) and source.view_names == synthetic.VIEWS


# ------------------------------------------------------------------------------ multi-positive


def test_rows_of_a_unit_share_an_id_and_differ_in_caption():
  tok = tokenizer_lib.ByteTokenizer(max_len=8)
  source = MultiCaptionSource(30)
  it = TrainIterator(source, tok, global_batch_size=12, seed=5, captions_per_example=3)
  assert it.units_per_batch == 4 and it.epoch_length == 28
  seen = []
  for _ in range(7):  # one epoch: 28 positions
    batch = next(it)
    ids = batch["instance_id"]
    assert ids.dtype == np.int32 and ids.shape == (12,)
    np.testing.assert_array_equal(ids, _pixel(batch["image"], 0, 0))  # the unit index
    groups = ids.reshape(4, 3)
    assert np.all(groups == groups[:, :1]) and len(set(groups[:, 0].tolist())) == 4
    texts = [tok.decode(t) for t in batch["text"]]
    for g, unit in enumerate(groups[:, 0].tolist()):
      caps = texts[3 * g:3 * g + 3]
      assert all(c.startswith(f"u{unit} ") for c in caps)
      # Stratified draws: a unit with m captions shows min(m, 3) different ones.
      assert len(set(caps)) == min(unit % 3 + 1, 3)
      # Two images per unit: 3 copies show both.
      assert set(_pixel(batch["image"][3 * g:3 * g + 3], 0, 1).tolist()) == {0, 1}
    seen.extend(groups[:, 0].tolist())
  assert len(set(seen)) == 28  # an epoch still visits distinct units
  assert it.get_state()["epoch"] == 1 and it.get_state()["offset"] == 0
  assert it.steps_per_epoch == 7


@pytest.mark.parametrize("copies", [2, 4])
def test_multi_positive_batches_are_the_same_on_any_process_count(synthetic_config, copies):
  config = _bytes_config(synthetic_config, captions_per_example=copies, augment=True,
                         extra_views=("sketch",))
  tok = make_tokenizer(config.data)
  it = make_train_iterator(config, tok)
  whole = _take(it, 4)  # 40 units, 16 // copies per batch: crosses an epoch
  for batch in whole:
    assert batch.keys() == {"image", "text", "sketch", "instance_id"}
    groups = batch["instance_id"].reshape(-1, copies)
    assert np.all(groups == groups[:, :1]) and len(set(groups[:, 0].tolist())) == len(groups)
    # Augmentation shifts every row on its own: the copies of a unit differ.
    assert not all(np.array_equal(batch["image"][r], batch["image"][r + 1])
                   for r in range(0, 16, copies))
  state = json.loads(json.dumps(it.get_state()))
  assert state["captions_per_example"] == copies and state["step"] == 4
  following = _take(it, 2)
  for count in (2, 8):  # 8 processes of 2 rows: with 4 copies a unit's rows span 2 processes
    parts = [_take(make_train_iterator(config, tok, p, count), 4) for p in range(count)]
    _assert_same_batches([_concat([parts[p][k] for p in range(count)]) for k in range(4)], whole)
    hosts = [make_train_iterator(config, tok, p, count) for p in range(count)]
    for host in hosts:
      host.set_state(state)
    _assert_same_batches([_concat([next(h) for h in hosts]) for _ in range(2)], following)


def test_each_process_builds_only_its_rows():
  tok = tokenizer_lib.ByteTokenizer(max_len=8)
  source = MultiCaptionSource(64)
  whole = TrainIterator(source, tok, global_batch_size=16, seed=2, captions_per_example=4)
  units = whole.units(3)[0]
  np.testing.assert_array_equal(units, np.repeat(units[::4], 4))
  source.requested.clear()
  it = TrainIterator(source, tok, global_batch_size=16, seed=2, process_index=3, process_count=8,
                     captions_per_example=4)
  it.set_state({**it.get_state(), "step": 3})
  next(it)
  assert len(source.requested) == 1
  np.testing.assert_array_equal(source.requested[0], units[6:8])


def test_multi_positive_config_and_state_errors(synthetic_config):
  config = _bytes_config(synthetic_config)
  tok = make_tokenizer(config.data)
  plain = make_train_iterator(config, tok)
  old_state = {k: v for k, v in plain.get_state().items() if k != "captions_per_example"}
  plain.set_state(old_state)  # a state saved before the field existed means 1
  config.data.captions_per_example = 3
  with pytest.raises(ConfigError, match=r"config.batch_size = 16.*captions_per_example = 3"):
    make_train_iterator(config, tok)
  config.data.captions_per_example = 0
  with pytest.raises(ConfigError, match="config.data.captions_per_example"):
    make_train_iterator(config, tok)
  config.data.captions_per_example = 2
  it = make_train_iterator(config, tok)
  for state in (old_state, plain.get_state()):
    with pytest.raises(ConfigError, match="config.data.captions_per_example gives 2"):
      it.set_state(state)


def test_emoji_multi_positive_rows_show_different_captions(emoji_config):
  config = ml_collections.ConfigDict(emoji_config.to_dict())
  config.data.captions_per_example = 2
  tok = make_tokenizer(config.data)
  source = build_source(config.data)
  it = make_train_iterator(config, tok)
  for _ in range(2):
    batch = next(it)
    ids = batch["instance_id"]
    assert ids.shape == (64,) and np.all(ids[0::2] == ids[1::2])
    assert len(set(ids[0::2].tolist())) == 32
    for r in range(0, 64, 2):
      caps = source.train_caption_lists[ids[r]]
      texts = {tok.decode(batch["text"][r + j]) for j in range(2)}
      # Captions are truncated to max_len tokens, so compare with the encoded captions.
      assert texts <= {tok.decode(tok.encode([c])[0]) for c in caps}
      if len(caps) >= 2 and len({tok.decode(tok.encode([c])[0]) for c in caps}) == len(caps):
        assert len(texts) == 2
  parts = [make_train_iterator(config, tok, p, 4) for p in range(4)]
  whole = _take(make_train_iterator(config, tok), 2)
  _assert_same_batches([_concat([next(p) for p in parts]) for _ in range(2)], whole)
