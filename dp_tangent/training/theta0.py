"""theta0 built once and checked against a run's records before the run registers anything.

A recipe's mistakes that only theta0 reveals (a ``trainable`` selector the network does not have, records whose
inputs or labels do not fit it, layers without a per-sample gradient) are refused before a new data source and its
budget are written; the driver then trains from the same network instead of building it again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from ..backbones import BackboneSpec
from ..data.records import RecordSet
from ..tangent import TangentModel, linearize
from ..tangent.layouts import layout_for
from ..tangent.selection import select
from .validation import check_per_sample_support, validate_records


@dataclass(frozen=True)
class CheckedTheta0:
    """The base network built from ``backbone`` and, for a private run, its tangent model over ``trainable``, both
    checked against the records of the components named in ``checked``."""

    backbone: BackboneSpec
    trainable: str | None
    base: nn.Module
    tangent: TangentModel | None
    checked: frozenset[str]

    def serves(self, backbone: BackboneSpec, trainable: str | None, private: bool, components: set[str]) -> bool:
        """Whether a run of ``components`` with these settings may use it instead of building and checking its own."""
        return ((self.backbone, self.trainable, self.tangent is not None) == (backbone, trainable, private)
                and components <= self.checked)


def check_theta0(backbone: BackboneSpec, trainable: str | None, records: Mapping[str, RecordSet], *,
                 private: bool) -> CheckedTheta0:
    """Build theta0 and refuse, in one line, a run whose records (by component name) it cannot train: their inputs
    and labels must fit the network, and a private run's ``trainable`` selection must linearize with per-sample
    gradients, and a non-private run's must select parameters of it."""
    base = backbone.build()
    for name, shard in records.items():
        validate_records(shard, base, f"component {name!r}", f"backbone {backbone.name!r}")
    if private:
        tangent = linearize(base, trainable)
        check_per_sample_support(tangent)
    else:  # trained as a tangent model all the same: its selection must hold
        tangent = None
        select(base, trainable, layout_for(base))
    return CheckedTheta0(backbone, trainable, base, tangent, frozenset(records))
