"""Tables as records: CSV or Parquet files with named feature, label and record-id columns.

Features are scaled only with statistics that are *not* computed from the private table: the mean
and spread of a private column are themselves a release about its records (one outlier moves
them), outside the DP guarantee of training. So the scaling is one of: ``public`` (mean and
standard deviation of a public table with the same columns), ``given`` (a mean and standard
deviation the user states, e.g. from published statistics), ``bounds`` (declared ranges: clip to
[lower, upper], then map to [-1, 1]) or ``none`` (features as they are). Text labels need their
``classes`` listed for the same reason: the set of classes read from the private table would reveal
a class that only a few records have. Columns are read with pyarrow.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import DataError
from .records import RecordSet

if TYPE_CHECKING:
    import pyarrow as pa

SUFFIXES = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet"}


def read_table(path: Path, columns: Sequence[str], optional: Sequence[str] = (), as_text: Sequence[str] = ()
               ) -> pa.Table:
    """The ``columns`` (and those of ``optional`` it has) of a CSV (``.csv``/``.tsv``) or Parquet
    (``.parquet``) file; a missing column or an unreadable file is a one-line :class:`DataError`.
    A CSV's ``as_text`` columns are read as written (pyarrow would type ``00017`` as the number 17, and one
    record's id decide how every other is read), and must be UTF-8."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: a table must be a .csv, .tsv or .parquet file")
    if not path.is_file():
        raise DataError(f"{path}: file not found")  # (a table, or a text file read as one)
    try:
        if kind == "parquet":
            table = pq.read_table(path)
        else:
            options = pacsv.ParseOptions(delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            text = pacsv.ConvertOptions(column_types={c: pa.string() for c in as_text})
            table = pacsv.read_csv(path, parse_options=options, convert_options=text)
    except (pa.ArrowException, OSError) as err:
        semicolons = kind == "csv" and _semicolon_header(path)
        raise DataError(f"{path}: cannot read the table ({(str(err).strip().splitlines() or [''])[0]})"
                        + (f"; the file looks {_SEMICOLONS}" if semicolons else "")) from None
    if kind == "csv":
        _check_delimiter(path, table, [*columns, *optional])
    return select_columns(path, table, columns, optional)


#: What a semicolon-separated file (a spreadsheet's export where the comma is the decimal mark) is told.
_SEMICOLONS = "semicolon-separated: export it comma-separated (.csv) or tab-separated (.tsv), with decimal points"


def _semicolon_header(path: Path) -> bool:
    """Whether the file's first line has semicolons and no comma or tab (read as a .csv, one column)."""
    try:
        with path.open("rb") as file:
            first = file.readline(1 << 16)
    except OSError:
        return False
    return b";" in first and b"," not in first and b"\t" not in first


def _check_delimiter(path: Path, table: pa.Table, columns: Sequence[str]) -> None:
    """A CSV read with its suffix's delimiter into one column whose name holds another delimiter and columns
    asked for is a file named for the other kind (a comma-separated .tsv, a tab-separated .csv) or written with
    semicolons (as spreadsheets do where the comma is the decimal mark): said so, rather than a "missing" column
    listed among the columns found."""
    tab = path.suffix.lower() == ".tsv"
    name = (table.column_names or [""])[0]
    if len(table.column_names) != 1 or any(c in table.column_names for c in columns):
        return
    given = "tab-separated (.tsv)" if tab else "comma-separated (.csv)"
    for other, kind in (("," if tab else "\t", "comma-separated: name it .csv" if tab else
                         "tab-separated: name it .tsv"), (";", _SEMICOLONS)):
        if other in name and any(c in name.split(other) for c in columns):
            raise DataError(f"{path}: read as {given}, it has one column, {name!r}; the file looks {kind}")


def select_columns(path: Path, table: pa.Table, columns: Sequence[str], optional: Sequence[str] = (),
                   noun: str = "column") -> pa.Table:
    """``table``'s ``columns`` (each required) and those of ``optional`` it has, in that order; a missing
    one is a one-line :class:`DataError` naming the ``noun`` (column, or field for JSON lines)."""
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: no {noun} {missing[0]!r} ({noun}s: {', '.join(table.column_names)})")
    present = [c for c in optional if c in table.column_names]
    twice = next((c for c in [*columns, *present] if table.column_names.count(c) > 1), None)
    if twice is not None:  # which of the two is meant? (pyarrow's select raises a KeyError)
        raise DataError(f"{path}: the header names {noun} {twice!r} {table.column_names.count(twice)} times; give each "
                        f"{noun} its own name")
    return table.select(list(dict.fromkeys([*columns, *present])))


def feature_matrix(path: Path, table: pa.Table, features: Sequence[str], ids: Sequence[str]) -> np.ndarray:
    """The feature columns as an (N, F) float64 array: numeric columns only, no missing values."""
    import pyarrow as pa

    if table.num_rows == 0:  # pyarrow types an empty column as null
        raise DataError(f"{path}: no rows (only a header); give one row per record")
    columns = []
    for name in features:
        column = table.column(name)
        if pa.types.is_null(column.type):  # how pyarrow types a column without one value
            raise DataError(f"{path}: feature column {name!r} is empty (no record has a value); fill it, or leave it "
                            "out of the features")
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
                or pa.types.is_boolean(column.type) or pa.types.is_decimal(column.type)):
            raise DataError(f"{path}: feature column {name!r} is {column.type}, not numeric; encode it as numbers "
                            "(text and categorical columns are not supported as features)")
        if pa.types.is_decimal(column.type):  # exact decimals (Parquet, databases) as the nearest float64
            column = column.cast(pa.float64(), safe=False)
        values = column.to_numpy(zero_copy_only=False).astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise DataError(f"{path}: feature column {name!r} has {bad.size} missing or non-finite value(s) "
                            f"(first: record {ids[int(bad[0])]!r}); fill or drop them")
        columns.append(values)
    return np.stack(columns, axis=1) if columns else np.zeros((len(ids), 0))


