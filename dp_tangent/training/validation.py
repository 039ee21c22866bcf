"""Checks of a planned run's records against its network, made before any budget is reserved."""

from __future__ import annotations

import torch
from torch import nn

from ..data.records import LazyInputs, RecordSet
from ..errors import UnsupportedModelError
from ..tangent.model import TangentModel
from .config import TrainingError
from .plan import TrainingTask

# Rows checked at a time for non-finite inputs: bounds the temporary boolean mask on large shards.
_FINITE_CHUNK = 4096
# What a forward of an input the network cannot take raises (timm asserts image sizes).
_SHAPE_ERRORS = (RuntimeError, ValueError, AssertionError, IndexError)


def validate_task(task: TrainingTask, base: nn.Module | None = None) -> None:
    """Refuse ``task`` with a one-line :class:`TrainingError` if its records cannot train ``base``.

    Checks, in order: the shard is not empty, the expected batch fits in the shard, every input
    is finite, the inputs fit the network, and the labels are classes of its output. ``base`` is
    the task's base network (built from ``task.backbone`` when not given); nothing is reserved,
    trained or written.
    """
    subject, model = f"component {task.name!r}", f"backbone {task.backbone.name!r}"
    check_batch_size(task.records, task.config.batch_size, subject, task.plan.size)
    validate_records(task.records, task.backbone.build() if base is None else base, subject, model)


def validate_records(records: RecordSet, network: nn.Module, subject: str, model: str, noun: str = "backbone") -> int:
    """Finite inputs that fit ``network`` and labels among its classes; returns the number of classes.

    ``subject`` (e.g. "component 'c0'") opens every message, ``model`` (e.g. "backbone 'vit'")
    names the network in it and ``noun`` is what the hints tell the user to change.
    """
    check_finite_inputs(records, subject)
    classes = output_width(network, records, subject, model, noun)
    check_labels(records, classes, subject, model, noun)
    return classes


def check_batch_size(records: RecordSet, batch_size: int, subject: str, planned: int | None = None) -> None:
    """The shard has records, and the expected (Poisson) batch size is at most the shard size the run is planned for
    (``planned``, N; by default the shard's own count)."""
    if len(records) == 0:
        raise TrainingError(f"{subject}: its shard has no records; give a shard with records")
    n = len(records) if planned is None else planned
    if batch_size > n:
        # q = 1/ceil(n/B) = 1: every step would use the whole shard, not the batch asked for.
        raise TrainingError(f"{subject}: batch_size {batch_size} is larger than its shard of {n} records "
                            f"(Poisson sampling would then take every record at every step); "
                            f"set batch_size to at most {n}")


def check_finite_inputs(records: RecordSet, subject: str) -> None:
    """Every input value is finite (no NaN or infinity): one such value makes the deltas NaN."""
    inputs, ids = records.inputs, records.record_ids
    if isinstance(inputs, LazyInputs) and inputs.finite:
        return  # finite by construction (decoded 8-bit pixels): not decoded a second time just to check
    bad = torch.zeros(len(inputs), dtype=torch.bool)
    for start in range(0, len(inputs), _FINITE_CHUNK):
        chunk = inputs[start:start + _FINITE_CHUNK]
        finite = torch.isfinite(chunk)
        bad[start:start + len(chunk)] = ~(finite.flatten(1).all(dim=1) if finite.dim() > 1 else finite)
    count = int(bad.sum())
    if count:
        first = ids[int(torch.nonzero(bad)[0])]
        raise TrainingError(f"{subject}: {count} of {len(ids)} records have NaN or infinite inputs "
                            f"(first: record {first!r}); remove or repair them before training")


def output_width(network: nn.Module, records: RecordSet, subject: str, model: str, noun: str = "backbone") -> int:
    """The number of classes ``network`` outputs, from one forward of the first record's input.

    The forward runs in eval mode (BatchNorm statistics untouched) without gradients, and the
    network's mode is restored; an input the network cannot take is refused with its shape.
    """
    example = records.inputs[:1]
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            logits = network(example)
    except _SHAPE_ERRORS as err:
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise TrainingError(f"{subject}: inputs of shape {tuple(example.shape[1:])} per record ({example.dtype}) "
                            f"do not fit {model} ({first_line[:200]}); give each record the input shape the "
                            f"{noun} takes") from None
    finally:
        network.train(was_training)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        # e.g. a Linear layer broadcasts over extra input dimensions instead of failing
        shape = tuple(logits.shape[1:]) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise TrainingError(f"{subject}: inputs of shape {tuple(example.shape[1:])} per record give outputs of "
                            f"shape {shape} from {model}, not one score per class; give each record the input "
                            f"shape the {noun} takes")
    if logits.shape[-1] < 2:
        raise TrainingError(f"{subject}: {model} has {logits.shape[-1]} output(s), not one per class; "
                            f"set the {noun}'s num_classes to at least 2")
    return int(logits.shape[-1])


def check_labels(records: RecordSet, classes: int, subject: str, model: str, noun: str = "backbone") -> None:
    """Labels are integers in [0, classes), ``classes`` being the width of the network's output."""
    targets, ids = records.targets, records.record_ids
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise TrainingError(f"{subject}: labels must be integer classes, got {targets.dtype}; "
                            "give integer labels 0..classes-1")
    if targets.dim() != 1:
        raise TrainingError(f"{subject}: labels must be one integer per record, got shape "
                            f"{tuple(targets.shape)}; give a 1-D array of class indices")
    bad = (targets < 0) | (targets >= classes)
    count = int(bad.sum())
    if not count:
        return
    index = int(torch.nonzero(bad)[0])
    fix = ("relabel the negative classes as 0..classes-1" if int(targets.min()) < 0
           else f"set the {noun}'s num_classes to at least {int(targets.max()) + 1} or fix the labels")
    raise TrainingError(f"{subject}: labels must be in [0, {classes}) ({model} has {classes} outputs), but "
                        f"{count} of {len(ids)} records are not, e.g. record {ids[index]!r} has label "
                        f"{int(targets[index])}; {fix}")


def check_per_sample_support(model: TangentModel) -> None:
    """Every delta must sit in a layer with an Opacus grad sampler (not on the fallback path)."""
    if model.fallback_parameters:
        names = ", ".join(model.fallback_parameters[:4])
        raise UnsupportedModelError(
            f"no per-sample gradient hook for {names}: select blocks or layers instead (e.g. trainable='blocks[-2:]')")
