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
    """The one-line reason shown to the operator for a failed run (it may name a record: see :func:`logged_reason`)."""
    return f"{type(err).__name__}: {err}".strip()[:500]


#: Said in the ledger and audit log in place of an error's message.
NOT_LOGGED = "its message was shown to the operator, not logged: it may name a record"


def logged_reason(err: BaseException | str) -> str:
    """What the ledger and the audit log keep of a run's failure: the error's type, and for an OS error its
    system message (``No space left on device``), never the message itself, which may name a record (an image's
    path is its id and its class folder) in files kept for good and read by auditors. ``err`` may be the
    ``"Type: message"`` line a worker sent back."""
    if isinstance(err, OSError) and err.strerror:
        return f"{type(err).__name__}: {err.strerror}"
    line = failure_reason(err) if isinstance(err, BaseException) else " ".join(err.split())[:500]
    kind = line.split(":", 1)[0].strip()[:80] or "Error"
    return line if kind in _RECORD_FREE else f"{kind} ({NOT_LOGGED})"


#: Errors whose messages this tool composes from settings and counts alone, never from a record: kept whole.
_RECORD_FREE = frozenset({"TrainingError"})
