"""`mlops-nb features ...`: the feature store from the command line (heavy imports inside)."""
from __future__ import annotations

import json
import math
import sys
import time
from datetime import timedelta


def cmd_features(args) -> int:
    from .. import config
    from ..featurestore import store

    settings = config.load()
    if args.features_command == "historical":
        joined = store.historical_file(settings, args.spine, args.out, args.timestamp_column,
                                       snapshot=current_snapshot(settings), stdout=sys.stdout)
        if args.out is not None:
            print(f"{joined.rows:,} rows with {len(joined.features)} features as of each row's "
                  f"{args.timestamp_column!r} -> {joined.out} ({joined.seconds:.2f} s)")
        return 0
    from ..featurestore import online

    definitions = store.load_definitions(settings)
    if args.features_command == "materialize":
        started = time.perf_counter()
        done = online.materialize(settings, definitions, args.until, snapshot=current_snapshot(settings))
        seconds = time.perf_counter() - started
        if args.json:
            print(json.dumps({"online": settings.features.online, "until": done[0].as_of.isoformat() if done else None,
                              "seconds": round(seconds, 3),
                              "views": [{"view": m.view, "keys": m.keys, "as_of": m.as_of.isoformat(),
                                         "seconds": round(m.seconds, 3)} for m in done]}, indent=2))
        else:
            width = max(len("view"), *(len(m.view) for m in done))
            print(f"{'view':<{width}}  {'keys':>8}  {'as_of':<19}  seconds")
            for m in done:
                print(f"{m.view:<{width}}  {m.keys:>8,}  {m.as_of.isoformat(sep=' ', timespec='seconds'):<19}  "
                      f"{m.seconds:7.3f}")
            print(f"online store ({settings.features.online}) materialized to {done[0].as_of if done else '-'} "
                  f"in {seconds:.2f} s")
        return 0
    if args.features_command == "push":
        pushed = online.push(settings, definitions, args.file, args.source)
        span = f" from {pushed.first} to {pushed.last}" if pushed.rows else ""
        print(f"{pushed.rows:,} events pushed to source {pushed.source!r}{span}: `mlops-nb features materialize` "
              "serves them")
        return 0
    if args.features_command == "online":
        return _online(settings, definitions, args)
    raise AssertionError(args.features_command)


def _online(settings, definitions, args) -> int:
    from ..errors import FeatureStoreError
    from ..featurestore import online
    from ..featurestore.definitions import format_duration

    keys = {}
    for item in args.keys:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise FeatureStoreError(f"Each key must be given as KEY=VALUE, e.g. origin=EWR; got {item!r} instead.")
        if name in keys:
            raise FeatureStoreError(f"The entity {name!r} is given twice ({keys[name]!r} and {value!r}): give it once.")
        keys[name] = value
    at = online.parse_time(args.at, "The --at option") if args.at else online.utc_now()
    reader = online.open_store(settings, definitions)
    values, as_of = reader.lookup(keys, at)
    if not values:
        needs = "; ".join(f"{v.name}: {', '.join(v.entities)}" for v in definitions.views.values())
        raise FeatureStoreError(f"No view is keyed by the entities given ({', '.join(keys)}): give all the entities "
                                f"of a view ({needs}).")
    if args.json:
        print(json.dumps({"features": {n: (None if math.isnan(x) else x) for n, x in values.items()},
                          "as_of": {v: (t.isoformat() if t else None) for v, t in as_of.items()},
                          "at": at.isoformat()}, indent=2))
        return 0
    width = max(len("feature"), *(len(n) for n in values))
    print(f"{'feature':<{width}}  {'value':>12}  view (as of; at {at.isoformat(sep=' ', timespec='seconds')})")
    for view in as_of:
        v = definitions.views[view]
        t = as_of[view]
        note = ("not materialized (under these definitions): `mlops-nb features materialize`" if t is None else
                f"as of {t}" + (f", stale: older than its ttl, {format_duration(v.ttl)}" if at - t > timedelta(seconds=v.ttl) else ""))
        for f in v.features:
            x = values[f.name]
            print(f"{f.name:<{width}}  {'null' if math.isnan(x) else f'{x:.6g}':>12}  {view} ({note})")
    return 0


def current_snapshot(settings) -> str | None:
    """The schema of the data snapshot the current products were built from (the last run's ingest), or
    None before the first run."""
    from ..run import products

    receipt = settings.path("products_dir") / "ingest.json"
    return products.read_json(receipt).get("schema_name") if receipt.is_file() else None
