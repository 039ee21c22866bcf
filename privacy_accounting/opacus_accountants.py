"""Opacus's RDP and PRV accountants without importing torch.

Opacus's accountant mathematics (``opacus/accountants/analysis``: numpy and scipy) is reached through
``opacus/__init__``, which imports torch (3-4 s, 600 MB) for the privacy engine; ``budget show``
needs none of that to print an epsilon, nor does a training command's driver, which loads torch for the
network but leaves Opacus to its workers. When the opacus package is not loaded yet and the installed Opacus
is a version this loader was checked against (:data:`CHECKED_VERSIONS`), :func:`accountant_classes` executes
Opacus's own ``rdp.py``, ``prv.py`` and ``analysis/`` files under a private package name
(``privacy_accounting._opacus_accountants``), with one module replaced: ``accountant.py``, whose only
import of consequence is the optimizer type for ``get_optimizer_hook_fn`` (training hooks), gets the
stand-in below with the same ``IAccountant`` base (``history`` list, the same abstract methods).
Every figure is computed by Opacus's unchanged code; one pure function is memoised in the private
copy: ``analysis/rdp.py``'s ``_compute_rdp(q, sigma, alpha)``, the RDP of one step at one order, which
Opacus recomputes for each of its 151 orders in every ``get_epsilon`` (pure Python series for the 99
fractional ones), and again for the PRV accountant's domain, although a workspace's figures share a few
(q, sigma). tests/accounting/test_opacus_accountants.py checks that both ways give bit-identical
epsilons. Another Opacus version, or anything unexpected (files moved, an import that fails), falls
back to the ordinary ``import opacus.accountants``.
The private classes live only in this process: do not pickle their instances to another one.
"""

from __future__ import annotations

import abc
import functools
import importlib
import importlib.metadata
import importlib.util
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

#: The private package Opacus's accountant files run under while the opacus package is not loaded.
ALIAS = "privacy_accounting._opacus_accountants"
#: Opacus versions whose ``IAccountant`` the stand-in mirrors (checked by the tests); others are imported whole.
CHECKED_VERSIONS = ("1.6.0",)
_lock = threading.Lock()


class IAccountant(abc.ABC):
    """Opacus's ``IAccountant`` without the optimizer hook and state dicts (training only, torch-bound)."""

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
    """(``RDPAccountant``, ``PRVAccountant``): Opacus's own once the opacus package is loaded (a process that
    trains), else the same files run without it, and so without torch (see the module docstring)."""
    if "opacus" not in sys.modules:
        with _lock:
            try:
                return _torch_free()
            except Exception:  # noqa: BLE001 - a layout this loader does not know: Opacus's normal import
                for name in [n for n in list(sys.modules) if n == ALIAS or n.startswith(ALIAS + ".")]:
                    sys.modules.pop(name, None)
    from opacus.accountants import PRVAccountant, RDPAccountant

    return RDPAccountant, PRVAccountant


def _memoised(compute_rdp: Callable[[Any, Any, Any], Any]) -> Callable[[Any, Any, Any], Any]:
    """``compute_rdp`` with its results kept per (q, sigma, alpha) and their types; unhashable arguments (a
    0-d array) are computed each time."""
    memo = functools.lru_cache(maxsize=4096, typed=True)(compute_rdp)

    @functools.wraps(compute_rdp)
    def compute(q: Any, sigma: Any, alpha: Any) -> Any:
        try:
            return memo(q, sigma, alpha)
        except TypeError:  # unhashable: not kept (a TypeError of the computation itself is raised again below)
            return compute_rdp(q, sigma, alpha)

    compute.cache_info = memo.cache_info  # type: ignore[attr-defined]
    return compute


def _accountants_folder() -> Path:
    """The installed Opacus's ``accountants`` folder, found without executing ``opacus/__init__``."""
    if importlib.metadata.version("opacus") not in CHECKED_VERSIONS:
        raise ImportError("an Opacus version this loader was not checked against")
    spec = importlib.util.find_spec("opacus")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("opacus is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "accountants"


def _torch_free() -> tuple[type, type]:
    """Load (once) and return the private copies; the caller holds the lock."""
    if ALIAS + ".prv" not in sys.modules:
        had_torch = "torch" in sys.modules
        package = ModuleType(ALIAS)
        package.__path__ = [str(_accountants_folder())]  # submodules load from Opacus's folder, under this name
        package.__package__ = ALIAS
        sys.modules[ALIAS] = package
        shim = ModuleType(ALIAS + ".accountant")
        shim.IAccountant = IAccountant  # type: ignore[attr-defined]
        sys.modules[shim.__name__] = shim
        importlib.import_module(ALIAS + ".rdp")
        analysis = sys.modules[ALIAS + ".analysis.rdp"]
        analysis._compute_rdp = _memoised(analysis._compute_rdp)
        importlib.import_module(ALIAS + ".prv")
        if "opacus" in sys.modules or ("torch" in sys.modules and not had_torch):
            raise ImportError("Opacus's accountant files imported the opacus package or torch")
    return sys.modules[ALIAS + ".rdp"].RDPAccountant, sys.modules[ALIAS + ".prv"].PRVAccountant
