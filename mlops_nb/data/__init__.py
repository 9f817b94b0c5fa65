"""The data stage: the warehouse, ingested snapshots, their contracts and validation, feature sets, profiles."""
