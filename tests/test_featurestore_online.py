"""The online feature store (issue #12, part 3; part 5a's skew proof): materialize, push, lookups.

On the reference year (the bundled flights and weather, ingested by a real `mlops-nb run --task ingest`),
the online value of every key after materializing to M equals the offline point-in-time join's value of
(key, M), bit for bit, for sampled times across the year (window and ttl boundaries among them), absent
keys included; the same against a real `redis-server`. Staleness, pushed events (all or nothing, out of
order refused), a reader process during repeated publishes, a materialize killed by SIGKILL mid-write, and
the commands as a user runs them.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, make_project, run_cli, run_ok
from mlops_nb import config
from mlops_nb.errors import FeatureStoreError
from mlops_nb.featurestore import offline, online, store

ABSENT = ("XXX", "ZZ")  # an origin and a carrier with no events at all


# --------------------------------------------------------------------------------------------------
# the reference year in a real warehouse, and the offline values to compare with


class Reference:
    def __init__(self, root: Path):
        self.root = root
        self.settings = config.load(root / "settings.ini")
        self.defs = store.load_definitions(self.settings)
        receipt = json.loads((root / "data" / "products" / "ingest.json").read_text())
        self.snapshot = receipt["schema_name"]
        with self.connect() as con:
            self.pairs = [tuple(r) for r in con.execute(
                f"SELECT DISTINCT origin, carrier FROM {self.snapshot}.flights ORDER BY 1, 2").fetchall()]
        self.pairs.append(ABSENT)

    def connect(self):
        from mlops_nb.data import warehouse

        return warehouse.connect(settings=self.settings)

    def offline(self, times: list[datetime], pairs=None) -> dict:
        """(M, origin, carrier) -> the offline join's feature values (NaN for NULL), one join for all."""
        import pandas as pd

        pairs = pairs or self.pairs
        spine = pd.DataFrame([(o, c, m) for m in times for o, c in pairs],
                             columns=["origin", "carrier", "event_timestamp"])
        with self.connect() as con:
            con.register("spine_frame", spine)
            con.execute("CREATE TEMP TABLE spine AS SELECT origin, carrier, CAST(event_timestamp AS TIMESTAMP) "
                        "AS event_timestamp FROM spine_frame")
            rows = offline.historical(con, self.defs, "spine", snapshot=self.snapshot).fetchall()
        names = self.defs.feature_names
        return {(r[2], r[0], r[1]): np.array([np.nan if x is None else x for x in r[3:3 + len(names)]], dtype=float)
                for r in rows}

    def online_values(self, reader, at: datetime, pairs=None) -> dict:
        out = {}
        for origin, carrier in pairs or self.pairs:
            values, as_of = reader.lookup({"origin": origin, "carrier": carrier}, at)
            assert set(as_of.values()) == {at}, as_of
            out[(at, origin, carrier)] = np.array([values[n] for n in self.defs.feature_names], dtype=float)
        return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Reference:
    """A sample project on the whole bundled year with the reference features.yaml, its data snapshot made
    by the pipeline's own ingest task."""
    root = make_project(tmp_path_factory.mktemp("fs-online") / "project", data__months="1-12")
    shutil.copy(REPO / "features.yaml", root / "features.yaml")
    run_ok(root, "run", "--quiet", "--task", "ingest")
    return Reference(root)


def bits(x: np.ndarray) -> bytes:
    """The bytes of the values, every NaN the same NaN (a missing value is missing either way)."""
    return np.where(np.isnan(x), np.nan, x).astype("<f8").tobytes()


def assert_same(online_values: dict, offline_values: dict, names) -> int:
    """Every online value equals the offline one bit for bit; the number of points compared."""
    assert online_values.keys() <= offline_values.keys()
    wrong = [(k, n, offline_values[k][i], online_values[k][i]) for k in online_values for i, n in enumerate(names)
             if bits(online_values[k][i:i + 1]) != bits(offline_values[k][i:i + 1])]
    assert not wrong, f"{len(wrong)} online values differ from offline, e.g. {wrong[:5]}"
    return len(online_values)


