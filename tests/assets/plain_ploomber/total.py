# %% tags=["parameters"]
upstream = ["make_numbers"]
product = None

# %%
from pathlib import Path

numbers = [int(x) for x in Path(upstream["make_numbers"]["data"]).read_text().split()]
Path(product["data"]).write_text(str(sum(numbers)))
