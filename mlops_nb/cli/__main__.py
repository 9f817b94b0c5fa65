"""`python -m mlops_nb.cli`: the console script."""
from . import entry

entry()
