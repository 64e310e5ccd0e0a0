"""Config mistakes stop at start-up with a message naming the field and the allowed values."""

import glob
import json
import math
import os
import re
import subprocess
import sys

import pytest

from clip_jax.cli import switch_components
from clip_jax.config import load_config_file, saved_config, validate_config, with_defaults
from clip_jax.evals.registry import EVALUATORS
from clip_jax.metrics import read_metrics
from clip_jax.registry import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "demo", "emoji.py")
TINY = os.path.join(ROOT, "tests", "configs", "tiny.py")


def _demo():
  return with_defaults(load_config_file(DEMO))


def documented_specs(path):
  """`path`, plus "path:arg" for every variant `<file name>:arg` that the file's text mentions
  (an arg may be key=value pairs: "csv.py:path=data/train.csv,eval_path=data/val.csv")."""
  with open(path) as f:
    args = re.findall(rf"\b{re.escape(os.path.basename(path))}:([^\s\"'`)\]]+)", f.read())
  # Not the placeholders of a command line ("$DATA") or of a docstring's pattern ("{variant}:").
  return [path] + [f"{path}:{arg}" for arg in sorted(set(args))
                   if "$" not in arg and not arg.startswith("{")]


# configs/tables/ holds table configs (clip_jax.tables), checked in tests/test_tables.py.
CONFIG_SPECS = [spec for path in sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.py"),
                                                  recursive=True))
                if os.path.dirname(path) != os.path.join(ROOT, "configs", "tables")
                for spec in documented_specs(path)]


def test_config_files_and_variants_are_found():
  specs = {os.path.relpath(s, ROOT) for s in CONFIG_SPECS}
  assert {"configs/demo/emoji.py", "configs/examples/three_towers.py",
          "configs/examples/three_towers.py:pairwise"} <= specs


@pytest.mark.parametrize("spec", CONFIG_SPECS, ids=lambda s: os.path.relpath(s, ROOT))
def test_every_config_file_validates_on_8_devices(spec, with_tokenizer_files):
  config = with_tokenizer_files(with_defaults(load_config_file(spec)))
  validate_config(config, num_devices=8)
  if ":" in spec:  # the variant argument really reaches get_config()
    assert config != with_defaults(load_config_file(spec.split(":")[0]))


def _set(config, dotted, value):
  *parents, leaf = dotted.split(".")
  node = config
  for p in parents:
    node = node[p]
  with node.unlocked() if hasattr(node, "unlocked") else _null():
    node[leaf] = value


class _null:
  def __enter__(self):
    return self

  def __exit__(self, *a):
    return False


@pytest.mark.parametrize("field, value, expected", [
    ("total_stepz", 3, "config.total_stepz is not a known field"),
    ("batch_size", 100, "config.batch_size = 100 is not divisible by the 8 batch shards"),
    ("total_steps", 0, "config.total_steps = 0 must be a positive integer"),
    ("loss.name", "cosine", "config.loss.name = 'cosine' is not a known loss; choose one of:"),
    ("model.towers.image.name", "resnet9000",
     "config.model.towers.image.name = 'resnet9000' is not a known tower; choose one of:"),
    ("mesh", (("data", 3), ("fsdp", 1)), "config.mesh = "),
    ("batch_axes", ("batch",), "config.batch_axes = ('batch',) must be a non-empty subset"),
    ("data.name", "laion9b", "config.data.name = 'laion9b' is not a known data source"),
    ("evals.heldout.name", "vqa", "config.evals.heldout.name = 'vqa' is not a known evaluator"),
    ("optim.lr", 0.1, "config.optim.lr is not a known field"),
    ("model.dtype", "float16",
     "config.model.dtype = 'float16' is not allowed; choose one of: 'float32', 'bfloat16'"),
])
def test_config_mistakes_are_named(field, value, expected):
  config = _demo()
  _set(config, field, value)
  with pytest.raises(ConfigError) as e:
    validate_config(config, num_devices=8)
  assert expected in str(e.value)


@pytest.mark.parametrize("field, closest", [
    ("batch_sise", "batch_size"),
    ("optim.warmup_step", "warmup_steps"),
    ("model.embed_dims", "embed_dim"),
    ("data.max_length", "max_len"),
    ("data.heldout_fractoin", "heldout_fraction"),
    ("data.tokenizer.vocabsize", "vocab_size"),
    ("loss.init_bais", "init_bias"),
    ("evals.heldout.splits", "split"),
])
def test_a_typo_in_any_section_is_named_with_the_closest_field(field, closest):
  config = _demo()
  _set(config, field, 1)
  with pytest.raises(ConfigError) as e:
    validate_config(config, num_devices=8)
  assert f"config.{field} is not a" in str(e.value)
  assert f"did you mean {closest!r}?" in str(e.value)


