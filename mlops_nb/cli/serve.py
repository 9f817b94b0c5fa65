"""`mlops-nb serve` and `mlops-nb build`: the service, and a Bento pinned to the champion."""
from __future__ import annotations

from .report import refresh_site


def cmd_serve(args) -> int:
    """Serve the project's champion, or with ``--bento TAG`` a Bento of the project's store with the
    settings built into it: of the project, only the store (and the host and port given) is used."""
    import os

    from .. import config
    from ..serving import bento

    settings = config.load(check_inputs=False)
    cmd = bento.serve_command(settings, args.port, args.host, args.bento)
    if args.bento is not None:
        os.execve(cmd[0], cmd, bento.bento_env(settings))
    bento.pinned_models(settings, "to serve")  # fail now, in plain words, when there is nothing to serve
    os.chdir(settings.root)
    os.execve(cmd[0], cmd, bento.tool_env(settings))


def cmd_build(args) -> int:
    from .. import config
    from ..serving import bento

    settings = config.load(check_inputs=False)
    print(bento.build(settings))
    refresh_site(settings)
    return 0
