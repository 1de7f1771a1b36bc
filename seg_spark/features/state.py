"""Per-customer running state: every sum, extreme and set the as-of features are derived from.

The state as of a date S is one row per customer with a day before S. It is built from the
daily aggregates in one window + one aggregation (``state_from_daily``), or advanced from
the state as of an earlier date S1 (``advance_state``) by reading only the daily rows
that matter:

* days in [S1, S2) are added to every all-history column (sums, min/max, months, maps);
* each recent window ``w`` gains [S1, S2) and loses [S1 - w, S2 - w); the prior window
  gains [S1 - w, S2 - w) and loses [S1 - 2w, S2 - 2w) (signed sums, correct even when the
  ranges overlap);
* the gap between the old last purchase and the first new one joins the squared gaps.

Everything is exact (decimal and integer sums, min/max, set union), so an advanced state is
identical to one built from scratch, and so are the features derived from it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.window import Window

from seg_spark.catalogue import DAYPARTS, DAYS_OF_WEEK
from seg_spark.config import FeatureSettings

SUM = T.DecimalType(28, 6)  # Spark's type for a sum of MONEY = DECIMAL(18, 6)
EXACT = T.DecimalType(38, 0)  # squared gaps in seconds^2
LONG = T.LongType()


@dataclass(frozen=True)
class StateColumn:
    """One state column: how days are aggregated into it and how two partial states combine."""

    name: str
    kind: str  # sum | min | max | months | map
    value: Column  # per-day value aggregated into the column (already restricted to new days)
    dtype: T.DataType


def _total(value: Column, dtype: T.DataType) -> Column:
    return F.coalesce(F.sum(value), F.lit(0)).cast(dtype)


def _map_add(dtype: T.DataType) -> Callable[[Column, Column], Column]:
    zero = F.lit(0).cast(dtype)
    return lambda acc, item: F.map_zip_with(
        acc, item, lambda _, a, b: (F.coalesce(a, zero) + F.coalesce(b, zero)).cast(dtype)
    )


def _empty_map(dtype: T.DataType) -> Column:
    return F.create_map().cast(T.MapType(T.StringType(), dtype))


def _aggregate(column: StateColumn) -> Column:
    if column.kind == "sum":
        return _total(column.value, column.dtype).alias(column.name)
    if column.kind == "min":
        return F.min(column.value).alias(column.name)
    if column.kind == "max":
        return F.max(column.value).alias(column.name)
    if column.kind == "months":
        return F.array_sort(F.collect_set(column.value)).alias(column.name)
    maps = F.collect_list(column.value)  # nulls (days not counted) are skipped
    return F.aggregate(maps, _empty_map(column.dtype), _map_add(column.dtype)).alias(column.name)


def _combine(column: StateColumn, old: Column, new: Column) -> Column:
    """Combine the old state's value with the delta's (either side may be missing: null)."""
    if column.kind == "sum":
        zero = F.lit(0).cast(column.dtype)
        return (F.coalesce(old, zero) + F.coalesce(new, zero)).cast(column.dtype)
    if column.kind == "min":
        return F.least(old, new)  # least/greatest skip nulls
    if column.kind == "max":
        return F.greatest(old, new)
    # Most customers have no new day: keep their old value without touching the collection.
    add = (lambda a, b: F.array_sort(F.array_union(a, b))) if column.kind == "months" else _map_add(column.dtype)
    return F.when(new.isNull(), old).when(old.isNull(), new).otherwise(add(old, new))


def _state_columns(
    settings: FeatureSettings, is_new: Column, windows: dict[str, tuple[Column, T.DataType]]
) -> list[StateColumn]:
    """The state's columns for the configured families.

    Args:
        settings: Families and windows.
        is_new: Which daily rows count towards the all-history columns.
        windows: Per window column, its per-day signed value and type.
    """
    families = set(settings.families)
    new = lambda column: F.when(is_new, column)  # noqa: E731
    orders = new(F.col("purchase_orders"))
    columns = [
        StateColumn("_orders", "sum", orders, LONG),
        StateColumn("_net", "sum", new(F.col("net")), SUM),
        StateColumn("_gross", "sum", new(F.col("gross")), SUM),
        StateColumn("_last_purchase", "max", new(F.col("last_purchase_ts")), T.TimestampType()),
    ]
    if "value" in families:
        columns += [
            StateColumn("_max_order", "max", new(F.col("max_order_gross")), SUM),
            StateColumn("_items", "sum", new(F.col("items")), SUM),
            StateColumn("_basket_products", "sum", new(F.col("basket_products")), LONG),
            StateColumn("_discount", "sum", new(F.col("discount")), SUM),
        ]
    if "cadence" in families:
        columns += [
            StateColumn("_first_ts", "min", new(F.col("first_ts")), T.TimestampType()),
            StateColumn("_first_purchase", "min", new(F.col("first_purchase_ts")), T.TimestampType()),
            StateColumn("_gap_sq_within", "sum", new(F.col("gap_sq_within")), EXACT),
            StateColumn("_gap_sq_across", "sum", F.col("_cross_gap_sq"), EXACT),
            StateColumn("_months", "months", F.when(orders > 0, F.trunc("day", "month")), T.DateType()),
        ]
    if "mix" in families:
        weekday = F.dayofweek("day")  # 1 = Sunday ... 7 = Saturday
        columns += [
            StateColumn(f"_dow_{day}", "sum", F.when(weekday == (i + 1) % 7 + 1, orders), LONG)
            for i, day in enumerate(DAYS_OF_WEEK)
        ]
        columns += [StateColumn(f"_daypart_{n}", "sum", new(F.col(f"orders_{n}")), LONG) for n, _, _ in DAYPARTS]
        columns += [
            StateColumn("_category_spend", "map", new(F.col("category_spend")), SUM),
            StateColumn("_channel_orders", "map", new(F.col("channel_orders")), LONG),
        ]
    if "trend" in families:
        columns += [StateColumn(name, "sum", value, dtype) for name, (value, dtype) in windows.items()]
        columns += [
            StateColumn("_returned", "sum", new(F.col("returned")), SUM),
            StateColumn("_lines", "sum", new(F.col("lines")), LONG),
            StateColumn("_return_lines", "sum", new(F.col("return_lines")), LONG),
        ]
    return columns


def _in(lo: date, hi: date) -> Column:
    return (F.col("day") >= F.lit(lo)) & (F.col("day") < F.lit(hi))


def _signed(column: str, plus: tuple[date, date], minus: tuple[date, date] | None) -> Column:
    """The day's value if it is in ``plus``, minus it if in ``minus`` (both when in both)."""
    value = F.when(_in(*plus), F.col(column)).otherwise(0)
    if minus is not None:
        value = value - F.when(_in(*minus), F.col(column)).otherwise(0)
    return value


