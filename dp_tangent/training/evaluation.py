"""Accuracy of a tangent model (or any classifier) on a record set, in batches, without gradients."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..data.records import RecordSet
from ..tangent import TangentModel


def predict(model: nn.Module, inputs: torch.Tensor, *, batch_size: int = 256, from_features: bool = False) -> torch.Tensor:
    """Logits for every row of ``inputs``; ``from_features`` feeds a tangent model cached prefix outputs."""
    was_training = model.training
    model.eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            chunk = inputs[start:start + batch_size]
            if from_features and isinstance(model, TangentModel):
                outputs.append(model.forward_from_features(chunk))
            else:
                outputs.append(model(chunk))
    model.train(was_training)
    return torch.cat(outputs) if outputs else inputs.new_zeros((0,))


def majority_share(records: RecordSet) -> float:
    """The accuracy of always answering the most common label (the baseline an accuracy must beat)."""
    return torch.bincount(records.targets).max().item() / len(records)


def accuracy(model: nn.Module, records: RecordSet, *, features: torch.Tensor | None = None, batch_size: int = 256) -> float:
    """Top-1 accuracy; pass ``features`` (cached ``model.features(records.inputs)``) to skip the prefix."""
    if len(records) == 0:
        raise ValueError("cannot measure accuracy on an empty record set")
    logits = predict(model, records.inputs if features is None else features, batch_size=batch_size,
                     from_features=features is not None)
    return (logits.argmax(dim=-1) == records.targets).float().mean().item()
