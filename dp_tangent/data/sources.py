"""How a data source is re-read for retraining after a deletion: descriptions a workspace records.

Raw records stay with the data owner; a workspace only records *how* to load a data source. The
embedded default is scikit-learn's digits with a fixed split, so retraining rebuilds exactly the
shards the components were trained on.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from .digits import load_digits
from .records import RecordSet
from .splits import split_shards


class DigitsSource(BaseModel):
    """scikit-learn digits split into a test set and ``shards`` private shards named ``shard-<k>``;
    with ``public_split``, one more equal part of the training pool, named ``public``, is declared
    public (for non-private baselines; no private shard holds its records)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    loader: str = "sklearn_digits"
    image_size: int
    shards: int
    test_fraction: float
    seed: int
    max_records: int | None = None
    by: str = "random"
    public_split: bool = False

    def _parts(self) -> list[RecordSet]:
        digits = load_digits(image_size=self.image_size)
        if self.max_records:
            digits = digits.subset(range(min(self.max_records, len(digits))))
        parts = self.shards + (1 if self.public_split else 0)
        return split_shards(digits, shards=parts, test_fraction=self.test_fraction, seed=self.seed, by=self.by)[1]

    def shard_records(self) -> list[RecordSet]:
        """The private shards, ``shard-0`` first."""
        return self._parts()[:self.shards]

    def split(self) -> tuple[list[RecordSet], RecordSet | None]:
        """(private shards, the public split or None)."""
        parts = self._parts()
        return parts[:self.shards], (parts[self.shards] if self.public_split else None)
