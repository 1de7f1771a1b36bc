from datetime import date, datetime

from pyspark.testing import assertDataFrameEqual

from seg_spark.config import RFM_FEATURES
from seg_spark.features.behaviour import customer_features


def rfm_features(tx, as_of):
    return customer_features(
        tx.selectExpr(
            "*", "1.0 AS quantity", "'p' AS product_id", "0.0 AS discount", "'c' AS category", "'web' AS channel"
        ),
        as_of,
    ).select("customer_id", *RFM_FEATURES)


AS_OF = date(2024, 3, 1)
TX_SCHEMA = "customer_id string, order_id string, ts timestamp, amount double, is_return boolean"


def test_rfm_matches_hand_computed_values(spark):
    tx = spark.createDataFrame(
        [
            # a: two orders (one with two lines), one return, first seen 2024-01-01
            ("a", "o1", datetime(2024, 1, 1, 9), 10.0, False),
            ("a", "o1", datetime(2024, 1, 1, 9), 5.0, False),
            ("a", "o2", datetime(2024, 2, 20, 18), 30.0, False),
            ("a", "Co3", datetime(2024, 2, 25, 12), -5.0, True),
            # b: one order the day before as-of
            ("b", "o4", datetime(2024, 2, 29, 23, 59), 100.0, False),
            # c: only a return
            ("c", "Co5", datetime(2024, 2, 1), -8.0, True),
        ],
        TX_SCHEMA,
    )
    expected = spark.createDataFrame(
        [
            # recency: 2024-03-01 - 2024-02-20 = 10; tenure: 60 days (2024 is a leap year)
            ("a", 10.0, 2.0, 40.0, 22.5, 60.0),
            ("b", 1.0, 1.0, 100.0, 100.0, 1.0),
            ("c", None, 0.0, -8.0, None, 29.0),
        ],
        "customer_id string, recency_days double, frequency double, monetary double, "
        "avg_order_value double, tenure_days double",
    )
    assertDataFrameEqual(rfm_features(tx, AS_OF), expected)


def test_events_on_or_after_as_of_never_leak(spark):
    tx = spark.createDataFrame(
        [
            ("a", "o1", datetime(2024, 2, 1), 10.0, False),
            ("a", "o2", datetime(2024, 3, 1, 0, 0), 999.0, False),  # exactly at as-of: excluded
            ("a", "o3", datetime(2024, 6, 1), 999.0, False),
            ("z", "o4", datetime(2024, 4, 1), 50.0, False),  # only future events: no row at all
        ],
        TX_SCHEMA,
    )
    expected = spark.createDataFrame(
        [("a", 29.0, 1.0, 10.0, 10.0, 29.0)],
        "customer_id string, recency_days double, frequency double, monetary double, "
        "avg_order_value double, tenure_days double",
    )
    assertDataFrameEqual(rfm_features(tx, AS_OF), expected)


def test_single_customer_single_day_gives_features(spark):
    tx = spark.createDataFrame([("a", "o1", datetime(2024, 2, 29, 8), 4.0, False)], TX_SCHEMA)
    row = rfm_features(tx, AS_OF).first()
    assert (row.recency_days, row.frequency, row.monetary, row.tenure_days) == (1.0, 1.0, 4.0, 1.0)
