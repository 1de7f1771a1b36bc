"""Predict: customer lifetime value (BG/NBD + Gamma-Gamma) and churn propensity, per customer and segment.

Reads ``customer_daily`` (the feature store: purchase days, and the point-in-time features of
earlier as-of dates), the run's ``customer_features`` and ``segment_assignments``; writes
``clv_parameters``, ``churn_evaluation``, the as-of partitions of ``customer_scores`` and
``segment_scores``, and registers the churn model (``<model.name>-churn``).

Awkward input ends in a documented outcome, never in NaN written silently:

* no repeat purchase at all (BG/NBD unidentified), more distinct summaries than allowed, or a
  series that does not converge: ``ClvFitError`` (exit 3) naming the setting to change;
* fewer repeat buyers than ``predict.clv.min_gamma_gamma_buyers`` (or a Gamma-Gamma fit without
  a finite population mean): a warning, and each customer's own mean purchase-day value stands
  in for the expected order value (``clv_parameters`` records the fallback);
* a fit that ends without L-BFGS-B's convergence: a warning, recorded in ``clv_parameters``;
* too little history before the as-of date for the churn windows, or labels of one class only:
  a warning, churn columns left null and the reason recorded in ``churn_evaluation``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from datetime import date, timedelta
from functools import reduce
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from seg_spark.config import ClvSettings
from seg_spark.context import RunContext
from seg_spark.features.behaviour import features_from_state, mix_keys
from seg_spark.features.repeat import TIME_UNIT_DAYS, summaries_from_days
from seg_spark.features.side import side_tables, with_side_features
from seg_spark.features.state import state_from_daily
from seg_spark.models import churn
from seg_spark.models.clv import (
    ClvFitError,
    ClvHorizon,
    Fit,
    clv_scores,
    fit_bgnbd_on,
    fit_gamma_gamma_on,
    require_converged,
    triple_forecasts,
)
from seg_spark.session import compacted
from seg_spark.stages import StageResult, assignments_of, features_of
from seg_spark.stages.predict.schema import (
    SEGMENT_SCORES,
    clv_column,
    customer_scores,
    expected_purchases_column,
    horizon_columns,
    horizon_constraints,
)
from seg_spark.tables import Table, where
from seg_spark.tracking import churn_model_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClvOutcome:
    """The CLV models of a run and every customer's scores (lazy)."""

    bgnbd: Fit
    gamma_gamma: Fit | None
    fallback: str | None  # why Gamma-Gamma is not used (None: it is)
    scores: DataFrame
    customers: int
    seconds: dict[str, float]  # clv_summaries_seconds (the compression pass), clv_fit_seconds (both fits)
    cached: list[DataFrame]

    def release(self) -> None:
        """Unpersist what the scores were computed from."""
        for frame in self.cached:
            frame.unpersist()


@dataclass(frozen=True)
class ChurnOutcome:
    """The churn candidates of a run, the chosen one and its scores (lazy); or why there are none."""

    dates: churn.Dates
    evaluations: tuple[churn.Evaluation, ...]
    training_rows: int
    evaluation_rows: int
    chosen: churn.Evaluation | None
    skipped: str | None
    scores: DataFrame | None
    model_version: str | None


