"""A short training run from configs/custom/webdataset.py on shards packed from a table with one
broken image: the skip is logged in metrics.jsonl and the held-out split leaves it out; the run
then evaluates with its training shards and the data cache gone (its fitted tokenizer is kept in
the workdir)."""

import os
import shutil

import ml_collections
import pytest

from clip_jax.config import load_config_file
from clip_jax.data import pack, table
from clip_jax.data.registry import clear_source_memo
from clip_jax.evaluate import evaluate_checkpoint
from clip_jax.metrics import read_metrics
from clip_jax.training.loop import train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WEBDATASET_CONFIG = os.path.join(ROOT, "configs", "custom", "webdataset.py")


def test_training_on_packed_shards_logs_skips(photo_table, tmp_path):
  imgs = photo_table.parent / "imgs"
  (imgs / "3.jpg").write_bytes((imgs / "3.jpg").read_bytes()[:50])  # fails when decoded
  samples, _ = table.read_table(str(photo_table), "filepath", "title")
  pack.write_shards(samples, str(tmp_path / "shards"), shard_size=5)
  shutil.copytree(tmp_path / "shards", tmp_path / "eval")
  shards = f"{tmp_path}/shards/shard-{{00000..00002}}.tar"
  eval_shards = f"{tmp_path}/eval/shard-{{00000..00002}}.tar"
  config = load_config_file(
      f"{WEBDATASET_CONFIG}:train_shards={shards},eval_shards={eval_shards},image_size=8,"
      "batch_size=8,total_steps=3,log_every_steps=1,eval_every_steps=3,ckpt_every_steps=3")
  config.data.cache_dir = str(tmp_path / "cache")
  for tower in ("image", "text"):  # tests/training/conftest.py's fast tower
    config.model.towers[tower] = ml_collections.ConfigDict(dict(name="_test_flat_tower",
                                                                width=16))
  config.model.embed_dim = 16
  config.optim.warmup_steps = 1
  final = train_and_evaluate(config, str(tmp_path / "run"))
  assert final["heldout/num_images"] == 11  # the broken image left out
  lines = [r for r in read_metrics(str(tmp_path / "run" / "metrics.jsonl")) if "loss" in r]
  assert [r["step"] for r in lines] == [1, 2, 3]
  decode = [r["data/skipped/image_decode"] for r in lines]
  assert decode[-1] == 1 and decode == sorted(decode)
  assert all(r["data/skipped/image_missing"] == 0 for r in lines)
  # Evaluation needs only the held-out shards and the workdir.
  shutil.rmtree(tmp_path / "shards")
  shutil.rmtree(tmp_path / "cache")
  clear_source_memo()
  metrics = evaluate_checkpoint(config, str(tmp_path / "run"))
  assert metrics.pop("step") == 3
  assert metrics == pytest.approx(final)
