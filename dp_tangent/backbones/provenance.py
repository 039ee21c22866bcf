"""Where a checkpoint ``dp-tangent pretrain`` wrote was pretrained: the public table, by its sha256.

theta0 trained on a table is outside every privacy guarantee, so that table must hold no private or deleted
record; ``train`` checks the recipe's ``public_path`` for that. A checkpoint records the table it was pretrained on
(safetensors metadata), so that ``train`` can tell when it was not that table as it is now (pretrained on a table
later cleaned, or on another one) and refuse it rather than take unchecked records as public.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import WeightsError
from ..io import sha256_file

_TABLE = "dp_tangent.pretrained_on"
_TABLE_SHA256 = "dp_tangent.pretrained_on_sha256"


@dataclass(frozen=True)
class PretrainedOn:
    """The public table a checkpoint was pretrained on: its path then and its file's sha256."""

    table: str
    sha256: str

    @classmethod
    def of(cls, table: Path) -> "PretrainedOn":
        return cls(str(table.absolute()), sha256_file(table))

    def metadata(self) -> dict[str, str]:
        return {_TABLE: self.table, _TABLE_SHA256: self.sha256}


def pretrained_on(checkpoint: str | Path) -> PretrainedOn | None:
    """The table ``checkpoint`` records it was pretrained on; None for a checkpoint that records none (made
    elsewhere: its theta0 is taken as public on its maker's word)."""
    path = Path(checkpoint)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:  # noqa: BLE001 -- any unreadable file is the same user mistake
        raise WeightsError(f"cannot read checkpoint {path}: {str(err).splitlines()[0] if str(err) else err}") from err
    if _TABLE_SHA256 not in meta:
        return None
    return PretrainedOn(meta.get(_TABLE, ""), meta[_TABLE_SHA256])


def check_pretrained_on(checkpoint: str | Path, public_table: str | Path | None) -> None:
    """Refuse a checkpoint pretrained on a table other than ``public_table`` as it is now (the table ``train``
    checked to hold no private or deleted record), or pretrained on a table when the recipe names none."""
    on = pretrained_on(checkpoint)
    if on is None:
        return
    if public_table is None:
        raise WeightsError(f"checkpoint {checkpoint} was pretrained on the table {on.table}, and the recipe names no "
                           "public_path: give that table as data.table.public_path, so that train can check it holds "
                           "no private or deleted record")
    if not Path(public_table).is_file() or sha256_file(Path(public_table)) != on.sha256:
        raise WeightsError(f"checkpoint {checkpoint} was pretrained on a table other than the recipe's public_path "
                           f"{public_table} as it is now (it recorded {on.table}, sha256 {on.sha256[:12]}...): train "
                           "checked only the table as it is now; pretrain again (`dp-tangent pretrain RECIPE --force`)")
