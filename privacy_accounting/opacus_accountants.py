"""Opacus's RDP and PRV accountants without importing torch.

Opacus's accountant mathematics (``opacus/accountants/analysis``: numpy and scipy) is reached through
``opacus/__init__``, which imports torch (3-4 s, 600 MB) for the privacy engine; ``budget show``
needs none of that to print an epsilon. When torch is not loaded yet, :func:`accountant_classes`
executes Opacus's own ``rdp.py``, ``prv.py`` and ``analysis/`` files under a private package name
(``privacy_accounting._opacus_accountants``), with one module replaced: ``accountant.py``, whose only
import of consequence is the optimizer type for ``get_optimizer_hook_fn`` (training hooks), gets the
stand-in below with the same ``IAccountant`` base (``history`` list, the same abstract methods).
Every figure is computed by Opacus's unchanged code; tests/test_opacus_accountants.py checks that
both ways give bit-identical epsilons. Anything unexpected in the installed Opacus (files moved,
an import that fails) falls back to the ordinary ``import opacus.accountants``.
"""

from __future__ import annotations

import abc
import importlib
import importlib.util
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

#: The private package Opacus's accountant files run under when torch is not loaded.
ALIAS = "privacy_accounting._opacus_accountants"
_lock = threading.Lock()


class IAccountant(abc.ABC):
    """Opacus's ``IAccountant`` without the optimizer hook (which would need torch)."""

    @abc.abstractmethod
    def __init__(self) -> None:
        self.history: list[tuple[float, float, int]] = []  # (noise multiplier, sample rate, steps)

    @abc.abstractmethod
    def step(self, *, noise_multiplier: float, sample_rate: float) -> None: ...

    @abc.abstractmethod
    def get_epsilon(self, delta: float, *args: Any, **kwargs: Any) -> float: ...

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @classmethod
    @abc.abstractmethod
    def mechanism(cls) -> str: ...


def accountant_classes() -> tuple[type, type]:
    """(``RDPAccountant``, ``PRVAccountant``): Opacus's own once torch is loaded, else the same files
    run without torch (see the module docstring)."""
    if "torch" not in sys.modules:
        try:
            return _torch_free()
        except Exception:  # noqa: BLE001 - a layout this loader does not know: Opacus's normal import
            _forget_alias()
    from opacus.accountants import PRVAccountant, RDPAccountant

    return RDPAccountant, PRVAccountant


def _torch_free() -> tuple[type, type]:
    with _lock:
        if ALIAS + ".prv" not in sys.modules:
            spec = importlib.util.find_spec("opacus")  # finds the package without executing its __init__
            if spec is None or not spec.submodule_search_locations:
                raise ImportError("opacus is not installed")
            folder = Path(next(iter(spec.submodule_search_locations))) / "accountants"
            package = ModuleType(ALIAS)
            package.__path__ = [str(folder)]  # submodules load from Opacus's folder, under this name
            package.__package__ = ALIAS
            sys.modules[ALIAS] = package
            shim = ModuleType(ALIAS + ".accountant")
            shim.IAccountant = IAccountant  # type: ignore[attr-defined]
            sys.modules[shim.__name__] = shim
            importlib.import_module(ALIAS + ".rdp")
            importlib.import_module(ALIAS + ".prv")
            if "torch" in sys.modules:
                raise ImportError("Opacus's accountant files imported torch")
    return sys.modules[ALIAS + ".rdp"].RDPAccountant, sys.modules[ALIAS + ".prv"].PRVAccountant


def _forget_alias() -> None:
    for name in [n for n in sys.modules if n == ALIAS or n.startswith(ALIAS + ".")]:
        del sys.modules[name]
