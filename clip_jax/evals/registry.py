"""The registry of evaluators, selected by `config.evals.<eval_name>.name`."""

from clip_jax.registry import Registry

EVALUATORS: Registry = Registry("evaluator", "config.evals.<name>.name",
                                fields_of=lambda cls: cls.Fields)
