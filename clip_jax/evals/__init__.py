"""Evaluators: zero-shot retrieval Recall@K (with the embedding geometry), prompt-ensemble
classification, few-shot ridge probes and the logistic-regression linear probe.

  from clip_jax.evals import make_evaluators
  evaluators = make_evaluators(config, tokenizer)   # {eval_name: Evaluator}, data loaded once
  metrics = evaluators["heldout"](embed)              # {"heldout/i2t_recall@1": 0.42, ...}

`embed(modality, inputs) -> float32 [N, d]` L2-normalised embeddings; the caller batches and
shards. `config.evals` maps an eval name to a ConfigDict whose `name` selects a registered
evaluator ("retrieval", "zeroshot_classification", "fewshot_linear", "linear_probe"); see their
docstrings for the other fields.
"""

from __future__ import annotations

from typing import Any, Callable

from clip_jax.evals import fewshot as fewshot  # registers "fewshot_linear"
from clip_jax.evals import linear_probe as linear_probe  # registers "linear_probe"
from clip_jax.evals import retrieval as retrieval  # registers "retrieval"
from clip_jax.evals import zeroshot as zeroshot  # registers "zeroshot_classification"
from clip_jax.evals.base import EmbedFn, EvalSet, Evaluator, Tokenizer
from clip_jax.evals.registry import EVALUATORS
from clip_jax.evals.retrieval import RetrievalEvaluator, retrieval_recalls
from clip_jax.evals.templates import TEMPLATE_SETS, get_templates
from clip_jax.evals.zeroshot import ZeroShotClassificationEvaluator, classification_metrics

__all__ = [
    "EVALUATORS", "EmbedFn", "EvalSet", "Evaluator", "RetrievalEvaluator", "TEMPLATE_SETS",
    "Tokenizer", "ZeroShotClassificationEvaluator", "classification_metrics", "get_templates",
    "make_evaluators", "retrieval_recalls",
]


def make_evaluators(config: Any, tokenizer: Tokenizer, *,
                    load_split: Callable[[str], EvalSet] | None = None) -> dict[str, Evaluator]:
  """Builds every evaluator in `config.evals`, loading each eval split once.

  Args:
    config: the experiment ConfigDict; reads `config.evals` (missing or empty -> no evaluators)
      and, for the default loader, `config.data`.
    tokenizer: has `encode(list[str]) -> int32 [M, L]`.
    load_split: `split name -> EvalSet`; defaults to
      `clip_jax.data.load_eval_split(config.data, split=...)`. Splits shared by several
      evaluators are loaded once.

  Returns:
    {eval_name: evaluator}, in the order `config.evals.items()` gives (ConfigDict sorts its
    keys); `evaluator(embed)` returns a flat
    {"<eval_name>/<metric>": float}.

  Raises:
    ConfigError: an entry without a `name`, an unknown evaluator name, or a bad field (the
      message names `config.evals.<eval_name>.<field>`).
  """
  evals_cfg = config.get("evals", None) if hasattr(config, "get") else None
  if not evals_cfg:
    return {}
  if load_split is None:
    def load_split(split: str) -> EvalSet:
      from clip_jax.data import load_eval_split  # pylint: disable=g-import-not-at-top
      return load_eval_split(config.data, split=split)
  cache: dict[str, EvalSet] = {}

  def cached_load(split: str) -> EvalSet:
    if split not in cache:
      cache[split] = load_split(split)
    return cache[split]

  evaluators = {}
  for eval_name, cfg in evals_cfg.items():
    cls = EVALUATORS.get(EVALUATORS.select(cfg, f"config.evals.{eval_name}"))
    evaluators[eval_name] = cls(cfg, eval_name=eval_name, tokenizer=tokenizer,
                                 load_split=cached_load)
  return evaluators
