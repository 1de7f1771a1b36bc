"""The predict stage on awkward input: each case ends in its documented outcome, never in NaN."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pytest

from seg_spark.config import load_config
from seg_spark.context import RunContext
from seg_spark.errors import EXIT_DATA
from seg_spark.models.clv import ClvFitError
from seg_spark.stages.predict import run
from seg_spark.tables import Table, where

AS_OF = date(2025, 3, 1)
FIRST = AS_OF - timedelta(days=60)  # two months of history


def _bare_context(spark, root: Path, *overrides: str) -> RunContext:
    settings = load_config(
        [],
        [f"storage.root={root}", "tracking.enabled=false", "run.run_id=r1", f"features.as_of_date={AS_OF}", *overrides],
    )
    return RunContext.create(spark, settings)


def _context(spark, root: Path, days: dict[str, list[tuple[int, float]]], *overrides: str) -> RunContext:
    """A warehouse holding what the features and segment stages leave for ``days`` (customer -> (day, value))."""
    ctx = _bare_context(spark, root, *overrides)
    daily = [(c, FIRST + timedelta(days=d), 1, value) for c, bought in days.items() for d, value in bought]
    ctx.store.overwrite(
        Table.CUSTOMER_DAILY,
        spark.createDataFrame(daily, "customer_id string, day date, purchase_orders int, gross double"),
    )
    features = [(c, len(bought), AS_OF, "r1") for c, bought in days.items()]
    ctx.store.replace(
        Table.CUSTOMER_FEATURES,
        spark.createDataFrame(features, "customer_id string, frequency long, as_of_date date, run_id string"),
        where(as_of_date=AS_OF),
    )
    assignments = [(c, i % 2, AS_OF, "r1") for i, c in enumerate(days)]
    ctx.store.replace(
        Table.SEGMENT_ASSIGNMENTS,
        spark.createDataFrame(assignments, "customer_id string, segment_id int, as_of_date date, run_id string"),
        where(as_of_date=AS_OF),
    )
    return ctx


def test_every_customer_buying_once_stops_with_the_setting_to_change(spark, tmp_path):
    ctx = _context(spark, tmp_path, {f"c{i}": [(i, 10.0)] for i in range(30)})
    with pytest.raises(ClvFitError) as raised:
        run(ctx)
    assert raised.value.exit_code == EXIT_DATA
    message = str(raised.value)
    assert message.startswith(f"CLV as of {AS_OF}: BG/NBD needs customers with repeat purchases")
    assert "predict.clv.enabled: false" in message
    assert not ctx.store.exists(Table.CLV_PARAMETERS)


def test_few_repeat_buyers_and_a_short_history_fall_back_as_documented(spark, tmp_path):
    # Thirty customers: eight buy again (too few for Gamma-Gamma), the rest once; two months of history.
    days = {f"c{i:02d}": [(i, 10.0 + i)] + ([(i + 20, 30.0), (i + 35, 50.0)] if i < 8 else []) for i in range(29)}
    days["free"] = [(3, 0.0), (10, 0.0), (40, 0.0)]  # zero-value orders (free samples) only
    ctx = _context(spark, tmp_path, days)
    result = run(ctx)

    assert result.clv is not None and result.clv.fallback is not None
    assert "at least 10 repeat buyers with a positive mean value; found 8" in result.clv.fallback
    scores = {r["customer_id"]: r for r in ctx.store.read(Table.CUSTOMER_SCORES).collect()}
    assert len(scores) == 30
    assert (scores["free"]["expected_order_value"], scores["free"]["clv_12m"]) == (0.0, 0.0)
    for customer, bought in days.items():
        row = scores[customer]
        assert row["expected_order_value"] == pytest.approx(sum(v for _, v in bought) / len(bought))
        assert row["clv_12m"] >= 0 and 0 <= row["p_alive"] <= 1 and row["expected_purchases_12m"] > 0
        assert row["churn_probability"] is None and row["churn_model"] is None
    parameters = ctx.store.read(Table.CLV_PARAMETERS).collect()
    assert {r["model"] for r in parameters} == {"bgnbd"} and {r["fallback"] for r in parameters} == {
        result.clv.fallback
    }
    (evaluation,) = ctx.store.read(Table.CHURN_EVALUATION).collect()
    assert evaluation["model"] is None and "predict.churn.horizon_days" in evaluation["skipped"]
    assert result.churn is not None and result.churn.skipped == evaluation["skipped"]
    # The per-segment view is there all the same, churn left null.
    segments = ctx.store.read(Table.SEGMENT_SCORES).orderBy("model_segment_id").collect()
    assert [r["customers"] for r in segments] == [15, 15]
    assert all(r["mean_churn_probability"] is None and r["mean_clv"] > 0 for r in segments)


def test_another_horizon_adds_its_columns_with_comments_and_constraints(spark, tmp_path):
    # Thirty customers, half buying three times over two months; churn plays no part here.
    days = {f"c{i:02d}": [(i, 10.0 + i)] + ([(i + 20, 30.0), (i + 35, 50.0)] if i % 2 else []) for i in range(30)}
    run(_context(spark, tmp_path, days, "predict.churn.enabled=false"))
    ctx = _bare_context(spark, tmp_path, "predict.churn.enabled=false", "predict.clv.horizon_months=6")
    run(ctx)  # the same run's inputs, scored again over six months

    path = ctx.store.path(Table.CUSTOMER_SCORES)
    described = {r["col_name"]: r["comment"] for r in spark.sql(f"DESCRIBE TABLE delta.`{path}`").collect()}
    assert "next 6 months" in described["clv_6m"] and "next 6 months" in described["expected_purchases_6m"]
    assert "next 12 months" in described["clv_12m"] and "clv" not in described
    properties = dict(spark.sql(f"SHOW TBLPROPERTIES delta.`{path}`").collect())
    assert properties["delta.constraints.clv_6m_not_negative"] == "clv_6m IS NULL OR clv_6m >= 0"
    assert "delta.constraints.clv_12m_not_negative" in properties
    now = {r["customer_id"]: r for r in ctx.store.read(Table.CUSTOMER_SCORES).collect()}
    before = {r["customer_id"]: r for r in ctx.store.read(Table.CUSTOMER_SCORES, 1).collect()}  # the 12-month run
    assert len(now) == len(before) == 30
    for customer, row in now.items():
        assert row["clv_12m"] is None and row["expected_purchases_12m"] is None  # this run's horizon is 6 months
        assert 0 < row["expected_purchases_6m"] < before[customer]["expected_purchases_12m"]
        assert 0 < row["clv_6m"] < before[customer]["clv_12m"]


def test_with_clv_and_churn_off_the_stage_writes_nothing(spark, tmp_path):
    ctx = _context(spark, tmp_path, {"c1": [(1, 5.0)]}, "predict.clv.enabled=false", "predict.churn.enabled=false")
    result = run(ctx)
    assert result.tables == () and result.report() == [
        "predict: skipped (predict.clv.enabled and predict.churn.enabled are false)"
    ]
    assert not ctx.store.exists(Table.CUSTOMER_SCORES)
