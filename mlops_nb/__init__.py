"""From a parameterized notebook to a served, monitored, retrainable model, reproducibly.

Modules:

- `mlops_nb.config`: The one Settings object: loaded once from settings.ini, MLOPS_NB_* overrides, validated on load.
- `mlops_nb.contracts`: Data contracts: what each raw table must look like before anything is trained on it.
- `mlops_nb.errors`: Our exception tree.
- `mlops_nb.features`: Feature sets: ``sql/features.sql`` run over a snapshot, stored content-addressed in the warehouse.
- `mlops_nb.ingest`: Sources -> immutable, content-addressed snapshots in the warehouse.
- `mlops_nb.warehouse`: DuckDB warehouse: short-lived connections, the bookkeeping tables, and nothing else."""

__version__ = "0.1.0"
