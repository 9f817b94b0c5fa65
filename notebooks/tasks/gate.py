# %% [markdown]
# # Gate
# The new model is registered (BentoML model store + the warehouse's registry tables) with its metrics,
# lineage and reference profiles. It becomes the champion only if it passes the model tests, reaches the
# absolute thresholds, and is not worse than the current champion scored on the same test rows.

# %% tags=["parameters"]
upstream = ["train", "evaluate", "features"]
product = None
min_roc_auc = 0.6
max_brier = 0.25
tolerance = 0.005
threshold = 0.5

# %%
import pandas as pd

from mlops_nb import config, registry
from mlops_nb.data import features, profiles, warehouse
from mlops_nb.lib import evaluation, model
from mlops_nb.lib.transforms import RECORD
from mlops_nb.registry import gate
from mlops_nb.run import products

train_info = products.read_json(upstream["train"]["info"])
metrics = products.read_json(upstream["evaluate"]["metrics"])
feature_receipt = products.read_json(upstream["features"]["features"])
estimator = products.load_model(upstream["train"]["model"], train_info["model_sha256"])
with warehouse.connect() as con:
    rows = features.load(con, feature_receipt["table_name"], ["train", "test"])
    champion_version = registry.aliases(con).get("champion")
train, test = rows[rows.split == "train"], rows[rows.split == "test"]

# %% [markdown]
# ## Model tests

# %%
tests = gate.model_tests(lambda records: model.predict_proba(estimator, records), test)
pd.DataFrame(tests)

# %% [markdown]
# ## Against the champion, on the same test rows

# %%
champion = None
if champion_version is not None:
    with warehouse.connect() as con:
        champion_tag = registry.show(con, champion_version)["tag"]
    champion_model, _ = registry.load(champion_tag)
    champion = evaluation.metrics(test.late, model.predict_proba(champion_model, test), threshold)
thresholds = config.Section("gate", dict(min_roc_auc=min_roc_auc, max_brier=max_brier, tolerance=tolerance))
decision = gate.decide(metrics["test"], champion, tests, thresholds)
pd.DataFrame({"candidate": metrics["test"], "champion": champion or {}})

# %%
print(("PROMOTED" if decision["promote"] else "NOT PROMOTED") + ":\n- " + "\n- ".join(decision["reasons"]))

# %% [markdown]
# ## Registration

# %%
reference = products.scratch_dir(product["decision"])
profiles.write(profiles.profile(train[list(RECORD)]), reference / "train_features.bin")
profiles.write(profiles.profile(test[list(RECORD)].assign(p_late=pd.read_parquet(upstream["evaluate"]["predictions"]).p_late.to_numpy())),
               reference / "test_predictions.bin")
info = {**train_info, "metrics": metrics["test"], "per_month": metrics["per_month"], "run_id": config.run_id(),
        "feature_schema": {name: list(spec) for name, spec in RECORD.items()}, "threshold": threshold}
tag = registry.save(upstream["train"]["model"], info, reference)
with warehouse.connect(write=True) as con:
    version = registry.register(con, tag, info, decision, run_id=config.run_id())
    if decision["promote"]:
        registry.set_alias(con, "champion", version, "; ".join(decision["reasons"]), actor="gate")
    current = registry.aliases(con)
print(f"registered {tag}; champion: {current.get('champion')}")

# %%
products.write_json(product["decision"], {**decision, "version": version, "tag": tag, "aliases": current})
