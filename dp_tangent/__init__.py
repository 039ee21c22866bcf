"""dp-tangent: differentially private fine-tuning of tangent models.

The front door, each imported on first use (torch, Opacus and the accountants take seconds to load,
and the command line needs none of them to read a workspace): :func:`linearize` and
:class:`TangentModel` (``dp_tangent.tangent``), :func:`train_component`,
:class:`PrivacySpec`, :class:`TrainConfig` (``dp_tangent.training``), :func:`compose`
(``dp_tangent.components``), :class:`Workspace` and :func:`forget` (``dp_tangent.workspace``),
:func:`audit_privacy` (the empirical audit) and :func:`load_release` (a release bundle, where it was sent).
"""

from .errors import DPTangentError, SelectionError, UnsupportedModelError, WeightsError
from .lazy import lazy_package

_LAZY = {
    "linearize": "dp_tangent.tangent.model",
    "TangentModel": "dp_tangent.tangent.model",
    "train_component": "dp_tangent.training.in_process",
    "PrivacySpec": "dp_tangent.training.config",
    "TrainConfig": "dp_tangent.training.config",
    "compose": "dp_tangent.components.compose",
    "Workspace": "dp_tangent.workspace.store",
    "forget": "dp_tangent.workspace.forget",
    "DeletionRequest": "dp_tangent.workspace.deletion_requests",
    "audit_privacy": "dp_tangent.training.privacy_audit",
    "load_release": "dp_tangent.components.release_bundle",
}

__all__ = ["DPTangentError", "DeletionRequest", "PrivacySpec", "SelectionError", "TangentModel", "TrainConfig",
           "UnsupportedModelError", "WeightsError", "Workspace", "audit_privacy", "compose", "forget", "linearize",
           "load_release", "train_component"]

lazy_package(__name__, _LAZY)
