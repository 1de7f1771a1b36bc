"""The daily per-customer aggregate: the additive state every as-of feature is derived from.

lines --(customer, day, order)--> orders --(customer, day)--> one row per customer and day.
Money and quantities are summed as DECIMAL(18, 6), so re-aggregating a day or summing the
days in another order gives exactly the same numbers: an incremental refresh equals a
full recompute bit for bit. Precision 18 keeps Spark on its fast long-backed decimal path
and Parquet on 8-byte integers; one customer-day above 10^12 would fail loudly (ANSI), not wrap.
An order is placed in the day of its lines (an order whose
lines straddle midnight counts once on each day).
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.window import Window

from seg_spark.catalogue import DAYPARTS

MONEY = T.DecimalType(18, 6)
UNKNOWN = "unknown"
DAILY_KEY = ("customer_id", "day")
INPUT_COLUMNS = (
    "customer_id",
    "order_id",
    "ts",
    "amount",
    "quantity",
    "product_id",
    "discount",
    "is_return",
    "category",
    "channel",
)


def sum_by_key(entries: Column, value_type: T.DataType) -> Column:
    """Reduce an array of ``struct(key, value)`` to a map key -> sum of values, keys sorted."""
    keys = F.array_sort(F.array_distinct(F.transform(entries, lambda e: e["key"])))
    zero = F.lit(0).cast(value_type)
    sums = F.transform(
        keys,
        lambda k: F.aggregate(
            F.filter(entries, lambda e: e["key"] == k), zero, lambda acc, e: (acc + e["value"]).cast(value_type)
        ),
    )
    return F.map_from_arrays(keys, sums)


def daily_aggregates(tx: DataFrame) -> DataFrame:
    """Aggregate clean transaction lines to one row per customer and day.

    Args:
        tx: Clean lines in the canonical schema (``category`` and ``channel`` may be null).

    Returns:
        ``customer_id``, ``day`` and the additive day state: order counts, money sums,
        basket sums, first/last purchase times, the squared gaps between purchase orders
        within the day, orders per daypart, gross spend per category and orders per channel.
    """
    zero = F.lit(0).cast(MONEY)
    purchase_line = ~F.col("is_return")
    lines = tx.select(
        "customer_id",
        "order_id",
        "ts",
        F.to_date("ts").alias("day"),
        F.col("amount").cast(MONEY).alias("amount"),
        F.col("quantity").cast(MONEY).alias("quantity"),
        "product_id",
        F.coalesce(F.col("discount").cast(MONEY), zero).alias("discount"),
        "is_return",
        F.coalesce(F.col("category"), F.lit(UNKNOWN)).alias("category"),
        F.coalesce(F.col("channel"), F.lit(UNKNOWN)).alias("channel"),
    )
    orders = lines.groupBy("customer_id", "day", "order_id").agg(
        F.min("ts").alias("order_ts"),
        F.sum("amount").alias("net"),
        F.coalesce(F.sum(F.when(purchase_line, F.col("amount"))), zero).alias("gross"),
        F.coalesce(F.sum(F.when(purchase_line, F.col("quantity"))), zero).alias("items"),
        F.countDistinct("product_id").alias("products"),
        F.sum("discount").alias("discount"),
        F.count(F.lit(1)).alias("lines"),
        F.sum(F.col("is_return").cast("long")).alias("return_lines"),
        F.max(F.col("is_return").cast("int")).alias("_return_order"),
        F.min("channel").alias("channel"),
        F.collect_list(
            F.when(purchase_line, F.struct(F.col("category").alias("key"), F.col("amount").alias("value")))
        ).alias("category_lines"),
    )
    purchase = F.col("_return_order") == 0
    within_day = Window.partitionBy("customer_id", "day").orderBy("order_ts").rowsBetween(Window.unboundedPreceding, -1)
    previous = F.last(F.when(purchase, F.col("order_ts")), ignorenulls=True).over(within_day)
    orders = orders.withColumn("_gap", F.when(purchase, F.unix_seconds("order_ts") - F.unix_seconds(previous)))
    hour = F.hour("order_ts")
    order_ts = F.col("order_ts")
    days = orders.groupBy(*DAILY_KEY).agg(
        F.sum(purchase.cast("int")).alias("purchase_orders"),
        F.sum((~purchase).cast("int")).alias("return_orders"),
        F.sum("net").alias("net"),
        F.sum(F.when(purchase, F.col("gross")).otherwise(zero)).alias("gross"),
        F.max(F.when(purchase, F.col("gross"))).alias("max_order_gross"),
        F.sum(F.when(purchase, F.col("items")).otherwise(zero)).alias("items"),
        F.sum(F.when(purchase, F.col("products")).otherwise(0)).alias("basket_products"),
        F.sum("discount").alias("discount"),
        F.sum(F.when(~purchase, -F.col("net")).otherwise(zero)).alias("returned"),
        F.sum("lines").alias("lines"),
        F.sum("return_lines").alias("return_lines"),
        F.min(order_ts).alias("first_ts"),
        F.min(F.when(purchase, order_ts)).alias("first_purchase_ts"),
        F.max(F.when(purchase, order_ts)).alias("last_purchase_ts"),
        # Gaps within a day are under 86,400 s, so their squares sum safely as longs.
        F.coalesce(F.sum(F.col("_gap") * F.col("_gap")), F.lit(0).cast("long")).alias("gap_sq_within"),
        *[
            F.sum((purchase & (hour >= lo) & (hour < hi)).cast("int")).alias(f"orders_{name}")
            for name, lo, hi in DAYPARTS
        ],
        F.flatten(F.collect_list(F.when(purchase, F.col("category_lines")))).alias("_category_lines"),
        F.collect_list(F.when(purchase, F.struct(F.col("channel").alias("key"), F.lit(1).alias("value")))).alias(
            "_channel_orders"
        ),
    )
    money = ("net", "gross", "max_order_gross", "items", "discount", "returned")
    return days.select(
        *[F.col(c).cast(MONEY).alias(c) if c in money else F.col(c) for c in days.columns if not c.startswith("_")],
        sum_by_key(F.col("_category_lines"), MONEY).alias("category_spend"),
        sum_by_key(F.col("_channel_orders"), T.IntegerType()).alias("channel_orders"),
    )