def sample_times(ref: Reference, n: int, seed: int) -> list[datetime]:
    """``n`` times across the year (to the second), plus window and ttl boundaries of real events: a
    departure's own time (it must not count), that time + 2 h and + 6 h (the windows' far edges, inside),
    an observation followed by a gap of more than 3 h, + 3 h (the weather ttl's edge: fresh) and + 3 h 1 s
    (stale)."""
    rng = random.Random(seed)
    start = datetime(2013, 1, 1)
    times = [start + timedelta(seconds=rng.randrange(365 * 86400)) for _ in range(n)]
    with ref.connect() as con:
        departures = offline.source_sql(ref.defs.sources["departures"], snapshot=ref.snapshot)
        weather = offline.source_sql(ref.defs.sources["weather"], snapshot=ref.snapshot)
        (t,), = con.execute(f"SELECT departed_at FROM {departures} WHERE origin = 'EWR' "
                            "AND departed_at > TIMESTAMP '2013-05-02 09:00' ORDER BY departed_at LIMIT 1").fetchall()
        (w,), = con.execute(f"SELECT observed_at FROM (SELECT observed_at, lead(observed_at) OVER (PARTITION BY "
                            f"origin ORDER BY observed_at) AS next FROM {weather}) WHERE next - observed_at > "
                            "INTERVAL 3 HOUR ORDER BY observed_at LIMIT 1").fetchall()
    times += [t, t + timedelta(hours=2), t + timedelta(hours=6), w + timedelta(hours=3),
              w + timedelta(hours=3, seconds=1)]
    return times


# --------------------------------------------------------------------------------------------------
# skew: online == offline, bit for bit


def test_online_equals_offline_bit_for_bit(reference):
    """Part 5a: for 150 times across the year (in random order: each materialize replaces the store whole,
    backwards too), every (origin, carrier) pair of the data and one without any event: the online lookup
    as of M is the offline join's row (key, M), bit for bit."""
    ref = reference
    times = sample_times(ref, 150, seed=5)
    expected = ref.offline(times)
    reader = online.open_store(ref.settings, ref.defs)
    points = 0
    served_keys = set()
    for m in times:
        done = online.materialize(ref.settings, ref.defs, m, snapshot=ref.snapshot)
        assert [d.view for d in done] == list(ref.defs.views) and all(d.as_of == m for d in done)
        served_keys.add(done[1].keys)
        reader.store.reload()
        points += assert_same(ref.online_values(reader, m), expected, ref.defs.feature_names)
    assert points == len(times) * len(ref.pairs) > 5000
    assert len(served_keys) > 5  # the carrier-origin view's active keys vary with the time
    # an absent key and a key with no value of an entity: what the join gives them
    values, _ = reader.lookup({"origin": ABSENT[0], "carrier": ABSENT[1]}, times[-1])
    assert values["origin_departures_2h"] == 0.0 and np.isnan(values["origin_dep_delay_2h"])
    assert np.isnan(values["temp"]) and np.isnan(values["carrier_origin_dep_delay_6h"])
    values, _ = reader.lookup({"origin": None}, times[-1])
    assert all(np.isnan(x) for x in values.values()) and "origin_departures_2h" in values


def test_staleness(reference):
    """A view's values serve until its ttl has passed since the time it was materialized to; later they are
    NaN (the view's as_of still says when)."""
    ref = reference
    m = datetime(2013, 7, 15, 17, 30)
    online.materialize(ref.settings, ref.defs, m, snapshot=ref.snapshot)
    reader = online.open_store(ref.settings, ref.defs)
    keys = {"origin": "LGA", "carrier": "DL"}
    fresh, as_of = reader.lookup(keys, m)
    assert as_of == {v: m for v in ref.defs.views}
    assert fresh["origin_departures_2h"] > 0 and not np.isnan(fresh["temp"])
    # origin_departures: ttl 1 h; origin_weather: ttl 3 h
    same, _ = reader.lookup(keys, m + timedelta(hours=1))
    assert same == fresh or all(bits(np.array([same[n]])) == bits(np.array([fresh[n]])) for n in fresh)
    later, as_of = reader.lookup(keys, m + timedelta(hours=1, seconds=1))
    assert as_of["origin_departures"] == m
    assert all(np.isnan(later[f.name]) for f in ref.defs.views["origin_departures"].features)
    assert all(np.isnan(later[f.name]) for f in ref.defs.views["carrier_origin_departures"].features)
    assert later["temp"] == fresh["temp"] and later["pressure"] == fresh["pressure"]
    gone, _ = reader.lookup(keys, m + timedelta(hours=3, seconds=1))
    assert all(np.isnan(x) for x in gone.values())


