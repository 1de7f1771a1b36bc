"""Features from the optional side tables, joined to the per-customer features by customer id."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from seg_spark.config import SourcesSettings
from seg_spark.features.rfm import before
from seg_spark.tables import SIDE_TABLES, TableStore

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


def side_tables(store: TableStore, sources: SourcesSettings) -> dict[str, DataFrame]:
    """The clean side tables of the configured side sources, by their ``sources`` key.

    Raises:
        StageInputError: A configured side source has no clean table yet (run the ingest stage).
    """
    return {
        name: store.require(table, "ingest")
        for name, table in SIDE_TABLES.items()
        if getattr(sources, name) is not None
    }


def with_side_features(features: DataFrame, side_tables: Mapping[str, DataFrame], as_of: date) -> DataFrame:
    """Add the features of every configured side table (by its ``sources`` key: profiles, events) as of ``as_of``."""
    for name, table in side_tables.items():
        features = (with_profiles if name == "profiles" else with_events)(features, table, as_of)
    return features
