# %% [markdown]
# # Validate
# The snapshot is checked against its data contracts (`mlops_nb/data/contracts.py`) twice: exact SQL counts of
# broken rows, and whylogs constraints on each table's profile. An error-level rule stops the run here,
# before anything is trained; warnings are listed and the run goes on.

# %% tags=["parameters"]
upstream = ["ingest"]
product = None
warehouse_file = "data/warehouse.duckdb"

# %%
import pandas as pd

from mlops_nb.data import ingest, profiles, validation, warehouse
from mlops_nb.data.contracts import CONTRACTS
from mlops_nb.run import products

receipt = products.read_json(upstream["ingest"]["snapshot"])
with warehouse.connect(path=warehouse_file) as con:
    snapshot = ingest.get_snapshot(con, receipt["snapshot_id"])
    findings = validation.check_snapshot(con, snapshot)
    tables = {name: con.execute(f"SELECT * FROM {snapshot.table(name)}").df() for name in ("flights", "weather")}
    categories = {"carrier": set(con.execute(f"SELECT carrier FROM {snapshot.table('airlines')}").df().carrier)
                  if "airlines" in snapshot.row_counts else None,
                  "origin": set(tables["weather"]["origin"].dropna()) if "origin" in tables["weather"] else None}

# %% [markdown]
# ## Rules broken (SQL counts)

# %%
pd.DataFrame([f.as_dict() for f in findings], columns=["table", "column", "rule", "broken_rows", "total_rows",
                                                        "severity", "detail"])

# %% [markdown]
# ## whylogs constraints

# %%
checks = []
for name, df in tables.items():
    contract = CONTRACTS[name]
    view = profiles.profile(df[[c.name for c in contract.columns if c.name in df.columns]])
    profiles.write(view, product[f"{name}_profile"])
    known = {col.name: categories[col.name] for col in contract.columns
             if col.in_table and categories.get(col.name) is not None}
    checks += profiles.check_contract(view, contract, known)
pd.DataFrame(checks)

# %%
products.write_json(product["report"], {
    "snapshot_id": receipt["snapshot_id"],
    "findings": [f.as_dict() for f in findings],
    "whylogs_constraints": checks})
validation.raise_for(findings, [c for c in checks if not c["passed"]])
