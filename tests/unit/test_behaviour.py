import math
from datetime import date, datetime

import pytest

from seg_spark.catalogue import SIDE_NUMERIC, feature_names
from seg_spark.config import FeatureSettings, MixSettings
from seg_spark.features.behaviour import customer_features

AS_OF = date(2024, 3, 1)
SCHEMA = (
    "customer_id string, order_id string, ts timestamp, amount double, quantity double, "
    "product_id string, discount double, is_return boolean, category string, channel string"
)
ROWS = [
    ("a", "o1", datetime(2024, 1, 1, 9), 10.0, 2.0, "P1", 1.0, False, "Toys", "web"),  # a Monday
    ("a", "o1", datetime(2024, 1, 1, 9), 5.0, 1.0, "P2", 0.0, False, "Books", "web"),
    ("a", "o2", datetime(2024, 2, 20, 18), 30.0, 3.0, "P1", 0.0, False, "Toys", "store"),  # Tuesday
    ("a", "Co3", datetime(2024, 2, 25, 12), -5.0, -1.0, "P2", 0.0, True, "Books", "web"),
    ("a", "o4", datetime(2024, 2, 28, 10), 20.0, 1.0, "P3", None, False, None, "web"),  # Wednesday
    ("b", "o5", datetime(2024, 2, 29, 23, 59), 100.0, 1.0, "P1", 0.0, False, "Books", "app"),  # Thursday
    ("b", "o6", datetime(2024, 3, 1, 0, 0), 999.0, 1.0, "P1", 0.0, False, "Games", "app"),  # at as-of: excluded
]


@pytest.fixture(scope="module")
def features(spark):
    tx = spark.createDataFrame(ROWS, SCHEMA)
    return {r["customer_id"]: r.asDict() for r in customer_features(tx, AS_OF).collect()}


def test_every_catalogued_feature_is_produced(features):
    mix = {"cat_books_share", "cat_toys_share", "cat_unknown_share", "channel_web_share", "channel_app_share"}
    mix |= {"channel_store_share"}
    assert set(features["a"]) == {"customer_id", *feature_names(windows=(30, 90)), *mix} - set(SIDE_NUMERIC) | {
        "cat_other_share",
        "channel_other_share",
    }


def test_values_match_hand_computation(features):
    a = features["a"]
    gaps = [50.375, 7 + 16 / 24]  # Jan 1 09:00 -> Feb 20 18:00 -> Feb 28 10:00
    mean_gap = sum(gaps) / 2
    std_gap = abs(gaps[0] - gaps[1]) / math.sqrt(2)
    expected = {
        "recency_days": 2.0,
        "frequency": 3.0,
        "monetary": 60.0,
        "avg_order_value": 65 / 3,
        "tenure_days": 60.0,
        "max_order_value": 30.0,
        "avg_basket_items": 7 / 3,
        "avg_basket_products": 4 / 3,
        "discount_share": 1 / 66,
        "mean_interpurchase_days": mean_gap,
        "std_interpurchase_days": std_gap,
        "purchase_regularity": 1 / (1 + std_gap / mean_gap),
        "active_months": 2.0,
        "orders_per_active_month": 1.5,
        "spend_30d": 50.0,
        "spend_90d": 65.0,
        "spend_trend_30d": (50 - 15) / 65,
        "spend_trend_90d": 1.0,
        "orders_trend_30d": 1 / 3,
        "orders_trend_90d": 1.0,
        # mix: categories by gross value (Books 105, Toys 40, unknown 20), channels by purchase orders
        "cat_books_share": 5 / 65,
        "cat_toys_share": 40 / 65,
        "cat_unknown_share": 20 / 65,
        "cat_other_share": 0.0,
        "channel_web_share": 2 / 3,
        "channel_store_share": 1 / 3,
        "channel_app_share": 0.0,
        "channel_other_share": 0.0,
        "dow_mon_share": 1 / 3,
        "dow_tue_share": 1 / 3,
        "dow_wed_share": 1 / 3,
        "dow_thu_share": 0.0,
        "dow_sun_share": 0.0,
        "weekend_share": 0.0,
        "daypart_morning_share": 2 / 3,
        "daypart_evening_share": 1 / 3,
        "daypart_night_share": 0.0,
        "return_rate_value": 5 / 65,
        "return_rate_lines": 0.2,
    }
    for name, value in expected.items():
        assert a[name] == pytest.approx(value, rel=1e-9), name


def test_single_order_customer_has_defined_or_null_features(features):
    b = features["b"]
    assert (b["frequency"], b["monetary"], b["recency_days"], b["tenure_days"]) == (1.0, 100.0, 1.0, 1.0)
    assert b["mean_interpurchase_days"] is None and b["purchase_regularity"] is None
    assert (b["spend_trend_30d"], b["return_rate_value"], b["return_rate_lines"]) == (1.0, 0.0, 0.0)
    assert (b["dow_thu_share"], b["daypart_evening_share"], b["channel_app_share"]) == (1.0, 1.0, 1.0)


def test_the_spread_of_inter_purchase_days_needs_three_orders(spark):
    """One gap has no spread: std and regularity are null below 3 orders, as documented."""
    days = {"one": [1], "two": [1, 4], "three": [1, 4, 11]}
    rows = [
        (customer, f"{customer}{day}", datetime(2024, 2, day, 12), 10.0, 1.0, "P1", 0.0, False, "Toys", "web")
        for customer, order_days in days.items()
        for day in order_days
    ]
    got = {r["customer_id"]: r for r in customer_features(spark.createDataFrame(rows, SCHEMA), AS_OF).collect()}
    for customer in ("one", "two"):
        assert (got[customer]["std_interpurchase_days"], got[customer]["purchase_regularity"]) == (None, None)
    assert got["two"]["mean_interpurchase_days"] == 3.0
    three = got["three"]  # gaps of 3 and 7 days
    assert three["std_interpurchase_days"] == pytest.approx(4 / math.sqrt(2), rel=1e-12)
    assert three["purchase_regularity"] == pytest.approx(1 / (1 + (4 / math.sqrt(2)) / 5), rel=1e-12)


def test_top_categories_fold_the_rest_into_other(spark):
    settings = FeatureSettings(mix=MixSettings(top_categories=1, top_channels=1), windows_days=(7,))
    rows = customer_features(spark.createDataFrame(ROWS, SCHEMA), AS_OF, settings).collect()
    a = next(r.asDict() for r in rows if r.customer_id == "a")
    assert a["cat_books_share"] == pytest.approx(5 / 65) and a["cat_other_share"] == pytest.approx(60 / 65)
    assert a["channel_web_share"] == pytest.approx(2 / 3) and a["channel_other_share"] == pytest.approx(1 / 3)
    assert "cat_toys_share" not in a and "spend_30d" not in a
    # 7-day window: o4 (Feb 28, 20.0) recent; o2 (Feb 20, 30.0) in the 7 days before
    assert (a["spend_7d"], a["spend_trend_7d"], a["orders_trend_7d"]) == (20.0, -0.2, 0.0)


def test_families_can_be_switched_off(spark):
    settings = FeatureSettings(families=("rfm",))
    columns = customer_features(spark.createDataFrame(ROWS, SCHEMA), AS_OF, settings).columns
    assert columns == ["customer_id", "recency_days", "frequency", "monetary"]


def test_feature_catalogue_document_is_generated_from_the_code():
    from pathlib import Path

    from seg_spark.catalogue import markdown

    written = (Path(__file__).resolve().parents[2] / "docs" / "FEATURES.md").read_text()
    assert written == markdown(), "regenerate: python -m seg_spark.catalogue > docs/FEATURES.md"
