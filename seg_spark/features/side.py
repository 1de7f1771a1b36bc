"""Features from the optional side tables, joined to the per-customer features by customer id."""

from __future__ import annotations

from datetime import date

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from seg_spark.features.rfm import before

PROFILE_COLUMNS = ("age_band", "gender", "country", "region", "city")


def with_profiles(features: DataFrame, profiles: DataFrame, as_of: date) -> DataFrame:
    """Add profile attributes and days since signup (null for customers without a profile)."""
    attributes = profiles.select(
        "customer_id",
        *[F.col(c).alias(f"profile_{c}") for c in PROFILE_COLUMNS],
        F.when(F.col("signup_date") < F.lit(as_of), F.datediff(F.lit(as_of), F.col("signup_date")))
        .cast("double")
        .alias("days_since_signup"),
    )
    return features.join(attributes, "customer_id", "left")


def with_events(features: DataFrame, events: DataFrame, as_of: date) -> DataFrame:
    """Add web/app activity strictly before ``as_of``: sessions, events, days since last event."""
    activity = (
        events.select("customer_id", "ts", "session_id")
        .transform(before(as_of))
        .groupBy("customer_id")
        .agg(
            F.count(F.lit(1)).cast("double").alias("web_events"),
            # Without a session id every event counts as its own session.
            F.coalesce(F.countDistinct("session_id"), F.lit(0)).cast("double").alias("_sessions"),
            F.sum(F.col("session_id").isNull().cast("long")).alias("_unsessioned"),
            F.max("ts").alias("_last_event"),
        )
        .select(
            "customer_id",
            "web_events",
            (F.col("_sessions") + F.col("_unsessioned")).alias("web_sessions"),
            F.datediff(F.lit(as_of), F.to_date("_last_event")).cast("double").alias("days_since_last_event"),
        )
    )
    joined = features.join(activity, "customer_id", "left")
    return joined.fillna(0.0, subset=["web_events", "web_sessions"])
