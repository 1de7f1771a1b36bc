"""Per-customer repeat-purchase summaries, the input of the BG/NBD and Gamma-Gamma models.

For a calibration period ending on ``calibration_end`` (inclusive), with purchases counted on
distinct days (several orders on one day are one purchase, their values summed):

* ``x``: repeat purchases, the purchase days after the first one;
* ``t_x``: time from the first purchase day to the last one;
* ``age`` (the literature's ``T``): time from the first purchase day to ``calibration_end``;
* ``m_x``: mean value of the repeat purchase days (null without a repeat purchase);

times in units of ``time_unit_days`` days (7 for weeks), as fractions. With ``holdout_end``,
``x_holdout`` counts purchase days after ``calibration_end`` up to ``holdout_end`` (inclusive)
for the customers of the calibration period. Only built-in functions: one aggregation per
period, no Python UDF.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

# Days per time unit of the summaries (predict.clv.time_unit, clv-backtest --time-unit).
TIME_UNIT_DAYS = {"day": 1, "week": 7}


def purchase_days() -> Callable[[DataFrame], DataFrame]:
    """Purchase lines (``customer_id``, ``ts``, ``amount``) to purchase days (``customer_id``, ``day``, ``value``)."""

    def transform(lines: DataFrame) -> DataFrame:
        return lines.groupBy("customer_id", F.to_date("ts").alias("day")).agg(F.sum("amount").alias("value"))

    return transform


def repeat_summaries(
    calibration_end: date, time_unit_days: int, holdout_end: date | None = None
) -> Callable[[DataFrame], DataFrame]:
    """A transformation of purchase lines (``customer_id``, ``ts``, ``amount``) into one row per customer.

    Args:
        calibration_end: Last day of the calibration period.
        time_unit_days: Days per time unit (1: days, 7: weeks).
        holdout_end: Last day of the holdout period, when purchases after the calibration are counted.

    Returns:
        ``customer_id, x, t_x, age, m_x`` (and ``x_holdout``), one row per customer with a purchase
        in the calibration period.
    """
    summarise = summaries_from_days(calibration_end, time_unit_days, holdout_end)
    return lambda lines: lines.transform(purchase_days()).transform(summarise)


def summaries_from_days(
    calibration_end: date, time_unit_days: int, holdout_end: date | None = None
) -> Callable[[DataFrame], DataFrame]:
    """``repeat_summaries`` from purchase days (``customer_id``, ``day``, ``value``: one row per customer and day).

    Besides ``x, t_x, age, m_x`` (and ``x_holdout``), ``mean_value`` is the mean value of all the
    customer's purchase days in the calibration period, the first one included.
    """
    end = F.lit(calibration_end)

    def transform(days: DataFrame) -> DataFrame:
        calibration = days.filter(F.col("day") <= end)
        summary = calibration.groupBy("customer_id").agg(
            (F.count(F.lit(1)) - 1).alias("x"),
            F.min("day").alias("first_day"),
            F.max("day").alias("last_day"),
            F.sum("value").alias("total"),
            F.min_by("value", "day").alias("first_value"),
        )
        unit = float(time_unit_days)
        summary = summary.select(
            "customer_id",
            F.col("x").cast("long").alias("x"),
            (F.datediff("last_day", "first_day") / unit).alias("t_x"),
            (F.datediff(end, "first_day") / unit).alias("age"),
            F.when(F.col("x") > 0, (F.col("total") - F.col("first_value")) / F.col("x")).cast("double").alias("m_x"),
            (F.col("total") / (F.col("x") + 1)).cast("double").alias("mean_value"),
        )
        if holdout_end is None:
            return summary
        holdout = (
            days.filter((F.col("day") > end) & (F.col("day") <= F.lit(holdout_end)))
            .groupBy("customer_id")
            .agg(F.count(F.lit(1)).cast("long").alias("x_holdout"))
        )
        return summary.join(holdout, "customer_id", "left").fillna(0, subset=["x_holdout"])

    return transform
