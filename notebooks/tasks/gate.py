# %% [markdown]
# # Gate
# The new model is registered (BentoML model store + the warehouse's registry tables) with its metrics,
# lineage and reference profiles. It becomes the champion only if it passes the model tests, reaches the
# absolute thresholds, and is not worse than the current champion scored on the same test rows.

# %% tags=["parameters"]
upstream = ["train", "evaluate", "features"]
product = None
warehouse_file = "data/warehouse.duckdb"
model_name = "flight_delay"
model_store = "data/bentoml"
min_roc_auc = 0.6
max_brier = 0.25
tolerance = 0.005
threshold = 0.5

# %%
import pandas as pd

from mlops_nb import config, registry
from mlops_nb.data import features, warehouse
from mlops_nb.lib import evaluation, model
from mlops_nb.registry import gate
from mlops_nb.run import products

train_info = products.read_json(upstream["train"]["info"])
metrics = products.read_json(upstream["evaluate"]["metrics"])
feature_receipt = products.read_json(upstream["features"]["features"])
estimator = products.load_model(upstream["train"]["model"], train_info["model_sha256"])
with warehouse.connect(path=warehouse_file) as con:
    rows = features.load(con, feature_receipt["table_name"], ["train", "valid", "test"])
    champion_entry = registry.champion(con)
train, valid, test = (rows[rows.split == s] for s in ("train", "valid", "test"))

# %% [markdown]
# ## Model tests

# %%
tests = gate.model_tests(lambda records: model.predict_proba(estimator, records), test)
pd.DataFrame(tests)

# %% [markdown]
# ## Against the champion, on the same test rows

# %%
champion = None
if champion_entry is not None:
    champion_model, _ = registry.load(champion_entry["tag"], champion_entry["sha256"], model_store)
    champion = evaluation.metrics(test.late, model.predict_proba(champion_model, test), threshold)
thresholds = config.Section("gate", dict(min_roc_auc=min_roc_auc, max_brier=max_brier, tolerance=tolerance))
decision = gate.decide(metrics["test"], champion, tests, thresholds)
pd.DataFrame({"candidate": metrics["test"], "champion": champion or {}})

# %%
verdict = "PASSED: the champion (a retrain's: the challenger) when the run commits" if decision["promote"] else "NOT PROMOTED"
print(verdict + ":\n- " + "\n- ".join(decision["reasons"]))

# %% [markdown]
# ## The candidate in the model store
# Saved with its reference for drift monitoring and estimated performance: whylogs profiles (training
# features; test predictions), a seeded sample of the training rows, every test row's prediction and label,
# and a calibration map fitted on the validation months, checked on the test months (CBPE: the metrics
# expected from the calibrated probabilities, against the realized ones). The run registers it, and moves
# the champion if it passed, in the same transaction as its run record.

# %%
predictions = pd.read_parquet(upstream["evaluate"]["predictions"]).p_late.to_numpy()
reference = gate.reference_profiles(train, test, predictions, products.scratch_dir(product["decision"]))
calibration = gate.reference_rows(train, valid, test, predictions, model.predict_proba(estimator, valid),
                                  threshold, train_info["seed"], reference)
check = calibration["check"]
pd.DataFrame({k: check[k] for k in ("estimated", "realized", "abs_error", "uncalibrated_estimated")})

# %% [markdown]
# ## Compiled for serving
# The service scores small requests with a compiled form of the trees (treelite), fed by the same feature
# code in NumPy. Checked here on the golden rows and every test row: the NumPy input equals the pipeline's,
# and the probabilities agree with scikit-learn's within 1e-12 with the same decisions; if not, the version
# is served by scikit-learn and the report says why. `max_rows`: up to how many rows the compiled form was
# the faster on this machine.

# %%
compiled, compiled_report = gate.compile_model(estimator, test, threshold)
pd.Series({k: v for k, v in compiled_report.items() if k != "timings"})

# %%
info = {**gate.model_info(train_info, metrics, threshold, run_id=config.run_id()), "compiled": compiled_report}
tag = registry.save(upstream["train"]["model"], info, reference, model_name=model_name, store=model_store,
                    compiled=compiled)
print(f"saved {tag}")

# %%
products.write_json(product["decision"], {**decision, products.RECEIPT_KEY: "gate", "tag": tag,
                                          "version": tag.split(":", 1)[1], "info": info})
