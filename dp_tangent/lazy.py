"""Package exports imported on first use: a package names what it exports and from which submodule,
and nothing heavy (torch, Opacus, the accountants) is imported until someone asks for it; and
registrations for a library's types deferred until that library is imported (:func:`when_imported`).

``import dp_tangent.cli`` must not import torch: commands that only read a workspace answer in a
fraction of a second (tests/test_startup.py holds that line). Nor does a job on a table import timm
(and torchvision through it): only a timm network needs timm's layer types registered.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Mapping
from importlib import import_module
from types import ModuleType

_PENDING: dict[str, list[Callable[[], None]]] = {}
_PENDING_LOCK = threading.RLock()


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


def when_imported(module: str, register: Callable[[], None]) -> None:
    """Run ``register`` (which imports ``module`` and registers its types) now if ``module`` is imported already,
    else at the first :func:`run_pending` after it is. The registries that hold such types call
    :func:`run_pending` before each lookup: an object of those types exists only once ``module`` is imported."""
    with _PENDING_LOCK:
        if module in sys.modules:
            register()
        else:
            _PENDING.setdefault(module, []).append(register)


def run_pending() -> None:
    """Run, in the order they were deferred, the registrations of every module imported since (a dict lookup
    per deferred module when none is). A registration that raises stays pending (the next lookup runs it again),
    and a module's entry is dropped only once all its registrations ran, so that another thread waits for them
    (on the lock) instead of reading half-filled registries; one that looks up a registry itself (which calls
    this again) finds the registrations still to run, not itself."""
    if not any(module in sys.modules for module in list(_PENDING)):
        return
    with _PENDING_LOCK:
        for module in [m for m in list(_PENDING) if m in sys.modules]:
            queue = _PENDING.get(module, [])
            while queue:
                register = queue.pop(0)
                try:
                    register()
                except BaseException:
                    queue.insert(0, register)
                    raise
            _PENDING.pop(module, None)
