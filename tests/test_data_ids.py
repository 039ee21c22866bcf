"""What a record's id and label depend on: its own content and the recipe, never which other records the private
data holds. Image-folder classes are listed in the recipe (not read from the folders present), and tables and
texts name a record-id column (ids by row position would renumber every later row when one is removed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from owndata import write_wine_csv

from dp_tangent.data.images import image_folder_records
from dp_tangent.data.kinds import ImageFolderData, ShardsSection, TableData
from dp_tangent.data.sources import parse_source
from dp_tangent.errors import DataError


def _images(root: Path, counts: dict[str, int]) -> None:
    from PIL import Image

    for label, n in counts.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (40 * i % 255, 10, 200)).save(root / label / f"{i}.png")


def _labels(records) -> dict[str, int]:  # noqa: ANN001
    return dict(zip(records.record_ids, records.targets.tolist()))


def test_removing_a_class_s_only_image_changes_no_other_label(tmp_path: Path) -> None:
    classes = ["a_common", "b_rare", "c_common"]
    _images(tmp_path / "with", {"a_common": 3, "b_rare": 1, "c_common": 3})
    _images(tmp_path / "without", {"a_common": 3, "c_common": 3})
    with_rare = _labels(image_folder_records(tmp_path / "with", 8, classes=classes))
    without = _labels(image_folder_records(tmp_path / "without", 8, classes=classes))
    assert with_rare.pop("b_rare/0.png") == 1
    assert with_rare == without and without["c_common/0.png"] == 2
    # the folders present decided the classes before: every c_common label moved from 2 to 1
    assert _labels(image_folder_records(tmp_path / "without", 8))["c_common/0.png"] == 1


def test_image_folder_classes_follow_the_recipe_order_and_an_unlisted_folder_is_refused(tmp_path: Path) -> None:
    _images(tmp_path / "imgs", {"cat": 2, "dog": 2})
    labels = _labels(image_folder_records(tmp_path / "imgs", 8, classes=["dog", "cat"]))
    assert labels["dog/0.png"] == 0 and labels["cat/0.png"] == 1
    with pytest.raises(DataError, match=r"imgs: folder\(s\) dog not in data.image_folder.classes"):
        image_folder_records(tmp_path / "imgs", 8, classes=["cat", "bird"])
    _images(tmp_path / "imgs" / ".ipynb_checkpoints", {"cat": 1})  # a hidden folder is no class, and not read
    assert _labels(image_folder_records(tmp_path / "imgs", 8, classes=["dog", "cat"])) == labels
    (tmp_path / "empty" / "bird").mkdir(parents=True)  # a listed class with a folder and no image, one without
    with pytest.raises(DataError, match="no image files in the class folders bird, fish"):
        image_folder_records(tmp_path / "empty", 8, classes=["bird", "fish"])


def test_a_recipe_must_list_image_classes_and_name_record_ids() -> None:
    with pytest.raises(ValueError, match="give classes: the class folders' names in class order"):
        ImageFolderData(root="imgs")
    with pytest.raises(ValueError, match="classes lists a folder twice"):
        ImageFolderData(root="imgs", classes=["cat", "cat"])
    with pytest.raises(ValueError, match="give record_id: the column of stable, unique record ids"):
        TableData(path="t.csv", features=["x"], label="y", scaling="none")


def test_a_source_registered_before_stays_readable_as_it_was(tmp_path: Path) -> None:
    """A workspace's registry written before classes and record ids were required reloads unchanged."""
    _images(tmp_path / "imgs", {"cat": 1, "dog": 1})
    source = parse_source({"loader": "image_folder", "data": {"root": str(tmp_path / "imgs"), "image_size": 8}})
    assert _labels(source.records()) == {"cat/0.png": 0, "dog/0.png": 1}
    names = write_wine_csv(tmp_path / "wine.csv")
    table = parse_source({"loader": "table", "data": {"path": str(tmp_path / "wine.csv"), "features": names[:2],
                                                      "label": "cultivar", "classes": ["class_0", "class_1",
                                                                                       "class_2"],
                                                      "scaling": "none"}})
    assert table.records().record_ids[:2] == ("row-0", "row-1")