@dataclass(frozen=True, kw_only=True)
class PredictStageResult(StageResult):
    """The fitted CLV models, the churn candidates, and the value and risk of each segment."""

    clv: ClvOutcome | None
    churn: ChurnOutcome | None
    segment_scores: tuple[dict[str, Any], ...]

    def report(self) -> list[str]:
        """Parameters, out-of-time churn metrics, and the segments by value."""
        if self.rows_out is None:
            return ["predict: skipped (predict.clv.enabled and predict.churn.enabled are false)"]
        lines = [f"predict: {self.rows_out:,} customers scored as of {self.as_of_date}"]
        if self.clv is not None:
            lines.append("  BG/NBD " + _params(self.clv.bgnbd))
            if self.clv.gamma_gamma is not None and self.clv.fallback is None:
                lines.append("  Gamma-Gamma " + _params(self.clv.gamma_gamma))
            if self.clv.fallback:
                lines.append(f"  expected order value: each customer's mean ({self.clv.fallback})")
        if self.churn is not None:
            if self.churn.skipped:
                lines.append(f"  churn: not modelled ({self.churn.skipped})")
            for e in self.churn.evaluations:
                mark = " (chosen)" if self.churn.chosen is e else ""
                lines.append(
                    f"  churn {e.model}{mark}: out-of-time AUC-ROC {e.auc_roc:.3f}, AUC-PR {e.auc_pr:.3f}, "
                    f"top-decile lift {e.top_decile_lift:.2f} (base rate {e.base_rate:.3f})"
                )
        for row in self.segment_scores:
            lines.append(
                f"  segment {row['model_segment_id']}: {row['customers']:,} customers, mean CLV "
                f"{_number(row['mean_clv'])}, churn {_number(row['mean_churn_probability'], '.3f')}"
            )
        return lines


def _params(fit: Fit) -> str:
    values = ", ".join(f"{name} {value:.4g}" for name, value in fit.params.items())
    converged = "" if fit.converged else f" (NOT converged: {fit.message})"
    return f"{values}; log-likelihood {fit.log_likelihood:,.1f}{converged}"


def _number(value: float | None, spec: str = ",.2f") -> str:
    return "-" if value is None else format(value, spec)


def run(ctx: RunContext) -> PredictStageResult:
    """Score every customer of the run's as-of date with CLV and churn propensity.

    Raises:
        StageInputError: The run's features (or segment assignments) are missing.
        ClvFitError: The data cannot support BG/NBD (the message names the setting to change).
    """
    as_of = ctx.as_of_date("predict")
    settings = ctx.settings.predict
    if not settings.clv.enabled and not settings.churn.enabled:
        log.info("predict: predict.clv and predict.churn are both disabled, nothing to do")
        return PredictStageResult(
            stage="predict",
            rows_in=None,
            rows_out=None,
            tables=(),
            as_of_date=as_of,
            clv=None,
            churn=None,
            segment_scores=(),
        )
    daily = ctx.store.require(Table.CUSTOMER_DAILY, "features")
    features = features_of(ctx, as_of)
    _create_score_tables(ctx)
    clv = _clv(ctx, daily, as_of) if settings.clv.enabled else None
    try:
        outcome = _churn(ctx, daily, features, as_of) if settings.churn.enabled else None
        scores = _customer_scores(ctx, features, clv, outcome, as_of)
        ctx.store.replace(Table.CUSTOMER_SCORES, scores, where(as_of_date=as_of), partition_by=["as_of_date"])
    finally:
        if clv is not None:
            clv.release()
    _check_written(ctx, as_of)
    by_segment = _segment_scores(ctx, as_of)
    tables = [
        *([Table.CLV_PARAMETERS] if clv is not None else []),
        *([Table.CHURN_EVALUATION] if outcome is not None else []),
        Table.CUSTOMER_SCORES,
        Table.SEGMENT_SCORES,
    ]
    return PredictStageResult(
        stage="predict",
        rows_in=None,
        rows_out=ctx.store.rows_written(Table.CUSTOMER_SCORES),
        tables=tuple(tables),
        as_of_date=as_of,
        metrics=_metrics(clv, outcome),
        clv=clv,
        churn=outcome,
        segment_scores=tuple(by_segment),
    )


def _create_score_tables(ctx: RunContext) -> None:
    """Create the score tables on first use; a new CLV horizon adds its columns to ``customer_scores``."""
    horizon = ctx.settings.predict.clv.horizon_months
    if not ctx.store.create_table(customer_scores(horizon)):
        added = ctx.store.add_columns(Table.CUSTOMER_SCORES, horizon_columns(horizon), horizon_constraints(horizon))
        if added:
            log.info("predict: %s gains the columns of a %d-month horizon: %s", Table.CUSTOMER_SCORES.value, horizon,
                     ", ".join(added))  # fmt: skip
    ctx.store.create_table(SEGMENT_SCORES)


