"""The clustering interface: guards and fallbacks on awkward input, assignment, the wall-clock limit."""

import threading
import time

import numpy as np
import pytest
from pyspark.ml.linalg import Vectors
from pyspark.sql import functions as F

from seg_spark.config import ModelSettings, PrepSettings, SelectionSettings, StabilitySettings
from seg_spark.models import clustering, selection
from seg_spark.models.prep import PreparationError

from conftest import STUCK_FITS

FEATURES = ("a", "b", "c")


def fixed(k: int = 3, algorithm: str = "kmeans", **changes) -> ModelSettings:
    """Selection and stability off: fit ``algorithm`` with ``k``; no log1p, no clipping."""
    return ModelSettings(
        algorithm=algorithm,
        k=k,
        features=FEATURES,
        selection=SelectionSettings(enabled=False),
        stability=StabilitySettings(bootstraps=0),
        prep=PrepSettings(log1p_features=(), winsorize=None),
        **changes,
    )


def customers(spark, rows):
    """(a, b, c) per customer; frequency 1."""
    data = [(f"c{i}", 1.0, *r) for i, r in enumerate(rows)]
    return spark.createDataFrame(data, "customer_id string, frequency double, a double, b double, c double")


def within(seconds, action):
    """Run ``action``; fail (instead of hanging the suite) when it takes longer than ``seconds``."""
    outcome = {}

    def target():
        try:
            outcome["value"] = action()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds}s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def three_groups(n=60):
    rng = np.random.default_rng(1)
    centres = [(0, 0, 0), (10, 0, 5), (0, 10, -5)]
    return [tuple(float(v) for v in rng.normal(centres[i % 3], 0.5)) for i in range(n)]


def test_zero_variance_and_nan_features_are_dropped_or_imputed(spark):
    # a alone separates the groups (c too, where it is known); b is constant. c is missing for a
    # few customers of the group whose c is the median, so the imputed value keeps them in it.
    rows = [
        (10.0 * (i % 3) + a / 5, 7.0, float("nan") if i % 12 == 0 else c) for i, (a, _, c) in enumerate(three_groups())
    ]
    seg = within(120, lambda: selection.segment(spark, customers(spark, rows), FEATURES, fixed()))
    try:
        assert seg.k == 3 and sorted(seg.segment_sizes) == [20, 20, 20]
        decisions = {d["feature"]: d for d in seg.preparation.report()}
        assert decisions["b"]["kept"] is False and "variance" in decisions["b"]["reason"]
        assert seg.preparation.kept == ("a", "c")
    finally:
        seg.release()


@pytest.mark.parametrize(
    ("rows", "k", "expected_k"),
    [
        ([(1.0, 0.0, 0.0)] * 10 + [(5.0, 1.0, 2.0)] * 10, 5, 2),  # fewer distinct points than k
        ([(1.0, 0.0, 0.0), (5.0, 1.0, 2.0), (9.0, 3.0, 1.0)], 6, 3),  # k >= customers
    ],
    ids=["fewer distinct points than k", "k at least the customers"],
)
@pytest.mark.parametrize("algorithm", ["kmeans", "bisecting_kmeans"])
def test_k_is_lowered_to_the_distinct_points(spark, rows, k, expected_k, algorithm):
    seg = within(120, lambda: selection.segment(spark, customers(spark, rows), FEATURES, fixed(k, algorithm)))
    try:
        assert seg.k == expected_k
        assert sum(seg.segment_sizes) == len(rows) and min(seg.segment_sizes) > 0
    finally:
        seg.release()


def test_a_single_customer_is_a_clear_error(spark):
    with pytest.raises(PreparationError, match="no usable feature"):
        within(60, lambda: selection.segment(spark, customers(spark, [(1.0, 2.0, 3.0)]), FEATURES, fixed()))


def test_identical_customers_are_a_clear_error(spark):
    rows = [(1.0, 2.0, 3.0)] * 20
    with pytest.raises(PreparationError, match="no usable feature"):
        within(60, lambda: selection.segment(spark, customers(spark, rows), FEATURES, fixed()))


def test_an_empty_input_is_a_clear_error(spark):
    with pytest.raises(clustering.ModelInputError, match="no customers to segment"):
        within(60, lambda: selection.segment(spark, customers(spark, []), FEATURES, fixed()))


