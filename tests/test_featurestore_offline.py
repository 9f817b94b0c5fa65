"""The feature store's definitions (features.yaml) and its point-in-time join (issue #12, parts 1-2).

Bad definitions and bad spines get a FeatureStoreError that names the place and the field, what was
expected and what was found, and change nothing. The join is checked against an independent reference
in plain Python over seeded random events in a real DuckDB file (table, query, Parquet and CSV sources),
for leakage (events at or after a row's time never move its features), and for determinism. The CLI is
run as a user runs it on a built sample project.
"""
from __future__ import annotations

import csv
import json
import random
import shutil
import struct
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import duckdb
import numpy as np
import pytest
import yaml

from conftest import REPO, folder_bytes, run_cli
from mlops_nb.errors import FeatureStoreError
from mlops_nb.featurestore import definitions, offline, store

# --------------------------------------------------------------------------------------------------
# a small feature set over seeded random events, declared twice: as features.yaml and, independently,
# as the plain data the reference computes from

SNAPSHOT = "snap"
BASE = datetime(2024, 3, 1)
# view -> (entities, source, ttl in seconds, {feature: (aggregation, column, window in seconds)})
VIEWS = {
    "by_k": (["k"], "ev_table", 3600, {
        "n_2h": ("count", None, 7200), "sum_x_2h": ("sum", "x", 7200), "mean_x_30m": ("mean", "x", 1800),
        "mean_y_2h": ("mean", "y", 7200), "mean_z_2h": ("mean", "z", 7200)}),
    "by_k_c": (["k", "c"], "ev_query", 3600, {
        "n_kc_1h": ("count", None, 3600), "mean_x_kc_1h": ("mean", "x", 3600), "sum_y_kc_45m": ("sum", "y", 2700)}),
    "last_k": (["k"], "ev_parquet", 5400, {
        "last_x": ("last", "x", 0), "last_y": ("last", "y", 0), "last_z": ("last", "z", 0)}),
    "by_c": (["c"], "ev_csv", 1800, {"csv_sum_x_2h": ("sum", "x", 7200), "csv_last_x": ("last", "x", 0)}),
}
FEATURES = [f for _, _, _, fs in VIEWS.values() for f in fs]
# the query source leaves out the events whose z is 13
QUERY = "SELECT k, c, ts AS at, x, y, z FROM {snapshot}.events WHERE z IS NULL OR z <> 13"
SOURCE_FILTER = {"ev_query": lambda e: e["z"] != 13}
SOURCE_TS = {"ev_table": "ts", "ev_query": "at", "ev_parquet": "ts", "ev_csv": "ts"}


def duration(seconds: int) -> str:
    return f"{seconds // 3600}h" if seconds % 3600 == 0 else f"{seconds // 60}m"


def spec() -> dict:
    """features.yaml of VIEWS, as plain data."""
    return {
        "entities": {"k": {"description": "the key"}, "c": {"description": "the class"}},
        "sources": {
            "ev_table": {"table": "events", "timestamp": "ts"},
            "ev_query": {"query": QUERY, "timestamp": "at"},
            "ev_parquet": {"file": "events.parquet", "timestamp": "ts"},
            "ev_csv": {"file": "events.csv", "timestamp": "ts", "description": "the same events, as text"},
        },
        "views": {name: {"entities": ents, "source": source, "ttl": duration(ttl),
                         "features": {f: {"aggregation": agg, **({"column": col} if col else {}),
                                          **({"window": duration(w)} if w else {})}
                                      for f, (agg, col, w) in feats.items()}}
                  for name, (ents, source, ttl, feats) in VIEWS.items()},
    }


def make_events(seed: int, n: int = 400) -> list[dict]:
    """Events over 12 hours: half on a 5-minute grid (ties), values with fractional parts, some NULLs."""
    rng = random.Random(seed)
    events = []
    for _ in range(n):
        if rng.random() < 0.5:
            ts = BASE + timedelta(minutes=5 * rng.randrange(144))
        else:
            ts = BASE + timedelta(seconds=rng.randrange(12 * 3600))
        events.append({
            "k": rng.choice("ABC") if rng.random() > 0.05 else None,
            "c": rng.choice("xy") if rng.random() > 0.05 else None,
            "ts": ts if rng.random() > 0.03 else None,
            "x": rng.gauss(10, 30) if rng.random() > 0.1 else None,
            "y": rng.random() * 1000 if rng.random() > 0.15 else None,
            "z": rng.randrange(-5, 60) if rng.random() > 0.1 else None,
        })
    for _ in range(20):  # three events of one key at one time: their mean is no longer a halving
        k, c, ts = rng.choice("ABC"), rng.choice("xy"), BASE + timedelta(seconds=rng.randrange(12 * 3600))
        events += [{"k": k, "c": c, "ts": ts, "x": rng.gauss(10, 30), "y": rng.random() * 1000,
                    "z": rng.randrange(60)} for _ in range(3)]
    return events


