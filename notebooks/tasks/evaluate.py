# %% [markdown]
# # Evaluate
# The trained model on the test months, which it has never seen: ROC AUC, log loss, Brier score and
# accuracy, a table a month (the late rate drifts with the seasons), the ROC curve and the calibration.

# %% tags=["parameters"]
upstream = ["train", "features"]
product = None
warehouse_file = "data/warehouse.duckdb"
threshold = 0.5

# %%
import pandas as pd

from mlops_nb.data import features, warehouse
from mlops_nb.lib import evaluation, model
from mlops_nb.run import products

feature_receipt = products.read_json(upstream["features"]["features"])
train_info = products.read_json(upstream["train"]["info"])
estimator = products.load_model(upstream["train"]["model"], train_info["model_sha256"])
with warehouse.connect(path=warehouse_file) as con:
    test = features.load(con, feature_receipt["table_name"], ["test"])
p = model.predict_proba(estimator, test)
scores = evaluation.metrics(test.late, p, threshold)
monthly = evaluation.per_month(test.month, test.late, p, threshold)

# %% [markdown]
# ## Test metrics

# %%
pd.Series(scores, name="test").to_frame()

# %% [markdown]
# ## A month at a time

# %%
monthly

# %% [markdown]
# ## ROC curve and calibration

# %%
evaluation.roc_figure(test.late, p)

# %%
evaluation.calibration_figure(test.late, p)

# %%
pd.DataFrame({"p_late": p}).to_parquet(product["predictions"], index=False)
products.write_json(product["metrics"], {
    products.RECEIPT_KEY: "metrics", "test": scores, "per_month": monthly.reset_index().to_dict(orient="records"),
    "predictions_sha256": evaluation.predictions_digest(p), "model_sha256": train_info["model_sha256"],
    "feature_set_id": feature_receipt["feature_set_id"], "snapshot_id": feature_receipt["snapshot_id"]})