def test_non_finite_vectors_are_refused_before_any_fit(spark):
    vectors = spark.createDataFrame(
        [(Vectors.dense([1.0, float("nan")]),), (Vectors.dense([2.0, 1.0]),), (Vectors.dense([3.0, 0.0]),)],
        ["features"],
    )
    with pytest.raises(clustering.ModelInputError, match="NaN or infinite"):
        within(60, lambda: clustering.check_input(vectors, 2, "gaussian_mixture"))


def test_a_collapsed_mixture_component_is_detected():
    healthy = np.array([[[1.0, 0.2], [0.2, 1.0]]])
    flat = np.array([[[1.0, 1.0], [1.0, 1.0]]])  # all its points on a line
    assert clustering.collapsed_components(np.concatenate([healthy, flat, healthy])) == [1]


@pytest.mark.parametrize("regularization", [0.0, 0.05], ids=["off: a clear error", "on: a regularised fit"])
def test_a_mixture_on_repeated_points_ends_in_a_clear_error_or_a_fallback(spark, regularization):
    """Four points repeated: without regularisation a component that settles on one of them collapses.

    Whether every start collapses depends on floating-point sums whose order Spark does not fix
    (a busy core changes it), so without regularisation the run either ends in the error naming
    the collapse or keeps a start none of whose components collapsed.
    """
    rows = [(1.0, 0.0, 0.0), (5.0, 1.0, 2.0), (9.0, 3.0, 1.0), (2.0, 7.0, 1.0)] * 25
    settings = fixed(4, "gaussian_mixture", fit_timeout_seconds=60, gmm_regularization=regularization)
    data = customers(spark, rows)
    if regularization == 0:
        try:
            seg = within(120, lambda: selection.segment(spark, data, FEATURES, settings))
        except clustering.DegenerateModelError as err:
            assert "every start collapsed" in str(err) and "model.gmm_regularization" in str(err)
            return
        weights, _, covariances = clustering.gaussian_parameters(seg.model.stages[-1])
        seg.release()
        assert clustering.collapsed_components(covariances) == [] and np.all(np.isfinite(weights))
        return
    seg = within(120, lambda: selection.segment(spark, data, FEATURES, settings))
    try:
        # A fitted mixture with finite likelihood; copies of a point share their segment.
        assert seg.k == 4 and sum(seg.segment_sizes) == 100
        assert np.isfinite(seg.metrics["log_likelihood"]) and np.isfinite(seg.metrics["bic"])
        labels = {r.customer_id: r.segment_id for r in seg.assignments.collect()}
        assert all(labels[f"c{i}"] == labels[f"c{i % 4}"] for i in range(100))
    finally:
        seg.release()


def test_a_fit_past_the_time_limit_is_cancelled(spark):
    def slow():
        return spark.sparkContext.parallelize([1], 1).map(lambda x: time.sleep(120) or x).count()

    started = time.monotonic()
    with (
        STUCK_FITS.expected(),
        pytest.raises(clustering.FitTimeoutError, match=r"fit_timeout_seconds = 2s \(1 attempt"),
    ):
        clustering.run_with_time_limit(spark, 2, "a slow job", slow)
    assert time.monotonic() - started < 60
    assert spark.range(3).count() == 3  # the session is still usable


def test_a_stuck_fit_is_logged_with_its_task_threads_and_started_again(spark, caplog):
    attempts = []

    def stuck_once():
        attempts.append(time.monotonic())
        pause = 120 if len(attempts) == 1 else 0
        return spark.sparkContext.parallelize([7], 1).map(lambda x: time.sleep(pause) or x).sum()

    # The session's summary (conftest) would print this hang: it is the test's own.
    with STUCK_FITS.expected() as own, caplog.at_level("WARNING", logger="seg_spark.models.clustering"):
        assert clustering.run_with_time_limit(spark, 3, "a stuck job", stuck_once, attempts=2) == 7
    assert len(own) == 1 and "a stuck job: attempt 1 of 2" in own[0]
    assert len(attempts) == 2 and attempts[1] - attempts[0] < 60
    assert "a stuck job: attempt 1 of 2 ran past 3s" in caplog.text
    # The stuck task's thread and where it waits (reading the Python worker that sleeps).
    assert '"Executor task launch worker for task' in caplog.text
    assert "PythonRunner" in caplog.text


