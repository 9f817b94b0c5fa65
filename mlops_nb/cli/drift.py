"""`mlops-nb drift` (being built)."""
from __future__ import annotations


def cmd_drift(args) -> int:
    from ..errors import MlopsNbError

    raise MlopsNbError("mlops-nb drift is not available yet.")
