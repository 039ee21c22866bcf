"""The centroid of public fine-tuned models as a new linearization point.

theta_c = sum_k w_k theta_k / sum_k w_k ("Knowledge is a Region in Weight Space", 2023); public
inputs only, since the average is not private.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save

from ..backbones import read_state_dict
from ..io import atomic_write_bytes, sha256_file
from .compose import check_weights
from .errors import CompositionError


@dataclass(frozen=True)
class CentroidRecord:
    """Digests of the models averaged, their weights, and the digest of the average."""

    inputs: tuple[tuple[str, str], ...]  # (origin, weights sha256)
    weights: tuple[float, ...]
    weights_sha256: str  # weights_digest of a model holding the centroid
    public: bool = True
    method: str = "weight average of public fine-tuned models (Knowledge is a Region in Weight Space, 2023)"


@dataclass(frozen=True)
class Centroid:
    state_dict: "OrderedDict[str, torch.Tensor]"
    record: CentroidRecord


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """:func:`dp_tangent.backbones.weights_digest` of a model whose state dict is ``state``."""
    digest = hashlib.sha256()
    for name, tensor in state.items():
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def centroid_base(models: Sequence[nn.Module | str | Path], weights: Sequence[float] | None = None, *,
                  public: bool) -> Centroid:
    """theta_c = sum_k w_k theta_k / sum_k w_k over *public* fine-tuned models of one architecture.

    The result is a new linearization point; it is not private (the inputs are used as is), so
    ``public=True`` must state that no input was trained on private data. Integer buffers must agree
    (``num_batches_tracked`` excepted: the first model's is kept).
    """
    if public is not True:
        raise CompositionError("centroid_base averages weights without any privacy protection: only public "
                               "fine-tuned models may go in; pass public=True to state that they are")
    if isinstance(models, (str, Path)) or not models:
        raise CompositionError("centroid_base needs at least one model")
    states, origins = [], []
    for i, m in enumerate(models):
        if isinstance(m, nn.Module):
            states.append(OrderedDict(m.state_dict()))
            origins.append(f"model[{i}] ({type(m).__name__})")
        else:
            states.append(read_state_dict(m))
            origins.append(str(m))
    w = check_weights(weights, len(states), "mean") or [1.0] * len(states)
    ref = states[0]
    for origin, state in zip(origins[1:], states[1:]):
        if list(state) != list(ref) or any((s.shape, s.dtype) != (ref[n].shape, ref[n].dtype) for n, s in state.items()):
            raise CompositionError(f"{origin} has another architecture than {origins[0]} "
                                   "(tensor names, shapes or dtypes differ)")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, tensor in ref.items():
        if tensor.is_floating_point():
            acc = torch.zeros(tensor.shape, dtype=torch.float64)
            for wk, state in zip(w, states):
                acc += wk * state[name].to(torch.float64)
            out[name] = (acc / math.fsum(w)).to(tensor.dtype)
        else:
            if not name.endswith("num_batches_tracked") and any(not torch.equal(s[name], tensor) for s in states):
                raise CompositionError(f"integer tensor {name} differs between the models; cannot average it")
            out[name] = tensor.clone()
    record = CentroidRecord(tuple((o, state_digest(s)) for o, s in zip(origins, states)), tuple(w), state_digest(out))
    return Centroid(out, record)


def save_centroid(path: str | Path, centroid: Centroid) -> str:
    """Write the centroid as a safetensors checkpoint (record in its metadata), atomically; returns sha256.

    Use it as a base with ``BackboneSpec(name, checkpoint=path, ...)``.
    """
    record = centroid.record
    meta = {"dp_tangent_centroid": json.dumps({
        "inputs": [{"origin": o, "weights_sha256": d} for o, d in record.inputs], "weights": list(record.weights),
        "weights_sha256": record.weights_sha256, "public": record.public, "method": record.method}, sort_keys=True)}
    atomic_write_bytes(path, save({n: t.contiguous() for n, t in centroid.state_dict.items()}, metadata=meta))
    return sha256_file(path)
