"""`mlops-nb serve` and `mlops-nb build`: the service, and a Bento pinned to the champion."""
from __future__ import annotations


def cmd_serve(args) -> int:
    import os

    from .. import config
    from ..serving import bento as build

    settings = config.load()
    if args.bento is None:
        build.pinned_models(settings, "to serve")  # fail now, in plain words, when there is nothing to serve
    cmd = build.serve_command(settings, args.port, args.host, args.bento)
    os.chdir(settings.root)
    os.execve(cmd[0], cmd, build.tool_env(settings))


def cmd_build(args) -> int:
    from .. import config
    from ..serving import bento as build

    print(build.build(config.load()))
    return 0
