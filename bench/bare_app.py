"""The baseline of bench/serving.py: the same compiled model and feature code behind bare Starlette + uvicorn,
nothing else (no validation, no logging, no metrics). The feature code is the service's: the online store's
fields a record leaves out looked up (``serving.lookup``, as the service does), then ``registry.inference.Scorer``.

    python bench/bare_app.py TAG PORT    (BENTOML_HOME and MLOPS_NB_SETTINGS point at the project)
"""
import json
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
from threadpoolctl import threadpool_limits

from mlops_nb import config, registry
from mlops_nb.data import warehouse
from mlops_nb.registry import inference
from mlops_nb.serving import lookup

threadpool_limits(1)  # as the service does: the same model, configured the same way
with warehouse.connect() as con:
    estimator, info = registry.load_version(con, sys.argv[1])
blob = registry.load_compiled(sys.argv[1], info)
SCORER = inference.Scorer(estimator, inference.Compiled(blob) if blob else None,
                          (info.get("compiled") or {}).get("max_rows", 0))
VERSION = sys.argv[1].split(":")[1]
LOOKUP = lookup.load(config.load(), in_bento=False)
if LOOKUP is not None:
    LOOKUP.warm()


async def predict(request):
    records = json.loads(await request.body())["flights"]
    if LOOKUP is not None:
        records = LOOKUP.fill(records, len(records))[0]
    p = SCORER.predict(records)
    return Response(json.dumps({"model_version": VERSION, "p_late": p.tolist(), "late": (p >= 0.5).tolist()}),
                    media_type="application/json")


async def ready(request):
    return Response("ok")


app = Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/readyz", ready)])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)
