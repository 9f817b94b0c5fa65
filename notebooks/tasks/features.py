# %% [markdown]
# # Features
# `mlops_nb/data/sql/features.sql` turns the validated snapshot into one row a flight: schedule, route, carrier
# and plane, with the label `late` (arrival more than 15 minutes behind schedule) and the split each month
# belongs to. Cancelled and diverted flights have no arrival and so no label: they are dropped and counted.
#
# The weather and the recent departures come from the feature store (`features.yaml`): each flight asks for
# them as of its prediction time, `lead` before its scheduled departure, from events strictly before it, by the
# same point-in-time join as `mlops-nb features historical`, and what the service looks up online for that time.
# Every view is joined; the train task leaves the features of views not in `views` missing for the model.

# %% tags=["parameters"]
upstream = ["validate"]
product = None
warehouse_file = "data/warehouse.duckdb"
train_months = "1-8"
valid_months = "9-10"
test_months = "11-12"
definitions = "features.yaml"
lead = 7200
views = None
pushed_events = "data/featurestore/events.duckdb"

# %%
import pandas as pd

from mlops_nb import config
from mlops_nb.data import features, ingest, warehouse
from mlops_nb.featurestore import training
from mlops_nb.run import products

split = {"train": config.parse_months(train_months), "valid": config.parse_months(valid_months),
         "test": config.parse_months(test_months)}
receipt = products.read_json(upstream["validate"]["report"])
events = config.project_path(pushed_events)
with training.point_in_time(config.project_path(definitions), lead, views, events.parent,
                            config.project_path(".")) as join, \
        warehouse.connect(write=True, path=warehouse_file) as con:
    snapshot = ingest.get_snapshot(con, receipt["snapshot_id"])
    feature_set = features.build(con, snapshot, split, join)
    by_month = con.execute(f"SELECT month, split, count(*) AS flights, avg(late) AS late_rate "
                           f"FROM {feature_set.table} GROUP BY ALL ORDER BY month").df()
    missing = training.missing_shares(con, feature_set.table, join)

# %% [markdown]
# ## Rows a split, and the late rate a month

# %%
pd.Series(feature_set.row_counts, name="rows").to_frame()

# %%
by_month.set_index("month")

# %% [markdown]
# ## The feature store's features: the share of rows without a value
# A key without events in a window, a `last` value older than its view's `ttl`, or a view not selected.

# %%
pd.Series({"definitions": join.definitions.digest[:12], "views": ", ".join(join.views) or "none",
           "lead (seconds)": join.lead}, name="").to_frame()

# %%
missing

# %%
products.write_json(product["features"], {
    products.RECEIPT_KEY: "features", "feature_set_id": feature_set.feature_set_id,
    "table_name": feature_set.table_name, "snapshot_id": feature_set.snapshot_id,
    "row_counts": feature_set.row_counts, "split": split, "feature_store": join.lineage()})
