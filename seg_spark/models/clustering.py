"""The clustering algorithms behind one interface, their guards, and per-customer assignment.

``make_clusterer`` builds K-Means (k-means|| init), bisecting K-Means or a Gaussian mixture
reading the prepared ``features`` vector; ``fit_clusterer`` guards the input first (empty,
too few distinct points, non-finite values), fits under a wall-clock limit and rejects a
mixture whose covariances collapsed. ``assign`` turns a fitted model's output into the
segment, the distance to its centre (or the membership probability) and the runner-up.
"""

from __future__ import annotations

import fnmatch
import functools
import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

import numpy as np
from pyspark import InheritableThread, StorageLevel
from pyspark.ml import Model, Pipeline, PipelineModel
from pyspark.ml.clustering import (
    BisectingKMeans,
    BisectingKMeansModel,
    GaussianMixture,
    GaussianMixtureModel,
    KMeans,
    KMeansModel,
)
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.linalg import Vectors
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from seg_spark.config import ModelSettings, PrepSettings
from seg_spark.errors import DataError
from seg_spark.models import local_kmeans
from seg_spark.models.prep import FEATURES_COL, Preparation, plan_preparation

log = logging.getLogger(__name__)

SEGMENT_COL = "segment_id"
PROBABILITY_COL = "membership"
ALGORITHMS = ("kmeans", "bisecting_kmeans", "gaussian_mixture")
# A mixture component whose covariance's smallest eigenvalue is below this share of the
# average variance has collapsed onto a subspace (a few repeated points).
COLLAPSE_RATIO = 1e-8

T = TypeVar("T")
R = TypeVar("R")


class ModelInputError(DataError):
    """The modelling input cannot support the configured model."""


class DegenerateModelError(ModelInputError):
    """A fit ended in a degenerate model (e.g. a collapsed mixture component)."""


class FitTimeoutError(DataError, TimeoutError):
    """A fit ran past ``model.fit_timeout_seconds`` and was cancelled."""


def resolve_features(available: Sequence[str], settings: ModelSettings) -> tuple[str, ...]:
    """The configured model features (globs expanded against ``available``), in order, without repeats.

    Raises:
        ModelInputError: A configured feature or pattern matches no column.
    """
    chosen: list[str] = []
    for entry in settings.features:
        matches = [c for c in available if fnmatch.fnmatchcase(c, entry)]
        if not matches:
            raise ModelInputError(
                f"model.features entry {entry!r} matches no column of customer_features "
                f"(is its family in features.families?); columns: {', '.join(available)}"
            )
        chosen += [m for m in matches if m not in chosen]
    return tuple(chosen)


def model_input(features: DataFrame) -> DataFrame:
    """Customers the model segments: those with at least one purchase (missing values are imputed)."""
    return features.filter(F.col("frequency") > 0)


def prepare(data: DataFrame, features: Sequence[str], settings: PrepSettings) -> tuple[PipelineModel, Preparation]:
    """Plan and fit the preparation stages (impute, log1p, clip, scale, PCA) on ``data``."""
    preparation = plan_preparation(data, features, settings)
    return Pipeline(stages=list(preparation.stages)).fit(data), preparation


def make_clusterer(algorithm: str, k: int, settings: ModelSettings, seed: int | None = None) -> Any:
    """An unfitted MLlib clustering estimator reading ``features`` and writing ``segment_id``."""
    seed = settings.seed if seed is None else seed
    common: dict[str, Any] = {
        "featuresCol": FEATURES_COL,
        "predictionCol": SEGMENT_COL,
        "k": k,
        "maxIter": settings.max_iter,
    }
    if algorithm == "kmeans":
        return KMeans(**common, tol=settings.tol, seed=seed, initMode="k-means||")
    if algorithm == "bisecting_kmeans":
        return BisectingKMeans(**common, seed=seed, minDivisibleClusterSize=settings.min_divisible_cluster_size)
    if algorithm == "gaussian_mixture":
        return GaussianMixture(**common, tol=settings.tol, seed=seed, probabilityCol=PROBABILITY_COL)
    raise ValueError(f"unknown algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}")


def distinct_points(vectors: DataFrame, at_most: int) -> int:
    """How many distinct feature vectors there are, counting no further than ``at_most``."""
    return vectors.select(vector_to_array(F.col(FEATURES_COL)).alias("x")).distinct().limit(at_most).count()