# --- CLV -------------------------------------------------------------------------------------------


def _clv(ctx: RunContext, daily: DataFrame, as_of: date) -> ClvOutcome:
    """Summaries of the purchase days before the as-of date, both fits, and the (lazy) scores.

    The summaries and the forecasts per distinct triple are cached until ``release``.

    Raises:
        ClvFitError: BG/NBD cannot be fitted, or its series does not converge.
    """
    settings = ctx.settings.predict.clv
    unit = TIME_UNIT_DAYS[settings.time_unit]
    days = daily.filter((F.col("purchase_orders") > 0) & (F.col("day") < F.lit(as_of))).select(
        "customer_id", "day", F.col("gross").cast("double").alias("value")
    )
    summaries = days.transform(summaries_from_days(as_of - timedelta(days=1), unit))
    started = time.monotonic()
    summaries = summaries.persist(StorageLevel.MEMORY_AND_DISK)
    cached = [summaries]
    try:
        customers = summaries.count()
        seconds = {"clv_summaries_seconds": time.monotonic() - started}
        started = time.monotonic()
        bgnbd = fit_bgnbd_on(summaries, settings.max_distinct_summaries, settings.penalizer)
        _warn_unconverged("BG/NBD", bgnbd)
        gamma_gamma, fallback = _gamma_gamma(summaries, settings)
        seconds["clv_fit_seconds"] = time.monotonic() - started
        log.info(
            "CLV: %s customers summarised in %.1fs; BG/NBD (%s distinct summaries) and Gamma-Gamma fitted in %.1fs",
            f"{customers:,}",
            seconds["clv_summaries_seconds"],
            f"{bgnbd.observations:,}",
            seconds["clv_fit_seconds"],
        )
        horizon = ClvHorizon(settings.horizon_months, settings.monthly_discount_rate, unit, settings.series_terms)
        forecasts = summaries.transform(triple_forecasts(bgnbd.params, horizon)).persist(StorageLevel.MEMORY_AND_DISK)
        cached.append(forecasts)
        require_converged(forecasts, F.col("series_last_term"), settings.series_terms)
        value_params = gamma_gamma.params if gamma_gamma is not None and fallback is None else None
        scores = summaries.transform(clv_scores(forecasts, value_params))
        _write_parameters(ctx, as_of, customers, bgnbd, gamma_gamma, fallback)
    except BaseException as exc:
        for frame in cached:
            frame.unpersist()
        if isinstance(exc, ClvFitError):
            raise ClvFitError(f"CLV as of {as_of}: {exc} (or set predict.clv.enabled: false to skip CLV)") from exc
        raise
    return ClvOutcome(
        bgnbd=bgnbd,
        gamma_gamma=gamma_gamma,
        fallback=fallback,
        scores=scores,
        customers=customers,
        seconds=seconds,
        cached=cached,
    )


def _gamma_gamma(summaries: DataFrame, settings: ClvSettings) -> tuple[Fit | None, str | None]:
    """The Gamma-Gamma fit, or why each customer's own mean value stands in."""
    try:
        fit = fit_gamma_gamma_on(
            summaries, settings.max_gamma_gamma_buyers, settings.min_gamma_gamma_buyers, settings.penalizer
        )
    except ClvFitError as exc:
        log.warning("Gamma-Gamma not fitted, each customer's mean purchase value stands in: %s", exc)
        return None, str(exc)
    _warn_unconverged("Gamma-Gamma", fit)
    if fit.params["q"] <= 1:
        reason = f"Gamma-Gamma q = {fit.params['q']:.3g} <= 1: the population mean value is not finite"
        log.warning("%s; each customer's mean purchase value stands in", reason)
        return fit, reason
    return fit, None


