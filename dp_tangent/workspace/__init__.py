"""The audited workspace: a directory holding components, composed models, the privacy ledger, the
audit log, deletion certificates and the manifest key; every operation that changes it is logged.

* ``store``: :class:`Workspace` -- create/open, paths, key, ledger, log, and the operations
  (train, compose, declare a data source, budget, release);
* ``train``: the driver of a training run (plan, reserve all shards, run an executor, write, log);
* ``forget``: serving a deletion request (remove, retrain, recompose, verify, certify), with
  ``deletion_requests`` (the request and its legal clock), ``request_register`` (receiving and
  listing requests) and ``certificates`` (the certificate files);
* ``gram_cache``: per-record NTK Grams kept for later runs on the same records (never released);
* ``tombstones``: records a deletion removed, never trained again;
  ``certificate_check``: a certificate re-checked at any later time;
* ``release``: the release bundle, the only thing meant to leave a workspace;
* ``audit_log``, ``merkle``, ``checkpoint``, ``audit_errors``: the hash-chained audit log (bound to
  the ledger), its Merkle tree and consistency proofs, and signed checkpoints;
* ``model_record``: a composed model's record; ``data_sources``: how each data source is re-read;
* ``names``, ``lock``: checked artifact names and the workspace lock.
"""

from ..lazy import lazy_package
from .model_record import ModelPart, ModelRecord
from .names import WorkspaceError, check_name
from .store import Workspace

lazy_package(__name__, {"FailedShard": ".train", "ShardJob": ".train", "TrainingRun": ".train"})  # torch

__all__ = ["FailedShard", "ModelPart", "ModelRecord", "ShardJob", "TrainingRun", "Workspace", "WorkspaceError",
           "check_name"]
