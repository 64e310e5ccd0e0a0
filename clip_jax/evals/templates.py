"""Prompt templates for zero-shot classification.

A template set is a tuple of format strings with one `{}` slot that receives the (lowercased)
class name. The zero-shot classifier embeds every template filled with every class name and
averages the normalised embeddings over the set (a prompt ensemble), one vector per class.

`config.evals.<eval_name>.templates` names a set in `TEMPLATE_SETS` or a standard set of
`clip_jax.evals.prompt_sets` (the CLIP paper's 80 ImageNet prompts: "openai_imagenet"), or gives
the templates themselves as a tuple of strings.
"""

from __future__ import annotations

from typing import Sequence

from clip_jax.evals import prompt_sets
from clip_jax.registry import ConfigError

# Short prompts in the style of the emoji captions: the bare name and a few "emoji"/"icon"
# framings.
EMOJI_TEMPLATES: tuple[str, ...] = (
    "{}",
    "an emoji of {}.",
    "a {} emoji.",
    "an icon of {}.",
    "the {} emoji.",
    "a small picture of {}.",
)

# Generic prompts for natural photographs.
PHOTO_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of the {}.",
    "a close-up photo of a {}.",
    "a blurry photo of a {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "an image showing a {}.",
)

# The bare class name only (no ensemble); useful as a baseline.
NAME_ONLY_TEMPLATES: tuple[str, ...] = ("{}",)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "emoji": EMOJI_TEMPLATES,
    "photo": PHOTO_TEMPLATES,
    "name": NAME_ONLY_TEMPLATES,
}


def get_templates(spec: str | Sequence[str], field: str = "templates") -> tuple[str, ...]:
  """Resolves a template spec to a tuple of format strings.

  Args:
    spec: the name of a set in `TEMPLATE_SETS` or of a standard set (`clip_jax.evals.prompt_sets`:
      "openai_imagenet", "simple_imagenet", "cifar10", "cifar100", "clip_benchmark/<dataset>"),
      or a non-empty sequence of format strings that
      each contain exactly one `{}`.
    field: the config field the spec came from, used in error messages.

  Returns:
    The templates, a non-empty tuple of strings.

  Raises:
    ConfigError: an unknown set name or a malformed template list.
  """
  if isinstance(spec, str):
    if spec in TEMPLATE_SETS:
      return TEMPLATE_SETS[spec]
    if prompt_sets.is_known(spec):
      return prompt_sets.templates(spec, field)
    raise ConfigError(
        f"{field} = {spec!r} is not a known template set; choose one of: "
        f"{', '.join([*sorted(TEMPLATE_SETS), *prompt_sets.template_set_names()])}, "
        "clip_benchmark/<dataset> (or give a tuple of strings with one '{}' each)")
  templates = tuple(spec)
  if not templates:
    raise ConfigError(f"{field} is empty; give a template set name "
                      f"({', '.join(sorted(TEMPLATE_SETS))}) or a tuple of strings")
  for t in templates:
    if not isinstance(t, str) or t.count("{}") != 1:
      raise ConfigError(
          f"{field} contains {t!r}; every template must be a string with exactly one '{{}}'")
  return templates