def test_cli_materialize_and_online(reference):
    """As a user runs them: materialize --until --json, then online KEY=VALUE --at --json reads the offline
    join's values; bad input exits with code 3 and a clear message, no traceback."""
    ref = reference
    m = datetime(2013, 3, 8, 8, 15)
    done = run_ok(ref.root, "features", "materialize", "--until", "2013-03-08T08:15", "--json").json()
    assert done["online"] == "embedded" and done["until"] == m.isoformat()
    assert [v["view"] for v in done["views"]] == list(ref.defs.views)
    assert all(v["keys"] > 0 and v["as_of"] == m.isoformat() for v in done["views"])
    text = run_ok(ref.root, "features", "materialize", "--until", "2013-03-08 08:15:00+00:00").stdout
    assert "origin_weather" in text and "2013-03-08 08:15:00" in text
    got = run_ok(ref.root, "features", "online", "origin=EWR", "carrier=UA", "--at", "2013-03-08T08:45",
                 "--json").json()
    assert set(got) == {"features", "as_of", "at"}
    assert got["as_of"] == {v: m.isoformat() for v in ref.defs.views}
    want = ref.offline([m], [("EWR", "UA")])[(m, "EWR", "UA")]
    assert list(got["features"]) == ref.defs.feature_names
    for name, x in zip(ref.defs.feature_names, want):
        assert (got["features"][name] is None) if np.isnan(x) else got["features"][name] == x, name
    only_origin = run_ok(ref.root, "features", "online", "origin=JFK", "--at", "2013-03-08T12:00", "--json").json()
    assert set(only_origin["as_of"]) == {"origin_departures", "origin_weather"}
    assert only_origin["features"]["origin_dep_delay_2h"] is None  # stale: 3 h 45 min after, ttl 1 h
    assert only_origin["features"]["temp"] is None  # stale too: ttl 3 h
    table = run_ok(ref.root, "features", "online", "origin=JFK", "--at", "2013-03-08T09:00").stdout
    assert "origin_dep_delay_2h" in table and "as of 2013-03-08 08:15:00" in table
    bad = {("features", "online", "orign=EWR"): ["Unknown entity 'orign'", "Did you mean 'origin'?"],
           ("features", "online", "EWR"): ["KEY=VALUE", "got 'EWR'"],
           ("features", "online", "carrier=UA"): ["No view is keyed by the entities given (carrier)",
                                                  "origin_departures: origin"],
           ("features", "online", "origin=EWR", "--at", "noon"): ["--at", "ISO 8601", "got 'noon'"],
           ("features", "materialize", "--until", "2013-13-01"): ["--until", "got '2013-13-01'"],
           ("features", "push", "events.csv"): ["No source of the feature definitions takes pushed events"]}
    for args, words in bad.items():
        result = run_cli(ref.root, *args)
        assert result.returncode == 3, str(result)
        assert all(w in result.stderr for w in words), str(result)
        assert "Traceback" not in result.stderr, str(result)


# --------------------------------------------------------------------------------------------------
# pushed events

PUSH_YAML = """\
entities:
  gate: {description: a boarding gate}
sources:
  boardings:
    description: boardings as they happen
    push: true
    timestamp: at
    columns: {gate: text, at: timestamp, wait: number}
views:
  gate_waits:
    entities: [gate]
    source: boardings
    ttl: 1h
    features:
      wait_mean_1h: {aggregation: mean, column: wait, window: 1h}
      boardings_1h: {aggregation: count, window: 1h}
      wait_last: {aggregation: last, column: wait}
"""


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def events_rows(root: Path) -> int:
    import duckdb

    path = root / "data" / "featurestore" / "events.duckdb"
    if not path.exists():
        return 0
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute("SELECT count(*) FROM boardings").fetchone()[0]
    finally:
        con.close()


def online_json(root: Path, *args) -> dict:
    return run_ok(root, "features", "online", *args, "--json").json()


