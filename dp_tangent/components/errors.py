"""Errors of composition: components that cannot be composed as asked (nothing was written)."""

from ..errors import DPTangentError


class CompositionError(DPTangentError):
    """Components that cannot be composed as asked (nothing was written)."""


class PrivateMergeDataError(CompositionError):
    """Merge statistics were requested from data not declared public."""
