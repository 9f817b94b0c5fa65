# %% [markdown]
# # Features
# `mlops_nb/data/sql/features.sql` turns the validated snapshot into one row a flight: schedule, route, carrier,
# plane and the weather at the origin in the scheduled hour, with the label `late` (arrival more than 15
# minutes behind schedule) and the split each month belongs to. Cancelled and diverted flights have no
# arrival and so no label: they are dropped and counted.

# %% tags=["parameters"]
upstream = ["validate"]
product = None
warehouse_file = "data/warehouse.duckdb"
train_months = "1-8"
valid_months = "9-10"
test_months = "11-12"

# %%
import pandas as pd

from mlops_nb import config
from mlops_nb.data import features, ingest, warehouse
from mlops_nb.run import products

split = {"train": config.parse_months(train_months), "valid": config.parse_months(valid_months),
         "test": config.parse_months(test_months)}
receipt = products.read_json(upstream["validate"]["report"])
with warehouse.connect(write=True, path=warehouse_file) as con:
    snapshot = ingest.get_snapshot(con, receipt["snapshot_id"])
    feature_set = features.build(con, snapshot, split)
    by_month = con.execute(f"SELECT month, split, count(*) AS flights, avg(late) AS late_rate "
                           f"FROM {feature_set.table} GROUP BY ALL ORDER BY month").df()

# %% [markdown]
# ## Rows a split, and the late rate a month

# %%
pd.Series(feature_set.row_counts, name="rows").to_frame()

# %%
by_month.set_index("month")

# %%
products.write_json(product["features"], {
    "feature_set_id": feature_set.feature_set_id, "table_name": feature_set.table_name,
    "snapshot_id": feature_set.snapshot_id, "row_counts": feature_set.row_counts, "split": split})
