"""The model registry (``versions``) and the promotion gate (``gate``).

A thin facade: ``from mlops_nb import registry; registry.promote(...)`` uses ``registry/versions.py``."""
from .versions import (ALIASES, INFO_FILE, MODEL_FILE, PROFILES_DIR, RegistryError, Version, aliases, audit,
                       diff, load, model_dir, promote, register, resolve, rollback, save, set_alias, show,
                       versions)

__all__ = ["ALIASES", "INFO_FILE", "MODEL_FILE", "PROFILES_DIR", "RegistryError", "Version", "aliases", "audit",
           "diff", "load", "model_dir", "promote", "register", "resolve", "rollback", "save", "set_alias", "show",
           "versions"]
