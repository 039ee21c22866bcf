"""Errors of the audit log."""

from ..errors import DPTangentError


class AuditLogError(DPTangentError):
    """The audit log cannot be read or appended to as asked."""


class AuditChainError(AuditLogError):
    """The log's hash chain is broken: nothing more may be appended until it is investigated."""
