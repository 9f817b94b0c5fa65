# %% tags=["parameters"]
upstream = None
product = None
n = 3

# %%
from pathlib import Path

Path(product["data"]).write_text("\n".join(str(i) for i in range(n)) + "\n")