def check_input(vectors: DataFrame, k: int, algorithm: str) -> int:
    """Guard a fit: the k that can be fitted, or a clear error.

    Documented outcomes:
      * no rows, or one distinct point: ``ModelInputError`` (nothing to segment);
      * non-finite values: ``ModelInputError`` (a mixture would hang inside LAPACK);
      * fewer distinct points than k (including k >= customers): k is lowered to the number
        of distinct points, with a warning.

    Returns:
        The k to fit (``k`` or lower).
    """
    x = vector_to_array(F.col(FEATURES_COL))
    row = vectors.select(
        F.count(F.lit(1)).alias("n"),
        F.sum(F.exists(x, lambda v: F.isnan(v) | (F.abs(v) == float("inf"))).cast("int")).alias("bad"),
    ).first()
    if row is None:  # a global aggregation always has exactly one row
        raise RuntimeError("the input check aggregation returned no row")
    return _checked_k(row["n"], row["bad"] or 0, lambda: distinct_points(vectors, k), k, algorithm)


def check_rows(rows: np.ndarray, k: int, algorithm: str, distinct: int | None = None) -> int:
    """``check_input`` for prepared rows on the driver (n x d): the k that can be fitted, or a clear error.

    ``distinct`` is the rows' distinct count when the caller already has it (the sweep fits
    every candidate on the same rows); otherwise it is counted.
    """
    bad = int((~np.isfinite(rows)).any(axis=1).sum())
    count = (lambda: distinct) if distinct is not None else (lambda: distinct_rows(rows))
    return _checked_k(len(rows), bad, count, k, algorithm)


def distinct_rows(rows: np.ndarray) -> int:
    """How many distinct rows a driver-side matrix has."""
    return len(np.unique(rows, axis=0)) if len(rows) else 0


def _checked_k(rows: int, bad: int, count_distinct: Callable[[], int], k: int, algorithm: str) -> int:
    """The outcomes documented in ``check_input``, from the row count, the non-finite rows and the distinct rows."""
    if rows == 0:
        raise ModelInputError("no customers to segment: none has a purchase before the as-of date")
    if bad:
        raise ModelInputError(
            f"{bad} customers have NaN or infinite prepared features; check model.prep "
            "(impute is on by default) and the features they come from"
        )
    distinct = count_distinct()
    if distinct < 2:
        raise ModelInputError(
            f"all {rows} customers have identical prepared features: there is nothing to segment "
            "(add features or more history)"
        )
    if distinct < k:
        log.warning("%s: only %d distinct customers for k=%d; fitting k=%d", algorithm, distinct, k, distinct)
        return distinct
    return k


def run_with_time_limit(
    spark: SparkSession, seconds: float, description: str, action: Callable[[], T], attempts: int = 1
) -> T:
    """Run ``action`` (Spark jobs) in a job group, cancelling the group if it runs past ``seconds``.

    A fit past the limit is usually stuck rather than slow (a job whose tasks stopped
    progressing), and a fresh attempt of the same seeded fit gives the same model, so up to
    ``attempts`` are made. Each cancelled attempt logs the JVM's task threads first: the
    stack that stopped is the only evidence a hang leaves.

    Raises:
        FitTimeoutError: Every attempt ran past ``seconds``.
    """
    for attempt in range(1, attempts + 1):
        group = f"seg-spark-{uuid.uuid4().hex[:12]}"
        finished, outcome = _start_in_job_group(spark, group, description, action)
        if finished.wait(seconds):
            if "error" in outcome:
                raise outcome["error"]
            return cast(T, outcome["value"])
        log.warning(
            "%s: attempt %d of %d ran past %gs; the JVM's task threads:\n%s",
            description,
            attempt,
            attempts,
            seconds,
            task_thread_dump(spark),
        )
        spark.sparkContext.cancelJobGroup(group)
        finished.wait(30)
    raise FitTimeoutError(
        f"{description} did not finish within model.fit_timeout_seconds = {seconds:g}s "
        f"({attempts} attempt(s), model.fit_attempts) and was cancelled; "
        "raise the limit, lower model.max_iter, or fit on fewer customers"
    )