def test_push_materialize_lookup(tmp_path):
    """A push source from the command line: pushed events are served after a materialize, equal to the
    offline join of the same events; a file with any bad row, the wrong columns, an untimed event or an
    event before the time materialized to is refused whole (exit 3, the row named), nothing written."""
    root = make_project(tmp_path / "pushing")
    write(root / "features.yaml", PUSH_YAML)
    write(root / "first.csv", """\
        gate,at,wait
        A1,2013-01-01 10:00,5
        B2,2013-01-01 10:30,7.5
        A1,2013-01-01 10:45,9
        """)
    before = online_json(root, "gate=A1", "--at", "2013-01-01T11:00")
    assert before["as_of"] == {"gate_waits": None} and set(before["features"].values()) == {None}
    out = run_ok(root, "features", "push", "first.csv").stdout
    assert "3 events pushed to source 'boardings'" in out
    run_ok(root, "features", "materialize", "--until", "2013-01-01T11:00")
    a1 = online_json(root, "gate=A1", "--at", "2013-01-01T11:00")
    assert a1["features"] == {"wait_mean_1h": 7.0, "boardings_1h": 2.0, "wait_last": 9.0}
    assert a1["as_of"] == {"gate_waits": "2013-01-01T11:00:00"}
    absent = online_json(root, "gate=C3", "--at", "2013-01-01T11:00")
    assert absent["features"] == {"wait_mean_1h": None, "boardings_1h": 0.0, "wait_last": None}
    write(root / "spine.csv", "gate,event_timestamp\nA1,2013-01-01 11:00\nB2,2013-01-01 11:00\nC3,2013-01-01 11:00\n")
    offline_csv = run_ok(root, "features", "historical", "spine.csv").stdout.splitlines()
    assert offline_csv[1:] == ["A1,2013-01-01 11:00:00,7.0,2.0,9.0", "B2,2013-01-01 11:00:00,7.5,1.0,7.5",
                               "C3,2013-01-01 11:00:00,,0.0,"]

    bad_files = {
        "types.csv": ("gate,at,wait\nA1,2013-01-01 11:05,4\nA1,2013-01-01 11:06,soon\n",
                      ["the column 'wait' must hold values of type number", "the first data row 2: 'soon'"]),
        "columns.csv": ("gate,at,wiat\nA1,2013-01-01 11:05,4\n",
                        ["must be exactly the declared ones (gate, at, wait)", "lacks wait", "Did you mean 'wait'?"]),
        "extra.csv": ("gate,at,wait,crew\nA1,2013-01-01 11:05,4,2\n", ["has crew besides"]),
        "untimed.csv": ("gate,at,wait\nA1,2013-01-01 11:05,4\nA1,,3\n",
                        ["every event needs its time in 'at'", "the first data row 2"]),
        "late.csv": ("gate,at,wait\nA1,2013-01-01 11:30,4\nB2,2013-01-01 10:59:59,3\n",
                     ["events out of order", "before 2013-01-01 11:00:00", "the first data row 2"]),
        "times.csv": ("gate,at,wait\nA1,tomorrow,4\n", ["the column 'at' must hold values of type timestamp"]),
    }
    for name, (text, words) in bad_files.items():
        write(root / name, text)
        result = run_cli(root, "features", "push", name)
        assert result.returncode == 3, str(result)
        assert all(w in result.stderr for w in words) and "nothing was pushed" in result.stderr.lower(), str(result)
        assert "Traceback" not in result.stderr
        assert events_rows(root) == 3, name
    for args, words in {("nothing.csv",): ["does not exist", "gate, at, wait"],
                        ("first.csv", "--source", "boarding"): ["No source 'boarding'", "Did you mean 'boardings'?"],
                        ("first.json",): ["CSV (.csv, .csv.gz) or Parquet"]}.items():
        if args[0] == "first.json":
            write(root / "first.json", "{}")
        result = run_cli(root, "features", "push", *args)
        assert result.returncode == 3 and all(w in result.stderr for w in words), str(result)

    # an event at the very time materialized to changes nothing served: accepted; Parquet too
    import duckdb

    duckdb.sql("SELECT * FROM (VALUES ('A1', TIMESTAMP '2013-01-01 11:00', 1.0), "
               "('B2', TIMESTAMP '2013-01-01 11:20', 2.0)) AS t(gate, \"at\", wait)").write_parquet(str(root / "more.parquet"))
    run_ok(root, "features", "push", "more.parquet", "--source", "boardings")
    assert events_rows(root) == 5
    assert online_json(root, "gate=A1", "--at", "2013-01-01T11:00")["features"]["wait_last"] == 9.0
    run_ok(root, "features", "materialize", "--until", "2013-01-01T11:30")
    a1 = online_json(root, "gate=A1", "--at", "2013-01-01T11:30")["features"]
    assert a1 == {"wait_mean_1h": 5.0, "boardings_1h": 2.0, "wait_last": 1.0}  # 10:45 (9) and 11:00 (1)


