"""`mlops-nb feedback FILE`: observed outcomes from a CSV or Parquet file into the feedback log."""
from __future__ import annotations

import json


def cmd_feedback(args) -> int:
    from .. import config
    from ..monitoring import feedback

    settings = config.load()
    result = feedback.import_file(settings, args.file)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
        return 0
    if result.already_imported:
        print(f"{args.file} was imported before (same content, sha256 {result.sha256[:12]}, in {result.log}): "
              f"nothing added; {result.outcomes} outcome(s) in the file.")
    else:
        print(f"added {result.added} outcome(s) from {args.file} to {result.log}")
    return 0