def fit_with_time_limit(spark: SparkSession, settings: ModelSettings, description: str, fit: Callable[[], T]) -> T:
    """``run_with_time_limit`` with the ``model`` section's limit and attempts."""
    return run_with_time_limit(spark, settings.fit_timeout_seconds, description, fit, settings.fit_attempts)


def _start_in_job_group(
    spark: SparkSession, group: str, description: str, action: Callable[[], T]
) -> tuple[threading.Event, dict[str, Any]]:
    """Start ``action`` on a thread whose Spark jobs belong to ``group``; the event is set when it ends."""
    outcome: dict[str, Any] = {}
    finished = threading.Event()

    def target() -> None:
        spark.sparkContext.setJobGroup(group, description, interruptOnCancel=True)
        try:
            outcome["value"] = action()
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc
        finally:
            finished.set()

    InheritableThread(target=target, daemon=True).start()
    return finished, outcome


def task_thread_dump(spark: SparkSession, frames: int = 40) -> str:
    """The stacks of the driver JVM's task, scheduler and block-manager threads (best effort)."""
    wanted = ("Executor task launch", "dag-scheduler", "block-manager", "dispatcher", "seg-spark")
    try:
        jvm: Any = spark.sparkContext._jvm  # py4j is the only way to the JVM's threads
        threads = jvm.java.lang.management.ManagementFactory.getThreadMXBean().dumpAllThreads(True, True)
        lines = []
        for info in threads:
            if not any(name in info.getThreadName() for name in wanted):
                continue
            lines.append(f'"{info.getThreadName()}" {info.getThreadState()} on {info.getLockName()}')
            lines += [f"    at {frame}" for frame in list(info.getStackTrace())[:frames]]
        return "\n".join(lines) or "(no task threads)"
    except Exception as exc:  # a dump must never hide the timeout it explains
        return f"(thread dump unavailable: {exc})"


def in_parallel(fit: Callable[[T], R], items: Sequence[T], workers: int) -> list[R]:
    """``fit`` over ``items``, at most ``workers`` at once, results in the order of ``items``.

    Spark runs the jobs of several driver threads side by side. A fit on a bounded sample is
    many short jobs (one per iteration) with the driver scheduling in between, which leaves
    cores idle; other fits fill them. Each fit depends only on its seed and its input's row
    order, so side by side they are the fits one after another would give.
    """
    if workers <= 1 or len(items) <= 1:
        return [fit(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items)), thread_name_prefix="seg-spark-fit") as pool:
        return list(pool.map(fit, items))


def jittered(vectors: DataFrame, scale: float, seed: int) -> DataFrame:
    """Add deterministic uniform noise of standard deviation ``scale`` to every coordinate.

    A mixture fitted on it has every component's covariance at least about ``scale**2`` on
    the diagonal (like scikit-learn's ``reg_covar``), so customers sharing exactly the same
    value (all one-order customers, clipped values) cannot collapse a component. The noise
    is a hash of (seed, customer id, coordinate): the same for a seed on any partitioning.
    """
    identity = F.col("customer_id") if "customer_id" in vectors.columns else F.monotonically_increasing_id()
    half_width = scale * 3**0.5  # uniform on [-a, a] has standard deviation a / sqrt(3)

    def noise(i: Column) -> Column:
        unit = (F.xxhash64(F.lit(seed), identity, i) % 1_000_003).cast("double") / 1_000_003  # in (-1, 1)
        return F.lit(half_width) * unit

    x = vector_to_array(F.col(FEATURES_COL))
    moved = F.transform(x, lambda v, i: v + noise(i))
    return vectors.withColumn(FEATURES_COL, array_to_vector(moved))


def gaussian_parameters(model: GaussianMixtureModel) -> tuple[list[float], np.ndarray, np.ndarray]:
    """A fitted mixture's weights, means (k x d) and covariances (k x d x d)."""
    rows = model.gaussiansDF.collect()
    means = np.array([r["mean"].toArray() for r in rows])
    covariances = np.array([r["cov"].toArray() for r in rows])
    return [float(w) for w in model.weights], means, covariances


def collapsed_components(covariances: np.ndarray) -> list[int]:
    """Components whose covariance is not safely positive definite (collapsed onto a few points)."""
    collapsed = []
    for i, covariance in enumerate(covariances):
        eigenvalues = np.linalg.eigvalsh(covariance)
        scale = max(float(np.trace(covariance)) / len(covariance), 1e-300)
        if not np.all(np.isfinite(eigenvalues)) or eigenvalues.min() <= COLLAPSE_RATIO * scale:
            collapsed.append(i)
    return collapsed


