"""`mlops-nb features ...`: the feature store from the command line (heavy imports inside)."""
from __future__ import annotations

import sys


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
    raise AssertionError(args.features_command)


def current_snapshot(settings) -> str | None:
    """The schema of the data snapshot the current products were built from (the last run's ingest), or
    None before the first run."""
    from ..run import products

    receipt = settings.path("products_dir") / "ingest.json"
    return products.read_json(receipt).get("schema_name") if receipt.is_file() else None