def _warn_unconverged(name: str, fit: Fit) -> None:
    if not fit.converged:
        log.warning(
            "the %s fit ended without convergence (%s); its parameters are used and clv_parameters records it. "
            "A small predict.clv.penalizer (e.g. 0.001) usually helps",
            name,
            fit.message,
        )


def _write_parameters(
    ctx: RunContext, as_of: date, customers: int, bgnbd: Fit, gamma_gamma: Fit | None, fallback: str | None
) -> None:
    """One row per model and parameter: value, standard error, log-likelihood, convergence.

    A standard error is null where the Hessian at the optimum gives none (not invertible, or a
    negative variance: a parameter at the edge of its range, e.g. ``a`` near 0).
    """
    rows: list[tuple[Any, ...]] = [
        (
            model,
            name,
            value,
            _finite_or_none(fit.std_errors[name]),
            fit.log_likelihood,
            fit.converged,
            fit.message,
            used,
        )
        for model, fit, used in (("bgnbd", bgnbd, True), ("gamma_gamma", gamma_gamma, fallback is None))
        if fit is not None
        for name, value in fit.params.items()
    ]
    schema = (
        "model STRING, parameter STRING, value DOUBLE, std_error DOUBLE, log_likelihood DOUBLE, converged BOOLEAN, "
        "message STRING, used BOOLEAN"
    )
    frame = ctx.spark.createDataFrame(rows, schema).select(
        "*",
        F.lit(fallback).cast("string").alias("fallback"),
        F.lit(customers).cast("long").alias("customers"),
        F.lit(ctx.settings.predict.clv.time_unit).alias("time_unit"),
        F.lit(ctx.run_id).alias("run_id"),
        F.lit(as_of).alias("as_of_date"),
    )
    ctx.store.replace(Table.CLV_PARAMETERS, frame, where(as_of_date=as_of))


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


# --- churn -----------------------------------------------------------------------------------------


def _churn(ctx: RunContext, daily: DataFrame, current: DataFrame, as_of: date) -> ChurnOutcome:
    """Train the candidates on earlier as-of dates, judge them on a later one, score the current date."""
    settings = ctx.settings.predict.churn
    dates = churn.Dates.before(as_of, settings)
    first_day = daily.agg(F.min("day")).first()[0]  # type: ignore[index]
    earliest = first_day + timedelta(days=settings.min_history_days)
    if dates.training[0] < earliest:
        reason = (
            f"the earliest training date {dates.training[0]} needs history from {earliest} "
            f"(predict.churn.min_history_days after the first day, {first_day}); lower predict.churn.horizon_days, "
            "training_dates or training_step_days, or wait for more history"
        )
        return _skipped(ctx, dates, reason, as_of)
    columns = churn.feature_columns(current)
    frames = _labelled_frames(ctx, daily, (*dates.training, dates.evaluation), columns)
    training = reduce(DataFrame.unionByName, frames[:-1])
    training, evaluation = (f.persist(StorageLevel.MEMORY_AND_DISK) for f in (training, frames[-1]))
    try:
        counts = _label_counts(training, evaluation)
        one_class = [name for name, (churned, stayed) in counts.items() if not churned or not stayed]
        if one_class:
            reason = f"the {' and '.join(one_class)} rows hold one class only ({counts})"
            return _skipped(ctx, dates, reason, as_of)
        training_rows = sum(counts["training"])
        log.info(
            "churn: %s training rows from %s, %s evaluation rows from %s",
            f"{training_rows:,}",
            ", ".join(map(str, dates.training)),
            f"{sum(counts['evaluation']):,}",
            dates.evaluation,
        )
        if training_rows > settings.max_training_rows:
            training = training.sample(fraction=settings.max_training_rows / training_rows, seed=settings.seed)
        evaluations = churn.evaluate_candidates(
            compacted(training, min(training_rows, settings.max_training_rows), settings.rows_per_partition),
            compacted(evaluation, sum(counts["evaluation"]), settings.rows_per_partition),
            columns,
            settings,
        )
    finally:
        training.unpersist()
        evaluation.unpersist()
    chosen = max(evaluations, key=lambda e: e.auc_pr)
    _, version = ctx.tracker.log_spark_model(
        chosen.fitted, churn_model_name(ctx.settings), ctx.attempt_id, artifact_path="churn_model"
    )
    scores = current.transform(churn.model_input(columns)).transform(churn.churn_probability(chosen.fitted))
    outcome = ChurnOutcome(
        dates=dates,
        evaluations=evaluations,
        training_rows=min(training_rows, settings.max_training_rows),
        evaluation_rows=sum(counts["evaluation"]),
        chosen=chosen,
        skipped=None,
        scores=scores.select("customer_id", churn.PROBABILITY),
        model_version=version or "unregistered",
    )
    _write_evaluation(ctx, as_of, outcome)
    return outcome