@pytest.mark.parametrize("algorithm", ["kmeans", "bisecting_kmeans", "gaussian_mixture"])
def test_assignment_gives_segment_distance_or_probability_and_runner_up(spark, algorithm):
    rows = three_groups(90)
    seg = within(120, lambda: selection.segment(spark, customers(spark, rows), FEATURES, fixed(3, algorithm)))
    try:
        got = seg.assignments.collect()
        assert len(got) == 90 and {r.segment_id for r in got} == {0, 1, 2}
        assert all(r.runner_up_segment_id != r.segment_id for r in got)
        if algorithm == "gaussian_mixture":
            for r in got:
                assert r.segment_probability == pytest.approx(max(r.membership))
                assert r.runner_up_probability == pytest.approx(sorted(r.membership)[-2])
                assert sum(r.membership) == pytest.approx(1.0)
        else:
            vectors = {r.customer_id: r.features.toArray() for r in seg.vectors.collect()}
            centres = clustering.centers(seg.model.stages[-1])
            for r in got:
                distances = np.linalg.norm(centres - vectors[r.customer_id], axis=1)
                assert r.segment_distance == pytest.approx(distances[r.segment_id])
                others = [d if i != r.segment_id else np.inf for i, d in enumerate(distances)]
                assert r.runner_up_segment_id == int(np.argmin(others))
                assert r.runner_up_distance == pytest.approx(min(others))
        # The saved pipeline (preparation + clustering) scores raw features the same way.
        rescored = seg.model.transform(customers(spark, rows)).select("customer_id", F.col("segment_id").cast("int"))
        assert {(r[0], r[1]) for r in rescored.collect()} == {(r.customer_id, r.segment_id) for r in got}
    finally:
        seg.release()


def test_the_selection_sample_keeps_each_activity_band_in_proportion(spark):
    # 1,000 customers: frequency 1 for 700 of them, 2, 3 or 4 for 250, 20 for the 50 heaviest.
    frequency = F.when(F.col("id") < 700, 1).when(F.col("id") < 950, 2 + F.col("id") % 3).otherwise(20)
    vectors = spark.range(1000).select(
        F.concat(F.lit("c"), F.col("id").cast("string")).alias("customer_id"),
        frequency.cast("double").alias("frequency"),
    )
    sample = selection.stratified_sample(vectors, 200, 4, seed=42)
    rows = sample.collect()
    counts = {}
    for r in rows:
        band = "1" if r.frequency == 1 else ("2" if r.frequency == 2 else "3+")
        counts[band] = counts.get(band, 0) + 1
    # Quartile edges 1, 1, 2 give the bands {1} (700), {2} (83), {3, 4, 20} (217); each keeps 20%, rounded up.
    assert counts == {"1": 140, "2": 17, "3+": 44}
    again = selection.stratified_sample(vectors, 200, 4, seed=42).collect()
    assert sorted(r.customer_id for r in again) == sorted(r.customer_id for r in rows)
    assert selection.stratified_sample(vectors, 5000, 4, seed=42) is vectors  # small enough: everyone


def test_a_mixture_keeps_the_start_with_the_highest_likelihood(spark):
    """MLlib starts a mixture from random points; of ``gmm_restarts`` starts the likeliest is kept."""
    rng = np.random.default_rng(3)
    centres = np.array([(0, 0), (3, 0), (0, 3), (3, 3), (1.5, 1.5)])
    rows = [(f"c{i}", Vectors.dense(rng.normal(centres[i % 5], 0.6))) for i in range(400)]
    vectors = spark.createDataFrame(rows, ["customer_id", "features"]).cache()
    # No jitter: every start then sees exactly the same data, with or without restarts.
    single = fixed(5, "gaussian_mixture", gmm_regularization=0.0, gmm_restarts=1, max_iter=30)
    likelihoods = [
        within(
            120,
            lambda s=s: clustering.fit_clusterer(spark, vectors, "gaussian_mixture", 5, single, seed=s, lower_k=False),
        ).summary.logLikelihood
        for s in (7, 8, 9)
    ]
    restarted = single.model_copy(update={"gmm_restarts": 3})
    best = within(
        300, lambda: clustering.fit_clusterer(spark, vectors, "gaussian_mixture", 5, restarted, seed=7, lower_k=False)
    )
    vectors.unpersist()
    assert len(set(np.round(likelihoods, 6))) > 1, "the starts should differ on overlapping groups"
    assert best.summary.logLikelihood == pytest.approx(max(likelihoods), abs=1e-9)


