"""Package attributes imported on first use (PEP 562), so light entry points stay light.

``feclip download --help`` or ``feclip reproduce --help`` must not pay for torch: a package whose
``__init__`` re-exports torch-backed names declares them here instead of importing them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, Sequence[str]], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module ``__getattr__`` and ``__dir__`` that import each name from its module when first asked for.

    Args:
        package: The package's ``__name__`` (for the error message).
        exports: Module name -> the names it provides.
        namespace: The package's ``globals()``; an imported name is cached there.

    Returns:
        ``(__getattr__, __dir__)`` to assign in the package.
    """
    module_of = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = module_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(module_of))

    return __getattr__, __dir__
