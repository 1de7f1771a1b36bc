"""Preparation of customer features for clustering, planned from data and saved with the model.

Two passes over the (cached) model input plan the preparation: one approximate-quantile
pass for the winsorising bounds and medians, one aggregation for every feature's spread and
every pairwise correlation. The plan becomes built-in Spark ML stages (SQLTransformer for
log1p + clipping, Imputer, VectorAssembler, a scaler, optional PCA), so the saved
``PipelineModel`` replays it exactly when scoring new customers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pyspark.ml import Estimator, Transformer
from pyspark.ml.feature import PCA, Imputer, RobustScaler, SQLTransformer, StandardScaler, VectorAssembler
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from seg_spark.config import PrepSettings
from seg_spark.errors import DataError

log = logging.getLogger(__name__)

FEATURES_COL = "features"
# A stage of a Spark ML Pipeline: what ``Pipeline(stages=...)`` accepts.
PipelineStage = Estimator[Any] | Transformer


class PreparationError(DataError):
    """No usable feature is left for clustering."""


@dataclass(frozen=True)
class FeatureDecision:
    """What the preparation does with one feature, and why."""

    feature: str
    kept: bool
    reason: str
    log1p: bool
    lower: float | None = None
    upper: float | None = None


@dataclass(frozen=True)
class Preparation:
    """The planned preparation: Spark ML stages that end in ``features`` and a per-feature report."""

    stages: tuple[PipelineStage, ...]
    decisions: tuple[FeatureDecision, ...]

    @property
    def kept(self) -> tuple[str, ...]:
        """The features that reach the clustering, in order."""
        return tuple(d.feature for d in self.decisions if d.kept)

    def report(self) -> list[dict[str, object]]:
        """The decisions as plain dicts (for MLflow and logs)."""
        return [asdict(d) for d in self.decisions]


def _prepared_name(feature: str) -> str:
    return f"{feature}__prep"


def _transformed(feature: str, log1p: bool) -> Column:
    """The feature as a double, NaN as null, log1p'd when asked (negative values count as 0)."""
    value = F.col(feature).cast("double")
    value = F.when(~F.isnan(value), value)
    return F.log1p(F.greatest(value, F.lit(0.0))) if log1p else value


def _sql_literal(value: float) -> str:
    return f"CAST({value!r} AS DOUBLE)"


def _transform_sql(decisions: Sequence[FeatureDecision]) -> str:
    exprs = []
    for d in decisions:
        x = f"CAST(`{d.feature}` AS DOUBLE)"
        x = f"CASE WHEN isnan({x}) THEN NULL ELSE {x} END"
        if d.log1p:
            x = f"log1p(greatest({x}, 0D))"
        if d.lower is not None and d.upper is not None:
            # greatest/least skip nulls, so keep a missing value missing for the imputer.
            lo, hi = _sql_literal(d.lower), _sql_literal(d.upper)
            x = f"CASE WHEN {x} IS NULL THEN NULL ELSE least(greatest({x}, {lo}), {hi}) END"
        exprs.append(f"{x} AS `{_prepared_name(d.feature)}`")
    return f"SELECT *, {', '.join(exprs)} FROM __THIS__"


