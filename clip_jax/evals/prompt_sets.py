"""The standard zero-shot class names and prompt templates, read from the files that open_clip and
CLIP_benchmark publish, so that our numbers are comparable with theirs.

Template sets (`config.evals.<name>.templates`):
  * "openai_imagenet": the CLIP paper's 80 ImageNet prompts ("a bad photo of a {}.", ...), and
    "simple_imagenet": its 7-prompt subset, from open_clip_torch's `zero_shot_metadata.py`;
  * "cifar10", "cifar100" (18 prompts each) and "clip_benchmark/<dataset>" for any dataset of
    CLIP_benchmark's `en_zeroshot_classification_templates.json`.
Class-name sets (`config.evals.<name>.classnames`):
  * "imagenet1k": OpenAI's 1000 cleaned ImageNet names, from open_clip_torch;
  * "clip_benchmark/<dataset>" for any dataset of CLIP_benchmark's `en_classnames.json`.

Both packages are read as files, found where they are installed without being imported (their
imports need torch and torchvision); only the data files are used:

    pip install --no-deps open_clip_torch==3.3.0 clip_benchmark==1.6.2

Templates are format strings with one "{}" slot (the two projects write "{c}" and f-strings).
"""

from __future__ import annotations

import ast
import functools
import json
from importlib.util import find_spec
from pathlib import Path

from clip_jax.registry import ConfigError

OPEN_CLIP = ("open_clip_torch", "open_clip", "zero_shot_metadata.py")
CLIP_BENCHMARK = ("clip_benchmark", "clip_benchmark", "datasets")
_OPEN_CLIP_TEMPLATES = {"openai_imagenet": "OPENAI_IMAGENET_TEMPLATES",
                        "simple_imagenet": "SIMPLE_IMAGENET_TEMPLATES"}
_OPEN_CLIP_CLASSNAMES = {"imagenet1k": "IMAGENET_CLASSNAMES"}
_BENCHMARK_PREFIX = "clip_benchmark/"
_BENCHMARK_ALIASES = {"cifar10": "cifar10", "cifar100": "cifar100"}  # template sets by short name


def _package_file(package: tuple[str, str, str], field: str) -> Path:
  """The file (or folder) `package[2]` inside the installed module `package[1]`.

  Raises:
    ConfigError: the package is not installed (naming `field` and the pip command).
  """
  distribution, module, relative = package
  spec = find_spec(module)
  for folder in (spec.submodule_search_locations or []) if spec is not None else []:
    path = Path(folder) / relative
    if path.exists():
      return path
  raise ConfigError(f"{field} needs {relative} from the {distribution} package, which is not "
                    f"installed; `pip install --no-deps {distribution}` (only its data files are "
                    "read), or give the list itself")


def _template(node: ast.AST) -> str:
  """A one-argument f-string lambda (`lambda c: f'a photo of a {c}.'`) as 'a photo of a {}.'."""
  if not (isinstance(node, ast.Lambda) and isinstance(node.body, ast.JoinedStr)):
    raise ValueError("not an f-string lambda")
  return "".join("{}" if isinstance(v, ast.FormattedValue) else v.value for v in node.body.values)


@functools.lru_cache(maxsize=2)
def _open_clip_metadata(path: str) -> dict[str, tuple[str, ...]]:
  """The tuples assigned at the top level of open_clip's zero_shot_metadata.py, by name."""
  out = {}
  for node in ast.parse(Path(path).read_text(encoding="utf-8")).body:
    if isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple):
      name = node.targets[0].id
      if name in _OPEN_CLIP_TEMPLATES.values():
        out[name] = tuple(_template(e) for e in node.value.elts)
      elif name in _OPEN_CLIP_CLASSNAMES.values():
        out[name] = tuple(ast.literal_eval(node.value))
  return out


@functools.lru_cache(maxsize=4)
def _benchmark_json(path: str) -> dict[str, list[str]]:
  return json.loads(Path(path).read_text(encoding="utf-8"))


def _benchmark_set(dataset: str, kind: str, field: str) -> tuple[str, ...]:
  """CLIP_benchmark's English `kind` ("classnames" or "zeroshot_classification_templates") list
  for `dataset`, templates with "{c}" written "{}"."""
  sets = _benchmark_json(str(_package_file(CLIP_BENCHMARK, field) / f"en_{kind}.json"))
  if dataset not in sets:
    raise ConfigError(f"{field}: CLIP_benchmark has no {kind.replace('_', ' ')} for {dataset!r}; "
                      f"it has: {', '.join(sorted(sets))}")
  return tuple(s.replace("{c}", "{}") for s in sets[dataset])


def template_set_names() -> tuple[str, ...]:
  """The template set names this module resolves (besides "clip_benchmark/<dataset>")."""
  return (*_OPEN_CLIP_TEMPLATES, *_BENCHMARK_ALIASES)


def is_known(name: str) -> bool:
  """Whether `name` is a template or class-name set of this module (it may still need a package
  that is not installed)."""
  return (name in _OPEN_CLIP_TEMPLATES or name in _OPEN_CLIP_CLASSNAMES
          or name in _BENCHMARK_ALIASES or name.startswith(_BENCHMARK_PREFIX))


def _named_set(name: str, field: str, open_clip_names: dict[str, str],
               aliases: dict[str, str], kind: str) -> tuple[str, ...] | None:
  """The set `name` from open_clip's metadata (`open_clip_names`: our name -> its variable) or
  from CLIP_benchmark's `kind` file (an alias or "clip_benchmark/<dataset>"); None if neither."""
  if name in open_clip_names:
    metadata = _open_clip_metadata(str(_package_file(OPEN_CLIP, field)))
    return metadata[open_clip_names[name]]
  if name in aliases or name.startswith(_BENCHMARK_PREFIX):
    return _benchmark_set(aliases.get(name) or name[len(_BENCHMARK_PREFIX):], kind, field)
  return None


def templates(name: str, field: str = "templates") -> tuple[str, ...]:
  """The template set `name` (module docstring).

  Raises:
    ConfigError: an unknown name, or the package holding it is not installed (naming `field`).
  """
  found = _named_set(name, field, _OPEN_CLIP_TEMPLATES, _BENCHMARK_ALIASES,
                     "zeroshot_classification_templates")
  if found is None:
    raise ConfigError(f"{field} = {name!r} is not a standard template set; choose one of "
                      f"{', '.join(template_set_names())} or clip_benchmark/<dataset>")
  return found


def classnames(name: str, field: str = "classnames") -> tuple[str, ...]:
  """The class-name set `name` (module docstring).

  Raises:
    ConfigError: an unknown name, or the package holding it is not installed (naming `field`).
  """
  found = _named_set(name, field, _OPEN_CLIP_CLASSNAMES, {}, "classnames")
  if found is not None:
    return found
  raise ConfigError(f"{field} = {name!r} is not a standard class-name set; choose "
                    f"{', '.join(_OPEN_CLIP_CLASSNAMES)} or clip_benchmark/<dataset>, give a "
                    ".txt file with one name per line, or the names themselves")