def test_push_is_all_or_nothing_in_process(tmp_path):
    """The library's push: a FeatureStoreError and no row written when a single row is bad, and a wrong
    --source kind named."""
    root = make_project(tmp_path / "p")
    write(root / "features.yaml", PUSH_YAML)
    settings = config.load(root / "settings.ini")
    defs = store.load_definitions(settings)
    rows = "".join(f"G{i},2013-02-01 {i // 60:02d}:{i % 60:02d},{i}\n" for i in range(500))
    write(root / "bulk.csv", "gate,at,wait\n" + rows + "G9,2013-02-01 12:00,n/a\n" + rows)
    with pytest.raises(FeatureStoreError, match="row 501: 'n/a'"):
        online.push(settings, defs, root / "bulk.csv")
    assert events_rows(root) == 0
    write(root / "bulk.csv", "gate,at,wait\n" + rows)
    assert online.push(settings, defs, root / "bulk.csv").rows == 500
    assert events_rows(root) == 500


# --------------------------------------------------------------------------------------------------
# readers while the store is written, and a writer killed mid-write

READER = """\
import json, sys, time
from datetime import datetime
from mlops_nb import config
from mlops_nb.featurestore import online, store

settings = config.load(sys.argv[1])
defs = store.load_definitions(settings)
reader = online.open_store(settings, defs)
stop, out = sys.argv[2], sys.argv[3]
seen, reads = set(), 0
at = datetime(2013, 9, 3, 13, 0)
while reads < 20 or not __import__("os").path.exists(stop):
    reader.store.reload()  # look at the file every time, not once a second: as many reads during a publish
    values, as_of = reader.lookup({"origin": "EWR", "carrier": "UA"}, at)
    stamps = set(as_of.values())
    assert len(stamps) == 1 and None not in stamps, as_of
    seen.add(json.dumps([stamps.pop().isoformat(), [values[n] for n in defs.feature_names]]))
    reads += 1
json.dump({"reads": reads, "seen": sorted(seen)}, open(out, "w"))
"""


def test_reads_while_materializing(reference, tmp_path):
    """A reader process looks features up in a loop (reloading the file every time) while materialize
    publishes 16 times: no read fails, and every read is one whole store (its values are the offline values
    as of the time it says)."""
    ref = reference
    times = [datetime(2013, 9, 3, 12, 0) + timedelta(minutes=4 * i) for i in range(8)]
    online.materialize(ref.settings, ref.defs, times[0], snapshot=ref.snapshot)
    stop, out = tmp_path / "stop", tmp_path / "seen.json"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(ref.root / "settings.ini"), str(stop), str(out)],
                              cwd=ref.root, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)  # the reader's imports
        for m in times[1:] + times[::-1]:
            online.materialize(ref.settings, ref.defs, m, snapshot=ref.snapshot)
            time.sleep(0.05)
        stop.touch()
        _, err = reader.communicate(timeout=60)
    finally:
        reader.kill()
    assert reader.returncode == 0, err
    seen = json.loads(out.read_text())
    expected = ref.offline(times, [("EWR", "UA")])
    stamps = {datetime.fromisoformat(s) for s, _ in map(json.loads, seen["seen"])}
    assert len(stamps) >= 3, seen
    for stamp, values in map(json.loads, seen["seen"]):
        got = np.array([np.nan if v is None else v for v in values], dtype=float)
        assert bits(got) == bits(expected[(datetime.fromisoformat(stamp), "EWR", "UA")]), (stamp, values)


CRASH_YAML = """\
entities:
  device: {description: a sensor}
sources:
  readings:
    push: true
    timestamp: at
    columns: {device: text, at: timestamp, value: number}
views:
  device_readings:
    entities: [device]
    source: readings
    ttl: 1d
    features:
      value_mean_1d: {aggregation: mean, column: value, window: 1d}
      value_last: {aggregation: last, column: value}
"""


