"""Internal quality of a clustering, computed in Spark: only per-segment summaries reach the driver.

* silhouette: Spark's ``ClusteringEvaluator`` (squared Euclidean distances, as scikit-learn's
  ``silhouette_score(metric="sqeuclidean")``);
* WSSSE, Calinski-Harabasz and Davies-Bouldin: from one aggregation per segment (count,
  sum vector, sum of squared norms), then one more for the mean distance to the centroid;
* GMM log-likelihood and BIC: each row's mixture density from the fitted Gaussians, summed
  in Spark (the Gaussians' Cholesky factors are computed on the driver: k small d x d matrices).

Centroids are the means of the rows given each label (scikit-learn's definition), not the
model's centres, which K-Means computes one step earlier.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.functions import vector_to_array
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F


@dataclass(frozen=True)
class SegmentSummary:
    """Per-segment sufficient statistics of a labelled sample (small: k x d)."""

    labels: tuple[int, ...]
    counts: np.ndarray  # (k,)
    sums: np.ndarray  # (k, d)
    squared_norms: np.ndarray  # (k,)

    @property
    def n(self) -> int:
        """Rows summarised."""
        return int(self.counts.sum())

    @property
    def centroids(self) -> np.ndarray:
        """Mean vector per segment (k x d)."""
        return self.sums / self.counts[:, None]


def _array(features_col: str) -> Column:
    return vector_to_array(F.col(features_col))


def _dot(left: Column, right: Column) -> Column:
    return F.aggregate(F.zip_with(left, right, lambda a, b: a * b), F.lit(0.0), lambda acc, v: acc + v)


def _literal(values: Sequence[float]) -> Column:
    return F.array(*[F.lit(float(v)) for v in values])


def segment_summary(scored: DataFrame, features_col: str, label_col: str, dimension: int) -> SegmentSummary:
    """Count, sum vector and sum of squared norms per segment, in one aggregation.

    Args:
        scored: Rows with a vector column and an integer label column.
        features_col: The vector column (the model's input space).
        label_col: The segment label.
        dimension: The vectors' length.
    """
    x = _array(features_col)
    rows = (
        scored.select(F.col(label_col).alias("label"), x.alias("x"))
        .groupBy("label")
        .agg(
            F.count(F.lit(1)).alias("n"),
            *[F.sum(F.col("x")[i]).alias(f"s{i}") for i in range(dimension)],
            F.sum(_dot(F.col("x"), F.col("x"))).alias("q"),
        )
        .orderBy("label")
        .collect()
    )
    return SegmentSummary(
        labels=tuple(int(r["label"]) for r in rows),
        counts=np.array([r["n"] for r in rows], dtype=float),
        sums=np.array([[r[f"s{i}"] for i in range(dimension)] for r in rows], dtype=float).reshape(
            len(rows), dimension
        ),
        squared_norms=np.array([r["q"] for r in rows], dtype=float),
    )


def within_sum_of_squares(summary: SegmentSummary) -> float:
    """WSSSE: the sum of squared distances of the rows to their segment's centroid."""
    per_segment = summary.squared_norms - (summary.sums**2).sum(axis=1) / summary.counts
    return float(np.maximum(per_segment, 0.0).sum())


def calinski_harabasz(summary: SegmentSummary) -> float:
    """Between-segment over within-segment dispersion, each per degree of freedom (higher is better)."""
    k, n = len(summary.labels), summary.n
    if k < 2 or n <= k:
        return float("nan")
    overall = summary.sums.sum(axis=0) / n
    between = float((summary.counts * ((summary.centroids - overall) ** 2).sum(axis=1)).sum())
    within = within_sum_of_squares(summary)
    return 1.0 if within == 0 else between * (n - k) / (within * (k - 1))


def mean_centroid_distances(
    scored: DataFrame, features_col: str, label_col: str, summary: SegmentSummary
) -> np.ndarray:
    """Each segment's mean Euclidean distance of its rows to its centroid (one aggregation)."""
    index = {label: i for i, label in enumerate(summary.labels)}
    centroid = F.lit(None).cast("array<double>")
    for label, i in index.items():
        centroid = F.when(F.col(label_col) == label, _literal(summary.centroids[i])).otherwise(centroid)
    difference = F.zip_with(_array(features_col), centroid, lambda a, b: a - b)
    rows = (
        scored.select(F.col(label_col).alias("label"), F.sqrt(_dot(difference, difference)).alias("distance"))
        .groupBy("label")
        .agg(F.avg("distance").alias("mean"))
        .collect()
    )
    means = np.zeros(len(index))
    for r in rows:
        means[index[int(r["label"])]] = r["mean"]
    return means


def davies_bouldin(scored: DataFrame, features_col: str, label_col: str, summary: SegmentSummary) -> float:
    """Mean over segments of the worst (spread_i + spread_j) / centroid distance (lower is better)."""
    if len(summary.labels) < 2:
        return float("nan")
    spread = mean_centroid_distances(scored, features_col, label_col, summary)
    centroids = summary.centroids
    distances = np.sqrt(((centroids[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2))
    if np.allclose(spread, 0) or np.allclose(distances, 0):
        return 0.0
    distances[distances == 0] = np.inf
    return float(np.max((spread[:, None] + spread[None, :]) / distances, axis=1).mean())


def silhouette(scored: DataFrame, features_col: str, label_col: str) -> float:
    """Mean silhouette with squared Euclidean distances (Spark's ClusteringEvaluator)."""
    evaluator = ClusteringEvaluator(
        featuresCol=features_col, predictionCol=label_col, metricName="silhouette", distanceMeasure="squaredEuclidean"
    )
    return float(evaluator.evaluate(scored))


def gaussian_log_likelihood(
    data: DataFrame, features_col: str, weights: Sequence[float], means: np.ndarray, covariances: np.ndarray
) -> float:
    """Total log-likelihood of the rows under a Gaussian mixture, summed in Spark.

    Returns:
        The log-likelihood, or -inf when a component's covariance is not positive definite
        (a collapsed component).
    """
    x = _array(features_col)
    d = means.shape[1]
    terms = []
    for weight, mean, covariance in zip(weights, means, covariances, strict=True):
        try:
            lower = np.linalg.cholesky(covariance)
        except np.linalg.LinAlgError:
            return float("-inf")
        # Quadratic form (x - mu)' S^-1 (x - mu) = ||L^-1 (x - mu)||^2 with S = L L'.
        solve = np.linalg.inv(lower)
        centred = F.zip_with(x, _literal(mean), lambda a, b: a - b)
        z = [_dot(_literal(row), centred) for row in solve]
        quadratic = sum((zi * zi for zi in z), F.lit(0.0))
        constant = math.log(weight) - 0.5 * d * math.log(2 * math.pi) - float(np.log(np.diag(lower)).sum())
        terms.append(F.lit(constant) - 0.5 * quadratic)
    top = F.greatest(*terms) if len(terms) > 1 else terms[0]
    log_density = top + F.log(sum((F.exp(t - top) for t in terms), F.lit(0.0)))
    row = data.select(F.sum(log_density)).first()
    if row is None:  # a global aggregation always has exactly one row
        raise RuntimeError("the log-likelihood aggregation returned no row")
    total = row[0]
    return float("-inf") if total is None else float(total)


def mixture_parameter_count(k: int, d: int) -> int:
    """Free parameters of a full-covariance mixture: means, covariances, weights."""
    return k * d + k * d * (d + 1) // 2 + k - 1


def bic(log_likelihood: float, k: int, d: int, n: int) -> float:
    """Bayesian information criterion (lower is better), as scikit-learn's ``GaussianMixture.bic``."""
    return -2.0 * log_likelihood + mixture_parameter_count(k, d) * math.log(n)


def elbow(ks: Sequence[int], costs: Sequence[float]) -> int | None:
    """The knee of a decreasing cost curve (Kneedle): the k farthest above the chord after normalising.

    Returns:
        The elbow k, or None with fewer than three points or a flat curve.
    """
    if len(ks) < 3:
        return None
    order = np.argsort(ks)
    k = np.asarray(ks, dtype=float)[order]
    cost = np.asarray(costs, dtype=float)[order]
    if not np.all(np.isfinite(cost)) or cost.max() == cost.min():
        return None
    x = (k - k.min()) / (k.max() - k.min())
    y = (cost - cost.min()) / (cost.max() - cost.min())
    return int(k[int(np.argmax((1.0 - y) - x))])