def fit_clusterer(
    spark: SparkSession,
    vectors: DataFrame,
    algorithm: str,
    k: int,
    settings: ModelSettings,
    *,
    seed: int | None = None,
    lower_k: bool,
) -> Model:
    """Fit one algorithm on prepared vectors, guarded and under the wall-clock limit.

    Args:
        spark: The session.
        vectors: Prepared rows (``features`` vector), cached.
        algorithm: One of ``ALGORITHMS``.
        k: Segments wanted.
        settings: The ``model`` section.
        seed: Overrides ``settings.seed`` (bootstrap refits).
        lower_k: With fewer distinct points than k, fit fewer segments (True) or raise (False).

    Raises:
        ModelInputError: The input cannot be segmented (see ``check_input``).
        DegenerateModelError: Every start of a mixture collapsed a component.
        FitTimeoutError: The fit ran past ``model.fit_timeout_seconds``.
    """
    fitted_k = check_input(vectors, k, algorithm)
    if fitted_k < k and not lower_k:
        raise ModelInputError(f"only {fitted_k} distinct customers: {algorithm} cannot find k={k} segments")
    k = fitted_k
    seed = settings.seed if seed is None else seed
    if algorithm == "gaussian_mixture":
        return _fit_mixture(spark, vectors, k, settings, seed)
    if algorithm == "kmeans":
        return _fit_kmeans(spark, vectors, k, settings, seed)
    estimator = make_clusterer(algorithm, k, settings, seed)
    return fit_with_time_limit(spark, settings, f"{algorithm} k={k}", lambda: estimator.fit(vectors))


def fit_kmeans_on_driver(
    rows: np.ndarray,
    k: int,
    settings: ModelSettings,
    *,
    seed: int | None = None,
    lower_k: bool,
    distinct: int | None = None,
) -> local_kmeans.LocalKMeans:
    """K-Means on prepared rows held by the driver (the bounded selection sample), guarded like ``fit_clusterer``.

    The best of ``model.kmeans_restarts`` k-means++ starts, Lloyd iterations up to
    ``model.max_iter`` with MLlib's ``model.tol`` criterion.

    Args:
        rows: Prepared rows (n x d).
        k: Segments wanted.
        settings: The ``model`` section.
        seed: Overrides ``settings.seed`` (bootstrap refits).
        lower_k: With fewer distinct rows than k, fit fewer segments (True) or raise (False).
        distinct: The rows' distinct count, when already known (see ``check_rows``).

    Raises:
        ModelInputError: The rows cannot be segmented (see ``check_input``), or have fewer
            distinct points than k and ``lower_k`` is False.
    """
    fitted_k = check_rows(rows, k, "kmeans", distinct)
    if fitted_k < k and not lower_k:
        raise ModelInputError(f"only {fitted_k} distinct customers: kmeans cannot find k={k} segments")
    return local_kmeans.fit(
        rows,
        fitted_k,
        starts=settings.kmeans_restarts,
        max_iter=settings.max_iter,
        tol=settings.tol,
        seed=settings.seed if seed is None else seed,
    )


def kmeans_model(spark: SparkSession, chosen: np.ndarray) -> tuple[KMeansModel, np.ndarray]:
    """An MLlib K-Means model whose centres are exactly ``chosen`` (k x d), to assign customers in Spark.

    PySpark's K-Means takes no initial model. Fitted with k = len(chosen) and random
    starts on the k centres themselves, it gets them back: the start is a sample of k rows
    out of k, each row is its own segment, and one Lloyd step leaves every centre in place.

    Returns:
        The model, and for each of its segments the row of ``chosen`` it is (MLlib orders
        the centres as it sampled them).

    Raises:
        ValueError: Fewer than 2 or repeated centres.
    """
    k = len(chosen)
    distinct = len(np.unique(chosen, axis=0))
    if k < 2 or distinct < k:
        raise ValueError(f"an MLlib K-Means model needs at least 2 distinct centres; got {k} ({distinct} distinct)")
    frame = spark.createDataFrame([(Vectors.dense(c),) for c in chosen.tolist()], [FEATURES_COL]).coalesce(1)
    frame = frame.persist(StorageLevel.MEMORY_AND_DISK)  # MLlib warns about uncached input
    try:
        estimator = KMeans(
            featuresCol=FEATURES_COL, predictionCol=SEGMENT_COL, k=k, maxIter=1, initMode="random", seed=0
        )
        model = estimator.fit(frame)
    finally:
        frame.unpersist()
    got = centers(model)
    if got is None or got.shape != chosen.shape:
        raise RuntimeError(f"MLlib K-Means returned {None if got is None else len(got)} centres for {k}")
    positions = np.argmin(local_kmeans.squared_distances(got, chosen), axis=1)
    if len(set(positions.tolist())) != k or not np.allclose(got, chosen[positions], rtol=1e-12, atol=1e-12):
        raise RuntimeError("MLlib K-Means moved the centres it was fitted on; cannot build the chosen model")
    return model, positions


