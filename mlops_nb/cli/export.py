"""`mlops-nb export TARGET`: the project as Airflow, Kubeflow Pipelines, Kubernetes, CI or MLflow read it."""
from __future__ import annotations

import json
from pathlib import Path


def cmd_export(args) -> int:
    from .. import config

    settings = config.load()
    target = args.export_command
    if target == "tools":
        from ..export import tools

        for name in args.names or tools.names():
            print(f"{name}: {tools.create(settings, name)}")
        return 0
    if target == "mlflow":
        from ..export import mlflow

        added = mlflow.export(settings, args.tracking_uri, registry_uri=args.registry_uri,
                              experiment=args.experiment)
        print(json.dumps(added, indent=2))
        return 0
    if target == "airflow":
        from ..export import airflow

        written = airflow.export(settings, Path(args.out), dag_id=args.dag_id, image=args.image,
                                 params=dict(args.param))
    elif target == "kfp":
        from ..export import kfp

        written = kfp.export(settings, Path(args.out), image=args.image, params=dict(args.param))
    elif target == "k8s":
        from ..export import k8s

        written = k8s.export(settings, Path(args.out), bento=args.bento)
    else:
        from ..export import ci

        written = ci.export(settings, Path(args.out))
    for path in written:
        print(path)
    return 0