@dataclass(frozen=True)
class Scaling:
    """x -> (clip(x, lower, upper) - shift) / scale, per feature (no clipping where a bound is infinite)."""

    shift: np.ndarray
    scale: np.ndarray
    lower: np.ndarray
    upper: np.ndarray

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (np.clip(x, self.lower, self.upper) - self.shift) / self.scale

    @classmethod
    def identity(cls, width: int) -> "Scaling":
        return cls(np.zeros(width), np.ones(width), np.full(width, -np.inf), np.full(width, np.inf))

    @classmethod
    def standardize(cls, mean: Sequence[float], std: Sequence[float]) -> "Scaling":
        mean, std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
        return cls(mean, np.where(std > 0, std, 1.0), np.full(len(mean), -np.inf), np.full(len(mean), np.inf))

    @classmethod
    def bounds(cls, lower: Sequence[float], upper: Sequence[float]) -> "Scaling":
        lower, upper = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
        return cls((lower + upper) / 2, (upper - lower) / 2, lower, upper)


def label_indices(path: Path, table: pa.Table, label: str, classes: Sequence[str] | None,
                  ids: Sequence[str]) -> np.ndarray:
    """Labels as class indices: integers as they are, or each label's position in ``classes``."""
    import pyarrow as pa

    column = table.column(label)
    if column.null_count:
        raise DataError(f"{path}: label column {label!r} has {column.null_count} missing value(s)")
    values = column.to_pylist()
    if classes is not None:
        position = {str(c): k for k, c in enumerate(classes)}
        out = np.empty(len(values), dtype=np.int64)
        for i, value in enumerate(values):
            key = str(value)
            if key not in position:
                raise DataError(f"{path}: record {ids[i]!r} has label {key!r}, not one of classes "
                                f"({', '.join(map(str, classes))})")
            out[i] = position[key]
        return out
    if not pa.types.is_integer(column.type):
        raise DataError(f"{path}: label column {label!r} holds {column.type}, not integer classes; list the labels "
                        "in class order as classes: [...] (they are not read from the private table: a rare class "
                        "would reveal its records)")
    return np.asarray(values, dtype=np.int64)