def test_mesh_mismatch_names_device_count():
  config = _demo()
  config.mesh = (("data", 4), ("fsdp", 1))
  with pytest.raises(ConfigError, match=r"covers 4 devices but JAX has 8"):
    validate_config(config, num_devices=8)


def _cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "clip_jax.train", "--config", DEMO, *args],
                        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


@pytest.mark.parametrize("flag, expected", [
    ("--config.total_stepz=3",
     "--config.total_stepz is not a known field; did you mean --config.total_steps?"),
    # A field of a section the file lacks (a new eval): named, with what to do instead.
    ("--config.evals.fewshot.name=fewshot_linear",
     "--config.evals.fewshot.name: the config has no section 'fewshot', and the command line can "
     "only set fields of sections the config file has; add a new section"),
])
def test_cli_unknown_override_is_one_line_message(tmp_path, flag, expected):
  proc = _cli("--workdir", str(tmp_path), flag)
  assert proc.returncode == 2
  assert "Traceback" not in proc.stderr
  assert expected in proc.stderr


def test_cli_validation_error_exits_cleanly(tmp_path):
  proc = _cli("--workdir", str(tmp_path), "--config.batch_size=7")
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert "config.batch_size = 7 is not divisible" in proc.stderr


def _train_cli(workdir, config, *overrides):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
  return subprocess.run(
      [sys.executable, "-m", "clip_jax.train", "--config", config, "--workdir", str(workdir),
       *overrides], capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)