def test_a_degenerate_segmentation_is_refused_naming_each_cause_and_setting(spark):
    """Ten customers, k = 50 without selection: k is lowered to 10, one customer per segment."""
    data = customers(spark, [(float(i), float(i % 3), float(i % 2)) for i in range(10)])
    settings = fixed(k=50).model_copy(update={"stability": StabilitySettings(bootstraps=1)})
    seg = selection.segment(spark, data, FEATURES, settings)
    try:
        assert seg.k == 10
        with pytest.raises(selection.DegenerateSegmentationError) as refused:
            selection.refuse_degenerate(seg, settings)
        message = str(refused.value)
        assert message.startswith("the segmentation (kmeans, k=10) is degenerate; nothing was registered")
        assert "10 customers for 10 segments is fewer than model.min_customers_per_segment = 5" in message
        assert refused.value.exit_code == 3
        # With a minimum of one per segment it is still refused: one point per segment leaves
        # Calinski-Harabasz undefined, and no bootstrap of ten points holds ten distinct ones.
        with pytest.raises(selection.DegenerateSegmentationError) as still:
            selection.refuse_degenerate(seg, settings.model_copy(update={"min_customers_per_segment": 1}))
        assert "min_customers_per_segment" not in str(still.value)
        assert "quality metrics calinski_harabasz are undefined" in str(still.value)
        assert "none of the model.stability.bootstraps = 1 refits could be fitted" in str(still.value)
    finally:
        seg.release()


def test_k_lowered_below_the_sweep_and_failed_stability_are_refused(spark):
    data = customers(spark, three_groups(60))
    seg = selection.segment(spark, data, FEATURES, fixed(k=3))
    try:
        sweep = fixed(k=3).model_copy(
            update={"selection": SelectionSettings(k_min=4, k_max=5), "stability": StabilitySettings(bootstraps=2)}
        )
        with pytest.raises(selection.DegenerateSegmentationError) as refused:
            selection.refuse_degenerate(seg, sweep)  # k = 3 < k_min = 4, and no bootstrap was fitted
        assert "below model.selection.k_min = 4" in str(refused.value)
        assert "none of the model.stability.bootstraps = 2 refits could be fitted" in str(refused.value)
        selection.refuse_degenerate(seg, fixed(k=3))
    finally:
        seg.release()


def test_kmeans_keeps_the_start_with_the_lowest_within_segment_sum_of_squares(spark):
    """Each start differs only by its seed; the kept model is the cheapest of them. The starts run side by
    side (model.parallel_fits) and give the fits one after another gives."""
    data = customers(spark, three_groups(90) + [(5.0, 5.0, 0.0), (4.0, 6.0, 1.0)])
    vectors = clustering.prepare(data, FEATURES, PrepSettings(log1p_features=(), winsorize=None))[0].transform(data)
    vectors = vectors.cache()
    try:
        one_start = fixed(4, kmeans_restarts=1)
        singles = [
            clustering.fit_clusterer(spark, vectors, "kmeans", 4, one_start, seed=5 + s, lower_k=False)
            for s in (0, 1, 2)
        ]
        side_by_side = fixed(4, kmeans_restarts=3, seed=5, parallel_fits=3)
        best = clustering.fit_clusterer(spark, vectors, "kmeans", 4, side_by_side, lower_k=False)
        costs = [m.summary.trainingCost for m in singles]
        assert best.summary.trainingCost == pytest.approx(min(costs), rel=1e-12)
        assert best.getSeed() == 5 + costs.index(min(costs))
    finally:
        vectors.unpersist()


def test_fits_side_by_side_come_back_in_the_order_asked_from_as_many_threads_as_allowed():
    def fit(item: int) -> tuple[int, str]:
        time.sleep(0.05 * (3 - item))  # the first asked finishes last
        return item, threading.current_thread().name

    side_by_side = clustering.in_parallel(fit, [0, 1, 2], workers=2)
    assert [item for item, _ in side_by_side] == [0, 1, 2]
    assert len({thread for _, thread in side_by_side}) == 2
    one_after_another = clustering.in_parallel(fit, [0, 1, 2], workers=1)
    assert {thread for _, thread in one_after_another} == {threading.current_thread().name}
