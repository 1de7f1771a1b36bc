"""Incremental refresh of the daily aggregates equals a full recompute, exactly."""

from datetime import UTC, date, datetime, timedelta

import pytest
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from seg_spark.config import FeatureSettings, load_config
from seg_spark.features import store
from seg_spark.features.behaviour import customer_features, features_from_state, mix_keys
from seg_spark.features.daily import daily_aggregates
from seg_spark.features.state import advance_state, state_from_daily
from seg_spark.stages.ingest.stage import CHANGE_FEED
from seg_spark.tables import Table, TableStore

from conftest import statistics_columns

START, DAYS = date(2024, 1, 1), 100
AS_OF = START + timedelta(days=DAYS)
NOW = datetime(2024, 6, 1, tzinfo=UTC)


def table_store(spark, root) -> TableStore:
    return TableStore(spark, load_config([], [f"storage.root={root}"]))


def canonical_lines(spark, rows: int = 4000) -> DataFrame:
    """Deterministic canonical lines: 60 customers over 100 days, returns, 5 categories, 3 channels."""
    h = lambda purpose: F.abs(F.xxhash64(F.lit(purpose), "id"))  # noqa: E731
    order = F.col("id") / 3  # about three lines per order
    return (
        spark.range(rows)
        .select(
            F.concat(F.lit("c"), (h("customer") % 60).cast("string")).alias("customer_id"),
            F.concat(F.lit("o"), order.cast("long").cast("string")).alias("order_id"),
            (
                F.lit(START).cast("timestamp")
                + F.make_dt_interval(days=(h("day") % DAYS).cast("int"), hours=(h("hour") % 24).cast("int"))
            ).alias("ts"),
            F.concat(F.lit("p"), (h("product") % 40).cast("string")).alias("product_id"),
            F.lit(None).cast("string").alias("description"),
            F.element_at(
                F.array(*map(F.lit, ["toys", "books", "food", "garden", "tools"])), (h("cat") % 5 + 1).cast("int")
            ).alias("category"),
            F.element_at(F.array(*map(F.lit, ["web", "store", "app"])), (h("channel") % 3 + 1).cast("int")).alias(
                "channel"
            ),
            ((h("qty") % 5) + 1).cast("double").alias("quantity"),
            ((h("price") % 1000) / 100 + 0.01).alias("unit_price"),
            F.lit(None).cast("double").alias("discount"),
            (h("return") % 20 == 0).alias("is_return"),
        )
        .select(
            "*",
            (F.when(F.col("is_return"), -1).otherwise(1) * F.col("quantity") * F.col("unit_price")).alias("amount"),
        )
    )


def assert_exactly_equal(left: DataFrame, right: DataFrame) -> None:
    """Same rows, bit for bit (no tolerance)."""
    assert sorted(left.columns) == sorted(right.columns)
    right = right.select(*left.columns)
    assert left.count() == right.count()
    assert left.exceptAll(right).count() == 0 and right.exceptAll(left).count() == 0


@pytest.fixture(scope="module")
def lines(spark):
    return canonical_lines(spark).cache()


@pytest.mark.slow  # four refreshes and three exact comparisons: about a minute
def test_incremental_refreshes_equal_a_full_recompute(spark, lines, tmp_path):
    tables = table_store(spark, tmp_path)
    last_day, second_last, late_day = AS_OF - timedelta(days=1), AS_OF - timedelta(days=2), START + timedelta(days=40)
    day = F.to_date("ts")
    late = (day == F.lit(late_day)) & (F.col("customer_id") < "c3")  # held back, arrives after the newer days
    history = lines.filter((day < F.lit(second_last)) & ~late)

    settings = FeatureSettings()

    def append(batch: DataFrame) -> store.RefreshResult:
        tables.append(Table.TRANSACTIONS_CLEAN, store.with_tx_date(batch), partition_by=[store.TX_MONTH])
        tables.set_properties(Table.TRANSACTIONS_CLEAN, CHANGE_FEED)  # as the ingest stage does
        return store.refresh_daily(tables, refresh="incremental", run_id="t", now=NOW)

    def features_as_of(as_of: date) -> tuple[DataFrame, store.StateResult]:
        state, done = store.refresh_state(tables, as_of, settings)
        return features_from_state(state, as_of, settings, mix_keys(state, settings)), done

    first = append(history)
    assert first.mode == "full" and first.reason.startswith("first refresh")
    features, state = features_as_of(second_last)
    assert state.mode == "built" and state.reason == "no running state yet"

    second = append(lines.filter(day == F.lit(second_last)))
    assert (second.mode, second.days) == ("incremental", (second_last,))
    features, state = features_as_of(last_day)
    assert (state.mode, state.since) == ("advanced", second_last)
    assert_exactly_equal(features, customer_features(lines.filter(~late), last_day, settings))

    third = append(lines.filter((day == F.lit(last_day)) | late))
    assert (third.mode, third.days) == ("incremental", (late_day, last_day))
    features, state = features_as_of(AS_OF)
    assert state.mode == "built" and "changed since the state was built" in state.reason  # the late rows
    assert_exactly_equal(features, customer_features(lines, AS_OF, settings))

    unchanged = store.refresh_daily(tables, refresh="incremental", run_id="t", now=NOW)
    assert unchanged.mode == "unchanged"
    assert features_as_of(AS_OF)[1].mode == "reused"
    assert features_as_of(AS_OF - timedelta(days=3))[1].reason.startswith("as-of date")
    # ... and the daily table itself equals one built from scratch.
    scratch = table_store(spark, tmp_path / "scratch")
    scratch.overwrite(Table.TRANSACTIONS_CLEAN, tables.read(Table.TRANSACTIONS_CLEAN), partition_by=[store.TX_MONTH])
    store.refresh_daily(scratch, refresh="full", run_id="t", now=NOW)
    assert_exactly_equal(
        tables.read(Table.CUSTOMER_DAILY).drop("category_spend", "channel_orders"),
        scratch.read(Table.CUSTOMER_DAILY).drop("category_spend", "channel_orders"),
    )
    log_rows = tables.read(Table.FEATURE_REFRESH_LOG).orderBy("source_version").collect()
    assert [(r.mode, r.days_refreshed) for r in log_rows] == [
        ("full", 98),
        ("incremental", 1),
        ("incremental", 2),
        ("unchanged", 0),
    ]


