"""`mlops-nb report`: write the reports site (reports/index.html and the pages it links) from what the project
holds now; prints the index's path."""
from __future__ import annotations

import json


def cmd_report(args) -> int:
    from .. import config
    from ..run import site

    settings = config.load()
    written = site.write(settings)
    if args.json:
        print(json.dumps(written.as_dict(), indent=2))
        return 0
    print(written.index)
    return 0