def _fit_kmeans(spark: SparkSession, vectors: DataFrame, k: int, settings: ModelSettings, seed: int) -> Model:
    """The best of ``model.kmeans_restarts`` K-Means fits by within-segment sum of squares (training cost).

    One k-means|| start can end in a poor local optimum even on well-separated groups, and
    which one depends on the order rows arrive in; the starts differ only by seed.
    """

    def start(restart: int) -> Model:
        estimator = make_clusterer("kmeans", k, settings, seed + restart)
        description = f"kmeans k={k} start {restart + 1}/{settings.kmeans_restarts}"
        fit = functools.partial(estimator.fit, vectors)
        return fit_with_time_limit(spark, settings, description, fit)

    starts = in_parallel(start, list(range(settings.kmeans_restarts)), settings.parallel_fits)
    return min(starts, key=lambda model: cast(KMeansModel, model).summary.trainingCost)


def _fit_mixture(spark: SparkSession, vectors: DataFrame, k: int, settings: ModelSettings, seed: int) -> Model:
    """The best of ``model.gmm_restarts`` mixtures by log-likelihood, each guarded against collapse.

    Every restart sees the same (jittered) training data, so their log-likelihoods compare;
    only the random start differs (seeds ``seed``, ``seed + 1``, ...).
    """
    training = vectors  # cached by the caller
    if settings.gmm_regularization > 0:
        training = jittered(vectors, settings.gmm_regularization, seed)
        if settings.gmm_restarts > 1:  # every start reads the same jittered rows
            training = training.persist(StorageLevel.MEMORY_AND_DISK)
    best, best_ll, collapsed_in = None, float("-inf"), []
    try:
        for restart in range(settings.gmm_restarts):
            estimator = make_clusterer("gaussian_mixture", k, settings, seed + restart)
            model = fit_with_time_limit(
                spark,
                settings,
                f"gaussian_mixture k={k} start {restart + 1}/{settings.gmm_restarts}",
                functools.partial(estimator.fit, training),
            )
            weights, _, covariances = gaussian_parameters(model)
            collapsed = collapsed_components(covariances)
            if collapsed or not all(np.isfinite(weights)):
                collapsed_in.append(f"start {restart + 1}: component(s) {collapsed}")
                continue
            ll = float(model.summary.logLikelihood)
            log.info("gaussian_mixture k=%d start %d: log-likelihood %.4f", k, restart + 1, ll)
            if ll > best_ll:
                best, best_ll = model, ll
    finally:
        if training is not vectors:
            training.unpersist()
    if best is None:
        raise DegenerateModelError(
            f"gaussian_mixture k={k}: every start collapsed ({'; '.join(collapsed_in)}: singular covariance, "
            "too few distinct customers in them); use a lower k, kmeans, a larger "
            "model.gmm_regularization or model.prep.pca_components"
        )
    return best


def model_k(model: Model) -> int:
    """The number of segments a fitted model has (bisecting K-Means may find fewer than asked)."""
    if isinstance(model, GaussianMixtureModel):
        return len(model.weights)
    return len(_cluster_centers(model))


def centers(model: Model) -> np.ndarray | None:
    """Cluster centres (k x d) of K-Means-like models; None for a mixture."""
    if isinstance(model, GaussianMixtureModel):
        return None
    return np.array([c.toArray() if hasattr(c, "toArray") else np.asarray(c) for c in _cluster_centers(model)])