def record_ids(path: Path, table: pa.Table, column: str | None, n: int, *, check_form: bool = False
               ) -> tuple[str, ...]:
    """The ``column``'s values as text, or ``row-<i>`` (data row i, from 0) when no column is named.
    ``check_form`` (a source being registered): ids are integers or text without spaces around them, the forms a
    deletion request names exactly (a float column reads ``17`` as ``17.0`` and a gap as ``nan``)."""
    import pyarrow as pa

    if column is None:
        return tuple(f"row-{i}" for i in range(n))
    values = table.column(column)
    if check_form and not _exact_ids(values.type):
        raise DataError(f"{path}: record-id column {column!r} holds {values.type}, not integers or text (floats "
                        "read 17 as '17.0', which a deletion request for 17 would not find); write the ids as "
                        "integers or text (pandas stores an integer column with a missing value as floats)")
    ids = tuple("" if v is None else str(v) for v in values.to_pylist())
    blank = sum(not i.strip() for i in ids)
    if blank:
        raise DataError(f"{path}: record-id column {column!r} has {blank} missing or blank value(s)")
    spaced = [i for i in ids if i != i.strip()] if check_form else []
    if spaced:
        raise DataError(f"{path}: {len(spaced)} record id(s) in column {column!r} have spaces around them (e.g. "
                        f"{spaced[0]!r}); a deletion request names an id exactly, so remove the spaces in the file")
    if len(set(ids)) != len(ids):
        repeated = next(r for r, count in Counter(ids).items() if count > 1)
        raise DataError(f"{path}: record id {repeated!r} appears more than once in column {column!r}")
    return ids


def _exact_ids(kind: pa.DataType) -> bool:
    """Whether ids of this column type read as a request names them: integers, text, decimals without a fraction
    (a database's NUMERIC ids: ``17``) and categories of those (pandas' ``category``)."""
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        return _exact_ids(kind.value_type)
    return (pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)
            or pa.types.is_null(kind) or (pa.types.is_decimal(kind) and kind.scale == 0))


def written_columns(record_id: str | None, label: str | None = None, classes: Sequence[str] | None = None, *,
                    typed: bool = False) -> list[str]:
    """The columns a CSV's reader takes as written: the record ids, and the labels where ``classes`` names them;
    none if ``typed`` (as pyarrow types them: how a source registered before ids were read as written reads)."""
    if typed:
        return []
    return [*([record_id] if record_id else []), *([label] if label is not None and classes is not None else [])]


def table_records(path: Path, *, features: Sequence[str], label: str, record_id: str | None,
                  classes: Sequence[str] | None, scaling: Scaling, typed: bool = False,
                  check_form: bool = False) -> RecordSet:
    """Each row a record: its scaled features as float32 inputs, its label, its id (``typed``: see
    :func:`written_columns`; ``check_form``: :func:`record_ids`)."""
    table = read_table(path, [*features, label, *([record_id] if record_id else [])],
                       as_text=written_columns(record_id, label, classes, typed=typed))
    ids = record_ids(path, table, record_id, table.num_rows, check_form=check_form)
    x = scaling(feature_matrix(path, table, features, ids))
    y = label_indices(path, table, label, classes, ids)
    return RecordSet(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y), ids)


def table_inputs(path: Path, *, features: Sequence[str], record_id: str | None, scaling: Scaling,
                 typed: bool = False) -> tuple[torch.Tensor, tuple[str, ...]]:
    """The scaled feature rows of any table with the ``features`` columns (no label needed) and their
    ids (the ``record_id`` column where the table has it, else ``row-<i>``)."""
    table = read_table(path, features, optional=[record_id] if record_id else [],
                       as_text=written_columns(record_id, typed=typed))
    ids = record_ids(path, table, record_id if record_id in table.column_names else None, table.num_rows)
    x = scaling(feature_matrix(path, table, features, ids))
    return torch.as_tensor(x, dtype=torch.float32), ids


def public_scaling(path: Path, features: Sequence[str]) -> Scaling:
    """Standardisation with the mean and standard deviation of a *public* table's feature columns."""
    table = read_table(path, features)
    if table.num_rows < 2:
        raise DataError(f"{path}: a public table needs at least 2 rows to standardise with")
    x = feature_matrix(path, table, features, [f"row-{i}" for i in range(table.num_rows)])
    return Scaling.standardize(x.mean(axis=0), x.std(axis=0))
