"""``seg-spark clv-backtest``: how well BG/NBD forecasts repeat purchases on the configured data.

The configured transaction source is read and cleaned by the ingest rules (nothing is
written), purchases (returns left out) up to the holdout end are summarised per customer in
Spark (``seg_spark.features.repeat``), BG/NBD is fitted on the distinct calibration summaries
and Gamma-Gamma on the repeat buyers (a bounded sample of them), and each customer's expected
repeat purchases over the holdout period are set against the actual ones: in total and by
calibration frequency (the classic calibration-vs-holdout table).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from seg_spark.clock import utc_now
from seg_spark.config import ClvSettings, Settings
from seg_spark.errors import ConfigError
from seg_spark.features.repeat import TIME_UNIT_DAYS, repeat_summaries
from seg_spark.models.clv import (
    ClvFitError,
    Fit,
    expected_purchases,
    fit_bgnbd_on,
    fit_gamma_gamma_on,
    require_converged,
)
from seg_spark.plots import calibration_vs_holdout
from seg_spark.stages.ingest.stage import clean_transactions
from seg_spark.tracking import Tracker

log = logging.getLogger(__name__)

# Calibration frequencies shown one by one; the last bucket is this many and more.
FREQUENCY_BUCKETS = 7


@dataclass(frozen=True)
class Backtest:
    """A fit on the calibration period and its forecast of the holdout period."""

    calibration_end: date
    holdout_end: date
    time_unit: str
    customers: int
    bgnbd: Fit
    gamma_gamma: Fit | None
    predicted: float
    actual: int
    by_frequency: list[dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        """The result as the documented JSON object."""
        return {
            "bgnbd": {**self.bgnbd.params, "log_likelihood": self.bgnbd.log_likelihood},
            "gamma_gamma": self.gamma_gamma.params if self.gamma_gamma else None,
            "customers": self.customers,
            "holdout": {"predicted": self.predicted, "actual": self.actual},
        }

    def report(self) -> list[str]:
        """Lines for the console: parameters, totals, and the table by calibration frequency."""
        b = self.bgnbd
        lines = [
            f"calibration to {self.calibration_end}, holdout to {self.holdout_end}, in {self.time_unit}s; "
            f"{self.customers:,} customers",
            "BG/NBD: "
            + ", ".join(f"{k} {v:.4g} (se {b.std_errors[k]:.2g})" for k, v in b.params.items())
            + f"; log-likelihood {b.log_likelihood:,.1f}"
            + ("" if b.converged else f" (NOT converged: {b.message})"),
        ]
        if self.gamma_gamma:
            g = self.gamma_gamma
            lines.append(
                "Gamma-Gamma: " + ", ".join(f"{k} {v:.4g} (se {g.std_errors[k]:.2g})" for k, v in g.params.items())
            )
        lines.append(f"repeat purchases in the holdout: predicted {self.predicted:,.1f}, actual {self.actual:,}")
        lines.append(f"{'calibration purchases':>22} {'customers':>10} {'predicted':>10} {'actual':>10}")
        for row in self.by_frequency:
            means = f"{row['predicted_mean']:>10.3f} {row['actual_mean']:>10.3f}"
            lines.append(f"{row['frequency']:>22} {row['customers']:>10,} {means}")
        return lines


def check_periods(calibration_end: date, holdout_end: date, time_unit: str) -> None:
    """Raise ``ConfigError`` when the periods are in the wrong order or the time unit is unknown."""
    if time_unit not in TIME_UNIT_DAYS:
        raise ConfigError(f"--time-unit must be one of {', '.join(TIME_UNIT_DAYS)}, not {time_unit!r}")
    if holdout_end <= calibration_end:
        raise ConfigError(f"--holdout-end ({holdout_end}) must be after --calibration-end ({calibration_end})")


def clv_backtest(
    spark: SparkSession, settings: Settings, calibration_end: date, holdout_end: date, time_unit: str
) -> Backtest:
    """Fit on the calibration period of the configured source and forecast the holdout period.

    Raises:
        ConfigError: The periods are in the wrong order or the time unit is unknown.
        ClvFitError: Too little data for the models (no repeat purchase, too many distinct summaries).
    """
    check_periods(calibration_end, holdout_end, time_unit)
    _, cleaned = clean_transactions(spark, settings, utc_now().date(), "clv-backtest")
    try:
        purchases = cleaned.clean.filter(~F.col("is_return") & F.col("customer_id").isNotNull())
        unit = TIME_UNIT_DAYS[time_unit]
        summaries = purchases.select("customer_id", "ts", "amount").transform(
            repeat_summaries(calibration_end, unit, holdout_end)
        )
        summaries = summaries.cache()
        try:
            return _backtest(summaries, calibration_end, holdout_end, time_unit, settings.predict.clv)
        finally:
            summaries.unpersist()
    finally:
        cleaned.release()


def _backtest(
    summaries: DataFrame, calibration_end: date, holdout_end: date, time_unit: str, clv: ClvSettings
) -> Backtest:
    bgnbd = fit_bgnbd_on(summaries, clv.max_distinct_summaries, clv.penalizer)
    try:
        gamma_gamma: Fit | None = fit_gamma_gamma_on(
            summaries, clv.max_gamma_gamma_buyers, clv.min_gamma_gamma_buyers, clv.penalizer
        )
    except ClvFitError as exc:
        log.warning("Gamma-Gamma not fitted: %s", exc)
        gamma_gamma = None
    horizon = (holdout_end - calibration_end).days / TIME_UNIT_DAYS[time_unit]
    forecast = summaries.select(
        F.least("x", F.lit(FREQUENCY_BUCKETS)).alias("bucket"),
        expected_purchases(bgnbd.params, horizon, clv.series_terms).alias("expected"),
        "x_holdout",
    )
    require_converged(forecast, F.col("expected.last_term"), clv.series_terms)
    table = (
        forecast.groupBy("bucket")
        .agg(
            F.count(F.lit(1)).alias("customers"),
            F.sum("expected.value").alias("predicted"),
            F.sum("x_holdout").alias("actual"),
        )
        .orderBy("bucket")
        .collect()
    )
    by_frequency = [
        {
            "frequency": f"{r['bucket']}+" if r["bucket"] == FREQUENCY_BUCKETS else str(r["bucket"]),
            "customers": int(r["customers"]),
            "predicted_mean": float(r["predicted"]) / int(r["customers"]),
            "actual_mean": int(r["actual"]) / int(r["customers"]),
        }
        for r in table
    ]
    return Backtest(
        calibration_end=calibration_end,
        holdout_end=holdout_end,
        time_unit=time_unit,
        customers=sum(int(r["customers"]) for r in table),
        bgnbd=bgnbd,
        gamma_gamma=gamma_gamma,
        predicted=float(sum(r["predicted"] for r in table)),
        actual=int(sum(r["actual"] for r in table)),
        by_frequency=by_frequency,
    )


BACKTEST_PLOT = "calibration_vs_holdout.png"


def log_backtest(tracker: Tracker, result: Backtest) -> str | None:
    """Record a backtest as an MLflow run: periods, fitted parameters, totals, the table and its plot.

    Returns:
        The MLflow run id (None when tracking is off).
    """
    tags = {"seg_spark.command": "clv-backtest"}
    with tracker.run(f"clv-backtest-{result.calibration_end}-{result.holdout_end}", tags) as run_id:
        metrics = {f"bgnbd_{k}": v for k, v in result.bgnbd.params.items()}
        metrics["bgnbd_log_likelihood"] = result.bgnbd.log_likelihood
        if result.gamma_gamma is not None:
            metrics.update({f"gamma_gamma_{k}": v for k, v in result.gamma_gamma.params.items()})
        metrics.update(
            {"customers": result.customers, "holdout_predicted": result.predicted, "holdout_actual": result.actual}
        )
        tracker.log_metrics(metrics)
        tracker.log_summary({**result.as_json(), "by_frequency": result.by_frequency}, "backtest.json")
        tracker.log_figure(calibration_vs_holdout(result.by_frequency, result.time_unit), BACKTEST_PLOT)
    return run_id