def _cluster_centers(model: Model) -> list[np.ndarray]:
    """The centres of a fitted model other than a mixture (K-Means or bisecting K-Means)."""
    return cast(KMeansModel | BisectingKMeansModel, model).clusterCenters()


def _literal(values: Sequence[float] | np.ndarray) -> Column:
    return F.array(*[F.lit(float(v)) for v in values])


def assign(model: Model, vectors: DataFrame, keep: Sequence[str] = ("customer_id",)) -> DataFrame:
    """Each row's segment, its distance to the segment's centre or its membership probability, and the runner-up.

    Args:
        model: A fitted clustering model (not the pipeline: ``vectors`` are already prepared).
        vectors: Rows with the prepared ``features`` vector.
        keep: Columns of ``vectors`` carried through.

    Returns:
        ``keep`` columns, ``segment_id``, ``segment_distance`` (Euclidean, in the prepared space;
        null for a mixture), ``segment_probability`` (mixture only), ``runner_up_segment_id``,
        ``runner_up_distance`` / ``runner_up_probability``, and ``membership`` (all probabilities,
        mixture only).
    """
    scored = model.transform(vectors)
    segment = F.col(SEGMENT_COL).cast("int")
    if isinstance(model, GaussianMixtureModel):
        probabilities = vector_to_array(F.col(PROBABILITY_COL))
        ranked = F.array_sort(
            F.transform(probabilities, lambda p, i: F.struct((-p).alias("score"), i.alias("i"), p.alias("p")))
        )
        runner_up = F.get(F.filter(ranked, lambda e: e["i"] != segment), 0)  # null with one segment
        return scored.select(
            *keep,
            segment.alias(SEGMENT_COL),
            F.lit(None).cast("double").alias("segment_distance"),
            F.element_at(probabilities, segment + 1).alias("segment_probability"),
            runner_up["i"].alias("runner_up_segment_id"),
            F.lit(None).cast("double").alias("runner_up_distance"),
            runner_up["p"].alias("runner_up_probability"),
            probabilities.alias("membership"),
        )
    x = vector_to_array(F.col(FEATURES_COL))
    distances = []
    for i, center in enumerate(_cluster_centers(model)):
        difference = F.zip_with(x, _literal(center), lambda a, b: a - b)
        squared = F.aggregate(difference, F.lit(0.0), lambda acc, v: acc + v * v)
        distances.append(F.struct(F.sqrt(squared).alias("score"), F.lit(i).alias("i")))
    ranked = F.array_sort(F.array(*distances))
    own = F.filter(ranked, lambda e: e["i"] == segment)[0]
    runner_up = F.get(F.filter(ranked, lambda e: e["i"] != segment), 0)  # null with one segment
    return scored.select(
        *keep,
        segment.alias(SEGMENT_COL),
        own["score"].alias("segment_distance"),
        F.lit(None).cast("double").alias("segment_probability"),
        runner_up["i"].alias("runner_up_segment_id"),
        runner_up["score"].alias("runner_up_distance"),
        F.lit(None).cast("double").alias("runner_up_probability"),
        F.lit(None).cast("array<double>").alias("membership"),
    )


def bisecting_hierarchy(model: BisectingKMeansModel) -> list[dict[str, Any]]:
    """The split tree of a bisecting K-Means model: one dict per node, root first.

    MLlib keeps the tree in the model but does not expose it in Python; it is read through
    the JVM object. Leaves carry their ``segment_id``; internal nodes have null.
    """
    java = model._java_obj
    if java is None:
        raise ValueError("the bisecting K-Means model has no JVM object (it is not a fitted model)")
    # Scala mangles the private field's name (org$apache$...$$parentModel).
    field = next(f for f in java.getClass().getDeclaredFields() if f.getName().endswith("parentModel"))
    field.setAccessible(True)
    root = field.get(java).root()
    nodes: list[dict[str, Any]] = []

    def visit(node: Any, parent: int | None, depth: int) -> None:
        node_id = len(nodes)
        leaf = bool(node.isLeaf())
        nodes.append(
            {
                "node_id": node_id,
                "parent_id": parent,
                "depth": depth,
                "segment_id": int(node.index()) if leaf else None,
                "size": int(node.size()),
                "cost": float(node.cost()),
                "center": [float(v) for v in node.center().toArray()],
            }
        )
        for child in node.children():
            visit(child, node_id, depth + 1)

    visit(root, None, 0)
    return nodes