def comparable(state: DataFrame) -> DataFrame:
    """Maps cannot be compared by exceptAll: turn them into sorted entry arrays."""
    maps = [f.name for f in state.schema.fields if f.dataType.typeName() == "map"]
    return state.withColumns({m: F.array_sort(F.map_entries(m)) for m in maps})


def test_advancing_the_state_equals_building_it(lines):
    """Day by day, then jumps wider than a window (the entering and leaving ranges overlap)."""
    settings = FeatureSettings(windows_days=(3, 7))
    daily = daily_aggregates(lines).cache()
    as_of = START + timedelta(days=40)
    state = state_from_daily(daily, as_of, settings).cache()
    for step in (1, 1, 10):
        since, as_of = as_of, as_of + timedelta(days=step)
        state = advance_state(state, daily, since, as_of, settings).cache()
        assert_exactly_equal(comparable(state), comparable(state_from_daily(daily, as_of, settings)))
    keys = mix_keys(state, settings)
    assert_exactly_equal(features_from_state(state, as_of, settings, keys), customer_features(lines, as_of, settings))
    daily.unpersist()


def test_a_replaced_snapshot_triggers_a_full_refresh(spark, lines, tmp_path):
    tables = table_store(spark, tmp_path)
    for _ in range(2):
        tables.overwrite(Table.TRANSACTIONS_CLEAN, store.with_tx_date(lines), partition_by=[store.TX_MONTH])
        tables.set_properties(Table.TRANSACTIONS_CLEAN, CHANGE_FEED)  # as the ingest stage does
        result = store.refresh_daily(tables, refresh="incremental", run_id="t", now=NOW)
    assert result.mode == "full" and "replaced" in result.reason
    daily = tables.path(Table.CUSTOMER_DAILY)
    assert statistics_columns(spark, daily, tables.version(Table.CUSTOMER_DAILY)) == {"customer_id", "day"}


def test_future_events_never_leak_into_any_feature(spark, lines):
    future = (
        canonical_lines(spark, 500)
        .withColumn(
            "ts",
            F.col("ts") + F.make_dt_interval(days=F.lit(DAYS)),  # from the as-of date on
        )
        .withColumn("category", F.lit("future-only"))
    )
    settings = FeatureSettings()
    with_future = customer_features(lines.unionByName(future), AS_OF, settings)
    assert "cat_future_only_share" not in with_future.columns
    assert_exactly_equal(with_future, customer_features(lines, AS_OF, settings))


@pytest.mark.parametrize("case", ["one customer", "all identical", "one day"])
def test_degenerate_inputs_give_features(spark, lines, case):
    if case == "one customer":
        tx = lines.filter(F.col("customer_id") == "c7")
    elif case == "all identical":
        tx = lines.limit(1).crossJoin(spark.range(50).select(F.concat(F.lit("x"), "id").alias("new_id")))
        tx = tx.withColumn("customer_id", F.col("new_id")).drop("new_id")
    else:
        tx = lines.filter(F.to_date("ts") == F.lit(START))
    rows = customer_features(tx, AS_OF).collect()
    expected_customers = tx.select("customer_id").distinct().count()
    assert len(rows) == expected_customers > 0
    if case == "all identical":
        assert len({tuple(r.asDict().values())[1:] for r in rows}) == 1