def make_spine(events: list[dict], seed: int) -> list[dict]:
    """Spine rows in no particular order: random times, times exactly at an event, and exactly a window
    or a ttl (or a second either side) after one; keys known, unknown ('Z', 'w') and NULL."""
    rng = random.Random(seed)
    timed = [e for e in events if e["ts"] is not None]
    rows = []
    for i in range(150):
        kind = i % 3
        if kind == 0:
            t = BASE + timedelta(seconds=rng.randrange(-3600, 14 * 3600))
            k, c = rng.choice(["A", "B", "C", "Z", None]), rng.choice(["x", "y", "w", None])
        else:
            e = rng.choice(timed)
            shift = 0 if kind == 1 else rng.choice([1800, 2700, 3600, 5400, 7200]) + rng.choice([-1, 0, 0, 1])
            t = e["ts"] + timedelta(seconds=shift)
            k = e["k"] if rng.random() < 0.85 else rng.choice(["A", "Z", None])
            c = e["c"] if rng.random() < 0.85 else rng.choice(["y", "w", None])
        rows.append({"id": i, "note": f"row {i}", "k": k, "c": c, "event_timestamp": t})
    rng.shuffle(rows)
    return rows


# --------------------------------------------------------------------------------------------------
# the reference: plain Python over the events, following offline.py's documented semantics


def nanos(value) -> int:
    """A number taken to 9 decimal places (offline.py: sums are DECIMAL(38, 9)), in units of 1e-9."""
    return int(Decimal(value).quantize(Decimal("1e-9"), rounding=ROUND_HALF_EVEN).scaleb(9))


def mean_of(total_nanos: int, n: int) -> float:
    """The exact sum as a double, over the count: what a mean is, windowed or of events at one time."""
    return (total_nanos / 10**9) / n


def reference(events: list[dict], row: dict) -> dict:
    """feature -> value of one spine row, as of its time: events of its key strictly before it."""
    out = {}
    t = row["event_timestamp"]
    for ents, source, ttl, feats in VIEWS.values():
        keep = SOURCE_FILTER.get(source, lambda e: True)
        if any(row[e] is None for e in ents):
            out.update(dict.fromkeys(feats))
            continue
        mine = [e for e in events if e["ts"] is not None and keep(e) and all(e[n] == row[n] for n in ents)]
        before = [e for e in mine if e["ts"] < t]
        for name, (agg, col, window) in feats.items():
            if agg == "last":
                newest = max((e["ts"] for e in before), default=None)
                values = [nanos(e[col]) for e in before if e["ts"] == newest and e[col] is not None]
                fresh = newest is not None and (t - newest).total_seconds() <= ttl
                out[name] = mean_of(sum(values), len(values)) if fresh and values else None
                continue
            inside = [e for e in before if e["ts"] >= t - timedelta(seconds=window)]
            if agg == "count":
                out[name] = float(len(inside))
                continue
            values = [nanos(e[col]) for e in inside if e[col] is not None]
            if agg == "sum":
                out[name] = sum(values) / 10**9
            else:
                out[name] = mean_of(sum(values), len(values)) if values else None
    return out


# --------------------------------------------------------------------------------------------------
# the same events in a DuckDB file and in files


