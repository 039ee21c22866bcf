"""dp-tangent: differentially private fine-tuning of tangent models.

The front door: :func:`linearize` and :class:`TangentModel` (``dp_tangent.tangent``); and, imported
on first use because they pull in Opacus and the accountants, :func:`train_component`,
:class:`PrivacySpec`, :class:`TrainConfig` (``dp_tangent.training``), :func:`compose`
(``dp_tangent.components``), :class:`Workspace` and :func:`forget` (``dp_tangent.workspace``) and
:func:`audit_privacy` (the empirical audit).
"""

from importlib import import_module

from .errors import DPTangentError, SelectionError, UnsupportedModelError, WeightsError
from .tangent import TangentModel, linearize

_LAZY = {
    "train_component": "dp_tangent.training.in_process",
    "PrivacySpec": "dp_tangent.training.config",
    "TrainConfig": "dp_tangent.training.config",
    "compose": "dp_tangent.components.compose",
    "Workspace": "dp_tangent.workspace.store",
    "forget": "dp_tangent.workspace.forget",
    "DeletionRequest": "dp_tangent.workspace.deletion_requests",
    "audit_privacy": "dp_tangent.training.privacy_audit",
}

__all__ = ["DPTangentError", "DeletionRequest", "PrivacySpec", "SelectionError", "TangentModel", "TrainConfig",
           "UnsupportedModelError", "WeightsError", "Workspace", "audit_privacy", "compose", "forget", "linearize",
           "train_component"]


def __getattr__(name: str):  # noqa: ANN202 -- lazy: training pulls in Opacus and the accountants
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dp_tangent' has no attribute {name!r}")
