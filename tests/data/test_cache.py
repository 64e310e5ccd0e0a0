"""Tests for clip_jax.data.cache: cache directory choice, atomic writes, npm fetch errors."""

from __future__ import annotations

import gzip
import os
import stat

import ml_collections
import pytest

from clip_jax.data import cache, emoji
from clip_jax.registry import ConfigError


def test_cache_dir_precedence(tmp_path, monkeypatch):
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  monkeypatch.delenv(cache.ENV_VAR, raising=False)
  data = ml_collections.ConfigDict(dict(cache_dir=""))
  assert cache.resolve_cache_dir(data) == tmp_path / "home" / ".cache" / "clip_jax"
  monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "env"))
  assert cache.resolve_cache_dir(data) == tmp_path / "env"
  data.cache_dir = str(tmp_path / "cfg")
  assert cache.resolve_cache_dir(data) == tmp_path / "cfg" and (tmp_path / "cfg").is_dir()
  with pytest.raises(ConfigError, match="config.data.cache_dir"):
    cache.resolve_cache_dir(ml_collections.ConfigDict(dict(cache_dir=3)))


def test_atomic_path_leaves_nothing_on_error(tmp_path):
  target = tmp_path / "file.bin"
  with pytest.raises(RuntimeError):
    with cache.atomic_path(target) as tmp:
      tmp.write_bytes(b"partial")
      raise RuntimeError("interrupted")
  assert list(tmp_path.iterdir()) == []
  cache.atomic_write_bytes(target, b"one")
  cache.atomic_write_bytes(target, b"two")
  assert target.read_bytes() == b"two" and list(tmp_path.iterdir()) == [target]
  # A directory that another process completed first is kept; ours is discarded.
  done = tmp_path / "dir"
  done.mkdir()
  (done / "a").write_text("first")
  with cache.atomic_path(done) as tmp:
    tmp.mkdir()
    (tmp / "a").write_text("second")
  assert (done / "a").read_text() == "first" and sorted(tmp_path.iterdir()) == [done, target]


def _emoji_data_config(cache_dir):
  return ml_collections.ConfigDict(dict(name="emoji", cache_dir=str(cache_dir), image_size=16,
                                        heldout_fraction=0.15))


def test_missing_npm_names_install_and_manual_path(tmp_path, monkeypatch):
  monkeypatch.setattr(cache.shutil, "which", lambda name: None)
  with pytest.raises(cache.DataDownloadError) as info:
    emoji.build(_emoji_data_config(tmp_path))
  message = str(info.value)
  assert "npm" in message and "apt-get install npm" in message
  assert str(tmp_path / f"{emoji.STYLES['google'].package}-{emoji.VERSION}.tgz") in message
  assert list(tmp_path.iterdir()) == []


def test_failing_npm_is_reported(tmp_path, monkeypatch):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  fake = bin_dir / "npm"
  fake.write_text("#!/bin/sh\necho 'npm error network unreachable' >&2\nexit 3\n")
  fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  cache_dir = tmp_path / "cache"
  cache_dir.mkdir()
  with pytest.raises(cache.DataDownloadError, match="(?s)exit code 3.*network unreachable"):
    cache.npm_pack(emoji.STYLES["google"].package, emoji.VERSION, cache_dir)
  assert list(cache_dir.iterdir()) == []  # no partial tarball, no temporary directory


def test_corrupt_tarball_is_rejected(tmp_path):
  tarball = cache.npm_tarball_path(emoji.STYLES["google"].package, emoji.VERSION, tmp_path)
  tarball.write_bytes(gzip.compress(b"not the package"))
  with pytest.raises(cache.DataDownloadError, match="SHA-1"):
    emoji.build(_emoji_data_config(tmp_path))
  assert sorted(p.name for p in tmp_path.iterdir()) == [tarball.name]  # nothing extracted
