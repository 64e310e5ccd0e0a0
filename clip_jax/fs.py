"""Paths and file I/O that work alike for local directories and object storage (gs://, s3://).

Every file the project writes (checkpoints' directories, config.json, metrics.jsonl, plots,
evaluation results) and every run directory it reads goes through these functions, built on
`etils.epath` (which orbax uses too).

* A path with a scheme ("gs://bucket/runs/exp1") is an object-storage path. It is kept as
  given: never made absolute and never joined with `os.path`, so it cannot turn into a local
  "<cwd>/gs:/bucket/..." directory. gs:// is read and written through gcsfs
  (`pip install -e ".[gcs]"`; or TensorFlow's gfile where TensorFlow is installed), s3:// through
  s3fs. Orbax writes the checkpoint arrays there itself, with TensorStore's own GCS/S3 driver.
* Any other path is local and is read and written as before this module existed (absolute paths
  from `os.path.abspath`, temporary file + `os.replace` for atomic writes, a real append).

Object storage is not a disk, and the differences show up here:
* directories are name prefixes: `makedirs` creates nothing there, and `isdir` is true once
  something is stored under the prefix;
* there is no rename: `move` copies every object and then deletes the source; a single object
  write is atomic (readers see the old or the new object, never a part), which `write_atomic`
  relies on;
* there is no append: `Appender` keeps the text and rewrites the whole object on `sync`;
* there is no disk: `free_bytes` is None, and callers skip their disk-space checks.
"""

from __future__ import annotations

import glob as glob_lib
import os
import posixpath
import re
import shutil
import tempfile
import time
from typing import BinaryIO, TextIO, Union

from etils import epath

PathLike = Union[str, os.PathLike]
_SCHEMES = ("gs://", "s3://", "az://", "hf://")  # the ones epath routes
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_remote(path: PathLike) -> bool:
  """True for an object-storage path (one that starts with "<scheme>://")."""
  return bool(_SCHEME.match(os.fspath(path)))


def _epath(path: PathLike) -> epath.Path:
  """`path` as an epath.Path.

  Raises:
    ValueError: `path` has a scheme epath does not know (the message lists the known ones).
  """
  path = os.fspath(path)
  if is_remote(path) and not path.startswith(_SCHEMES):
    raise ValueError(f"{path!r}: unsupported storage scheme; use a local path or one of "
                     f"{', '.join(_SCHEMES)}")
  return epath.Path(path)


def resolve(path: PathLike) -> str:
  """An absolute local path (`os.path.abspath`), or the object-storage path without a trailing /."""
  path = os.fspath(path)
  if is_remote(path):
    scheme, rest = path.split("://", 1)
    return f"{scheme}://{rest.rstrip('/')}"
  return os.path.abspath(path)


def join(path: PathLike, *parts: str) -> str:
  """`path`/`parts[0]`/... with "/" for object storage and `os.path.join` locally."""
  path = os.fspath(path)
  return posixpath.join(path, *parts) if is_remote(path) else os.path.join(path, *parts)


def dirname(path: PathLike) -> str:
  path = os.fspath(path)
  return posixpath.dirname(path) if is_remote(path) else os.path.dirname(path)


def exists(path: PathLike) -> bool:
  return _epath(path).exists()


def isdir(path: PathLike) -> bool:
  return _epath(path).is_dir()


def listdir(path: PathLike) -> list[str]:
  """The names (not paths) in directory `path`."""
  return [p.name for p in _epath(path).iterdir()]


def makedirs(path: PathLike) -> None:
  """Creates directory `path` and its parents if missing (nothing to create on object storage)."""
  _epath(path).mkdir(parents=True, exist_ok=True)


def remove(path: PathLike) -> None:
  """Deletes the file `path`."""
  _epath(path).unlink()


def open_read(path: PathLike) -> BinaryIO:
  """File `path` opened for binary reading (seekable; on object storage each read past the
  buffer is a ranged request)."""
  return _epath(path).open("rb")


def read_bytes(path: PathLike, offset: int = 0, size: int = -1) -> bytes:
  """`size` bytes of file `path` from `offset` (-1: to the end); fewer where the file ends
  sooner."""
  with open_read(path) as f:
    if offset:
      f.seek(offset)
    return f.read(size)


