"""The "webdataset" source (clip_jax.data.webdataset): shard patterns, the key rule, the index and
its cache, bad input, errors."""

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from clip_jax.data import build_source, make_tokenizer, make_train_iterator
from clip_jax.data import webdataset
from clip_jax.data.registry import clear_source_memo
from clip_jax.registry import ConfigError


def png(i: int, size=(12, 10)) -> bytes:
  out = io.BytesIO()
  Image.new("RGB", size, (20 * i, 200 - 10 * i, 90)).save(out, format="PNG")
  return out.getvalue()


def write_tar(path, members) -> str:
  """A tar of (name, bytes) members, in order."""
  with tarfile.open(path, "w") as tar:
    for name, data in members:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return str(path)


def good(i: int) -> list[tuple[str, bytes]]:
  return [(f"s{i:03d}.png", png(i)), (f"s{i:03d}.txt", f"sample {i}".encode())]


@pytest.fixture
def shards(tmp_path):
  """Four shards of 4 good samples each: shard-0000{0..3}.tar, samples 0..15."""
  folder = tmp_path / "shards"
  folder.mkdir()
  for s in range(4):
    write_tar(folder / f"shard-{s:05d}.tar", [m for i in range(4 * s, 4 * s + 4) for m in good(i)])
  return folder


def test_key_rule():
  assert webdataset.split_key("a/b.c/x.y.JPG") == ("a/b.c/x", "y.jpg")
  assert webdataset.split_key("x.jpg") == ("x", "jpg")
  assert webdataset.split_key("dir/README") is None
  assert webdataset.split_key(".hidden") is None


def test_patterns_and_same_batches(shards, file_config):
  brace = str(shards / "shard-{00000..00003}.tar")
  assert webdataset.expand_shards(brace, "f") == webdataset.expand_shards(
      [str(shards / "shard-0000[01].tar"), str(shards / "shard-{00002,00003}.tar")], "f")
  config = file_config(name="webdataset", train_shards=brace)
  source = build_source(config.data)
  assert source.num_train == 16
  assert source.train_captions() == [f"sample {i}" for i in range(16)]
  it = make_train_iterator(config, make_tokenizer(config.data))
  first = [next(it) for _ in range(3)]
  clear_source_memo()  # rebuilt from the cached index
  config.data.train_shards = str(shards / "*.tar")
  it = make_train_iterator(config, make_tokenizer(config.data))
  for batch in first:
    again = next(it)
    np.testing.assert_array_equal(batch["image"], again["image"])
    np.testing.assert_array_equal(batch["text"], again["text"])


def test_members_and_captions(tmp_path, file_config):
  shard = write_tar(tmp_path / "a.tar", [
      ("d/x.1.png", png(1)), ("d/x.1.txt", b"dotted key"),  # key "d/x", extension "1.png"
      ("y.webp", png(2)), ("y.jpg", png(3)), ("y.cls", b"7"), ("y.json", b'{"caption": "j"}'),
      ("z.png", png(4)), ("z.json", json.dumps({"text": ["p", "q"]}).encode()),
  ])
  source = build_source(file_config(name="webdataset", train_shards=shard, caption_key="text",
                                    max_skip_fraction=0.9).data)
  # "d/x" has no member with an image extension; "y" takes its jpg (preferred to webp) and has no
  # "text" field in its json; "z" has two captions.
  assert [s.captions for s in source.samples] == [("p", "q")]
  assert source.skipped["image_missing"] == 1 and source.skipped["caption_missing"] == 1
  source = build_source(file_config(name="webdataset", train_shards=shard,
                                    max_skip_fraction=0.9).data)
  assert [s.captions for s in source.samples] == [("j",)]
  images, _ = source.train_examples(np.array([0]), np.zeros((1, 2)))
  ref, _ = build_source(file_config(name="webdataset", max_skip_fraction=0.9, train_shards=write_tar(
      tmp_path / "b.tar", [("y.jpg", png(3)), ("y.txt", b"j")])).data).train_examples(
          np.array([0]), np.zeros((1, 2)))
  np.testing.assert_array_equal(images, ref)


def test_bad_input_is_skipped_counted_and_batches_stay_full(tmp_path, file_config):
  folder = tmp_path / "bad"
  folder.mkdir()
  write_tar(folder / "a.tar", [
      *good(0),
      ("s001.png", png(1)[:40]), ("s001.txt", b"truncated png"),  # read time: image_decode
      ("s002.png", b""), ("s002.txt", b"zero bytes"),  # image_empty
      ("s003.png", png(3)), ("s003.txt", b"  "),  # caption_empty
      ("s004.png", png(4)),  # caption_missing
      ("s005.jpg", b"plain text, not an image"), ("s005.txt", b"not an image"),  # image_decode
      ("s006.txt", b"no image member"),  # image_missing
      *[m for i in range(7, 12) for m in good(i)],
  ])
  cut = write_tar(folder / "b.tar", [m for i in range(12, 16) for m in good(i)])
  data = open(cut, "rb").read()
  open(cut, "wb").write(data[:512 * 9 + 100])  # samples 12, 13 whole; 14's image cut off
  (folder / "c.tar").write_bytes(b"not a tar file")
  config = file_config(name="webdataset", train_shards=str(folder / "*.tar"),
                       max_skip_fraction=0.5)
  source = build_source(config.data)
  expected = dict.fromkeys(source.skipped, 0)
  expected.update(image_empty=1, caption_empty=1, caption_missing=1, image_missing=1,
                  truncated_tar=1, shard_unreadable=1)
  assert source.skipped == expected
  assert source.train_captions() == ["sample 0", "truncated png", "not an image",
                                     *[f"sample {i}" for i in (7, 8, 9, 10, 11, 12, 13)]]
  it = make_train_iterator(config, make_tokenizer(config.data))
  for _ in range(5):  # two epochs of 10 units
    assert next(it)["image"].shape == (4, 8, 8, 3)
  expected.update(image_decode=2)
  assert source.skipped == expected


def test_too_many_skips_name_the_worst_shard(shards, file_config):
  write_tar(shards / "shard-00004.tar", [("s100.png", png(0))] + [
      (f"s{i}.txt", b"no image") for i in range(101, 104)])
  with pytest.raises(ConfigError, match=r"4 of 20 samples \(20.0%\).*caption_missing 1, "
                     r"image_missing 3.*shard-00004.tar \(4\)"):
    build_source(file_config(name="webdataset", train_shards=str(shards / "*.tar")).data).num_train


@pytest.mark.parametrize("shards_field, message", [
    ("", r"config.data.train_shards = '' must name the tar shards"),
    ("{d}/nothing-*.tar", r"config.data.train_shards: the pattern '.*nothing-\*.tar' matches no"),
    ("{d}/shard-{{00000..00009}}.tar",
     r"config.data.train_shards: shard '.*shard-00004.tar' does not exist"),
])
def test_missing_shards_name_the_field(shards, file_config, shards_field, message):
  with pytest.raises(ConfigError, match=message):
    build_source(file_config(name="webdataset",
                             train_shards=shards_field.format(d=shards)).data).num_train


def test_index_cache_follows_the_shard(shards, file_config):
  config = file_config(name="webdataset", train_shards=str(shards / "shard-00000.tar"))
  assert build_source(config.data).num_train == 4
  cached = list((tmp := shards.parent / "cache" / "webdataset-index").iterdir())
  assert len(cached) == 1
  clear_source_memo()
  write_tar(shards / "shard-00000.tar", [m for i in range(3) for m in good(i)])
  assert build_source(config.data).num_train == 3  # a new size: scanned again
  assert len(list(tmp.iterdir())) == 2
