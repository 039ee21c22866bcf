"""Errors a user can cause; each message is one line that says what to change."""


class DPTangentError(Exception):
    """Base class of every error dp_tangent raises on purpose."""


class SelectionError(DPTangentError, ValueError):
    """The ``trainable`` specification does not fit the model."""


class UnsupportedModelError(DPTangentError):
    """The network uses something the tangent model cannot represent exactly (named in the message)."""


class WeightsError(DPTangentError):
    """Pretrained weights are missing, do not match the architecture, or cannot be read."""


class RecipeError(DPTangentError):
    """A recipe file is missing, not YAML, or does not validate (one line: file and field)."""


class DataError(RecipeError):
    """The data a recipe describes cannot be loaded as described (one line: file and problem)."""


def failure_reason(err: BaseException) -> str:
    """The one-line reason stored with a failed reservation."""
    return f"{type(err).__name__}: {err}".strip()[:500]