def size_and_mtime(path: PathLike) -> tuple[int, float]:
  """(bytes, modification time in seconds) of file `path`.

  Raises:
    FileNotFoundError: there is no such file.
  """
  if not is_remote(path):  # os.stat: epath's local mtime is whole seconds
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns / 1e9
  st = _epath(path).stat()
  return int(st.length), float(st.mtime)


def glob(pattern: PathLike) -> list[str]:
  """The paths matching a glob `pattern` (*, ?, [...]), sorted. On object storage only the last
  path component may hold wildcards."""
  pattern = os.fspath(pattern)
  if not is_remote(pattern):
    return sorted(glob_lib.glob(pattern))
  folder, name = pattern.rsplit("/", 1)
  return sorted(str(p) for p in _epath(folder).glob(name))


def read_text(path: PathLike) -> str:
  """The UTF-8 text of file `path`."""
  with _epath(path).open("r") as f:
    return f.read()


def write_text(path: PathLike, text: str) -> None:
  """Writes `text` (UTF-8) to `path`, replacing it. Not atomic on a local disk: see write_atomic."""
  with _epath(path).open("w") as f:
    f.write(text)


def write_atomic(path: PathLike, data: bytes) -> None:
  """Replaces `path` with `data` so that a reader or a crash sees the old or the new content.

  Locally: a temporary file in the same directory, given the permissions a new file gets
  (0666 less the umask), fsync'ed, then `os.replace`d onto `path` (and removed if anything
  fails). On object storage: one object write, which is atomic there.
  """
  path = os.fspath(path)
  if is_remote(path):
    _epath(path).write_bytes(data)
    return
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                             dir=os.path.dirname(os.path.abspath(path)))
  try:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # as open() would create it (mkstemp's file is 0600)
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def move(src: PathLike, dst: PathLike) -> None:
  """Moves the file or directory `src` to `dst` (which must not exist).

  Locally `shutil.move` (a rename on the same disk). On object storage every object under `src`
  is copied to `dst` and `src` is deleted afterwards, so an interruption leaves `src` complete.
  """
  if not (is_remote(src) or is_remote(dst)):
    shutil.move(os.fspath(src), os.fspath(dst))
    return
  _copy_tree(_epath(src), _epath(dst))
  _epath(src).rmtree()


def _copy_tree(src: epath.Path, dst: epath.Path) -> None:
  if not src.is_dir():
    src.copy(dst)
    return
  for child in src.iterdir():
    _copy_tree(child, dst / child.name)


def free_bytes(path: PathLike) -> int | None:
  """Free bytes on the disk holding local directory `path`; None on object storage (no disk)."""
  if is_remote(path):
    return None
  return shutil.disk_usage(os.fspath(path)).free


class Appender:
  """Appends text to the file `path` (created if missing).

  Locally every `write` is appended and flushed at once. Object storage has no append: the
  object's current text is read once, the new text is kept in memory too, and the whole object
  is rewritten by `sync()`, by `write` when `sync_every_s` seconds have passed since the last
  rewrite, and by `close()`. After a crash the object lacks at most the text written since the
  last rewrite.

  Args:
    path: the file.
    sync_every_s: on object storage, the longest time text waits in memory before a `write`
      rewrites the object (seconds).
  """

  def __init__(self, path: PathLike, *, sync_every_s: float = 60.0):
    self.path = os.fspath(path)
    self.sync_every_s = sync_every_s
    self._file: TextIO | None = None
    self._chunks: list[str] = []
    self._dirty = False
    self._last_sync = time.monotonic()
    if is_remote(self.path):
      self._chunks = [read_text(self.path)] if exists(self.path) else []
    else:
      self._file = open(self.path, "a", encoding="utf-8")

  def write(self, text: str) -> None:
    if self._file is not None:
      self._file.write(text)
      self._file.flush()
      return
    self._chunks.append(text)
    self._dirty = True
    if time.monotonic() - self._last_sync >= self.sync_every_s:
      self.sync()

  def sync(self) -> None:
    """Makes everything written so far readable at `path` (an object rewrite; locally a no-op,
    since each write is already flushed)."""
    if self._dirty:
      text = "".join(self._chunks)
      self._chunks = [text]
      write_atomic(self.path, text.encode("utf-8"))
      self._dirty = False
    self._last_sync = time.monotonic()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    else:
      self.sync()
