"""dp-tangent: differentially private fine-tuning of tangent models."""

from .errors import DPTangentError, SelectionError, UnsupportedModelError, WeightsError
from .tangent import TangentModel, linearize

__all__ = ["DPTangentError", "SelectionError", "TangentModel", "UnsupportedModelError", "WeightsError",
           "audit_privacy", "linearize", "train_component"]


def __getattr__(name: str):  # noqa: ANN202 -- lazy: training pulls in Opacus and the accountants
    if name == "train_component":
        from .training import train_component

        return train_component
    if name == "audit_privacy":
        from .privacy_audit import audit_privacy

        return audit_privacy
    raise AttributeError(f"module 'dp_tangent' has no attribute {name!r}")
