"""`mlops-nb feedback` (being built)."""
from __future__ import annotations


def cmd_feedback(args) -> int:
    from ..errors import MlopsNbError

    raise MlopsNbError("mlops-nb feedback is not available yet.")