def test_removing_a_table_row_moves_no_other_record(tmp_path: Path) -> None:
    names = write_wine_csv(tmp_path / "all.csv")
    write_wine_csv(tmp_path / "less.csv", rows=range(1, 178))
    placed = []
    for name in ("all.csv", "less.csv"):
        data = TableData(path=str(tmp_path / name), features=names, label="cultivar", record_id="wine_id",
                         classes=["class_0", "class_1", "class_2"], scaling="none", test_fraction=0.3)
        test, shards = data.load(ShardsSection(count=2))
        placed.append({r: where for where, part in [("test", test), *((f"s{k}", s) for k, s in enumerate(shards))]
                       for r in part.record_ids})
    removed = set(placed[0]) - set(placed[1])
    assert removed == {"wine-000"}
    assert all(placed[0][r] == where for r, where in placed[1].items())
    assert set(placed[1].values()) == {"test", "s0", "s1"}


def _csv(path: Path, ids: list[str], id_bytes: bytes | None = None) -> Path:
    rows = "".join(f"{i},{k % 5}.5,{'ab'[k % 2]}\n" for k, i in enumerate(ids))
    path.write_bytes(b"rid,x,y\n" + rows.encode() + (id_bytes or b""))
    return path


def _table(path: Path, **extra: object) -> TableData:
    return TableData(path=str(path), features=["x"], label="y", record_id="rid", classes=["a", "b"], scaling="none",
                     **extra)


def test_record_ids_are_read_as_written_so_one_added_row_moves_no_other(tmp_path: Path) -> None:
    """pyarrow typed a CSV's id column: ``00017`` became ``17`` (a deletion request quoting the file's id missed),
    and one added id ``new-1`` turned every id back into text, moving most records between shards and the test
    set. Ids are now read as written."""
    ids = [f"{i:05d}" for i in range(200)]
    placed = []
    for name, rows in (("all.csv", ids), ("more.csv", [*ids, "new-1"])):
        test, shards = _table(_csv(tmp_path / name, rows), test_fraction=0.3).load(ShardsSection(count=2))
        placed.append({r: where for where, part in [("test", test), *((f"s{k}", s) for k, s in enumerate(shards))]
                       for r in part.record_ids})
    assert set(placed[0]) == set(ids) and set(placed[1]) - set(placed[0]) == {"new-1"}
    assert all(placed[1][r] == where for r, where in placed[0].items())
    for odd in ("0.50", "2024-01-01T00:00:00", "98765432109876543210"):
        assert odd in _table(_csv(tmp_path / "odd.csv", ["a-1", odd])).records().record_ids


@pytest.mark.parametrize(("tail", "message"), [
    (b"\xff01,1.5,a\n", "cannot read the table"),
    (b",1.5,a\n", r"record-id column 'rid' has 1 missing or blank value\(s\)"),
])
def test_a_record_id_that_is_not_utf8_text_or_is_blank_is_refused(tmp_path: Path, tail: bytes, message: str) -> None:
    with pytest.raises(DataError, match=message):
        _table(_csv(tmp_path / "bad.csv", ["r-1"], tail)).records()