def write_sources(con, folder: Path, schema: str, events: list[dict]) -> None:
    """The events as table ``schema``.events of ``con`` and as folder/events.parquet and events.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    con.execute(f"CREATE OR REPLACE TABLE {schema}.events (k VARCHAR, c VARCHAR, ts TIMESTAMP, x DOUBLE, "
                "y DOUBLE, z INTEGER)")
    rows = [(e["k"], e["c"], e["ts"], e["x"], e["y"], e["z"]) for e in events]
    if rows:
        con.executemany(f"INSERT INTO {schema}.events VALUES (?, ?, ?, ?, ?, ?)", rows)
    con.execute(f"COPY {schema}.events TO '{folder / 'events.parquet'}' (FORMAT parquet)")
    with open(folder / "events.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["k", "c", "ts", "x", "y", "z"])
        for e in events:  # repr: every double as the shortest text that reads back to it
            w.writerow(["" if e[n] is None else repr(e[n]) if n in ("x", "y") else
                        e[n].isoformat(sep=" ") if n == "ts" else e[n] for n in ("k", "c", "ts", "x", "y", "z")])


def write_spine(con, rows: list[dict], table: str = "spine") -> None:
    con.execute(f"CREATE OR REPLACE TABLE {table} (id INTEGER, note VARCHAR, k VARCHAR, c VARCHAR, "
                "event_timestamp TIMESTAMP)")
    con.executemany(f"INSERT INTO {table} VALUES (?, ?, ?, ?, ?)",
                    [(r["id"], r["note"], r["k"], r["c"], r["event_timestamp"]) for r in rows])


def join(con, defs, schema: str, folder: Path, table: str = "spine") -> list[tuple]:
    return offline.historical(con, defs, table, snapshot=schema, root=folder).fetchall()


def bits(values) -> tuple:
    """Each value's exact bits (None kept apart from any double)."""
    return tuple(None if v is None else struct.pack("<d", v) for v in values)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A DuckDB file with the events (schema snap) and a spine; the Parquet and CSV copies in its folder."""
    folder = tmp_path_factory.mktemp("fs-world")
    events = make_events(seed=12)
    spine = make_spine(events, seed=13)
    (folder / "features.yaml").write_text(yaml.safe_dump(spec(), sort_keys=False), encoding="utf-8")
    defs = definitions.load(folder / "features.yaml")
    con = duckdb.connect(str(folder / "events.duckdb"))
    write_sources(con, folder, SNAPSHOT, events)
    write_spine(con, spine)
    yield {"folder": folder, "events": events, "spine": spine, "defs": defs, "con": con}
    con.close()


# --------------------------------------------------------------------------------------------------
# 1. definitions


def test_reference_definitions_load():
    defs = definitions.load(REPO / "features.yaml")
    raw = yaml.safe_load((REPO / "features.yaml").read_text(encoding="utf-8"))
    assert list(defs.entities) == ["origin", "carrier"]
    assert {n: s.kind for n, s in defs.sources.items()} == {"departures": "query", "weather": "query"}
    assert defs.feature_names == [f for v in raw["views"].values() for f in v["features"]]
    assert defs.view_of("temp").name == "origin_weather" and defs.views["origin_weather"].ttl == 3 * 3600
    assert defs.views["carrier_origin_departures"].entities == ("carrier", "origin")
    assert [(f.aggregation, f.column, f.window) for f in defs.views["origin_departures"].features] == [
        ("mean", "dep_delay", 7200), ("count", "", 7200), ("mean", "late", 7200)]
    with pytest.raises(FeatureStoreError, match=r"No feature 'tmep'.*Did you mean 'temp'\?"):
        defs.view_of("tmep")


def mutated(change) -> dict:
    data = spec()
    change(data)
    return data


def _set(path_keys, value):
    def change(data):
        node = data
        for k in path_keys[:-1]:
            node = node[k]
        node[path_keys[-1]] = value
    return change


def _delete(*path_keys):
    def change(data):
        node = data
        for k in path_keys[:-1]:
            node = node[k]
        del node[path_keys[-1]]
    return change


BAD_DEFINITIONS = {
    "window_text": (_set(["views", "by_k", "features", "n_2h", "window"], "2 hours"),
                    ["view 'by_k', feature 'n_2h', window", "a duration such as 30m, 2h or 1d", "got '2 hours'"]),
    "unknown_aggregation": (_set(["views", "by_k", "features", "mean_x_30m", "aggregation"], "maen"),
                            ["view 'by_k', feature 'mean_x_30m', aggregation", "must be one of count, sum, mean, last",
                             "got 'maen' instead", "Did you mean 'mean'?"]),
    "mean_without_column": (_delete("views", "by_k", "features", "mean_x_30m", "column"),
                            ["view 'by_k', feature 'mean_x_30m'", "mean needs 'column'"]),
    "last_with_window": (_set(["views", "last_k", "features", "last_x", "window"], "1h"),
                         ["view 'last_k', feature 'last_x', window", "last takes no window", "ttl, 90m"]),
    "unknown_entity": (_set(["views", "by_k_c", "entities"], ["k", "cc"]),
                       ["view 'by_k_c', entities", "unknown entity 'cc'", "declared: k, c", "Did you mean 'c'?"]),
    "unknown_source": (_set(["views", "by_k", "source"], "ev_tabel"),
                       ["view 'by_k', source", "unknown source 'ev_tabel'", "declared: ev_table, ev_query",
                        "Did you mean 'ev_table'?"]),
    "duplicate_feature": (lambda d: d["views"]["by_c"]["features"].update(n_2h={"aggregation": "count",
                                                                                  "window": "1h"}),
                          ["view 'by_c', feature 'n_2h'", "already a feature of view 'by_k'", "unique"]),
    "feature_named_like_entity": (lambda d: d["views"]["by_k"]["features"].update(c={"aggregation": "count",
                                                                                      "window": "1h"}),
                                  ["view 'by_k', feature 'c'", "the name is an entity's"]),
    "push_without_columns": (_set(["sources", "pushed"], {"push": True, "timestamp": "at"}),
                             ["source 'pushed'", "a push source needs 'columns'", "number, text or timestamp"]),
    "push_unknown_type": (_set(["sources", "pushed"], {"push": True, "timestamp": "at",
                                                       "columns": {"at": "timestamp", "v": "numbr"}}),
                          ["source 'pushed', column 'v'", "must be one of number, text, timestamp",
                           "got 'numbr' instead", "Did you mean 'number'?"]),
    "table_and_query": (_set(["sources", "ev_table", "query"], "SELECT 1"),
                        ["source 'ev_table'", "needs exactly one of 'table', 'query', 'file' or 'push: true'",
                         "got 'table' and 'query'"]),
    "no_views": (_delete("views"), ["features.yaml", "needs 'views'"]),
    "no_entities": (_delete("entities"), ["features.yaml", "needs 'entities'"]),
    "no_sources": (_delete("sources"), ["features.yaml", "needs 'sources'"]),
    "unknown_view_key": (_set(["views", "by_k", "entites"], ["k"]),
                         ["view 'by_k'", "unknown key 'entites'", "Did you mean 'entities'?"]),
}


@pytest.mark.parametrize("case", list(BAD_DEFINITIONS))
def test_bad_definitions(case, tmp_path):
    change, parts = BAD_DEFINITIONS[case]
    path = tmp_path / "features.yaml"
    path.write_text(yaml.safe_dump(mutated(change), sort_keys=False), encoding="utf-8")
    before = folder_bytes(tmp_path)
    with pytest.raises(FeatureStoreError) as raised:
        definitions.load(path)
    message = str(raised.value)
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    assert "Traceback" not in message
    assert folder_bytes(tmp_path) == before  # nothing written, nothing lost


def test_invalid_yaml_and_missing_file(tmp_path):
    path = tmp_path / "features.yaml"
    path.write_text("views:\n  by_k: {entities: [k\n", encoding="utf-8")
    before = folder_bytes(tmp_path)
    with pytest.raises(FeatureStoreError, match=r"(?s)features\.yaml is not valid YAML: .*line"):
        definitions.load(path)
    assert folder_bytes(tmp_path) == before
    with pytest.raises(FeatureStoreError, match=r"No feature definitions at .*nowhere\.yaml"):
        definitions.load(tmp_path / "nowhere.yaml")
    with pytest.raises(FeatureStoreError, match=r"features\.yaml: must be a mapping; got list"):
        definitions.parse(["views"])


def test_digest_follows_meaning():
    """The digest changes with anything that changes a value, and not with how a duration is spelled."""
    digest = definitions.parse(spec()).digest
    assert definitions.parse(spec()).digest == digest
    assert definitions.parse(mutated(_set(["views", "by_k", "features", "n_2h", "window"], "120m"))).digest == digest
    assert definitions.parse(mutated(_set(["views", "by_k", "description"], "changed words"))).digest == digest
    value_changes = {
        "window": _set(["views", "by_k", "features", "n_2h", "window"], "3h"),
        "ttl": _set(["views", "last_k", "ttl"], "2h"),
        "aggregation": _set(["views", "by_k", "features", "sum_x_2h", "aggregation"], "mean"),
        "column": _set(["views", "by_k", "features", "sum_x_2h", "column"], "y"),
        "entities": _set(["views", "by_k_c", "entities"], ["c", "k"]),
        "view source": _set(["views", "by_k", "source"], "ev_parquet"),
        "query": _set(["sources", "ev_query", "query"], QUERY.replace("13", "14")),
        "file": _set(["sources", "ev_parquet", "file"], "other.parquet"),
        "timestamp": _set(["sources", "ev_table", "timestamp"], "at"),
        "new feature": lambda d: d["views"]["by_k"]["features"].update(n_1h={"aggregation": "count", "window": "1h"}),
    }
    digests = {name: definitions.parse(mutated(change)).digest for name, change in value_changes.items()}
    assert digest not in digests.values(), digests
    assert len(set(digests.values())) == len(digests)


# --------------------------------------------------------------------------------------------------
# 2. the join against the reference


def test_join_matches_reference(world):
    con, defs, spine = world["con"], world["defs"], world["spine"]
    relation = offline.historical(con, defs, "spine", snapshot=SNAPSHOT, root=world["folder"])
    assert relation.columns == ["id", "note", "k", "c", "event_timestamp"] + FEATURES
    assert defs.feature_names == FEATURES
    got = relation.fetchall()
    assert [r[0] for r in got] == [r["id"] for r in spine]  # the spine's order
    assert [r[1:5] for r in got] == [(r["note"], r["k"], r["c"], r["event_timestamp"]) for r in spine]
    mismatches = []
    for row, out in zip(spine, got):
        want = reference(world["events"], row)
        for name, value in zip(FEATURES, out[5:]):
            if bits([value]) != bits([want[name]]):
                mismatches.append((row["id"], row["k"], row["c"], str(row["event_timestamp"]), name, value,
                                   want[name]))
    assert not mismatches, f"{len(mismatches)} values differ, e.g. {mismatches[:5]}"
    # the data exercised what it should: ties, NULLs, empty windows, stale and fresh last values
    values = {name: [o[5 + i] for o in got] for i, name in enumerate(FEATURES)}
    assert sum(v is None for v in values["n_2h"]) >= 10 and 0.0 in values["n_2h"]
    assert sum(v is not None and v > 0 for v in values["n_kc_1h"]) >= 30
    assert sum(v is None for v in values["last_x"]) >= 20 and sum(v is not None for v in values["last_x"]) >= 50
    assert any(v is not None and v != round(v, 6) for v in values["sum_x_2h"])
    timed = [e for e in world["events"] if e["ts"] is not None and e["k"]]
    ties = {(e["k"], e["ts"]) for e in timed if sum((f["k"], f["ts"]) == (e["k"], e["ts"]) for f in timed) > 1}
    assert len(ties) >= 20


def test_last_of_events_at_one_time_is_their_mean(tmp_path):
    """Keys with one or three events at one time, asked 30 s later: last is the mean the window gives over
    the same events, to the bit (DuckDB's avg would differ in the last bit for about one in four)."""
    rng = random.Random(3)
    events, asked = [], []
    for g in range(300):
        t = BASE + timedelta(minutes=g)
        events += [{"k": f"K{g}", "c": "x", "ts": t, "x": rng.gauss(10, 30), "y": rng.random() * 1000, "z": 1}
                   for _ in range(1 + 2 * (g % 2))]
        asked.append({"id": g, "note": "", "k": f"K{g}", "c": "x", "event_timestamp": t + timedelta(seconds=30)})
    con = duckdb.connect(str(tmp_path / "t.duckdb"))
    try:
        write_sources(con, tmp_path, SNAPSHOT, events)
        write_spine(con, asked)
        got = [dict(zip(FEATURES, r[5:])) for r in join(con, definitions.parse(spec()), SNAPSHOT, tmp_path)]
    finally:
        con.close()
    for row, out in zip(asked, got):
        assert bits([out["last_x"], out["csv_last_x"]]) == bits([out["mean_x_30m"]] * 2), (row, out)
        assert bits([out["last_x"]]) == bits([reference(events, row)["last_x"]])


# --------------------------------------------------------------------------------------------------
# 3. no leakage: what happens at or after a row's time never moves its features


def test_no_leakage(world, tmp_path):
    con, defs, events, spine = world["con"], world["defs"], world["events"], world["spine"]
    base = join(con, defs, SNAPSHOT, world["folder"])
    rng = random.Random(5)
    sample = rng.sample(range(len(spine)), 12)
    checked, moved = 0, 0
    for n, i in enumerate(sample):
        t = spine[i]["event_timestamp"]
        kept = [e for e in events if e["ts"] is None or e["ts"] < t]
        later = [e for e in events if e["ts"] is not None and e["ts"] >= t]
        changed = kept + [dict(e, x=rng.gauss(500, 100), y=None if e["y"] is not None else 7.25,
                               z=rng.randrange(100)) for e in later]
        # and new events exactly at the row's time, with the row's keys
        changed += [{"k": spine[i]["k"] or "A", "c": spine[i]["c"] or "x", "ts": t, "x": 1e6, "y": 1e6, "z": 99}
                    for _ in range(3)]
        for variant, data in (("changed", changed), ("deleted", kept)):
            schema = f"leak_{n}_{variant}"
            write_sources(con, tmp_path / schema, schema, data)
            got = join(con, defs, schema, tmp_path / schema)
            assert got[i][0] == spine[i]["id"]
            assert bits(got[i][5:]) == bits(base[i][5:]), (variant, spine[i], got[i], base[i])
            as_array = np.array([np.nan if v is None else v for v in got[i][5:]], dtype=np.float64)
            assert np.array_equal(as_array, np.array([np.nan if v is None else v for v in base[i][5:]]),
                                  equal_nan=True)
            checked += 1
            moved += sum(bits(g[5:]) != bits(b[5:]) for g, b in zip(got, base))
    assert checked == 24
    assert moved > 100  # the changes reached the join: later rows moved


def test_events_at_the_time_asked_do_not_count(tmp_path):
    """One key, an event at 10:00 and one at 11:00: asked at 11:00 exactly, only the first counts."""
    con = duckdb.connect(str(tmp_path / "t.duckdb"))
    try:
        events = [{"k": "A", "c": "x", "ts": BASE + timedelta(hours=10), "x": 1.5, "y": 2.0, "z": 1},
                  {"k": "A", "c": "x", "ts": BASE + timedelta(hours=11), "x": 100.25, "y": 3.0, "z": 2}]
        write_sources(con, tmp_path, SNAPSHOT, events)
        asked = [{"id": 0, "note": "", "k": "A", "c": "x", "event_timestamp": BASE + timedelta(hours=11)},
                 {"id": 1, "note": "", "k": "A", "c": "x", "event_timestamp": BASE + timedelta(hours=11, seconds=1)}]
        write_spine(con, asked)
        defs = definitions.parse(spec())
        at, after = (dict(zip(FEATURES, r[5:])) for r in join(con, defs, SNAPSHOT, tmp_path))
        assert (at["n_2h"], at["sum_x_2h"], at["last_x"], at["mean_x_30m"]) == (1.0, 1.5, 1.5, None)
        assert (after["n_2h"], after["sum_x_2h"], after["last_x"], after["mean_x_30m"]) == (2.0, 101.75, 100.25,
                                                                                          100.25)
    finally:
        con.close()


# --------------------------------------------------------------------------------------------------
# 4. determinism


def test_join_is_deterministic_across_runs_and_threads(tmp_path):
    """Large enough for DuckDB to split the work (200,000 events, 150,000 spine rows): the same bytes twice,
    and with 1 thread as with 2."""
    con = duckdb.connect(str(tmp_path / "big.duckdb"))
    try:
        con.execute(f"CREATE SCHEMA {SNAPSHOT}")
        con.execute(f"""CREATE TABLE {SNAPSHOT}.events AS SELECT
            CASE WHEN hash(i, 1) % 97 = 0 THEN NULL ELSE chr(65 + (hash(i, 2) % 20)::INTEGER) END AS k,
            chr(120 + (hash(i, 3) % 2)::INTEGER) AS c,
            TIMESTAMP '2024-03-01' + to_seconds((hash(i, 4) % (30 * 86400))::BIGINT) AS ts,
            CASE WHEN hash(i, 5) % 11 = 0 THEN NULL ELSE (hash(i, 6) % 2000003)::DOUBLE / 7 - 100000 END AS x,
            (hash(i, 7) % 1000003)::DOUBLE / 3 AS y, (hash(i, 8) % 50)::INTEGER AS z
            FROM range(200000) AS r(i)""")
        con.execute(f"COPY {SNAPSHOT}.events TO '{tmp_path / 'events.parquet'}' (FORMAT parquet)")
        con.execute(f"COPY {SNAPSHOT}.events TO '{tmp_path / 'events.csv'}' (HEADER)")
        con.execute("""CREATE TABLE spine AS SELECT i AS id, 'n' AS note,
            chr(65 + (hash(i, 9) % 21)::INTEGER) AS k, chr(120 + (hash(i, 10) % 3)::INTEGER) AS c,
            TIMESTAMP '2024-03-01' + to_seconds((hash(i, 11) % (31 * 86400))::BIGINT) AS event_timestamp
            FROM range(150000) AS r(i)""")
        defs = definitions.parse(spec())

        def frame_bytes(threads: int) -> list[bytes]:
            con.execute(f"SET threads = {threads}")
            frame = offline.historical(con, defs, "spine", snapshot=SNAPSHOT, root=tmp_path).df()
            assert list(frame.columns[5:]) == FEATURES and len(frame) == 150000
            assert frame["id"].tolist() == list(range(150000))
            return [frame[c].to_numpy(dtype=np.float64).tobytes() for c in FEATURES]

        two = frame_bytes(2)
        assert frame_bytes(2) == two
        assert frame_bytes(1) == two
        assert any(np.frombuffer(b)[~np.isnan(np.frombuffer(b))].size for b in two)
    finally:
        con.close()


# --------------------------------------------------------------------------------------------------
# 5. bad spines and a view naming a missing column


def _spine_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


BAD_SPINES = {
    "no_timestamp": (["k", "c", "event_timestmp"], [["A", "x", "2024-03-01 10:00:00"]], {},
                     ["no 'event_timestamp' column", "its columns are k, c, event_timestmp",
                      "Did you mean 'event_timestmp'?", "--timestamp-column"]),
    "other_timestamp_name": (["k", "c", "at"], [["A", "x", "2024-03-01 10:00:00"]], {"timestamp": "when"},
                             ["no 'when' column", "--timestamp-column"]),
    "no_entity": (["k", "event_timestamp"], [["A", "2024-03-01 10:00:00"]], {},
                  ["no 'c' column", "view 'by_k_c'", "its columns are k, event_timestamp"]),
    "feature_clash": (["k", "c", "event_timestamp", "n_2h"], [["A", "x", "2024-03-01 10:00:00", "1"]], {},
                      ["already has columns named as features: n_2h", "Rename or drop"]),
    "null_timestamp": (["k", "c", "event_timestamp"], [["A", "x", "2024-03-01 10:00:00"], ["B", "y", ""]], {},
                       ["'event_timestamp' column must hold a time on every row", "1 row(s) have none"]),
    "text_timestamp": (["k", "c", "event_timestamp"],
                       [["A", "x", "2024-03-01 10:00:00"], ["B", "y", "yesterday"], ["C", "x", ""]], {},
                       ["must hold a time on every row", "1 row(s) have none and 1 are not times",
                        "(e.g. 'yesterday')"]),
}


@pytest.mark.parametrize("case", list(BAD_SPINES))
def test_bad_spine(case, world, tmp_path):
    header, rows, kwargs, parts = BAD_SPINES[case]
    path = _spine_csv(tmp_path / "spine.csv", header, rows)
    before = folder_bytes(tmp_path)
    con = duckdb.connect()
    try:
        store.read_spine(con, path)
        with pytest.raises(FeatureStoreError) as raised:
            offline.historical(con, world["defs"], store.SPINE_TABLE, kwargs.get("timestamp", "event_timestamp"),
                               snapshot=SNAPSHOT, root=world["folder"])
    finally:
        con.close()
    message = str(raised.value)
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    assert folder_bytes(tmp_path) == before


def test_spine_file_kinds(tmp_path):
    con = duckdb.connect()
    try:
        (tmp_path / "spine.json").write_text('[{"k": "A"}]', encoding="utf-8")
        with pytest.raises(FeatureStoreError, match=r"must be a CSV \(\.csv, \.csv\.gz\) or Parquet \(\.parquet\) "
                                                    r"file; got spine\.json"):
            store.read_spine(con, tmp_path / "spine.json")
        with pytest.raises(FeatureStoreError, match=r"The spine .*missing\.csv does not exist: give a CSV or Parquet"):
            store.read_spine(con, tmp_path / "missing.csv")
        (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
        with pytest.raises(FeatureStoreError, match=r"Could not read the spine .*broken\.parquet: "):
            store.read_spine(con, tmp_path / "broken.parquet")
        # a Parquet spine keeps its file order
        con.execute(f"COPY (SELECT * FROM (VALUES (3, 'A'), (1, 'B'), (2, 'C')) AS t(id, k)) "
                    f"TO '{tmp_path / 'ok.parquet'}' (FORMAT parquet)")
        store.read_spine(con, tmp_path / "ok.parquet")
        assert con.execute(f"SELECT id FROM {store.SPINE_TABLE} ORDER BY rowid").fetchall() == [(3,), (1,), (2,)]
    finally:
        con.close()


def test_view_naming_a_missing_column(world):
    data = mutated(_set(["views", "by_k", "features", "mean_x_30m", "column"], "xx"))
    defs = definitions.parse(data)
    with pytest.raises(FeatureStoreError) as raised:
        offline.historical(world["con"], defs, "spine", snapshot=SNAPSHOT, root=world["folder"])
    message = str(raised.value)
    for part in ["view 'by_k' (source 'ev_table')", "feature 'mean_x_30m' column 'xx' is not in the source",
                 "its columns are k, c, ts, x, y, z", "Did you mean 'x'?"]:
        assert part in message, message
    data = mutated(_set(["sources", "ev_csv", "timestamp"], "tss"))
    with pytest.raises(FeatureStoreError, match=r"view 'by_c' \(source 'ev_csv'\): the timestamp column 'tss' is not "
                                                r"in the source.*Did you mean 'ts'\?"):
        offline.historical(world["con"], definitions.parse(data), "spine", snapshot=SNAPSHOT, root=world["folder"])
    data = mutated(_set(["sources", "ev_parquet", "file"], "gone.parquet"))
    with pytest.raises(FeatureStoreError, match=r"Source 'ev_parquet': the file .*gone\.parquet does not exist"):
        offline.historical(world["con"], definitions.parse(data), "spine", snapshot=SNAPSHOT, root=world["folder"])
    with pytest.raises(FeatureStoreError, match=r"Source 'ev_(table|query)' reads the data snapshot, and there is "
                                                r"none: run `mlops-nb run`"):
        offline.historical(world["con"], world["defs"], "spine", snapshot=None, root=world["folder"])


# --------------------------------------------------------------------------------------------------
# 6. the CLI on a built sample project


@pytest.mark.slow
def test_cli_historical(project, tmp_path):
    shutil.copy(REPO / "features.yaml", project / "features.yaml")
    names = [f for v in yaml.safe_load((REPO / "features.yaml").read_text(encoding="utf-8"))["views"].values()
             for f in v["features"]]
    rng = random.Random(7)
    rows = []
    for i in range(60):
        t = datetime(2013, rng.choice([1, 2, 3]), rng.randrange(1, 28), rng.randrange(5, 23), rng.choice([0, 15, 30]))
        rows.append([rng.choice(["EWR", "JFK", "LGA", "XXX", ""]), rng.choice(["UA", "B6", "AA", "DL", ""]),
                     t.isoformat(sep=" "), i])
    spine = _spine_csv(project / "spine.csv", ["origin", "carrier", "event_timestamp", "flight"], rows)

    result = run_cli(project, "features", "historical", "spine.csv", "--out", "out/x.parquet")
    assert result.returncode == 0, str(result)
    assert f"60 rows with {len(names)} features" in result.stdout and "x.parquet" in result.stdout, str(result)
    out = project / "out" / "x.parquet"
    reader = duckdb.connect()
    try:
        written = reader.sql(f"SELECT * FROM read_parquet('{out}')")
        assert written.columns == ["origin", "carrier", "event_timestamp", "flight"] + names
        got = written.fetchall()
    finally:
        reader.close()
    assert [r[3] for r in got] == list(range(60))  # the spine's order

    # the same join called directly, on the warehouse the run built
    snapshot = json.loads((project / "data" / "products" / "ingest.json").read_text())["schema_name"]
    con = duckdb.connect(str(project / "data" / "warehouse.duckdb"), read_only=True)
    try:
        store.read_spine(con, spine)
        direct = offline.historical(con, definitions.load(project / "features.yaml"), store.SPINE_TABLE,
                                    snapshot=snapshot, root=project).fetchall()
    finally:
        con.close()
    assert [r[:4] for r in got] == [r[:4] for r in direct]
    assert [bits(r[4:]) for r in got] == [bits(r[4:]) for r in direct]
    present = [r for r in got if r[0] in ("EWR", "JFK", "LGA")]
    assert any(r[4 + names.index("temp")] is not None for r in present)
    assert any(r[4 + names.index("origin_departures_2h")] for r in present)
    assert all(v is None for r in got if r[0] is None for v in r[4:])

    # without --out: CSV on stdout, the same values
    result = run_cli(project, "features", "historical", "spine.csv")
    assert result.returncode == 0, str(result)
    lines = list(csv.reader(result.stdout.splitlines()))
    assert lines[0] == ["origin", "carrier", "event_timestamp", "flight"] + names
    assert len(lines) == 61
    for line, row in zip(lines[1:], direct):
        assert int(line[3]) == row[3]
        assert [None if v == "" else float(v) for v in line[4:]] == list(row[4:])

    # a bad spine: exit 3, one plain line, the earlier output intact, no new or temporary file
    bad = _spine_csv(project / "bad.csv", ["origin", "carrier", "when"], [["EWR", "UA", "2013-01-02 10:00:00"]])
    before = folder_bytes(project / "out")
    for target in ("out/x.parquet", "out/y.parquet"):
        result = run_cli(project, "features", "historical", bad.name, "--out", target)
        assert result.returncode == 3, str(result)
        assert result.stderr.startswith("error: The spine has no 'event_timestamp' column"), str(result)
        assert "--timestamp-column" in result.stderr and "Traceback" not in result.stderr, str(result)
        assert result.stdout == ""
        assert folder_bytes(project / "out") == before
    assert not list(project.rglob("*.tmp"))