def _window_values(windows: Sequence[int], since: date | None, as_of: date) -> dict[str, tuple[Column, T.DataType]]:
    """Per-day values of the recent/prior window sums: from scratch (``since`` None) or as a change."""
    values: dict[str, tuple[Column, T.DataType]] = {}
    recent: tuple[tuple[date, date], tuple[date, date] | None]  # (plus, minus) of _signed
    prior: tuple[tuple[date, date], tuple[date, date] | None]
    for w in windows:
        gap, gap2 = timedelta(days=w), timedelta(days=2 * w)
        if since is None:  # recent [S - w, S), prior [S - 2w, S - w)
            recent, prior = ((as_of - gap, as_of), None), ((as_of - gap2, as_of - gap), None)
        else:
            entering, crossing, leaving = (since, as_of), (since - gap, as_of - gap), (since - gap2, as_of - gap2)
            recent, prior = (entering, crossing), (crossing, leaving)
        values[f"_spend_{w}"] = (_signed("gross", *recent), SUM)
        values[f"_spend_prior_{w}"] = (_signed("gross", *prior), SUM)
        values[f"_orders_{w}"] = (_signed("purchase_orders", *recent), LONG)
        values[f"_orders_prior_{w}"] = (_signed("purchase_orders", *prior), LONG)
    return values


