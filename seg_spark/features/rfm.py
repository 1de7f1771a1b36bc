"""RFM features per customer as of a date (point-in-time: only events strictly before it).

Two aggregations, one per grain: transaction lines -> orders -> customers. Going
through orders avoids ``count(distinct order_id)`` (which Spark plans as an Expand that
doubles the rows) and gives order-level values for the average order value.
"""

from __future__ import annotations

from datetime import date

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

FEATURE_UNITS: dict[str, tuple[str, str]] = {
    "recency_days": ("days", "days from the last purchase day to the as-of date (1 = the day before)"),
    "frequency": ("orders", "distinct purchase orders (returns excluded)"),
    "monetary": ("currency", "net spend: purchases minus returns"),
    "avg_order_value": ("currency", "gross purchase value per purchase order"),
    "tenure_days": ("days", "days from the first transaction day to the as-of date"),
}


def before(as_of: date):
    """Filter to transactions strictly before ``as_of`` (the point-in-time guard)."""

    def _filter(tx: DataFrame) -> DataFrame:
        return tx.filter(F.col("ts") < F.lit(as_of).cast("timestamp"))

    return _filter


def orders(tx: DataFrame) -> DataFrame:
    """One row per (customer, order): its time, net value and whether it is a return."""
    return tx.groupBy("customer_id", "order_id").agg(
        F.min("ts").alias("order_ts"),
        F.sum("amount").alias("order_amount"),
        F.max(F.col("is_return").cast("int")).cast("boolean").alias("is_return"),
    )


def rfm_features(tx: DataFrame, as_of: date) -> DataFrame:
    """RFM features for every customer with a transaction before ``as_of``.

    Args:
        tx: Clean transactions in the canonical schema.
        as_of: Only transactions with ``ts < as_of`` are used.

    Returns:
        ``customer_id`` and the features of ``FEATURE_UNITS``; the purchase-based ones are
        null for a customer whose only lines before ``as_of`` are returns.
    """
    purchase = ~F.col("is_return")
    as_of_col = F.lit(as_of)
    per_customer = (
        tx.select("customer_id", "order_id", "ts", "amount", "is_return")
        .transform(before(as_of))
        .transform(orders)
        .groupBy("customer_id")
        .agg(
            F.sum(purchase.cast("int")).alias("frequency"),
            F.sum("order_amount").alias("monetary"),
            F.sum(F.when(purchase, F.col("order_amount"))).alias("_gross"),
            F.max(F.when(purchase, F.col("order_ts"))).alias("_last_purchase"),
            F.min("order_ts").alias("_first_ts"),
        )
    )
    return per_customer.select(
        "customer_id",
        F.datediff(as_of_col, F.to_date("_last_purchase")).cast("double").alias("recency_days"),
        F.col("frequency").cast("double").alias("frequency"),
        F.col("monetary").cast("double").alias("monetary"),
        (F.col("_gross") / F.when(F.col("frequency") > 0, F.col("frequency"))).alias("avg_order_value"),
        F.datediff(as_of_col, F.to_date("_first_ts")).cast("double").alias("tenure_days"),
    )
