"""`mlops-nb simulate` (being built)."""
from __future__ import annotations


def cmd_simulate(args) -> int:
    from ..errors import MlopsNbError

    raise MlopsNbError("mlops-nb simulate is not available yet.")
