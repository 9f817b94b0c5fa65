"""The model registry (``versions``) and the promotion gate (``gate``).

A thin facade: ``from mlops_nb import registry; registry.promote(...)`` uses ``registry/versions.py``, whose
``__all__`` lists the public names."""
from .versions import *  # noqa: F401,F403
from .versions import __all__  # noqa: F401
