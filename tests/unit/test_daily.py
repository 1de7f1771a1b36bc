"""The daily per-customer aggregate against a hand computation: orders with a repeated product, a
return line inside an order, a null product and category, an order across midnight, a return-only day."""

from datetime import date, datetime
from decimal import Decimal

import pytest
from pyspark.sql import functions as F

from seg_spark.features.daily import daily_aggregates

SCHEMA = (
    "customer_id string, order_id string, ts timestamp, amount double, quantity double, "
    "product_id string, discount double, is_return boolean, category string, channel string"
)
DAY, NEXT = date(2024, 1, 1), date(2024, 1, 2)
ROWS = [
    # o1: P1 twice and P2 (two distinct products), 09:00.
    ("a", "o1", datetime(2024, 1, 1, 9), 10.0, 1.0, "P1", 1.0, False, "X", "web"),
    ("a", "o1", datetime(2024, 1, 1, 9), 5.0, 1.0, "P1", 0.0, False, "X", "web"),
    ("a", "o1", datetime(2024, 1, 1, 9), 7.0, 2.0, "P2", None, False, "Y", "web"),
    ("a", "o2", datetime(2024, 1, 1, 15, 30), 4.0, 1.0, "P3", 0.0, False, "X", "store"),
    # o3 holds a return line: a return order, its purchase line (Z) counts in no spend or channel.
    ("a", "o3", datetime(2024, 1, 1, 16), -10.0, -1.0, "P1", 0.0, True, "X", "web"),
    ("a", "o3", datetime(2024, 1, 1, 16), 3.0, 1.0, "P4", 0.0, False, "Z", "web"),
    # o4: no product, category or channel.
    ("a", "o4", datetime(2024, 1, 1, 20), 2.0, 1.0, None, 0.0, False, None, None),
    # o6 straddles midnight: a purchase order on each day.
    ("a", "o6", datetime(2024, 1, 1, 23, 50), 1.0, 1.0, "P5", 0.0, False, "X", "web"),
    ("a", "o6", datetime(2024, 1, 2, 0, 10), 2.0, 1.0, "P5", 0.0, False, "X", "web"),
    ("b", "o5", datetime(2024, 1, 1, 12), -5.0, -1.0, "P1", 0.0, True, "X", "app"),
]


@pytest.fixture(scope="module")
def days(spark) -> dict[tuple[str, date], dict]:
    # Map keys read in SQL: a map's order is lost on its way to a Python dict.
    keys = {f"{m}_keys": F.map_keys(m) for m in ("category_spend", "channel_orders")}
    rows = daily_aggregates(spark.createDataFrame(ROWS, SCHEMA)).withColumns(keys).collect()
    return {(r["customer_id"], r["day"]): r.asDict() for r in rows}


def money(value: float) -> Decimal:
    return Decimal(value).quantize(Decimal("0.000001"))


def test_one_row_per_customer_and_day(days):
    assert sorted(days) == [("a", DAY), ("a", NEXT), ("b", DAY)]


def test_a_day_of_orders_with_a_return_order_among_them(days):
    a = days[("a", DAY)]
    assert (a["purchase_orders"], a["return_orders"]) == (4, 1)
    assert a["net"] == money(10 + 5 + 7 + 4 - 10 + 3 + 2 + 1)
    assert a["gross"] == money(22 + 4 + 2 + 1)  # purchase orders only: o3's purchase line is left out
    assert a["max_order_gross"] == money(22)
    assert a["items"] == money(4 + 1 + 1 + 1)
    assert a["basket_products"] == 2 + 1 + 0 + 1  # P1 twice in o1 counts once; o4's null product not at all
    assert a["discount"] == money(1)
    assert a["returned"] == money(7)  # o3's net, -7, as a positive amount
    assert (a["lines"], a["return_lines"]) == (8, 1)
    assert a["first_ts"] == a["first_purchase_ts"] == datetime(2024, 1, 1, 9)
    assert a["last_purchase_ts"] == datetime(2024, 1, 1, 23, 50)
    # Gaps between consecutive purchase orders (o3, a return order, is skipped): 6.5 h, 4.5 h, 3 h 50 min.
    assert a["gap_sq_within"] == 23_400**2 + 16_200**2 + 13_800**2
    dayparts = (a["orders_night"], a["orders_morning"], a["orders_afternoon"], a["orders_evening"])
    assert dayparts == (0, 1, 1, 2)
    assert a["category_spend"] == {"X": money(10 + 5 + 4 + 1), "Y": money(7), "unknown": money(2)}
    assert a["category_spend_keys"] == ["X", "Y", "unknown"]  # sorted
    assert a["channel_orders"] == {"store": 1, "unknown": 1, "web": 2}
    assert a["channel_orders_keys"] == ["store", "unknown", "web"]


def test_an_order_across_midnight_counts_on_each_day(days):
    a = days[("a", NEXT)]
    assert (a["purchase_orders"], a["net"], a["basket_products"], a["gap_sq_within"]) == (1, money(2), 1, 0)
    assert a["category_spend"] == {"X": money(2)} and a["channel_orders"] == {"web": 1}


def test_a_day_with_only_a_return_has_empty_maps(days):
    b = days[("b", DAY)]
    assert (b["purchase_orders"], b["return_orders"], b["returned"], b["gross"]) == (0, 1, money(5), money(0))
    assert b["max_order_gross"] is None and b["first_purchase_ts"] is None
    assert b["category_spend"] == {} and b["channel_orders"] == {}
