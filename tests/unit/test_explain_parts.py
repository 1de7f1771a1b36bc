"""The explain stage's parts on small fixtures: profiles against a hand computation, suppression,
names and their rules, the surrogate tree on separable data, and every plot as a valid PNG."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from matplotlib.image import imread
from pyspark.sql import SparkSession

from seg_spark import plots
from seg_spark.config import NamingSettings
from seg_spark.stages.explain import drivers, naming, profiles
from seg_spark.stages.explain.profiles import FeatureProfile, SegmentProfile

# segment, monetary, frequency, cat_toys_share, cat_books_share, channel_web_share, profile_country, rfm_segment
ROWS = [
    ("a", 0, 10.0, 1, 1.0, 0.0, 1.0, "DE", "Lost"),
    ("b", 0, 20.0, 2, 1.0, 0.0, 1.0, "DE", "Lost"),
    ("c", 0, 30.0, 3, 0.5, 0.5, 0.0, "DE", "Lost"),
    ("d", 0, 40.0, 4, 0.0, 0.0, 1.0, "FR", "Loyal"),
    ("e", 0, 50.0, 5, 1.0, 0.0, None, None, "Loyal"),
    ("f", 1, 300.0, 9, 0.0, 1.0, 1.0, "DE", "Champions"),
    ("g", 1, 500.0, 11, 0.0, 1.0, 1.0, "DE", "Champions"),
]
SCHEMA = (
    "customer_id string, segment_id int, monetary double, frequency int, cat_toys_share double, "
    "cat_books_share double, channel_web_share double, profile_country string, rfm_segment string"
)


@pytest.fixture(scope="module")
def small(spark: SparkSession):
    frame = spark.createDataFrame(ROWS, SCHEMA)
    columns = profiles.Columns.of(frame.drop("segment_id"))
    stats = profiles.statistics(frame, columns, accuracy=10_000)
    labels = profiles.label_counts(frame, columns.labels)
    return columns, stats, labels


def _profiles(small, min_customers: int) -> list[SegmentProfile]:
    columns, stats, labels = small
    return profiles.build_profiles(stats, columns, labels, {}, min_customers=min_customers, top_values=3)


def test_columns_are_numeric_features_mixes_and_labels(small):
    columns, _, _ = small
    assert columns.numeric == ("monetary", "frequency", "cat_toys_share", "cat_books_share", "channel_web_share")
    assert columns.mixes == {
        "categories": {"cat_toys_share": "toys", "cat_books_share": "books"},
        "channels": {"channel_web_share": "web"},
    }
    assert columns.labels == ("profile_country", "rfm_segment")


def test_profile_numbers_equal_a_hand_computation(small):
    segment, other = _profiles(small, min_customers=2)
    monetary = np.array([r[2] for r in ROWS])
    mine = monetary[:5]
    expected_lift = mine.mean() / monetary.mean()
    expected_z = (mine.mean() - monetary.mean()) / monetary.std()  # population std, as stddev_pop
    m = segment.features["monetary"]
    assert (segment.customers, segment.share) == (5, pytest.approx(5 / 7))
    assert segment.revenue_share == pytest.approx(mine.sum() / monetary.sum())
    assert other.revenue_share == pytest.approx(800 / monetary.sum())
    assert m.mean == pytest.approx(30.0)
    assert m.lift == pytest.approx(expected_lift)
    assert m.std_diff == pytest.approx(expected_z)
    # percentile_approx is exact on a few rows: the lower ("inverted CDF") quantile.
    assert (m.p10, m.median, m.p90) == tuple(
        float(np.quantile(mine, q, method="inverted_cdf")) for q in (0.1, 0.5, 0.9)
    )
    assert segment.features["frequency"].median == 3.0
    # Mix columns: mean share among the segment's customers; labels: share of the segment's customers.
    assert segment.top["categories"] == [("toys", pytest.approx(0.7))]  # (1 + 1 + 0.5 + 0 + 1) / 5
    assert segment.top["profile_country"] == [("DE", pytest.approx(0.6))]
    assert segment.rfm_segments == {"Lost": pytest.approx(0.6), "Loyal": pytest.approx(0.4)}


def test_values_held_by_fewer_customers_than_the_minimum_are_not_shown(small):
    segment, _ = _profiles(small, min_customers=2)
    # books: one buyer in segment 0; FR: one customer. Both under the minimum of 2.
    assert segment.top["categories"] == [("toys", pytest.approx(0.7))]
    assert [value for value, _ in segment.top["profile_country"]] == ["DE"]
    assert segment.top["channels"] == [("web", pytest.approx(0.75))]  # the mean over known values: 3 / 4


def test_a_segment_below_the_minimum_size_keeps_counts_only(small):
    shown, suppressed = _profiles(small, min_customers=3)
    assert not shown.suppressed and shown.features
    assert suppressed.suppressed
    assert (suppressed.customers, suppressed.share) == (2, pytest.approx(2 / 7))
    assert suppressed.features == {} and suppressed.top == {} and suppressed.rfm_segments == {}
    named = naming.name_segments([shown, suppressed], NamingSettings())
    assert named[1].name == "Small segment 1"
    assert "too few to profile" in named[1].description and "300" not in named[1].description


def test_a_mixture_reports_how_sure_each_segment_s_assignments_are(spark: SparkSession):
    probabilities = {0: [0.95, 0.99, 0.6, 0.92, 0.97], 1: [0.5, 0.55, 0.91]}
    rows = [(f"c{s}{i}", s, p) for s, values in probabilities.items() for i, p in enumerate(values)]
    frame = spark.createDataFrame(rows, "customer_id string, segment_id int, segment_probability double")
    found = profiles.membership_quantiles(frame, accuracy=10_000)
    for segment, values in probabilities.items():
        expected = [float(np.quantile(values, q, method="inverted_cdf")) for q in (0.1, 0.5, 0.9)]
        assert [found[segment][k] for k in ("p10", "median", "p90")] == expected
        assert found[segment]["share_confident"] == pytest.approx(sum(v >= 0.9 for v in values) / len(values))


def _profile(segment_id: int, **lifts: float) -> SegmentProfile:
    features = {
        name: FeatureProfile(mean=lift, median=lift, p10=None, p90=None, lift=lift, std_diff=lift - 1)
        for name, lift in lifts.items()
    }
    return SegmentProfile(segment_id, 100, 0.25, 0.25, suppressed=False, features=features)


@pytest.mark.parametrize(
    ("lifts", "name"),
    [
        ({"monetary": 4.1, "frequency": 2.0, "recency_days": 0.3, "tenure_days": 1.0}, "High-value loyalists"),
        ({"monetary": 0.3, "frequency": 0.5, "recency_days": 2.0, "tenure_days": 1.0}, "Low-value lapsing"),
        ({"monetary": 1.0, "frequency": 1.0, "recency_days": 0.5, "tenure_days": 0.3}, "Mid-value newcomers"),
        ({"monetary": 0.5, "frequency": 0.6, "recency_days": 1.0, "tenure_days": 1.0}, "Low-value occasional buyers"),
        ({"monetary": 1.0, "frequency": 1.0, "recency_days": 1.0, "tenure_days": 1.0}, "Mid-value regulars"),
    ],
)
def test_names_follow_the_value_tier_and_the_first_matching_rule(lifts, name):
    (named,) = naming.name_segments([_profile(0, **lifts)], NamingSettings())
    assert named.name == name


def test_the_description_says_spend_recency_orders_and_weight():
    profile = _profile(0, monetary=4.1, recency_days=0.5, frequency=2.0)
    text = naming.describe(profile, NamingSettings())
    assert text == (
        "4.1x average spend, last purchase 0 days ago (median), 2.0 orders on average; "
        "25% of customers, 25% of revenue."
    )


def test_names_are_unique_within_a_run():
    same = {"monetary": 1.0, "frequency": 1.0, "recency_days": 1.0, "tenure_days": 1.0}
    found = [
        _profile(0, **same, weekend_share=3.0),
        _profile(1, **same, weekend_share=0.2),
        _profile(2, **same),
        _profile(3, **same),
    ]
    names = [n.name for n in naming.name_segments(found, NamingSettings())]
    assert names[0] == "Mid-value regulars (high weekend_share)"
    assert names[1] == "Mid-value regulars (low weekend_share)"
    assert len(set(names)) == 4


def test_rules_are_configurable():
    settings = NamingSettings.model_validate(
        {"rules": [{"label": "weekenders", "feature": "weekend_share", "above": 2.0}], "fallback": "others"}
    )
    (named,) = naming.name_segments([_profile(0, monetary=1.6, weekend_share=2.5)], settings)
    assert named.name == "High-value weekenders"
    with pytest.raises(ValueError, match="exactly one of above or below"):
        NamingSettings.model_validate({"rules": [{"label": "x", "feature": "y"}]})


def test_the_surrogate_tree_reproduces_separable_segments_with_readable_rules(spark: SparkSession):
    rng = random.Random(7)
    rows = []
    for i in range(900):
        segment = i % 3
        recency = {0: 10.0, 1: 60.0, 2: 200.0}[segment] + rng.uniform(-8, 8)
        rows.append((f"c{i}", segment, recency, rng.uniform(0, 1), float(rng.randint(1, 5))))
    frame = spark.createDataFrame(
        rows, "customer_id string, segment_id int, recency_days double, noise double, x double"
    )
    found = drivers.surrogate(
        frame, ["recency_days", "noise", "x"], {}, max_depth=3, max_rows=10_000, rules_per_segment=2, seed=1
    )
    assert found.accuracy is not None and found.accuracy >= 0.9
    assert found.holdout_rows + found.training_rows == 900 and found.holdout_rows > 100
    assert max(found.importances, key=found.importances.get) == "recency_days"
    assert sum(found.importances.values()) == pytest.approx(1.0)
    assert sorted(found.rules) == [0, 1, 2]
    first = found.rules[0][0]
    assert first.text().startswith("recency_days <= ") and first.precision > 0.95 and first.coverage > 0.95
    assert "< recency_days <= " in found.rules[1][0].text()
    assert found.rules[2][0].text().startswith("recency_days > ")


def test_rules_come_from_every_leaf_with_bounds_merged():
    leaves = [
        drivers.Leaf({"a": (None, 5.0)}, (8.0, 2.0)),
        drivers.Leaf({"a": (5.0, None), "b": (1.0, 3.0)}, (1.0, 9.0)),
        drivers.Leaf({"a": (5.0, None), "b": (3.0, None)}, (1.0, 0.0)),
    ]
    rules = drivers.top_rules(leaves, per_segment=2)
    assert [r.text() for r in rules[0]] == ["a <= 5", "a > 5 and b > 3"]
    assert rules[0][0].precision == pytest.approx(0.8) and rules[0][0].coverage == pytest.approx(0.8)
    assert [r.text() for r in rules[1]] == ["a > 5 and 1 < b <= 3"]
    assert rules[1][0].coverage == pytest.approx(9 / 11)


def _png_ok(figure) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    data = buffer.getvalue()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(io.BytesIO(data), format="png")
    assert image.shape[0] > 50 and image.shape[1] > 50
    assert float(image[..., :3].std()) > 0.01  # something is drawn, not a blank canvas


def test_every_plot_is_a_valid_non_empty_png():
    names = ["High-value loyalists", "Low-value lapsing", "Mid-value regulars"]
    z = [[1.5, -0.2, 0.3], [-1.0, 1.2, 0.0], [0.1, 0.1, -0.9]]
    selection = [
        {"algorithm": "kmeans", "k": k, "silhouette": s, "wssse": w, "bic": None, "elbow": k == 3, "chosen": k == 3}
        for k, s, w in ((2, 0.4, 900.0), (3, 0.6, 300.0), (4, 0.5, 250.0))
    ] + [{"algorithm": "gaussian_mixture", "k": 3, "silhouette": 0.5, "wssse": None, "bic": 1234.0, "elbow": False,
          "chosen": False}]  # fmt: skip
    hierarchy = [
        {"node_id": 1, "parent_id": None, "depth": 0, "segment_id": None, "size": 90},
        {"node_id": 2, "parent_id": 1, "depth": 1, "segment_id": 0, "size": 30},
        {"node_id": 3, "parent_id": 1, "depth": 1, "segment_id": None, "size": 60},
        {"node_id": 4, "parent_id": 3, "depth": 2, "segment_id": 1, "size": 20},
        {"node_id": 5, "parent_id": 3, "depth": 2, "segment_id": 2, "size": 40},
    ]
    rng = np.random.default_rng(0)
    figures = [
        plots.selection_curves(selection),
        plots.sizes_and_value(names, [0.2, 0.5, 0.3], [0.6, 0.1, None]),
        plots.profile_heatmap(names, ["a", "b", "c"], z),
        plots.parallel_profiles(names, ["a", "b", "c"], z),
        plots.projection(
            rng.normal(size=(60, 2)), [i % 3 for i in range(60)], dict(enumerate(names)), np.array([0.5, 0.2])
        ),  # fmt: skip
        plots.dendrogram(hierarchy, dict(enumerate(names))),
        plots.migration_matrix(["a [0]", "b [1]"], names, [[5, 1, 0], [0, 7, 2]], "moves"),
    ]
    for figure in figures:
        _png_ok(figure)