def test_readme_loss_switch_trains_softmax_with_its_own_defaults(tmp_path):
  # The README's command (a sigmoid config switched to softmax), on a 2-step budget and with
  # one-block towers (compiling the demo's ViT dominated the test's time).
  proc = _train_cli(tmp_path, DEMO, "--config.loss.name=softmax", "--config.total_steps=2",
                    "--config.log_every_steps=1", "--config.eval_every_steps=2",
                    "--config.optim.warmup_steps=0", "--config.batch_size=32",
                    "--config.model.towers.image.depth=1", "--config.model.towers.text.depth=1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  # The user sees which settings apply.
  assert "config.loss.name: 'sigmoid' -> 'softmax'" in proc.stdout
  assert "init_bias, init_scale no longer apply" in proc.stdout
  saved = json.load(open(tmp_path / "config.json"))["loss"]
  assert saved["name"] == "softmax" and "init_bias" not in saved
  assert saved["init_scale"] == pytest.approx(math.log(1 / 0.07))
  first = [l for l in read_metrics(str(tmp_path / "metrics.jsonl")) if "loss" in l][0]
  assert first["scale"] == pytest.approx(1 / 0.07, rel=1e-5)  # t at step 0, not sigmoid's 10
  assert "bias" not in first


def test_switched_component_fields_can_be_overridden_on_the_command_line(tmp_path):
  # A field the file never set (softmax's max_scale) is overridable once the loss is switched,
  # and a data source and a tokenizer switch by name too: synthetic -> emoji keeps the shared
  # fields (image size, tokenizer) and takes emoji's own defaults; bytes -> bpe keeps the
  # required vocab_size the file gave.
  proc = _train_cli(tmp_path, TINY, "--config.loss.name=softmax", "--config.loss.max_scale=12.5",
                    "--config.loss.init_scale=3.0", "--config.data.name=emoji",
                    "--config.data.tokenizer.name=bpe", "--config.total_steps=2",
                    "--config.eval_every_steps=2")
  assert proc.returncode == 0, proc.stderr[-3000:]
  saved = json.load(open(tmp_path / "config.json"))
  assert saved["loss"]["max_scale"] == 12.5
  assert saved["data"]["name"] == "emoji" and saved["data"]["heldout_fraction"] == 0.15
  assert "num_examples" not in saved["data"] and saved["data"]["image_size"] == 8
  assert saved["data"]["tokenizer"] == {"name": "bpe", "vocab_size": 300}
  first = [l for l in read_metrics(str(tmp_path / "metrics.jsonl")) if "loss" in l][0]
  assert first["scale"] == pytest.approx(12.5, rel=1e-5)  # exp(3.0) projected to the bound


def test_switch_components_uses_the_new_components_defaults():
  config = load_config_file(TINY)
  notes = switch_components(config, {"evals.heldout.name": "zeroshot_classification",
                                     "evals.heldout.label": "shape",
                                     "model.towers.image.name": "vit"})
  assert [path for path, _ in notes] == ["evals.heldout"]  # vit -> vit is no switch
  assert config.evals.heldout.to_dict() == {
      "name": "zeroshot_classification", "split": "heldout", "label": "shape",
      "templates": "emoji", **{k: v for k, v in EVALUATORS.fields("zeroshot_classification")
                                .items()
                               if k not in ("split", "label", "templates") and v is not None}}
  with pytest.raises(ConfigError, match=r"config.loss.name = 'cosine' is not a known loss"):
    switch_components(load_config_file(TINY), {"loss.name": "cosine"})


PLUGIN = '''
import dataclasses
import ml_collections
from clip_jax.losses.registry import LOSSES
from clip_jax.losses.sigmoid import SigmoidFields, sigmoid_objective


@dataclasses.dataclass(frozen=True, kw_only=True)
class PluginFields(SigmoidFields):
  weight: float = 2.0


@LOSSES.register("plugin_sigmoid", fields=PluginFields)
def build(loss_config, *, axis_name):
  weight = LOSSES.parse(loss_config, name="plugin_sigmoid").weight
  fields = {k: v for k, v in loss_config.items() if k != "weight"}
  inner = sigmoid_objective(ml_collections.ConfigDict(fields), axis_name=axis_name)

  def apply(outputs, params):
    loss, metrics = inner.apply(outputs, params)
    return weight * loss, dict(metrics, loss=weight * loss, plugin_weight=weight)

  return dataclasses.replace(inner, apply=apply)
'''


def test_user_module_from_config_imports_trains_from_the_cli(tmp_path):
  (tmp_path / "plugin").mkdir()
  (tmp_path / "plugin" / "my_losses.py").write_text(PLUGIN)
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(tmp_path / "plugin"),
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  proc = subprocess.run(
      [sys.executable, "-m", "clip_jax.train", "--config", TINY, "--workdir",
       str(tmp_path / "run"), "--config.imports=('my_losses',)",
       "--config.loss.name=plugin_sigmoid", "--config.loss.weight=3.0",
       "--config.total_steps=2", "--config.eval_every_steps=2"],
      capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in read_metrics(str(tmp_path / "run" / "metrics.jsonl")) if "loss" in l][0]
  assert line["plugin_weight"] == 3.0


def test_unimportable_module_is_named():
  config = _demo()
  config.imports = ("no_such_module_xyz",)
  with pytest.raises(ConfigError, match=r"config.imports: cannot import 'no_such_module_xyz'"):
    validate_config(config, num_devices=8)


def test_a_declared_field_the_file_lacks_is_overridable(tmp_path):
  # tests/configs/tiny.py sets only the sigmoid loss's name; max_scale is sigmoid's own field.
  # Its data section sets no pipeline field; num_threads is one. Its model section sets no
  # remat_policy (a config.model field, not a component's).
  proc = _train_cli(tmp_path, TINY, "--config.loss.max_scale=5.0", "--config.total_steps=2",
                    "--config.eval_every_steps=2", "--config.data.num_threads=0",
                    "--config.model.remat=True", "--config.model.remat_policy=dots")
  assert proc.returncode == 0, proc.stderr[-3000:]
  saved = json.load(open(tmp_path / "config.json"))
  assert saved["loss"]["max_scale"] == 5.0 and saved["data"]["num_threads"] == 0
  assert saved["model"]["remat_policy"] == "dots"
  first = [l for l in read_metrics(str(tmp_path / "metrics.jsonl")) if "loss" in l][0]
  assert first["scale"] == pytest.approx(5.0, rel=1e-5)  # exp(log 10) projected to the bound


def test_cli_unknown_component_name_is_one_clean_line(tmp_path):
  proc = _cli("--workdir", str(tmp_path), "--config.loss.name=cosine")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "Config error: config.loss.name = 'cosine' is not a known loss; choose one of: ")


def test_saved_config_of_an_earlier_run_validates():
  # The config.json of runs from before the test-only fault hooks left the schema holds them.
  fields = json.loads(with_defaults(load_config_file(TINY)).to_json_best_effort())
  fields.update(debug_nan_steps=[], debug_signal="")
  config = saved_config(json.dumps(fields))
  assert "debug_nan_steps" not in config and "debug_signal" not in config
  validate_config(with_defaults(config), num_devices=8)


def test_config_file_arg_sets_data_and_top_level_fields():
  spec = os.path.join(ROOT, "configs", "custom", "webdataset.py")
  config = load_config_file(f"{spec}:train_shards=/d/s-{{0,1}}.tar,batch_size=8,eval_shards=/e.tar")
  assert (config.data.train_shards, config.batch_size) == ("/d/s-{0,1}.tar", 8)
  assert config.evals.heldout.split == "heldout"  # eval_shards switches the retrieval eval on
  with pytest.raises(ConfigError, match=r"'shards=x' is not key=value for a field.*train_shards"):
    load_config_file(f"{spec}:shards=x")
  with pytest.raises(ConfigError, match=r"batch_size = 'many' is not of type int, as its default 256 is"):
    load_config_file(f"{spec}:batch_size=many")
