"""Selection metrics (numpy, driver) and validity metrics (Spark) equal scikit-learn's on the same data (1e-6)."""

import numpy as np
import pytest
from pyspark.ml.linalg import Vectors
from sklearn import metrics as skm
from sklearn.mixture import GaussianMixture as SkGaussianMixture
from sklearn.mixture._gaussian_mixture import _compute_precision_cholesky

from seg_spark.config import ModelSettings
from seg_spark.models import clustering
from seg_spark.models import metrics as m
from seg_spark.models.validation import best_jaccard, contingency, label_agreement

TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def blobs():
    """300 points in 4 dimensions around 3 centres, with uneven spreads and sizes."""
    rng = np.random.default_rng(7)
    centres = np.array([[0, 0, 0, 0], [4, 4, 0, 1], [0, 5, 5, -2]], dtype=float)
    sizes, spreads = [150, 100, 50], [1.0, 0.6, 1.5]
    points = np.vstack([rng.normal(c, s, size=(n, 4)) for c, s, n in zip(centres, spreads, sizes, strict=True)])
    labels = np.repeat([0, 1, 2], sizes)
    # A labelling that is wrong for some points, so the scores are not trivial.
    flipped = rng.random(len(labels)) < 0.1
    noisy = np.where(flipped, (labels + 1) % 3, labels)
    return points, labels, noisy


@pytest.fixture(scope="module")
def scored(spark, blobs):
    points, labels, noisy = blobs
    rows = [
        (i, Vectors.dense(p), int(t), int(n)) for i, (p, t, n) in enumerate(zip(points, labels, noisy, strict=True))
    ]
    return spark.createDataFrame(rows, ["customer_id", "features", "truth", "segment_id"]).cache()


def test_internal_metrics_match_scikit_learn(scored, blobs):
    points, _, noisy = blobs
    # The sample reaches the driver through Arrow: the same rows, whatever their order.
    sample = m.collect_labelled(scored, "features", "segment_id", 4)
    order = np.lexsort(sample.x.T)
    expected_order = np.lexsort(points.T)
    assert np.array_equal(sample.x[order], points[expected_order])
    assert np.array_equal(sample.labels[order], noisy[expected_order])
    summary = m.segment_summary(sample)
    centroids = np.array([points[noisy == j].mean(axis=0) for j in range(3)])
    expected_wssse = sum(((points[noisy == j] - centroids[j]) ** 2).sum() for j in range(3))
    assert m.within_sum_of_squares(summary) == pytest.approx(expected_wssse, rel=TOLERANCE)
    assert m.calinski_harabasz(summary) == pytest.approx(skm.calinski_harabasz_score(points, noisy), rel=TOLERANCE)
    assert m.davies_bouldin(sample, summary) == pytest.approx(skm.davies_bouldin_score(points, noisy), rel=TOLERANCE)
    assert m.silhouette(sample, summary) == pytest.approx(
        skm.silhouette_score(points, noisy, metric="sqeuclidean"), rel=TOLERANCE
    )


def test_silhouette_scores_a_row_alone_in_its_segment_zero_as_scikit_learn_does():
    points = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.2, 5.1], [9.0, 0.0]])
    labels = np.array([0, 0, 1, 1, 2])
    sample = m.LabelledSample(x=points, labels=labels)
    expected = skm.silhouette_score(points, labels, metric="sqeuclidean")
    assert m.silhouette(sample, m.segment_summary(sample)) == pytest.approx(expected, rel=TOLERANCE)


def test_external_validity_matches_scikit_learn(scored, blobs):
    _, labels, noisy = blobs
    agreement = label_agreement(scored, "truth", "segment_id")
    assert agreement["adjusted_rand_index"] == pytest.approx(skm.adjusted_rand_score(labels, noisy), abs=TOLERANCE)
    h, c, v = skm.homogeneity_completeness_v_measure(labels, noisy)
    assert agreement["homogeneity"] == pytest.approx(h, abs=TOLERANCE)
    assert agreement["completeness"] == pytest.approx(c, abs=TOLERANCE)
    assert agreement["v_measure"] == pytest.approx(v, abs=TOLERANCE)


def test_best_jaccard_per_segment(scored, blobs):
    _, labels, noisy = blobs
    best = best_jaccard(contingency(scored, "truth", "segment_id"))
    for segment in range(3):
        expected = max(
            ((labels == segment) & (noisy == other)).sum() / ((labels == segment) | (noisy == other)).sum()
            for other in range(3)
        )
        assert best[segment] == pytest.approx(expected, abs=1e-12)


def test_gaussian_log_likelihood_and_bic_match_scikit_learn(spark, scored, blobs):
    points = blobs[0]
    settings = ModelSettings(k=3, max_iter=30, seed=3)
    model = clustering.fit_clusterer(spark, scored.select("features"), "gaussian_mixture", 3, settings, lower_k=False)
    weights, means, covariances = clustering.gaussian_parameters(model)
    reference = SkGaussianMixture(n_components=3, covariance_type="full")
    reference.weights_, reference.means_, reference.covariances_ = np.array(weights), means, covariances
    reference.precisions_cholesky_ = _compute_precision_cholesky(covariances, "full")
    log_likelihood = m.gaussian_log_likelihood(
        m.LabelledSample(points, np.zeros(len(points))), weights, means, covariances
    )
    assert log_likelihood == pytest.approx(reference.score(points) * len(points), rel=TOLERANCE)
    assert m.bic(log_likelihood, 3, 4, len(points)) == pytest.approx(reference.bic(points), rel=TOLERANCE)


def test_elbow_finds_the_knee_of_a_decreasing_curve():
    ks = list(range(2, 11))
    costs = [1000, 600, 300, 120, 110, 100, 92, 85, 80]  # flattens after k=5
    assert m.elbow(ks, costs) == 5
    assert m.elbow([2, 3], [10, 5]) is None
    assert m.elbow(ks, [7.0] * len(ks)) is None