def test_a_public_table_that_is_the_private_one_or_shares_its_records_is_refused(tmp_path: Path) -> None:
    """Scaling and pretraining read the public table outside the privacy guarantee."""
    names = write_wine_csv(tmp_path / "private.csv", rows=range(40, 178))

    def data(public: str) -> TableData:
        return TableData(path=str(tmp_path / "private.csv"), features=names, label="cultivar", record_id="wine_id",
                         classes=["class_0", "class_1", "class_2"], scaling="public", public_path=public)

    with pytest.raises(DataError, match="is the private table itself"):
        data(str(tmp_path / "private.csv")).records()
    write_wine_csv(tmp_path / "leaky.csv", rows=range(30, 50))
    for leaky in (data(str(tmp_path / "leaky.csv")).records, data(str(tmp_path / "leaky.csv")).public_records):
        with pytest.raises(DataError, match="holds 10 record id"):
            leaky()
    write_wine_csv(tmp_path / "public.csv", rows=range(0, 40))
    assert len(data(str(tmp_path / "public.csv")).records()) == 138
    assert len(data(str(tmp_path / "public.csv")).public_records()) == 40
    lines = (tmp_path / "public.csv").read_text().splitlines()
    column = lines[0].split(",").index("wine_id")
    (tmp_path / "blank.csv").write_text("\n".join([lines[0], *(",".join("" if k == column else v for k, v in
                                                                         enumerate(line.split(",")))
                                                                for line in lines[1:])]) + "\n")
    assert len(data(str(tmp_path / "blank.csv")).records()) == 138  # blank public ids name no private record


def test_a_symbolic_link_in_an_image_folder_is_refused(tmp_path: Path) -> None:
    """ImageFolder follows links: a link to the folder above made a loop, the same images under many ids."""
    _images(tmp_path / "imgs", {"cat": 2, "dog": 1})
    assert len(image_folder_records(tmp_path / "imgs", 8, classes=["cat", "dog"])) == 3
    (tmp_path / "imgs" / "cat" / "loop").symlink_to("..")
    with pytest.raises(DataError, match="loop is a symbolic link"):
        image_folder_records(tmp_path / "imgs", 8, classes=["cat", "dog"])


