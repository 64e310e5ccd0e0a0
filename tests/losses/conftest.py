"""Loss tests' shared setup: the float64 references, importable by module name.

pytest runs with --import-mode=importlib (pytest.ini), under which a test module cannot import a
file beside it, and a conftest.py is not importable either. pytest imports this conftest before
any test module under tests/losses/, so it loads the two reference files by path, once, and
registers them as modules:

  losses_reference      tests/losses/reference.py: the sigmoid and softmax references, and the
                        JAX harness that runs a loss under shard_map
  objectives_reference  tests/losses/objectives/reference.py: the paper objectives' references

Test modules then write `import losses_reference as ref`.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

HERE = pathlib.Path(__file__).parent


def _register(name: str, path: pathlib.Path) -> None:
  if name in sys.modules:
    return
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)


_register("losses_reference", HERE / "reference.py")
_register("objectives_reference", HERE / "objectives" / "reference.py")