def plan_preparation(data: DataFrame, features: Sequence[str], settings: PrepSettings) -> Preparation:
    """Decide bounds and which features to keep, then build the preparation stages.

    Args:
        data: Model input with the feature columns; read twice, so cache it beforehand.
        features: Candidate feature columns, in priority order (of two collinear features
            the earlier one is kept).
        settings: The ``model.prep`` section.

    Returns:
        The stages (ending in the ``features`` vector column) and the per-feature decisions.

    Raises:
        PreparationError: Every feature is missing, constant or redundant.
    """
    log1p = set(settings.log1p_features)
    transformed = data.select(*[_transformed(f, f in log1p).alias(f) for f in features])
    probabilities = list(settings.winsorize) if settings.winsorize else []
    bounds: dict[str, tuple[float | None, float | None]] = {f: (None, None) for f in features}
    if probabilities:
        quantiles = transformed.approxQuantile(list(features), probabilities, settings.quantile_error)
        # An all-missing column has no quantiles.
        bounds.update({f: (q[0], q[1]) for f, q in zip(features, quantiles, strict=True) if len(q) == 2})

    def clipped(f: str) -> Column:
        lo, hi = bounds[f]
        x = F.col(f)
        return x if lo is None else F.when(x.isNotNull(), F.least(F.greatest(x, F.lit(lo)), F.lit(hi)))

    clipped_frame = transformed.select(*[clipped(f).alias(f) for f in features])
    pairs = [(a, b) for i, a in enumerate(features) for b in features[i + 1 :]]
    stats = clipped_frame.agg(
        *[F.count(f).alias(f"n__{i}") for i, f in enumerate(features)],
        *[F.stddev_pop(f).alias(f"sd__{i}") for i, f in enumerate(features)],
        # Covariances, not corr(): Spark's corr divides by zero (an error under ANSI) for a constant column.
        *[F.covar_pop(a, b).alias(f"cov__{j}") for j, (a, b) in enumerate(pairs)],
    ).first()
    if stats is None:  # a global aggregation always has exactly one row
        raise RuntimeError("the feature statistics aggregation returned no row")
    spread_of = {f: stats[f"sd__{i}"] for i, f in enumerate(features)}
    correlation = {}
    for j, (a, b) in enumerate(pairs):
        covariance, sd_a, sd_b = stats[f"cov__{j}"], spread_of[a], spread_of[b]
        if covariance is not None and sd_a and sd_b:
            correlation[(a, b)] = covariance / (sd_a * sd_b)

    decisions: list[FeatureDecision] = []
    kept: list[str] = []
    for i, f in enumerate(features):
        lo, hi = bounds[f]
        present, spread = stats[f"n__{i}"], stats[f"sd__{i}"]
        reason = "kept"
        if present == 0:
            reason = "dropped: no customer has a value"
        elif settings.drop_zero_variance and not spread:
            reason = "dropped: zero variance (one value for every customer after clipping)"
        elif settings.max_abs_correlation is not None:
            for other in kept:
                r = correlation.get((other, f))
                if r is not None and abs(r) > settings.max_abs_correlation:
                    reason = (
                        f"dropped: |correlation| {abs(r):.3f} with {other} "
                        f"above model.prep.max_abs_correlation {settings.max_abs_correlation}"
                    )
                    break
        keep = reason == "kept"
        if keep:
            kept.append(f)
        decisions.append(FeatureDecision(f, keep, reason, f in log1p, lo, hi))
        log.info("prep: %-28s %s", f, reason)
    if not kept:
        raise PreparationError(
            f"no usable feature among {list(features)}: " + "; ".join(f"{d.feature} {d.reason}" for d in decisions)
        )
    return Preparation(stages=_stages([d for d in decisions if d.kept], settings), decisions=tuple(decisions))


def _stages(decisions: Sequence[FeatureDecision], settings: PrepSettings) -> tuple[PipelineStage, ...]:
    prepared = [_prepared_name(d.feature) for d in decisions]
    imputed = [f"{name}__imputed" for name in prepared]
    stages: list[PipelineStage] = [
        SQLTransformer(statement=_transform_sql(decisions)),
        Imputer(inputCols=prepared, outputCols=imputed, strategy=settings.impute),
    ]
    last_stage_out = FEATURES_COL if settings.scaler == "none" and settings.pca_components is None else "features_raw"
    stages.append(VectorAssembler(inputCols=imputed, outputCol=last_stage_out, handleInvalid="error"))
    if settings.scaler != "none":
        out = FEATURES_COL if settings.pca_components is None else "features_scaled"
        # Scale without centring: distances (and so every clustering and metric here) do not
        # change with a shift, and MLlib's bisecting K-Means cannot split a cluster whose
        # centre is the origin (its initial split is a perturbation proportional to the centre).
        if settings.scaler == "standard":
            stages.append(StandardScaler(inputCol=last_stage_out, outputCol=out, withMean=False, withStd=True))
        else:
            stages.append(RobustScaler(inputCol=last_stage_out, outputCol=out, withCentering=False, withScaling=True))
        last_stage_out = out
    if settings.pca_components is not None:
        k = min(settings.pca_components, len(decisions))
        stages.append(PCA(k=k, inputCol=last_stage_out, outputCol=FEATURES_COL))
    return tuple(stages)