def test_labels_named_by_classes_are_read_as_written(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("rid,x,y\na,1.0,01\nb,2.0,02\n")
    data = TableData(path=str(path), features=["x"], label="y", record_id="rid", classes=["01", "02"],
                     scaling="none")
    assert data.records().targets.tolist() == [0, 1]  # typed, the labels were 1 and 2: neither one of classes


def test_a_source_registered_before_ids_were_read_as_written_keeps_reading_them_typed(tmp_path: Path) -> None:
    """Its tombstones and manifests hold the typed ids: reading them as written would turn a deleted 17 into a
    record 00017 never deleted."""
    path = _csv(tmp_path / "t.csv", ["00017", "00018"])
    value = {"loader": "table", "data": {"path": str(path), "features": ["x"], "label": "y", "record_id": "rid",
                                         "classes": ["a", "b"], "scaling": "none"}}
    assert parse_source(value).records().record_ids == ("17", "18")
    value["data"]["record_ids_typed"] = False  # registered by this version
    assert parse_source(value).records().record_ids == ("00017", "00018")


def test_a_record_id_a_request_could_not_name_exactly_is_refused_at_registration(tmp_path: Path) -> None:
    """A float id column (pandas stores an integer column with a gap as floats) read 17 as ``17.0``, and a CSV id
    written ``a, 17`` read `` 17``: a deletion request for 17 found neither, and the record stayed in the model. A
    source being registered refuses both; one registered before reads as it was, so its requests are still served."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = tmp_path / "t.parquet"
    pq.write_table(pa.table({"rid": [17.0, float("nan")], "x": [0.5, 1.5], "y": ["a", "b"]}), parquet)
    with pytest.raises(DataError, match=r"record-id column 'rid' holds double, not integers or text \(floats read 17 "
                                        r"as '17.0'"):
        _table(parquet).records()
    pq.write_table(pa.table({"rid": pa.array([17, 18], pa.int32()), "x": [0.5, 1.5], "y": ["a", "b"]}), parquet)
    assert _table(parquet).records().record_ids == ("17", "18")
    import decimal  # review 50: a database's NUMERIC ids and pandas' category ids read exactly, and are kept

    for exact, ids in ((pa.array([decimal.Decimal(17), decimal.Decimal(18)], pa.decimal128(10, 0)), ("17", "18")),
                       (pa.array(["p-17", "p-18"]).dictionary_encode(), ("p-17", "p-18"))):
        pq.write_table(pa.table({"rid": exact, "x": [0.5, 1.5], "y": ["a", "b"]}), parquet)
        assert _table(parquet).records().record_ids == ids
    pq.write_table(pa.table({"rid": pa.array([decimal.Decimal("17.5"), decimal.Decimal(18)], pa.decimal128(10, 1)),
                             "x": [0.5, 1.5], "y": ["a", "b"]}), parquet)
    with pytest.raises(DataError, match=r"holds decimal128\(10, 1\), not integers or text"):
        _table(parquet).records()

    spaced = _csv(tmp_path / "spaced.csv", ["r-1", " r-2", "r-3 "])
    with pytest.raises(DataError, match=r"2 record id\(s\) in column 'rid' have spaces around them \(e.g. ' r-2'\)"):
        _table(spaced).records()
    registered = {"loader": "table", "data": {"path": str(spaced), "features": ["x"], "label": "y", "record_id": "rid",
                                              "classes": ["a", "b"], "scaling": "none", "record_ids_typed": False}}
    assert parse_source(registered).records().record_ids == ("r-1", " r-2", "r-3 ")


def test_a_text_source_refuses_float_ids_at_registration(tmp_path: Path) -> None:
    from dp_tangent.data.kinds import TextData

    path = tmp_path / "t.jsonl"
    path.write_text('{"id": 1.0, "text": "hello", "label": 0}\n{"id": 2.5, "text": "bye", "label": 1}\n')
    with pytest.raises(DataError, match=r"record-id column 'id' holds double, not integers or text"):
        TextData(path=str(path), record_id="id", tokenizer=str(tmp_path)).records()


def test_decimal_feature_columns_read_as_numbers(tmp_path: Path) -> None:
    """Parquet written from a database or with pandas' Decimal holds decimal128 features: numbers, once refused."""
    import decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    values = pa.array([decimal.Decimal("1.25"), decimal.Decimal("-3.50")], pa.decimal128(10, 2))
    pq.write_table(pa.table({"rid": ["r-1", "r-2"], "x": values, "y": ["a", "b"]}), path)
    assert _table(path).records().inputs.flatten().tolist() == [1.25, -3.5]
    pq.write_table(pa.table({"rid": ["r-1", "r-2"], "x": pa.array([decimal.Decimal("1.25"), None],
                                                                      pa.decimal128(10, 2)), "y": ["a", "b"]}), path)
    with pytest.raises(DataError, match=r"feature column 'x' has 1 missing or non-finite value\(s\) \(first: record "
                                        "'r-2'\\)"):
        _table(path).records()


def test_the_spellings_an_export_gives_an_id_are_related() -> None:
    """Review 52: zero-padding wider than 12 digits (account numbers) and negative ids written as floats were
    missed, so a deleted record came back under its other spelling."""
    from dp_tangent.workspace.id_spellings import canonical as _canonical, respellings as _respellings

    assert "0000000000000001" in _respellings("1") and "1" in _respellings("0000000000000001")
    assert "-17.0" in _respellings("-17") and "-17" in _respellings("-17.0") and "-007" in _respellings("-7")
    assert "17" in _respellings(" 17") and "17.0" in _respellings("00017")
    assert _canonical("00017") == _canonical("17.0") == _canonical(" 17 ") == "17" and _canonical("-017") == "-17"
    assert "ABC-1" not in _respellings("abc-1")  # case can tell ids apart (base62 ids)
    assert "0" in _respellings("-0") and "-0" in _respellings("0")  # review 54: -0 is 0
    # review 65: a sign, a spreadsheet's exponent form and full-width digits are the same integer
    assert "17" in _respellings("+17") and "+17" in _respellings("17") and "17" in _respellings("+0017")
    assert "+017" in _respellings("17") and "+0" in _respellings("0") and "0" in _respellings("+0")
    assert "17" in _respellings("1.7e1") and "-17" in _respellings("-1.70E+1") and "17" in _respellings("1.7e1 ")
    assert "100000" in _respellings("1E+05") and "0" in _respellings("0.0e+0")
    assert "17" in _respellings("\uff11\uff17") and "\uff11\uff17" in _respellings("17")
    assert _canonical("\uff11\uff0e\uff17\uff25\uff0b\uff11") == "17"  # 1.7E+1 in full width (review 67)
    assert _canonical("+17") == _canonical("1.7e1") == _canonical("\uff11\uff17") == "17"
    assert _canonical("17.") == _canonical("0017.00") == "17" and _canonical("17..") == "17.."  # review 68
    assert _canonical("1.75e1") == "1.75e1" and _canonical("1.0e400") == "1.0e400"  # not integers / too wide
    assert "17" not in _respellings("\u0661\u0667")  # Arabic-Indic digits are another script's id
    assert "17" not in _respellings("\u00b9\u2077") and "17" not in _respellings("\u2470")  # nor superscripts
    # review 66: hexadecimal ids are not exponent forms (0e0 and 0e1 were one id, 1e2 was 100)
    assert len({_canonical(f"{i:03x}") for i in range(4096)}) == 4096 and "100" not in _respellings("1e2")
    assert _canonical("1e999999999999999999") == "1e999999999999999999"  # review 66: Decimal overflowed
    assert _canonical("1.0E+999999999999999999") == "1.0E+999999999999999999"
    long = "1" * 20_000 + "x"  # review 66: the exponent pattern backtracked quadratically on long digit runs
    assert _canonical(long) == long and long not in _respellings("1" * 20_000)


def test_held_ids_find_another_spelling_both_ways_by_canonical_commitments(tmp_path: Path) -> None:
    """Review 67 #3: ``17.00`` relates to ``17`` (canonical) but is not among 17's listed respellings, so a held or
    deleted ``17.00`` was missed by a new ``17``. Canonical commitments find it both ways; ids held before they were
    kept (legacy) are found by the listed respellings only."""
    from dp_tangent.components.manifest import commit
    from dp_tangent.workspace.id_spellings import HeldIds, canonical_commitments, tagger
    from dp_tangent.workspace.tombstones import Tombstones

    key = b"k" * 32
    held = HeldIds(tagger(key))
    ids = ["17.00", "1.7E+1", "abc", " x-1"]
    held.add([commit(r, key) for r in ids[:2]], "in a", canonical_commitments(ids[:2], key))
    held.add([commit(r, key) for r in ids[2:]], "in b", canonical_commitments(ids[2:], key))
    assert held.other_spelling("17") == (None, "in a") and held.other_spelling("0017.0") == (None, "in a")
    assert held.other_spelling("x-1") == (" x-1", "in b") and held.find("abc") == ("abc", "in b")
    assert held.other_spelling("17.00") is None and held.other_spelling("abd") is None  # held as spelled; not held
    legacy = HeldIds(tagger(key))
    legacy.add([commit("17.00", key), commit("17", key)], "in c", None)
    assert legacy.other_spelling("0017") == ("17", "in c")  # listed: found
    legacy = HeldIds(tagger(key))
    legacy.add([commit("17.00", key)], "in c", None)
    assert legacy.other_spelling("17") is None  # the limit of ids held before canonical commitments were kept
    stones = Tombstones(tmp_path)
    stones.add([commit("old", key)], request_id="r1", deleted_at="then")  # tombstoned by an earlier version
    stones.add([commit("17.00", key)], request_id="r2", deleted_at="now",
               canonical=canonical_commitments(["17.00"], key, every=True))
    assert stones.canonical() == {commit("old", key): None, commit("17.00", key): commit("17", key)}
    assert set(stones.read()) == {commit("old", key), commit("17.00", key)}
    # review 68: a request an earlier version tombstoned, served again by this one, gains its canonical commitment
    assert stones.add([commit("old", key)], request_id="r1", deleted_at="later",
                      canonical=canonical_commitments(["old"], key, every=True)) == []
    assert stones.canonical()[commit("old", key)] == commit("old", key)
    assert stones.read()[commit("old", key)].deleted_at == "then"  # its first request's, kept
    assert stones.added([commit("old", key)], request_id="r1", deleted_at="later",
                        canonical=canonical_commitments(["old"], key, every=True)) == (None, [])  # nothing to write
