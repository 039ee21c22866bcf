"""Package exports imported on first use: a package names what it exports and from which submodule,
and nothing heavy (torch, Opacus, the accountants) is imported until someone asks for it.

``import dp_tangent.cli`` must not import torch: commands that only read a workspace answer in a
fraction of a second (tests/test_startup.py holds that line).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from importlib import import_module
from types import ModuleType


class _LazyPackage(ModuleType):
    """A package whose exported names always resolve to the export, even where a submodule of the
    same name was imported since (``dp_tangent.components.compose``, the module, sets the package's
    ``compose`` attribute when imported; a plain PEP 562 ``__getattr__`` would then return the module)."""

    def __getattribute__(self, name: str) -> object:
        exports = ModuleType.__getattribute__(self, "__dict__").get("_LAZY_EXPORTS", {})
        if name in exports:
            package = ModuleType.__getattribute__(self, "__name__")
            return getattr(import_module(exports[name], package), name)
        return ModuleType.__getattribute__(self, name)


def lazy_package(package: str, exports: Mapping[str, str]) -> None:
    """Make ``package`` (its ``__name__``) import ``exports[name]`` (a submodule relative to it, e.g.
    ``".compose"``) the first time ``name`` is looked up."""
    module = sys.modules[package]
    module._LAZY_EXPORTS = dict(exports)  # type: ignore[attr-defined]
    module.__class__ = _LazyPackage