def _per_customer(days: DataFrame, is_new: Column, settings: FeatureSettings, columns: list[StateColumn]) -> DataFrame:
    if "cadence" in settings.families:
        # Squared gap between a new day's first purchase and the previous new purchase day's last.
        earlier = Window.partitionBy("customer_id").orderBy("day").rowsBetween(Window.unboundedPreceding, -1)
        previous = F.last(F.when(is_new, F.col("last_purchase_ts")), ignorenulls=True).over(earlier)
        gap = (F.unix_seconds("first_purchase_ts") - F.unix_seconds(previous)).cast(EXACT)
        days = days.withColumn("_cross_gap_sq", F.when(is_new, gap * gap))
    return days.groupBy("customer_id").agg(*[_aggregate(c) for c in columns])


def state_from_daily(daily: DataFrame, as_of: date, settings: FeatureSettings) -> DataFrame:
    """The running state as of ``as_of`` from every daily row before it.

    Args:
        daily: Daily per-customer aggregates (``daily_aggregates``).
        as_of: Only days strictly before it are used.
        settings: The ``features`` section (families, windows).

    Returns:
        One row per customer with a day before ``as_of``: ``customer_id`` and the state columns.
    """
    is_new = F.lit(True)
    columns = _state_columns(settings, is_new, _window_values(settings.windows_days, None, as_of))
    return _per_customer(daily.filter(F.col("day") < F.lit(as_of)), is_new, settings, columns)


def advance_state(state: DataFrame, daily: DataFrame, since: date, as_of: date, settings: FeatureSettings) -> DataFrame:
    """Move a state as of ``since`` to ``as_of`` (>= ``since``), reading only the days that matter.

    The daily rows before ``since`` must be the ones the state was built from (no late rows
    for those days since): ``store.refresh_state`` checks that before calling this.

    Args:
        state: The state as of ``since`` (``state_from_daily`` or an earlier advance).
        daily: Daily per-customer aggregates (only the files of a few days are read: data skipping).
        since: The state's as-of date.
        as_of: The new as-of date.
        settings: The settings the state was built with.

    Returns:
        The state as of ``as_of``, equal to ``state_from_daily(daily, as_of, settings)``.
    """
    entering = (since, as_of)
    ranges = [entering]
    for w in settings.windows_days if "trend" in settings.families else ():
        ranges += [(since - timedelta(days=k * w), as_of - timedelta(days=k * w)) for k in (1, 2)]
    wanted = F.lit(False)
    for lo, hi in ranges:
        wanted = wanted | _in(lo, hi)  # partition filters: only these days are read
    is_new = _in(*entering)
    columns = _state_columns(settings, is_new, _window_values(settings.windows_days, since, as_of))
    delta = _per_customer(daily.filter(wanted), is_new, settings, columns)
    old, new = state.alias("old"), delta.alias("new")
    joined = old.join(new, F.col("old.customer_id") == F.col("new.customer_id"), "full_outer")
    merged = {c.name: _combine(c, F.col(f"old.{c.name}"), F.col(f"new.{c.name}")) for c in columns}
    if "cadence" in settings.families:
        boundary = (F.unix_seconds("new._first_purchase") - F.unix_seconds("old._last_purchase")).cast(EXACT)
        merged["_gap_sq_across"] = (merged["_gap_sq_across"] + F.coalesce(boundary * boundary, F.lit(0))).cast(EXACT)
    customer = F.coalesce(F.col("old.customer_id"), F.col("new.customer_id")).alias("customer_id")
    return joined.select(customer, *[value.alias(name) for name, value in merged.items()])
