"""``models/NAME.json``: a composed model's record -- its components, base and digests."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

MODEL_FORMAT = "dp-tangent-model/1"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelPart(_Strict):
    name: str
    sha256: str
    deltas_sha256: str
    data_source: str
    shard: str
    weight: float | None
    coefficient: float | None
    merge_data_sha256: str | None = None


class ModelRecord(_Strict):
    """``models/NAME.json``: a composed model and what it is made of."""

    format: Literal["dp-tangent-model/1"] = MODEL_FORMAT
    name: str
    created_at: str
    method: str
    weights_given: bool
    components: list[ModelPart]
    base: dict[str, Any]
    base_weights_sha256: str
    trainable: str
    deltas_sha256: str  # digest of the composed delta tensors
    deltas_file: str
    deltas_file_sha256: str
    merge: dict[str, Any] | None = None

    @property
    def component_names(self) -> list[str]:
        return [p.name for p in self.components]

    @property
    def weights(self) -> list[float] | None:
        return [float(p.weight) for p in self.components] if self.weights_given else None  # type: ignore[arg-type]
