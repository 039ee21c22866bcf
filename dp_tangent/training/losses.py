"""Convex losses for tangent models (f_lin is affine in delta, so these are convex in delta).

* cross-entropy: -log softmax(f)_y
* rescaled square loss (TMC/TAFT): mean over classes of (f - kappa·onehot(y))^2, kappa = 15 by default

Both take an optional penalty (l2/2)·||delta||^2, which makes the objective strongly convex and
pulls towards theta0. It is data-independent: DP training applies it as weight decay after the
noisy per-sample step, so it costs no privacy.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

LOSS_KINDS = ("cross_entropy", "square")


@dataclass(frozen=True)
class ConvexLoss:
    kind: str = "cross_entropy"
    kappa: float = 15.0
    l2: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in LOSS_KINDS:
            raise ValueError(f"loss must be one of {LOSS_KINDS}, got {self.kind!r}")
        if self.kappa <= 0:
            raise ValueError(f"kappa must be > 0, got {self.kappa}")
        if self.l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {self.l2}")

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of each example, shape (batch,)."""
        import torch  # here, not at the top: a recipe names its loss (LOSS_KINDS) before torch loads
        import torch.nn.functional as F

        if self.kind == "cross_entropy":
            return F.cross_entropy(logits, target, reduction="none")
        goal = torch.zeros_like(logits).scatter(-1, target.unsqueeze(-1), self.kappa)
        return (logits - goal).pow(2).mean(dim=-1)

    def penalty(self, deltas: Iterable[torch.Tensor]) -> torch.Tensor:
        return 0.5 * self.l2 * sum(d.pow(2).sum() for d in deltas)

    def __call__(self, logits: torch.Tensor, target: torch.Tensor,
                 deltas: Iterable[torch.Tensor] | None = None) -> torch.Tensor:
        """Mean loss over the batch, plus the L2 penalty when ``deltas`` are given."""
        loss = self.per_sample(logits, target).mean()
        return loss if deltas is None or self.l2 == 0 else loss + self.penalty(deltas)
