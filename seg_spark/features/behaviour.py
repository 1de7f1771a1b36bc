"""Behavioural features per customer as of a date, derived from the customers' running state.

daily aggregates --(``state.state_from_daily``: one window + one aggregation by customer, or
``state.advance_state`` from an earlier state)--> per-customer state --(column arithmetic)-->
features. Only days strictly before the as-of date are used, which is the same as using only
transactions strictly before it (days are UTC dates of the timestamps).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from seg_spark.catalogue import DAYPARTS, DAYS_OF_WEEK, RFM_SEGMENT_RULES, slug
from seg_spark.config import FeatureSettings
from seg_spark.features.daily import INPUT_COLUMNS, daily_aggregates
from seg_spark.features.rfm import before
from seg_spark.features.state import state_from_daily

SECONDS_PER_DAY = 86_400
EXACT = "decimal(38,0)"


@dataclass(frozen=True)
class MixKeys:
    """The categories and channels that get their own share column, with the column names."""

    categories: tuple[tuple[str, str], ...] = ()
    channels: tuple[tuple[str, str], ...] = ()


def _named(values: Sequence[str], prefix: str) -> tuple[tuple[str, str], ...]:
    """(value, column) pairs with unique column names; 'other' is reserved for the rest."""
    taken = {f"{prefix}_other_share"}
    pairs = []
    for value in values:
        base = f"{prefix}_{slug(value)}"
        column, n = f"{base}_share", 2
        while column in taken:
            column, n = f"{base}_{n}_share", n + 1
        taken.add(column)
        pairs.append((value, column))
    return tuple(pairs)


def top_keys(state: DataFrame, column: str, n: int) -> list[str]:
    """The ``n`` keys of a state map column with the largest totals over customers (ties by key)."""
    ranked = (
        state.select(F.explode(column).alias("key", "value"))
        .groupBy("key")
        .agg(F.sum("value").alias("total"))
        .orderBy(F.desc("total"), "key")
        .limit(n)
        .collect()
    )
    return [row["key"] for row in ranked]


def mix_keys(state: DataFrame, settings: FeatureSettings) -> MixKeys:
    """Which categories and channels get share columns: configured, or the top ones by spend/orders."""
    if "mix" not in settings.families:
        return MixKeys()
    categories: Sequence[str] | None = settings.mix.categories
    if categories is None:
        categories = top_keys(state, "_category_spend", settings.mix.top_categories)
    channels = top_keys(state, "_channel_orders", settings.mix.top_channels)
    return MixKeys(categories=_named(categories, "cat"), channels=_named(channels, "channel"))


def _ratio(numerator: Column, denominator: Column) -> Column:
    """Numerator / denominator as a double, null unless the denominator is positive."""
    return numerator.cast("double") / F.when(denominator > 0, denominator.cast("double"))


def _trend(recent: Column, prior: Column) -> Column:
    return _ratio(recent - prior, recent + prior)


def features_from_state(state: DataFrame, as_of: date, settings: FeatureSettings, keys: MixKeys) -> DataFrame:
    """Every feature of the configured families from the customers' running state.

    Args:
        state: The state as of ``as_of`` (``state.state_from_daily`` or ``state.advance_state``).
        as_of: The state's as-of date (recency and tenure count days up to it).
        settings: The ``features`` section the state was built with.
        keys: Share columns of the mix family (``mix_keys``).

    Returns:
        ``customer_id`` and one double column per feature; purchase-based features are
        null for a customer whose only lines are returns.
    """
    families: set[str] = set(settings.families)
    extra = {}
    if "cadence" in families:
        extra["_active_months"] = F.size("_months")
    if "mix" in families:
        extra.update({f"_{col}": F.col("_category_spend")[value] for value, col in keys.categories})
        extra.update({f"_{col}": F.col("_channel_orders")[value] for value, col in keys.channels})
    columns = _feature_columns(families, settings.windows_days, keys, as_of)
    return state.withColumns(extra).select("customer_id", *columns)


def _shares_with_other(keys: Sequence[tuple[str, str]], total: Column, zero: Column, other: str) -> list[Column]:
    """One share column per top key (its per-customer sum / ``total``) and the rest as ``other``."""
    columns, covered = [], zero
    for _, col in keys:
        part = F.coalesce(F.col(f"_{col}"), F.lit(0))
        columns.append(_ratio(part, total).alias(col))
        covered = covered + part
    return [*columns, _ratio(total - covered, total).alias(other)]


def _feature_columns(families: set[str], windows: Sequence[int], keys: MixKeys, as_of: date) -> list[Column]:
    """Turn the running state's sums into the catalogue's features."""
    c = F.col
    frequency, gross = c("_orders"), c("_gross")
    columns = [
        F.datediff(F.lit(as_of), F.to_date("_last_purchase")).cast("double").alias("recency_days"),
        frequency.cast("double").alias("frequency"),
        c("_net").cast("double").alias("monetary"),
    ]
    if "value" in families:
        columns += [
            _ratio(gross, frequency).alias("avg_order_value"),
            c("_max_order").cast("double").alias("max_order_value"),
            _ratio(c("_items"), frequency).alias("avg_basket_items"),
            _ratio(c("_basket_products"), frequency).alias("avg_basket_products"),
            _ratio(c("_discount"), gross + c("_discount")).alias("discount_share"),
        ]
    if "cadence" in families:
        gaps = (frequency - 1).cast(EXACT)
        span = (F.unix_seconds("_last_purchase") - F.unix_seconds("_first_purchase")).cast(EXACT)
        mean_gap = _ratio(span, gaps) / SECONDS_PER_DAY
        # Sample variance from exact integer sums: (n * sum(g^2) - (sum g)^2) / (n (n - 1)), in seconds^2.
        variance = _ratio(
            gaps * (c("_gap_sq_within") + c("_gap_sq_across")) - span * span, F.when(gaps >= 2, gaps * (gaps - 1))
        )
        # greatest() skips nulls: clamp rounding below zero, but keep "null below 3 orders".
        std_gap = F.sqrt(F.when(variance.isNotNull(), F.greatest(variance, F.lit(0.0)))) / SECONDS_PER_DAY
        columns += [
            F.datediff(F.lit(as_of), F.to_date("_first_ts")).cast("double").alias("tenure_days"),
            mean_gap.alias("mean_interpurchase_days"),
            std_gap.alias("std_interpurchase_days"),
            (F.lit(1.0) / (F.lit(1.0) + std_gap / F.when(mean_gap > 0, mean_gap))).alias("purchase_regularity"),
            c("_active_months").cast("double").alias("active_months"),
            _ratio(frequency, c("_active_months")).alias("orders_per_active_month"),
        ]
    if "mix" in families:
        columns += _shares_with_other(keys.categories, gross, F.lit(0).cast(EXACT), "cat_other_share")
        columns += _shares_with_other(keys.channels, frequency, F.lit(0), "channel_other_share")
        columns += [_ratio(c(f"_dow_{day}"), frequency).alias(f"dow_{day}_share") for day in DAYS_OF_WEEK]
        columns.append(_ratio(c("_dow_sat") + c("_dow_sun"), frequency).alias("weekend_share"))
        columns += [_ratio(c(f"_daypart_{name}"), frequency).alias(f"daypart_{name}_share") for name, _, _ in DAYPARTS]
    if "trend" in families:
        for w in windows:
            spend, spend_prior = F.coalesce(c(f"_spend_{w}"), F.lit(0)), F.coalesce(c(f"_spend_prior_{w}"), F.lit(0))
            n, n_prior = F.coalesce(c(f"_orders_{w}"), F.lit(0)), F.coalesce(c(f"_orders_prior_{w}"), F.lit(0))
            columns += [
                spend.cast("double").alias(f"spend_{w}d"),
                _trend(spend, spend_prior).alias(f"spend_trend_{w}d"),
                _trend(n, n_prior).alias(f"orders_trend_{w}d"),
            ]
        columns += [
            _ratio(c("_returned"), gross).alias("return_rate_value"),
            _ratio(c("_return_lines"), c("_lines")).alias("return_rate_lines"),
        ]
    return columns


def derive_features(daily: DataFrame, as_of: date, settings: FeatureSettings) -> DataFrame:
    """As-of features from daily aggregates: build the state, pick the mix keys, derive."""
    state = state_from_daily(daily, as_of, settings)
    return features_from_state(state, as_of, settings, mix_keys(state, settings))


def customer_features(tx: DataFrame, as_of: date, settings: FeatureSettings | None = None) -> DataFrame:
    """Features straight from transaction lines (a full recompute, without a stored daily table).

    Args:
        tx: Clean transactions in the canonical schema.
        as_of: Only transactions with ``ts < as_of`` are used.
        settings: The ``features`` section; defaults when omitted.

    Returns:
        See ``features_from_state``.
    """
    settings = settings or FeatureSettings()
    daily = tx.select(*INPUT_COLUMNS).transform(before(as_of)).transform(daily_aggregates)
    return derive_features(daily, as_of, settings)


def with_rfm_scores(features: DataFrame, relative_error: float = 0.001) -> DataFrame:
    """Add R, F, M quintile scores (1-5) and the classic named RFM segment.

    Quintile edges come from one approximate-quantile pass over the customers with a
    purchase; customers without one get null scores and segment ``No purchase``.

    Args:
        features: Per-customer features with ``recency_days``, ``frequency``, ``monetary``.
        relative_error: ``approxQuantile`` relative error (0 is exact but costly).

    Returns:
        ``features`` with ``rfm_r``, ``rfm_f``, ``rfm_m`` (int) and ``rfm_segment``.
    """
    buyers = features.filter(F.col("frequency") > 0)
    columns = ["recency_days", "frequency", "monetary"]
    edges = buyers.approxQuantile(columns, [0.2, 0.4, 0.6, 0.8], relative_error)
    bought = F.col("frequency") > 0

    def score(column: str, column_edges: list[float], higher_is_better: bool) -> Column:
        above = sum((F.col(column) > F.lit(edge)).cast("int") for edge in column_edges) if column_edges else F.lit(0)
        return F.when(bought, (F.lit(1) + above) if higher_is_better else (F.lit(5) - above))

    r, f, m = (score(col, e, col != "recency_days") for col, e in zip(columns, edges, strict=True))
    scored = features.withColumns({"rfm_r": r, "rfm_f": f, "rfm_m": m})
    segment = F.lit("No purchase")
    for recency_scores, frequency_scores, name in reversed(RFM_SEGMENT_RULES):
        matches = F.col("rfm_r").isin(*map(int, recency_scores)) & F.col("rfm_f").isin(*map(int, frequency_scores))
        segment = F.when(matches, F.lit(name)).otherwise(segment)
    return scored.withColumn("rfm_segment", segment)