def test_killed_materialize_leaves_the_store_readable(tmp_path):
    """SIGKILL of `mlops-nb features materialize` while it writes the new store (its temporary file exists):
    the published store still loads with its old values, `features online` reads it, and the next
    materialize cleans up and publishes."""
    import duckdb

    root = make_project(tmp_path / "crash")
    write(root / "features.yaml", CRASH_YAML)
    settings = config.load(root / "settings.ini")
    defs = store.load_definitions(settings)
    duckdb.sql("SELECT 'd' || i AS device, TIMESTAMP '2013-01-01' + to_seconds(i % 7200) AS at, i * 0.5 AS value "
               "FROM range(600000) AS r(i)").write_parquet(str(root / "readings.parquet"))
    online.push(settings, defs, root / "readings.parquet")
    t1 = datetime(2013, 1, 1, 18, 0)
    online.materialize(settings, defs, t1)
    folder = online.store_dir(settings)
    published = folder / online.ONLINE
    identity = online._identity(published)
    want = online.open_store(settings, defs).lookup({"device": "d7205"}, t1)
    assert want == ({"value_mean_1d": 3602.5, "value_last": 3602.5}, {"device_readings": t1})  # its one event

    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlops-nb"), "features", "materialize", "--until",
                             "2013-01-01T20:00"], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(folder.glob(".online.*.tmp.duckdb")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "materialize ended before it could be killed mid-write"
    assert list(folder.glob(".online.*.tmp.duckdb"))  # killed while writing its new store
    assert online._identity(published) == identity
    fresh = online.open_store(settings, defs)
    assert fresh.lookup({"device": "d7205"}, t1) == want
    got = online_json(root, "device=d7205", "--at", "2013-01-01T18:00")
    assert got["as_of"] == {"device_readings": t1.isoformat()} and got["features"] == want[0]
    online.materialize(settings, defs, datetime(2013, 1, 1, 20, 0))
    assert not list(folder.glob(".online.*"))
    fresh.store.reload()
    assert fresh.lookup({"device": "d7205"}, datetime(2013, 1, 1, 20))[1] == {
        "device_readings": datetime(2013, 1, 1, 20)}


# --------------------------------------------------------------------------------------------------
# Redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def redis_url(tmp_path):
    """A real redis-server (Debian's package; `make redis` installs it) on a free port, no persistence."""
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(exe).exists():
        pytest.skip("redis-server not found: `make redis` installs Debian's redis-server")
    import redis

    port = free_port()
    log = open(tmp_path / "redis.log", "w")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    client = redis.Redis(port=port)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "redis.log").read_text()
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.kill()
        proc.wait(timeout=10)
        log.close()


def test_redis_serves_the_same_values(reference, redis_url):
    """The Redis store, against a real redis-server: after each materialize the same lookups give the
    offline values bit for bit (30 sampled times), one generation is kept, and the commands work on it."""
    ref = reference
    settings = ref.settings.replace({"features.online": "redis", "features.redis_url": redis_url})
    times = sample_times(ref, 30, seed=11)
    expected = ref.offline(times)
    reader = online.open_store(settings, ref.defs)
    points = 0
    for m in times:
        done = online.materialize(settings, ref.defs, m, snapshot=ref.snapshot)
        points += assert_same(ref.online_values(reader, m), expected, ref.defs.feature_names)
    assert points == len(times) * len(ref.pairs)
    import redis

    client = redis.Redis.from_url(redis_url)
    assert client.dbsize() == sum(d.keys for d in done) + 2  # the last generation's keys, its views, the pointer
    env = {"MLOPS_NB_FEATURES__ONLINE": "redis", "MLOPS_NB_FEATURES__REDIS_URL": redis_url}
    run_ok(ref.root, "features", "materialize", "--until", "2013-10-01T09:00", env=env)
    got = run_ok(ref.root, "features", "online", "origin=LGA", "carrier=AA", "--at", "2013-10-01T09:00", "--json",
                 env=env).json()
    m = datetime(2013, 10, 1, 9)
    want = ref.offline([m], [("LGA", "AA")])[(m, "LGA", "AA")]
    for name, x in zip(ref.defs.feature_names, want):
        assert (got["features"][name] is None) if np.isnan(x) else got["features"][name] == x, name
    down = run_cli(ref.root, "features", "online", "origin=LGA", env={**env, "MLOPS_NB_FEATURES__REDIS_URL":
                                                                   f"redis://127.0.0.1:{free_port()}/0"})
    assert down.returncode == 3 and "did not answer" in down.stderr and "Traceback" not in down.stderr, str(down)
