"""Text as records: CSV, JSONL or Parquet files with named text, label and record-id columns.

Each row is one record: its text, tokenized with the model's tokenizer (Hugging Face
``transformers``) to exactly ``max_length`` token ids (truncated or padded with the tokenizer's pad
id, from which the model derives its attention mask), its label and its id. Text labels need their
``classes`` listed in class order: the set of labels read from the private file would reveal a
class that only a few records have (the same rule as for tables). Columns are read with pyarrow
(``.csv``/``.tsv``, ``.jsonl``/``.ndjson`` one JSON object per line, ``.parquet``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from ..errors import DataError
from .records import RecordSet
from .tables import SUFFIXES, label_indices, read_table, record_ids, select_columns, written_columns

JSON_SUFFIXES = (".jsonl", ".ndjson")
#: Texts tokenized per call (bounds the tokenizer's temporary memory).
TOKENIZE_CHUNK = 1024


def read_text_table(path: Path, columns: Sequence[str], optional: Sequence[str] = (),  # noqa: ANN201 -- pa.Table
                    as_text: Sequence[str] = ()):
    """The ``columns`` (and those of ``optional`` it has) of a CSV, JSONL or Parquet file; an empty,
    unreadable or incomplete file is a one-line :class:`DataError`. A CSV's ``as_text`` columns are read as
    written (:func:`~dp_tangent.data.tables.read_table`): its text column among them, so that a column of texts
    that all look like numbers (codes, ``007``) stays text."""
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes); give a file with a header row and one row per record")
    if path.suffix.lower() not in JSON_SUFFIXES:
        if path.suffix.lower() not in SUFFIXES:
            raise DataError(f"{path}: text data must be a .csv, .tsv, .jsonl or .parquet file")
        return read_table(path, columns, optional, as_text)
    import pyarrow as pa
    import pyarrow.json as pajson

    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        table = pajson.read_json(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: cannot read the JSON lines ({(str(err).strip().splitlines() or [''])[0]})") from None
    return select_columns(path, table, columns, optional, noun="field")


def text_column(path: Path, table, column: str, ids: Sequence[str]) -> list[str]:  # noqa: ANN001
    """The ``column``'s values: text only, none missing or blank."""
    import pyarrow as pa

    values = table.column(column)
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        raise DataError(f"{path}: text column {column!r} holds {values.type}, not text")
    texts = values.to_pylist()
    missing = [i for i, t in enumerate(texts) if t is None or not t.strip()]
    if missing:
        raise DataError(f"{path}: text column {column!r} has {len(missing)} empty or missing value(s) "
                        f"(first: record {ids[missing[0]]!r}); fill or drop them")
    return texts


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers logs expected notices at warning level; keep errors only while loading."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def load_tokenizer(source: str):  # noqa: ANN201 -- a transformers tokenizer
    """The tokenizer at ``source``: a model directory, or a Hugging Face model id available here."""
    from transformers import AutoTokenizer

    with _quiet_transformers():
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError, KeyError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise DataError(f"cannot load the tokenizer {source!r} ({first[:200]}); give a model directory or a "
                            "model id available offline") from None
    if tokenizer.pad_token_id is None:
        raise DataError(f"the tokenizer {source!r} has no pad token, which fixed-length inputs need")
    return tokenizer


def tokenize(tokenizer, texts: Sequence[str], max_length: int) -> torch.Tensor:  # noqa: ANN001
    """(len(texts), max_length) int64 token ids: special tokens added, truncated, padded with the pad id."""
    special = tokenizer.num_special_tokens_to_add()
    if max_length <= special:
        raise DataError(f"max_length {max_length} leaves no token for the text (the tokenizer adds {special} special "
                        f"token(s) to each); give at least {special + 1}")
    chunks = []
    for start in range(0, len(texts), TOKENIZE_CHUNK):
        encoded = tokenizer(list(texts[start:start + TOKENIZE_CHUNK]), padding="max_length", truncation=True,
                            max_length=max_length, return_tensors="pt")
        chunks.append(encoded["input_ids"].to(torch.int64))
    return torch.cat(chunks) if chunks else torch.zeros((0, max_length), dtype=torch.int64)


def tokenized_records(texts: Sequence[str], labels: Sequence[int], ids: Sequence[str], *, tokenizer: str,
                      max_length: int) -> RecordSet:
    """Records whose inputs are ``texts`` tokenized by ``tokenizer`` to ``max_length`` ids."""
    inputs = tokenize(load_tokenizer(tokenizer), texts, max_length)
    return RecordSet(inputs, torch.as_tensor(labels, dtype=torch.int64), tuple(ids))


def text_records(path: Path, *, text: str, label: str, record_id: str | None, classes: Sequence[str] | None,
                 tokenizer: str, max_length: int, typed: bool = False, check_form: bool = False) -> RecordSet:
    """Each row a record: its text as ``max_length`` token ids, its label (a class index), its id (``typed``:
    :func:`~dp_tangent.data.tables.written_columns`; ``check_form``: :func:`~dp_tangent.data.tables.record_ids`)."""
    table = read_text_table(path, [text, label, *([record_id] if record_id else [])],
                            as_text=[text, *written_columns(record_id, label, classes, typed=typed)])
    if table.num_rows == 0:
        raise DataError(f"{path}: no records (only a header); give one row per record")
    ids = record_ids(path, table, record_id, table.num_rows, check_form=check_form)
    texts = text_column(path, table, text, ids)
    y = label_indices(path, table, label, classes, ids)
    return tokenized_records(texts, y.tolist(), ids, tokenizer=tokenizer, max_length=max_length)


def text_inputs(path: Path, *, text: str, record_id: str | None, tokenizer: str,
                max_length: int, typed: bool = False) -> tuple[torch.Tensor, tuple[str, ...]]:
    """Token ids of every row of any file with the ``text`` column (no label needed, for prediction) and
    the rows' ids (the ``record_id`` column where the file has it, else ``row-<i>``)."""
    table = read_text_table(path, [text], optional=[record_id] if record_id else [],
                            as_text=[text, *written_columns(record_id, typed=typed)])
    ids = record_ids(path, table, record_id if record_id in table.column_names else None, table.num_rows)
    return tokenize(load_tokenizer(tokenizer), text_column(path, table, text, ids), max_length), ids
