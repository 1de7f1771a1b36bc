"""MLflow: where runs go and what each run records, behind one ``Tracker``.

A seg-spark run id has one MLflow run. The first stage of a run starts it (with the whole
config as params); a stage started later as its own process resumes it (its id is in
``pipeline_runs``), so every stage's metrics and artifacts land in the same MLflow run.
"""

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
ATTEMPT_TAG = "seg_spark.attempt_id"  # on a registry version: the attempt that registered it

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
    return str(experiment_id)


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


def churn_model_name(settings: Settings) -> str:
    """The registered name of the churn model: the segmentation model's name with ``-churn``."""
    return f"{settings.model.name}-churn"


def registered_names(settings: Settings) -> tuple[str, ...]:
    """Every model name seg-spark registers: the segmentation model's and the churn model's."""
    return (settings.model.name, churn_model_name(settings))


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


class Tracker:
    """Everything seg-spark records in MLflow; every method is a no-op outside an active run.

    Args:
        settings: The whole configuration (logged as params of a new run).
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    @property
    def enabled(self) -> bool:
        """Whether runs are tracked at all."""
        return self._settings.tracking.enabled

    def tracking_uri(self) -> str | None:
        """The resolved tracking URI (None when tracking is off or MLflow's default is used)."""
        return resolve_tracking_uri(self._settings.tracking.tracking_uri)[0] if self.enabled else None

    @contextmanager
    def run(self, run_name: str, tags: Mapping[str, str], resume: str | None = None) -> Iterator[str | None]:
        """Start (or, given its id, resume) the MLflow run of a seg-spark run; yield its id.

        The MLflow run ends FINISHED when the block ends and FAILED when it raises.
        """
        if not self.enabled:
            yield None
            return
        configure(self._settings.tracking)
        if resume:
            with mlflow.start_run(run_id=resume) as run:
                yield run.info.run_id
            return
        with mlflow.start_run(run_name=run_name, tags=dict(tags)) as run:
            mlflow.log_params(flatten(self._settings.model_dump(mode="json")))
            yield run.info.run_id

    def mark_failed(self, mlflow_run_ids: list[str]) -> None:
        """End MLflow runs left RUNNING by a process that died, as FAILED."""
        if not self.enabled or not mlflow_run_ids:
            return
        configure(self._settings.tracking)
        client = MlflowClient()
        for run_id in mlflow_run_ids:
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_terminated(run_id, status="FAILED")
                log.warning("MLflow run %s was left running by a process that died: marked FAILED", run_id)

    @staticmethod
    def log_metrics(metrics: Mapping[str, float]) -> None:
        """Log the finite metrics to the active run, if any."""
        if mlflow.active_run() is not None:
            values = {k: float(v) for k, v in metrics.items()}
            mlflow.log_metrics({k: v for k, v in values.items() if _finite(v)})

    @staticmethod
    def log_summary(data: Mapping[str, Any], artifact: str, tags: Mapping[str, str] | None = None) -> None:
        """Attach a small JSON artifact (and tags) to the active run, if any."""
        if mlflow.active_run() is not None:
            mlflow.log_dict(dict(data), artifact)
            if tags:
                mlflow.set_tags(dict(tags))

    @staticmethod
    def log_figure(figure: Any, artifact: str) -> None:
        """Attach a matplotlib figure as a PNG artifact to the active run, if any."""
        if mlflow.active_run() is not None:
            mlflow.log_figure(figure, artifact)

    @staticmethod
    def log_artifact(path: Path, folder: str) -> None:
        """Attach a file under ``folder`` to the active run, if any."""
        if mlflow.active_run() is not None:
            mlflow.log_artifact(str(path), folder)

    @contextmanager
    def child(self, run_name: str, params: Mapping[str, Any]) -> Iterator[None]:
        """A nested run of the active run (e.g. one model-selection candidate); nothing when none is active."""
        if mlflow.active_run() is None:
            yield
            return
        with mlflow.start_run(run_name=run_name, nested=True):
            mlflow.log_params({k: str(v) for k, v in params.items()})
            yield

    def log_spark_model(
        self, model: Any, registered_name: str | None, attempt_id: str, artifact_path: str = "model"
    ) -> tuple[str | None, str | None]:
        """Log a fitted Spark ML PipelineModel to the active run (under ``artifact_path``), registering it by name.

        The registry version is tagged with ``attempt_id`` as it is created, so rolling the
        attempt back can delete it (``delete_model_versions``).

        Returns:
            The model URI and, when registered, the new registry version (both None when
            there is no active run or ``tracking.log_model`` is off).
        """
        if mlflow.active_run() is None or not self._settings.tracking.log_model:
            return None, None
        import pyspark
        from mlflow import spark as mlflow_spark

        info = mlflow_spark.log_model(
            model,
            artifact_path,
            # Explicit requirements: inference would load the model again in a subprocess.
            pip_requirements=[f"pyspark=={pyspark.__version__}", f"mlflow=={mlflow.__version__}"],
        )
        if not registered_name or not self._settings.tracking.register_model:
            return info.model_uri, None
        version = mlflow.register_model(info.model_uri, registered_name, tags={ATTEMPT_TAG: attempt_id})
        return info.model_uri, str(version.version)

    def delete_model_versions(self, attempt_id: str) -> list[str]:
        """Delete the registry versions (of every model seg-spark registers) that attempt ``attempt_id`` registered.

        Returns:
            What was deleted, as ``name version N``.
        """
        if not self.enabled or not self._settings.tracking.register_model:
            return []
        configure(self._settings.tracking)
        client = MlflowClient()
        deleted: list[str] = []
        for name in registered_names(self._settings):
            escaped = name.replace("'", "\\'")
            found = client.search_model_versions(f"name = '{escaped}'")
            versions = sorted((v.version for v in found if v.tags.get(ATTEMPT_TAG) == attempt_id), key=int)
            for version in versions:
                client.delete_model_version(name, version)
                deleted.append(f"{name} version {version}")
        return deleted
