"""Internal quality of a clustering, computed on the driver from a bounded labelled sample.

Model selection scores every candidate on the same sample (at most ``model.selection.
sample_rows`` customers), so one Spark job per candidate brings the sample's vectors and
labels to the driver (Arrow) and every metric is exact numpy arithmetic on them:

* WSSSE and Calinski-Harabasz from per-segment sufficient statistics (count, sum vector,
  sum of squared norms);
* silhouette with squared Euclidean distances in closed form from the same statistics
  (Spark's ``ClusteringEvaluator``, equal to scikit-learn's ``silhouette_score(metric="sqeuclidean")``),
  O(n k d) rather than O(n^2);
* Davies-Bouldin from each segment's mean distance to its centroid;
* GMM log-likelihood and BIC from the fitted Gaussians (Cholesky factors, log-sum-exp).

Centroids are the means of the rows given each label (scikit-learn's definition), not the
model's centres, which K-Means computes one step earlier.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F


@dataclass(frozen=True)
class LabelledSample:
    """Vectors and their segment labels, on the driver (bounded: the selection sample)."""

    x: np.ndarray  # (n, d)
    labels: np.ndarray  # (n,) int


def collect_labelled(scored: DataFrame, features_col: str, label_col: str, dimension: int) -> LabelledSample:
    """Bring a bounded scored sample to the driver in one Arrow transfer.

    Args:
        scored: Rows with a vector column and an integer label (at most the selection sample).
        features_col: The vector column.
        label_col: The label column.
        dimension: The vectors' length.
    """
    table = scored.select(
        vector_to_array(F.col(features_col)).alias("x"), F.col(label_col).cast("long").alias("label")
    ).toArrow()
    labels = table.column("label").to_numpy()
    return LabelledSample(x=_matrix(table.column("x"), dimension), labels=labels)


def collect_vectors(rows: DataFrame, features_col: str, dimension: int, order_by: str) -> np.ndarray:
    """Bring a bounded frame's vectors to the driver (n x d) in one Arrow transfer, ordered by ``order_by``."""
    ordered = rows.orderBy(order_by).select(vector_to_array(F.col(features_col)).alias("x"))
    return _matrix(ordered.toArrow().column("x"), dimension)


def _matrix(column: pa.ChunkedArray, dimension: int) -> np.ndarray:
    """An Arrow column of equal-length double arrays as an n x d matrix."""
    values = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=float).reshape(len(column), dimension)


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


def segment_summary(sample: LabelledSample) -> SegmentSummary:
    """Count, sum vector and sum of squared norms per segment (labels sorted)."""
    labels, index = np.unique(sample.labels, return_inverse=True)
    k = len(labels)
    counts = np.bincount(index, minlength=k).astype(float)
    sums = np.zeros((k, sample.x.shape[1]))
    np.add.at(sums, index, sample.x)
    squared_norms = np.bincount(index, weights=(sample.x**2).sum(axis=1), minlength=k)
    return SegmentSummary(labels=tuple(int(v) for v in labels), counts=counts, sums=sums, squared_norms=squared_norms)


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


def _segment_index(sample: LabelledSample, summary: SegmentSummary) -> np.ndarray:
    return np.searchsorted(np.asarray(summary.labels), sample.labels)


def mean_centroid_distances(sample: LabelledSample, summary: SegmentSummary) -> np.ndarray:
    """Each segment's mean Euclidean distance of its rows to its centroid."""
    index = _segment_index(sample, summary)
    distances = np.sqrt(((sample.x - summary.centroids[index]) ** 2).sum(axis=1))
    return np.bincount(index, weights=distances, minlength=len(summary.labels)) / summary.counts


def davies_bouldin(sample: LabelledSample, summary: SegmentSummary) -> float:
    """Mean over segments of the worst (spread_i + spread_j) / centroid distance (lower is better)."""
    if len(summary.labels) < 2:
        return float("nan")
    spread = mean_centroid_distances(sample, summary)
    centroids = summary.centroids
    distances = np.sqrt(((centroids[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2))
    if np.allclose(spread, 0) or np.allclose(distances, 0):
        return 0.0
    distances[distances == 0] = np.inf
    return float(np.max((spread[:, None] + spread[None, :]) / distances, axis=1).mean())


def silhouette(sample: LabelledSample, summary: SegmentSummary) -> float:
    """Mean silhouette with squared Euclidean distances, in closed form (Spark's ``ClusteringEvaluator``).

    A row's mean squared distance to the rows of segment c is
    ``|x|^2 + Q_c / n_c - 2 x . S_c / n_c``; its own segment's mean excludes the row itself
    (times ``n_c / (n_c - 1)``), and a row alone in its segment scores 0.
    """
    if len(summary.labels) < 2:
        return float("nan")
    x = sample.x
    own = _segment_index(sample, summary)
    counts = summary.counts
    mean_sq = (x**2).sum(axis=1)[:, None] + summary.squared_norms / counts - 2.0 * (x @ summary.sums.T) / counts
    mean_sq = np.maximum(mean_sq, 0.0)
    rows = np.arange(len(own))
    size = counts[own]
    a = mean_sq[rows, own] * size / np.maximum(size - 1, 1)
    mean_sq[rows, own] = np.inf
    b = mean_sq.min(axis=1)
    larger = np.maximum(a, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.where(larger > 0, (b - a) / larger, 0.0)
    return float(np.where(size > 1, s, 0.0).mean())


def gaussian_log_likelihood(
    sample: LabelledSample, weights: Sequence[float], means: np.ndarray, covariances: np.ndarray
) -> float:
    """Total log-likelihood of the sample's rows under a Gaussian mixture.

    Returns:
        The log-likelihood, or -inf when a component's covariance is not positive definite
        (a collapsed component).
    """
    x = sample.x
    d = means.shape[1]
    terms = []
    for weight, mean, covariance in zip(weights, means, covariances, strict=True):
        try:
            lower = np.linalg.cholesky(covariance)
        except np.linalg.LinAlgError:
            return float("-inf")
        # Quadratic form (x - mu)' S^-1 (x - mu) = ||L^-1 (x - mu)||^2 with S = L L'.
        z = np.linalg.solve(lower, (x - mean).T)
        constant = math.log(weight) - 0.5 * d * math.log(2 * math.pi) - float(np.log(np.diag(lower)).sum())
        terms.append(constant - 0.5 * (z**2).sum(axis=0))
    stacked = np.vstack(terms)
    top = stacked.max(axis=0)
    return float((top + np.log(np.exp(stacked - top).sum(axis=0))).sum())


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
