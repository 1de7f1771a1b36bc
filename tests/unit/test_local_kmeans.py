"""K-Means on the driver (the selection sample) against scikit-learn, and the MLlib model it becomes."""

import numpy as np
import pytest
from pyspark.ml.linalg import Vectors
from sklearn.cluster import KMeans as SkKMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from seg_spark.config import ModelSettings, StabilitySettings
from seg_spark.models import clustering, local_kmeans, selection


@pytest.fixture(scope="module")
def blobs():
    x, truth = make_blobs(n_samples=1500, n_features=4, centers=5, cluster_std=1.5, random_state=3)
    return x, truth


def test_lloyd_from_given_centres_equals_scikit_learn_lloyd(blobs):
    x, _ = blobs
    start = x[[0, 10, 20, 30, 40]]
    ours = local_kmeans.lloyd(x, start.copy(), max_iter=300, tol=0.0, x_norms=(x**2).sum(axis=1))
    theirs = SkKMeans(5, init=start, n_init=1, algorithm="lloyd", tol=0.0, max_iter=300).fit(x)
    order = np.argsort(theirs.cluster_centers_[:, 0])
    np.testing.assert_allclose(ours.centers[np.argsort(ours.centers[:, 0])], theirs.cluster_centers_[order], rtol=1e-9)
    assert ours.inertia == pytest.approx(theirs.inertia_, rel=1e-9)
    assert adjusted_rand_score(ours.labels, theirs.labels_) == 1.0


def test_the_best_of_several_starts_reaches_scikit_learns_optimum(blobs):
    x, truth = blobs
    ours = local_kmeans.fit(x, 5, starts=10, max_iter=300, tol=1e-9, seed=11)
    theirs = SkKMeans(5, n_init=10, random_state=0, tol=1e-9).fit(x)
    assert ours.inertia == pytest.approx(theirs.inertia_, rel=1e-9)
    assert adjusted_rand_score(ours.labels, truth) == pytest.approx(adjusted_rand_score(theirs.labels_, truth))
    # The reported labels are each row's nearest centre.
    np.testing.assert_array_equal(ours.labels, local_kmeans.assign(x, ours.centers))


def test_the_kept_start_is_the_cheapest_and_each_start_depends_only_on_its_seed_and_number(blobs):
    x, _ = blobs
    norms = (x**2).sum(axis=1)

    def start(i):
        first = local_kmeans.kmeans_plus_plus(x, 8, local_kmeans.random_source(0, i), norms)
        return local_kmeans.lloyd(x, first, max_iter=300, tol=0.0, x_norms=norms)

    starts = [start(i) for i in range(4)]
    best = local_kmeans.fit(x, 8, starts=4, max_iter=300, tol=0.0, seed=0)
    assert len({round(f.inertia, 6) for f in starts}) > 1  # the starts end in different optima
    assert best.inertia == min(f.inertia for f in starts)
    np.testing.assert_array_equal(best.centers, local_kmeans.fit(x, 8, starts=4, max_iter=300, tol=0.0, seed=0).centers)


def test_k_means_plus_plus_starts_on_distinct_rows_of_the_data():
    x = np.array([[0.0, 0.0]] * 50 + [[5.0, 5.0]] * 50 + [[9.0, 0.0]] * 3)
    centers = local_kmeans.kmeans_plus_plus(x, 3, local_kmeans.random_source(-7, 0), (x**2).sum(axis=1))
    assert sorted(map(tuple, centers.tolist())) == [(0.0, 0.0), (5.0, 5.0), (9.0, 0.0)]


def test_an_emptied_segment_moves_to_the_farthest_row():
    x = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]])
    start = np.array([[1.0], [100.0], [10.5]])  # the centre at 100 owns no row
    fit = local_kmeans.lloyd(x, start, max_iter=50, tol=0.0, x_norms=(x**2).sum(axis=1))
    assert sorted(np.bincount(fit.labels, minlength=3).tolist()) == [1, 2, 2]
    assert fit.inertia < 2.0


def test_driver_fit_guards_match_the_spark_ones():
    settings = ModelSettings()
    with pytest.raises(clustering.ModelInputError, match="NaN or infinite"):
        clustering.fit_kmeans_on_driver(np.array([[1.0, np.nan], [2.0, 1.0], [3.0, 0.0]]), 2, settings, lower_k=False)
    with pytest.raises(clustering.ModelInputError, match="identical prepared features"):
        clustering.fit_kmeans_on_driver(np.ones((20, 2)), 2, settings, lower_k=False)
    twins = np.array([[0.0, 0.0]] * 10 + [[5.0, 1.0]] * 10)
    with pytest.raises(clustering.ModelInputError, match="only 2 distinct customers"):
        clustering.fit_kmeans_on_driver(twins, 5, settings, lower_k=False)
    lowered = clustering.fit_kmeans_on_driver(twins, 5, settings, lower_k=True)
    assert len(lowered.centers) == 2 and lowered.inertia == 0.0


def test_the_mllib_model_has_exactly_the_driver_centres_and_assigns_as_they_do(spark, blobs):
    x, _ = blobs
    fit = local_kmeans.fit(x, 5, starts=2, max_iter=100, tol=1e-6, seed=1)
    model, positions = clustering.kmeans_model(spark, fit.centers)
    np.testing.assert_array_equal(clustering.centers(model), fit.centers[positions])
    frame = spark.createDataFrame([(i, Vectors.dense(r)) for i, r in enumerate(x.tolist())], ["i", "features"])
    mllib = dict(model.transform(frame).select("i", clustering.SEGMENT_COL).collect())
    new_id = np.empty(5, dtype=int)
    new_id[positions] = np.arange(5)
    np.testing.assert_array_equal([mllib[i] for i in range(len(x))], new_id[fit.labels])


def test_repeated_centres_cannot_become_an_mllib_model(spark):
    with pytest.raises(ValueError, match="at least 2 distinct centres"):
        clustering.kmeans_model(spark, np.array([[1.0, 2.0], [1.0, 2.0]]))


def test_stability_on_the_driver_is_high_for_separated_groups_and_repeatable(blobs):
    x, truth = blobs
    settings = ModelSettings(seed=5, stability=StabilitySettings(bootstraps=3))
    fit = clustering.fit_kmeans_on_driver(x, 5, settings, lower_k=False)
    first = selection.stability_on_driver(x, fit.labels, 5, settings)
    assert first["bootstraps"] == 3 and first["mean_ari"] > 0.95 and first["unstable_segments"] == []
    assert set(first["jaccard"]) == set(range(5))
    assert selection.stability_on_driver(x, fit.labels, 5, settings) == first
    # Labels unrelated to the rows are unstable by every measure.
    shuffled = np.random.default_rng(0).permutation(fit.labels)
    noise = selection.stability_on_driver(x, shuffled, 5, settings)
    assert noise["mean_ari"] < 0.05 and noise["unstable_segments"] == list(range(5))
