"""The run stage: the plan and its fingerprints, the Ploomber DAG, the transactional run, its records,
products and reports."""
