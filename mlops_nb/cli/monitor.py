"""`mlops-nb monitor` (being built)."""
from __future__ import annotations


def cmd_monitor(args) -> int:
    from ..errors import MlopsNbError

    raise MlopsNbError("mlops-nb monitor is not available yet.")
