"""`mlops-nb report`: write the reports site (reports/index.html and the pages it links) from what the project
holds now; prints the index's path."""
from __future__ import annotations

import json
import sys


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


def refresh_site(settings) -> None:
    """After a command that changes what the site shows (an alias moved, a Bento built): rewrite it, when the
    project has one. A failure is a note, not the command's: the site is a view, rewritten by the next run."""
    from ..errors import MlopsNbError
    from ..run import site

    if not settings.pipeline.reports or not (site.reports_dir(settings) / site.INDEX).is_file():
        return
    try:
        site.write(settings)
    except (MlopsNbError, OSError) as e:
        print(f"the reports site was not updated: {e} (`mlops-nb report` writes it)", file=sys.stderr)
