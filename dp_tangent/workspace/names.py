"""Names in a workspace: artifact names become file names, so they are checked once, here."""

from __future__ import annotations

import re

from ..errors import DPTangentError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class WorkspaceError(DPTangentError):
    """The directory is not a usable workspace, or a name or file in it is wrong."""


class WorkspaceIntegrityError(WorkspaceError):
    """The workspace does not verify against its audit log: an operation on it is refused."""


def check_name(name: str, what: str) -> str:
    """Artifact names become file names: letters, digits, '.', '_', '-' (no path separators)."""
    if not isinstance(name, str) or not _NAME.match(name) or name.endswith((".json", ".txt", ".safetensors")):
        raise WorkspaceError(f"{what} name {name!r} must match [A-Za-z0-9][A-Za-z0-9._-]* (at most 128 characters)")
    return name
