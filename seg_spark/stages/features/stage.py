"""Features: refresh the daily aggregates and the running state, derive this as-of date's features.

Reads ``transactions_clean`` (and the cleaned side tables that are configured); writes
``customer_daily``, ``feature_refresh_log``, ``customer_state``, ``product_groups`` (sources
without categories) and the as-of date's partition of ``customer_features``. The as-of
date it settles on is recorded in ``pipeline_runs`` for the stages after it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from seg_spark.context import RunContext
from seg_spark.errors import DataError
from seg_spark.features import products, store
from seg_spark.features.behaviour import features_from_state, mix_keys, with_rfm_scores
from seg_spark.features.side import side_tables, with_side_features
from seg_spark.stages import StageResult
from seg_spark.tables import Table, where


@dataclass(frozen=True, kw_only=True)
class FeaturesStageResult(StageResult):
    """What the refresh of the daily aggregates and of the running state did."""

    refresh: store.RefreshResult
    state: store.StateResult

    def report(self) -> list[str]:
        """How the feature store was refreshed and how many customers have features."""
        refresh, state = self.refresh, self.state
        return [
            f"features: {refresh.mode} refresh of the daily aggregates ({refresh.reason}), {refresh.seconds:.1f}s",
            f"          running state {state.mode} ({state.reason}), {state.seconds:.1f}s",
            f"          {self.rows_out or 0:,} customers as of {self.as_of_date}",
        ]


def run(ctx: RunContext) -> FeaturesStageResult:
    """Refresh the feature store and write the as-of date's ``customer_features`` partition.

    Raises:
        StageInputError: ``transactions_clean`` (or a configured side table) is missing.
        DataError: No clean transaction lies before the as-of date.
    """
    config = ctx.settings.features
    clean = ctx.store.require(Table.TRANSACTIONS_CLEAN, "ingest")
    tables = [Table.CUSTOMER_DAILY, Table.FEATURE_REFRESH_LOG, Table.CUSTOMER_STATE]
    prepare: Callable[[DataFrame], DataFrame] = lambda lines: lines  # noqa: E731 - the identity
    refresh = config.refresh
    if products.needs_groups(clean, config.product_groups):
        groups, refitted = products.refresh_groups(ctx.store, clean, config.product_groups)
        prepare = products.with_groups_as_categories(groups)
        tables.append(Table.PRODUCT_GROUPS)
        if refitted:
            refresh = "full"  # every product's category may have changed
    refreshed = store.refresh_daily(ctx.store, refresh=refresh, run_id=ctx.run_id, now=ctx.clock.now(), prepare=prepare)
    as_of = _as_of(ctx)
    state, state_done = store.refresh_state(ctx.store, as_of, config)
    features = features_from_state(state, as_of, config, mix_keys(state, config))
    features = with_side_features(features, side_tables(ctx.store, ctx.settings.sources), as_of)
    features = features.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        features = with_rfm_scores(features, ctx.settings.model.prep.quantile_error)
        features = features.select("*", F.lit(as_of).alias("as_of_date"), F.lit(ctx.run_id).alias("run_id"))
        ctx.store.replace(Table.CUSTOMER_FEATURES, features, where(as_of_date=as_of), partition_by=["as_of_date"])
    finally:
        features.unpersist()
    tables.append(Table.CUSTOMER_FEATURES)
    _log(ctx, refreshed, state_done)
    return FeaturesStageResult(
        stage="features",
        rows_in=None,
        rows_out=ctx.store.rows_written(Table.CUSTOMER_FEATURES),
        tables=tuple(tables),
        as_of_date=as_of,
        metrics={"feature_refresh_seconds": refreshed.seconds, "feature_state_seconds": state_done.seconds},
        refresh=refreshed,
        state=state_done,
    )


def _as_of(ctx: RunContext) -> date:
    """The configured as-of date, or the day after the last clean transaction; checked against the data.

    Raises:
        DataError: No clean transaction lies before it.
    """
    bounds = ctx.store.read(Table.CUSTOMER_DAILY).agg(F.min("day"), F.max("day")).first()
    first, last = (bounds[0], bounds[1]) if bounds is not None else (None, None)
    if first is None or last is None:
        raise DataError(
            f"{ctx.store.name(Table.TRANSACTIONS_CLEAN)} holds no clean transaction: there is nothing to build "
            "features from"
        )
    as_of: date = ctx.settings.features.as_of_date or last + timedelta(days=1)
    if as_of <= first:
        raise DataError(
            f"as-of date {as_of} is on or before the first clean transaction ({first}): features use only "
            f"days before the as-of date, so no customer would have any. Set features.as_of_date (or --as-of) "
            f"after {first}, or leave it unset for the day after the last transaction ({last + timedelta(days=1)})."
        )
    return as_of


def _log(ctx: RunContext, refreshed: store.RefreshResult, state: store.StateResult) -> None:
    ctx.tracker.log_summary(
        {
            "daily": {
                "mode": refreshed.mode,
                "reason": refreshed.reason,
                "days": [d.isoformat() for d in refreshed.days],
            },
            "state": {"mode": state.mode, "reason": state.reason},
        },
        "feature_refresh.json",
        tags={"feature_refresh_mode": refreshed.mode, "feature_state_mode": state.mode},
    )
