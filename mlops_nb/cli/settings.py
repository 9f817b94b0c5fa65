"""`mlops-nb settings`: the resolved settings."""
from __future__ import annotations


def cmd_settings(args) -> int:
    from .. import config

    settings = config.load()
    print(f"# {settings.file}")
    for key, value in settings.as_dict().items():
        print(f"{key} = {value}")
    return 0
