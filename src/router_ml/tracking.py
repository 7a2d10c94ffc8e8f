"""MLflow logging of training runs: parameters, metrics, curves, the bundle and a registered version.

The default store is local: a SQLite database and an artifact folder under
``mlruns/`` of the project (``ROUTER_ML_MLFLOW_URI`` points elsewhere, e.g. a team
server). Nothing is sent anywhere unless configured.
"""

from __future__ import annotations

import logging
from pathlib import Path

EXPERIMENT = "router-ml"


def flatten(values: dict, prefix: str = "") -> dict:
    """Nested dicts -> {"a.b": value}, keeping only numbers (metrics) or scalars (params)."""
    flat = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)) or value is None:
            flat[name] = value
    return flat


def _numbers(values: dict) -> dict[str, float]:
    return {k: float(v) for k, v in flatten(values).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")}


def _connect(tracking_uri: str, artifact_root: Path | None):
    import mlflow

    logging.getLogger("alembic").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(tracking_uri)
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        mlflow.create_experiment(EXPERIMENT, artifact_location=Path(artifact_root).resolve().as_uri()
                                 if artifact_root else None)  # a relative path has no file URI
    mlflow.set_experiment(EXPERIMENT)
    return mlflow


def log_training(result, tracking_uri: str, artifact_root: Path | None = None, register: bool = True) -> dict:
    """Log one :class:`router_ml.train.TrainResult`; returns the run id and the registered model version."""
    mlflow = _connect(tracking_uri, artifact_root)
    meta = result.meta
    with mlflow.start_run(run_name=meta["version"]) as run:
        params = flatten({"config": meta["config"], "router": meta["router"]["params"]})
        params.update({"encoder": meta["encoder"]["id"], "router.class": meta["router"]["class"],
                       "models": ",".join(meta["models"])[:5000], "bundle.version": meta["version"]})
        mlflow.log_params({k: "" if v is None else v for k, v in params.items()})
        mlflow.log_metrics(_numbers(meta["metrics"]))
        mlflow.log_metric("calibration.parameter", float(meta["calibration"]["parameter"]))
        if result.test is not None:
            mlflow.log_dict(result.test["curve"], "curves/test_curve.json")
        mlflow.log_artifacts(str(result.bundle_dir), artifact_path="bundle")
        version = None
        if register:
            client = mlflow.MlflowClient()
            name = meta["name"]
            if not client.search_registered_models(filter_string=f"name = '{name}'"):
                client.create_registered_model(name, description="router-ml router bundle")
            version = client.create_model_version(name, source=f"{run.info.artifact_uri}/bundle",
                                                  run_id=run.info.run_id).version
        return {"run_id": run.info.run_id, "model_version": version, "tracking_uri": tracking_uri}
