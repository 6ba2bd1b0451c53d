"""Lazy package namespaces (PEP 562), as diffusers' `_LazyModule`: a package lists which submodule defines each of
its public names, and a name's submodule is imported on first access. `import synfer_diffusers` and the `synfer`
command line's help then load no torch, diffusers or transformers until a name that needs them is used.

```py
_import_structure = {"facs": ["EXPRESSIONS", "AUSpace"], "pipelines.synfer": ["SynFERPipeline"]}
__getattr__, __dir__, __all__ = lazy_namespace(__name__, _import_structure)
```

This module imports nothing beyond the standard library.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["lazy_namespace"]


def lazy_namespace(
    package: str, import_structure: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """The `__getattr__`, `__dir__` and `__all__` of `package` whose public names are defined in submodules:
    `import_structure` maps a submodule (relative, dotted) to the names it defines. A submodule of
    `import_structure` is itself an attribute too. Each value is imported once and then kept in the package."""
    owners = {name: submodule for submodule, names in import_structure.items() for name in names}
    module = sys.modules[package]

    def __getattr__(name: str) -> Any:
        if name in owners:
            value = getattr(importlib.import_module(f".{owners[name]}", package), name)
        elif name in import_structure:
            value = importlib.import_module(f".{name}", package)
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(module, name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(module), *owners})

    return __getattr__, __dir__, list(owners)