def _labelled_frames(ctx: RunContext, daily: DataFrame, dates: tuple[date, ...], columns: list[str]) -> list[DataFrame]:
    """Point-in-time features at each date (from the daily aggregates only), labelled, as model input."""
    config = ctx.settings.features
    keys = mix_keys(ctx.store.read(Table.CUSTOMER_STATE), config)
    side = side_tables(ctx.store, ctx.settings.sources)
    frames = []
    for day in dates:
        features = features_from_state(state_from_daily(daily, day, config), day, config, keys)
        features = with_side_features(features, side, day)
        missing = [c for c in columns if c not in features.columns]
        features = features.select("*", *[F.lit(None).cast("double").alias(c) for c in missing])
        labelled = churn.labelled(features, daily, day, ctx.settings.predict.churn.horizon_days)
        frames.append(labelled.select("customer_id", churn.LABEL, *columns).transform(churn.model_input(columns)))
    return frames


def _label_counts(training: DataFrame, evaluation: DataFrame) -> dict[str, tuple[int, int]]:
    """(churned, stayed) rows of each frame."""
    counts = {}
    for name, frame in (("training", training), ("evaluation", evaluation)):
        row = frame.agg(F.sum(churn.LABEL), F.count(F.lit(1))).first()
        churned, total = int(row[0] or 0), int(row[1])  # type: ignore[index]
        counts[name] = (churned, total - churned)
    return counts


def _skipped(ctx: RunContext, dates: churn.Dates, reason: str, as_of: date) -> ChurnOutcome:
    log.warning("churn propensity not modelled as of %s: %s; churn_probability is left null", as_of, reason)
    outcome = ChurnOutcome(
        dates=dates,
        evaluations=(),
        training_rows=0,
        evaluation_rows=0,
        chosen=None,
        skipped=reason,
        scores=None,
        model_version=None,
    )
    _write_evaluation(ctx, as_of, outcome)
    return outcome


