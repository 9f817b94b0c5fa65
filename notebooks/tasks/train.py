# %% [markdown]
# # Train
# Fits the model (`mlops_nb.lib.model`, exported from `notebooks/lib/01_model.ipynb`) on the train months
# and checks it on the validation months. Every random choice comes from `seed`.

# %% tags=["parameters"]
upstream = ["features"]
product = None
warehouse_file = "data/warehouse.duckdb"
kind = "hgb"
learning_rate = 0.1
max_iter = 200
max_leaf_nodes = 31
l2_regularization = 0.0
c = 1.0
seed = 42
threshold = 0.5

# %%
import time

import pandas as pd

from mlops_nb import config
from mlops_nb.data import features, warehouse
from mlops_nb.lib import evaluation, model
from mlops_nb.run import products, records

feature_receipt = products.read_json(upstream["features"]["features"])
with warehouse.connect(path=warehouse_file) as con:
    rows = features.load(con, feature_receipt["table_name"], ["train", "valid"])
# the feature store's views the model is not trained with (features.views): their features left missing, so
# the model drops them (it keeps no column it never saw a value of)
left_out = [f for f in (feature_receipt.get("feature_store") or {}).get("left_out", []) if f in rows.columns]
rows[left_out] = float("nan")
train, valid = rows[rows.split == "train"], rows[rows.split == "valid"]

estimator = model.build_model(kind, learning_rate=learning_rate, max_iter=max_iter, max_leaf_nodes=max_leaf_nodes,
                              l2_regularization=l2_regularization, c=c, seed=seed)
started = time.perf_counter()
model.fit(estimator, train)
fit_seconds = time.perf_counter() - started

# %% [markdown]
# ## Train and validation metrics
# Train metrics are computed on a seeded sample of at most 50,000 training rows (scikit-learn's own
# train scores use 10,000): enough to see overfitting, and a second cheaper than scoring every row.
# Validation metrics use every validation row.

# %%
scored = {"train": train.sample(n=min(len(train), 50_000), random_state=seed), "valid": valid}
scores = {name: evaluation.metrics(part.late, model.predict_proba(estimator, part), threshold)
          for name, part in scored.items()}
pd.DataFrame(scores).T

# %%
model_sha256 = products.save_model(estimator, product["model"])
products.write_json(product["info"], {
    "model_sha256": model_sha256, "kind": kind, "seed": seed, "fit_seconds": round(fit_seconds, 3),
    "params": dict(learning_rate=learning_rate, max_iter=max_iter, max_leaf_nodes=max_leaf_nodes,
                   l2_regularization=l2_regularization, c=c),
    "feature_set_id": feature_receipt["feature_set_id"], "snapshot_id": feature_receipt["snapshot_id"],
    "feature_store": feature_receipt.get("feature_store"),
    "rows": {"train": len(train), "valid": len(valid), "train_scored": len(scored["train"])}, "metrics": scores,
    "lineage": records.lineage(config.get_settings().root)})
