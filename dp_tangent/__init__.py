"""dp-tangent: differentially private fine-tuning of tangent models."""

from .errors import DPTangentError, SelectionError, UnsupportedModelError, WeightsError
from .tangent import TangentModel, linearize

__all__ = ["DPTangentError", "SelectionError", "TangentModel", "UnsupportedModelError", "WeightsError", "linearize"]