def _write_evaluation(ctx: RunContext, as_of: date, outcome: ChurnOutcome) -> None:
    """One row per candidate (or one row saying why there is none) in ``churn_evaluation``."""
    calibration = "ARRAY<STRUCT<decile: INT, customers: BIGINT, predicted: DOUBLE, observed: DOUBLE>>"
    schema = (
        f"model STRING, chosen BOOLEAN, auc_roc DOUBLE, auc_pr DOUBLE, top_decile_lift DOUBLE, base_rate DOUBLE, "
        f"calibration {calibration}, importances ARRAY<STRUCT<feature: STRING, importance: DOUBLE>>, "
        "skipped STRING"
    )
    rows: list[tuple[Any, ...]] = [
        (
            e.model,
            outcome.chosen is e,
            e.auc_roc,
            e.auc_pr,
            None if math.isnan(e.top_decile_lift) else e.top_decile_lift,
            e.base_rate,
            e.calibration,
            e.importances,
            None,
        )
        for e in outcome.evaluations
    ] or [(None, False, None, None, None, None, None, None, outcome.skipped)]
    settings = ctx.settings.predict.churn
    frame = ctx.spark.createDataFrame(rows, schema).select(
        "*",
        F.lit(outcome.dates.evaluation).alias("evaluation_date"),
        F.array(*[F.lit(d) for d in outcome.dates.training]).alias("training_dates"),
        F.lit(settings.horizon_days).alias("horizon_days"),
        F.lit(outcome.training_rows).cast("long").alias("training_rows"),
        F.lit(outcome.evaluation_rows).cast("long").alias("evaluation_rows"),
        F.lit(outcome.model_version).cast("string").alias("model_version"),
        F.lit(ctx.run_id).alias("run_id"),
        F.lit(as_of).alias("as_of_date"),
    )
    ctx.store.replace(Table.CHURN_EVALUATION, frame, where(as_of_date=as_of))
    ctx.tracker.log_summary(
        {
            "evaluation_date": outcome.dates.evaluation.isoformat(),
            "training_dates": [d.isoformat() for d in outcome.dates.training],
            "skipped": outcome.skipped,
            "candidates": [
                {
                    "model": e.model,
                    "chosen": outcome.chosen is e,
                    "auc_roc": e.auc_roc,
                    "auc_pr": e.auc_pr,
                    "top_decile_lift": e.top_decile_lift,
                    "base_rate": e.base_rate,
                    "calibration": e.calibration,
                    "importances": e.importances,
                }
                for e in outcome.evaluations
            ],
        },
        "churn_evaluation.json",
    )


# --- scores ----------------------------------------------------------------------------------------


def _customer_scores(
    ctx: RunContext, features: DataFrame, clv: ClvOutcome | None, outcome: ChurnOutcome | None, as_of: date
) -> DataFrame:
    """Every customer with a purchase before the as-of date, with the CLV and churn columns (null when off)."""
    settings = ctx.settings.predict.clv
    scored = features.filter(F.col("frequency") > 0).select("customer_id")
    clv_columns = ["repeat_purchases", "recency", "age", "p_alive", "expected_order_value", "expected_purchases", "clv"]
    if clv is not None:
        scored = scored.join(
            clv.scores.select(
                "customer_id",
                F.col("x").alias("repeat_purchases"),
                F.col("t_x").alias("recency"),
                *clv_columns[2:],
            ),
            "customer_id",
            "left",
        )
    else:
        scored = scored.select("*", *[F.lit(None).cast("double").alias(c) for c in clv_columns])
    chosen = outcome.chosen if outcome is not None else None
    if outcome is not None and outcome.scores is not None:
        scored = scored.join(outcome.scores, "customer_id", "left")
    else:
        scored = scored.select("*", F.lit(None).cast("double").alias(churn.PROBABILITY))
    return scored.select(
        "customer_id",
        F.col("repeat_purchases").cast("long").alias("repeat_purchases"),
        *[F.col(c).cast("double").alias(c) for c in clv_columns[1:3]],
        F.lit(settings.time_unit if clv else None).cast("string").alias("time_unit"),
        *[F.col(c).cast("double").alias(c) for c in clv_columns[3:5]],
        # The horizon names its columns (the table's layout: schema.customer_scores).
        F.col("expected_purchases").cast("double").alias(expected_purchases_column(settings.horizon_months)),
        F.col("clv").cast("double").alias(clv_column(settings.horizon_months)),
        churn.PROBABILITY,
        F.lit(chosen.model if chosen else None).cast("string").alias("churn_model"),
        F.lit(outcome.model_version if chosen and outcome else None).cast("string").alias("churn_model_version"),
        F.lit(ctx.run_id).alias("run_id"),
        F.lit(as_of).alias("as_of_date"),
    )


