"""MLflow: where runs go, what each run records."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from seg_spark.config import Settings, TrackingSettings

log = logging.getLogger(__name__)

# MLflow caps a param value at 6000 characters.
_MAX_PARAM = 6000


def resolve_tracking_uri(uri: str | None) -> tuple[str | None, str | None]:
    """Turn a configured tracking location into (tracking URI, artifact root).

    A plain folder becomes a local SQLite store inside it with artifacts beside it
    (MLflow's file store is in maintenance mode); a URI with a scheme is used as is.
    """
    if uri is None:
        return None, None
    if "://" in uri or uri in ("databricks", "databricks-uc"):
        return uri, None
    folder = Path(uri).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri()


def configure(settings: TrackingSettings) -> str:
    """Point MLflow at the configured store and experiment; return the experiment id."""
    uri, artifact_root = resolve_tracking_uri(settings.tracking_uri)
    if uri:
        mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(settings.experiment)
    if experiment is None:
        location = f"{artifact_root}/{settings.experiment}" if artifact_root else None
        experiment_id = client.create_experiment(settings.experiment, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested config into ``dotted.key -> value`` strings (MLflow params)."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:_MAX_PARAM]
    return flat


@contextmanager
def tracked_run(settings: Settings, run_name: str, tags: Mapping[str, str]) -> Iterator[str | None]:
    """An MLflow run with the whole config as params; yields its id (None when disabled)."""
    if not settings.tracking.enabled:
        yield None
        return
    configure(settings.tracking)
    with mlflow.start_run(run_name=run_name, tags=dict(tags)) as run:
        mlflow.log_params(flatten(settings.model_dump(mode="json")))
        yield run.info.run_id


def log_metrics(metrics: Mapping[str, float]) -> None:
    """Log metrics to the active run, if any."""
    if mlflow.active_run() is not None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})


def log_summary(data: Mapping[str, Any], artifact: str, tags: Mapping[str, str] | None = None) -> None:
    """Attach a small JSON artifact (and tags) to the active run, if any."""
    if mlflow.active_run() is not None:
        mlflow.log_dict(dict(data), artifact)
        if tags:
            mlflow.set_tags(dict(tags))


def log_spark_model(model: Any, registered_name: str | None) -> tuple[str, str | None]:
    """Log a fitted Spark ML PipelineModel to the active run, registering it by name.

    Returns:
        The model URI and, when registered, the new registry version.
    """
    import mlflow.spark
    import pyspark

    info = mlflow.spark.log_model(
        model,
        "model",
        registered_model_name=registered_name,
        # Explicit requirements: inference would load the model again in a subprocess.
        pip_requirements=[f"pyspark=={pyspark.__version__}", f"mlflow=={mlflow.__version__}"],
    )
    version = info.registered_model_version
    return info.model_uri, None if version is None else str(version)


@contextmanager
def nested_run(run_name: str, params: Mapping[str, Any]) -> Iterator[None]:
    """A child run of the active run (e.g. one model-selection candidate); nothing when none is active."""
    if mlflow.active_run() is None:
        yield
        return
    with mlflow.start_run(run_name=run_name, nested=True):
        mlflow.log_params({k: str(v) for k, v in params.items()})
        yield
