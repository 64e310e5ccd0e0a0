"""The standard class names and templates, read from open_clip's and CLIP_benchmark's files as an
installed package would hold them (the wheels' data files, unpacked into a folder on sys.path)."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from clip_jax.evals import prompt_sets
from clip_jax.evals.templates import get_templates
from clip_jax.evals.zeroshot import ZeroShotClassificationEvaluator, get_classnames
from clip_jax.data import EvalSet
from clip_jax.registry import ConfigError


@pytest.fixture
def installed(open_clip_wheel, clip_benchmark_wheel, tmp_path, monkeypatch):
  """A site folder holding open_clip/zero_shot_metadata.py and clip_benchmark/datasets/en_*.json
  from the wheels, put first on sys.path (the packages are never imported)."""
  site = tmp_path / "site"
  with zipfile.ZipFile(open_clip_wheel) as wheel:
    (site / "open_clip").mkdir(parents=True)
    (site / "open_clip" / "__init__.py").write_text("")
    (site / "open_clip" / "zero_shot_metadata.py").write_bytes(
        wheel.read("open_clip/zero_shot_metadata.py"))
  with zipfile.ZipFile(clip_benchmark_wheel) as wheel:
    (site / "clip_benchmark" / "datasets").mkdir(parents=True)
    (site / "clip_benchmark" / "__init__.py").write_text("")
    for kind in ("classnames", "zeroshot_classification_templates"):
      name = f"clip_benchmark/datasets/en_{kind}.json"
      (site / name).write_bytes(wheel.read(name))
  monkeypatch.syspath_prepend(str(site))
  return site


def test_open_clip_sets(installed):
  openai = get_templates("openai_imagenet")
  assert len(openai) == 80 and openai[0] == "a bad photo of a {}."
  assert all(t.count("{}") == 1 for t in openai)
  simple = get_templates("simple_imagenet")
  assert len(simple) == 7 and set(simple) <= set(openai)
  names = prompt_sets.classnames("imagenet1k")
  assert len(names) == 1000 and names[:2] == ("tench", "goldfish") and names[-1] == "toilet paper"
  # OpenAI's cleaned names give two pairs of ImageNet classes the same name.
  assert len(set(names)) == 998


def test_clip_benchmark_sets(installed):
  raw = json.loads((installed / "clip_benchmark/datasets/en_zeroshot_classification_templates.json")
                   .read_text())
  cifar = get_templates("cifar10")
  assert len(cifar) == 18 == len(get_templates("cifar100"))
  assert cifar == tuple(t.replace("{c}", "{}") for t in raw["cifar10"])
  assert get_templates("clip_benchmark/imagenet1k") == get_templates("openai_imagenet")
  assert len(get_classnames("clip_benchmark/eurosat", "classnames")) == 10
  with pytest.raises(ConfigError, match="CLIP_benchmark has no classnames for 'cifar10'"):
    prompt_sets.classnames("clip_benchmark/cifar10")


def test_missing_package_and_unknown_names(monkeypatch):
  monkeypatch.setattr(prompt_sets, "find_spec", lambda name: None)
  with pytest.raises(ConfigError, match=r"evals.x.templates needs zero_shot_metadata.py from the "
                     r"open_clip_torch package.*pip install --no-deps open_clip_torch"):
    get_templates("openai_imagenet", "config.evals.x.templates")
  with pytest.raises(ConfigError, match="'imagenet21k' is not a standard class-name set"):
    get_classnames("imagenet21k", "config.evals.x.classnames")
  with pytest.raises(ConfigError, match="not a known template set; choose one of: emoji, name, "
                     "photo, openai_imagenet"):
    get_templates("imagenet_80")


def test_classnames_from_a_file_reach_the_prompts(tmp_path):
  path = tmp_path / "names.txt"
  path.write_text("Red Circle\n\nblue square\n")
  eval_set = EvalSet(images=np.zeros((2, 4, 4, 3)), texts=["a", "b"], text_image=[0, 1],
                     labels={"shape": ([0, 1], ["c0", "c1"])})
  cfg = dict(name="zeroshot_classification", split="heldout", label="shape", templates=("{}",),
             classnames=str(path))

  class Tok:  # one id per prompt character count: enough to build the evaluator
    def encode(self, texts):
      return np.array([[len(t)] for t in texts])

  evaluator = ZeroShotClassificationEvaluator(cfg, eval_name="x", tokenizer=Tok(),
                                              load_split=lambda split: eval_set)
  assert evaluator.prompts == ["red circle", "blue square"]
  with pytest.raises(ConfigError, match=r"evals.x.classnames has 3 names but label set 'shape' "
                     r"of split 'heldout' has 2 classes"):
    ZeroShotClassificationEvaluator(dict(cfg, classnames=("a", "b", "c")), eval_name="x",
                                    tokenizer=Tok(), load_split=lambda split: eval_set)
  with pytest.raises(ConfigError, match="missing.txt': no such file"):
    get_classnames(str(tmp_path / "missing.txt"), "config.evals.x.classnames")