def _check_written(ctx: RunContext, as_of: date) -> None:
    """Refuse (and so roll back) scores holding a value that is not a finite number.

    Raises:
        ClvFitError: Some score is NaN or infinite.
    """
    written = ctx.store.read(Table.CUSTOMER_SCORES).filter(where(as_of_date=as_of).column())
    horizon = ctx.settings.predict.clv.horizon_months
    numbers = ["p_alive", expected_purchases_column(horizon), "expected_order_value", clv_column(horizon)]
    numbers.append(churn.PROBABILITY)
    bad = written.filter(reduce(lambda a, b: a | b, [F.isnan(c) | (F.abs(c) == float("inf")) for c in numbers])).limit(
        1
    )
    if not bad.isEmpty():
        raise ClvFitError(
            f"scores as of {as_of} hold a value that is not a finite number: raise predict.clv.series_terms, "
            "set a small predict.clv.penalizer (e.g. 0.001), or use predict.clv.time_unit: week"
        )


def _segment_scores(ctx: RunContext, as_of: date) -> list[dict[str, Any]]:
    """Value and risk per segment of the run (the model's segment ids), written and returned."""
    assignments = assignments_of(ctx, as_of).select("customer_id", F.col("segment_id").alias("model_segment_id"))
    scores = ctx.store.read(Table.CUSTOMER_SCORES).filter(where(as_of_date=as_of).column())
    horizon = ctx.settings.predict.clv.horizon_months
    clv = clv_column(horizon)
    rows = (
        assignments.join(scores, "customer_id")
        .groupBy("model_segment_id")
        .agg(
            F.count(F.lit(1)).alias("customers"),
            F.sum(clv).alias("total_clv"),
            F.avg(clv).alias("mean_clv"),
            F.avg(expected_purchases_column(horizon)).alias("mean_expected_purchases"),
            F.avg("p_alive").alias("mean_p_alive"),
            F.avg(churn.PROBABILITY).alias("mean_churn_probability"),
        )
        .orderBy("model_segment_id")
        .collect()  # one row per segment
    )
    segments = [row.asDict() for row in rows]
    total = sum(row["total_clv"] or 0.0 for row in segments)
    for row in segments:
        row["clv_share"] = row["total_clv"] / total if row["total_clv"] is not None and total else None
    schema = (
        "model_segment_id INT, customers BIGINT, total_clv DOUBLE, mean_clv DOUBLE, mean_expected_purchases DOUBLE, "
        "mean_p_alive DOUBLE, mean_churn_probability DOUBLE, clv_share DOUBLE"
    )
    frame = ctx.spark.createDataFrame([tuple(row.values()) for row in segments], schema).select(
        "*", F.lit(ctx.run_id).alias("run_id"), F.lit(as_of).alias("as_of_date")
    )
    ctx.store.replace(Table.SEGMENT_SCORES, frame, where(as_of_date=as_of))
    return segments


def _metrics(clv: ClvOutcome | None, outcome: ChurnOutcome | None) -> dict[str, float]:
    """Parameters, standard errors, log-likelihoods and out-of-time churn metrics, for MLflow."""
    metrics: dict[str, float] = {}
    if clv is not None:
        metrics["clv_customers"] = float(clv.customers)
        metrics["clv_distinct_summaries"] = float(clv.bgnbd.observations)
        metrics.update(clv.seconds)
        for model, fit in (("bgnbd", clv.bgnbd), ("gamma_gamma", clv.gamma_gamma)):
            if fit is None:
                continue
            metrics[f"clv_{model}_log_likelihood"] = fit.log_likelihood
            metrics[f"clv_{model}_converged"] = float(fit.converged)
            for name, value in fit.params.items():
                metrics[f"clv_{model}_{name}"] = value
                metrics[f"clv_{model}_{name}_se"] = fit.std_errors[name]
    if outcome is not None:
        for e in outcome.evaluations:
            metrics.update(
                {
                    f"churn_{e.model}_auc_roc": e.auc_roc,
                    f"churn_{e.model}_auc_pr": e.auc_pr,
                    f"churn_{e.model}_top_decile_lift": e.top_decile_lift,
                }
            )
        if outcome.evaluations:
            metrics["churn_base_rate"] = outcome.evaluations[0].base_rate
    return metrics
