"""What a per-example NTK Gram Theta_i is as runs compute, keep and offer it: its dtype, and the version of its
meaning in a kept Theta's key; and how much of the frozen-prefix features may be kept beside it. Apart from :mod:`.ntk_gram` (which computes it and loads Opacus) so that the
driver, which keeps and matches Thetas, loads neither."""

from __future__ import annotations

import torch

GRAM_DTYPE = torch.float64  # Theta is computed, kept and offered in float64
# In a cached Theta's key with the digest of the sources that compute Theta (gram_reuse.gram_code_version), so an
# edit of those misses anyway; bump it when Theta's meaning changes in a way no source edit there shows.
GRAM_VERSION = 1
# A shard's frozen-prefix features are kept beside its Thetas only up to this size (n x the features of a record):
# beyond it the worker would send, and the driver hold and write, more than a retraining saves in time.
FEATURE_CACHE_MAX_BYTES = 1 << 30
