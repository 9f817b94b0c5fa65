"""`mlops-nb serve` and `mlops-nb build`: the service, and a Bento pinned to the champion."""
from __future__ import annotations


def cmd_serve(args) -> int:
    import os

    from .. import config
    from ..serving import bento

    settings = config.load()
    if args.bento is None:
        bento.pinned_models(settings, "to serve")  # fail now, in plain words, when there is nothing to serve
    cmd = bento.serve_command(settings, args.port, args.host, args.bento)
    os.chdir(settings.root)
    os.execve(cmd[0], cmd, bento.tool_env(settings))


def cmd_build(args) -> int:
    from .. import config
    from ..serving import bento

    print(bento.build(config.load()))
    return 0
