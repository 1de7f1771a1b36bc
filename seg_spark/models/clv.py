"""BG/NBD and Gamma-Gamma, fitted by maximum likelihood on compressed sufficient statistics.

The BG/NBD model (Fader, Hardie and Lee 2005) describes repeat purchases: while alive, a
customer buys at a Poisson rate drawn from Gamma(r, alpha); after each purchase the customer
drops out with a probability drawn from Beta(a, b). Its likelihood needs only each customer's
``(x, t_x, T)``: repeat purchases, time of the last one and age, in one time unit. Customers
with the same triple contribute the same term, so the fit runs on the distinct triples with
their counts as weights: its cost depends on the distinct summaries, not on the customers.

The Gamma-Gamma model (Fader, Hardie and Lee 2005, "RFM and CLV") describes the mean value
``m_x`` of a repeat buyer's ``x`` repeat purchases: each value is Gamma(p, nu), nu drawn from
Gamma(q, v). It is fitted on repeat buyers only, again on weighted distinct ``(x, m_x)``.

Both fits maximise the log-likelihood in log-parameter space (every parameter is positive)
from several starts with L-BFGS-B, keep the best, check convergence, and give standard errors
from the inverse of the numerical Hessian of the log-likelihood at the optimum. An L2
penalizer (off by default) adds ``penalizer * sum(params**2)`` to the negative log-likelihood.
The fits run on the driver with NumPy/SciPy on arrays of distinct summaries; scoring every
customer is Spark column expressions (P(alive), expected purchases with the hypergeometric
series as one ``aggregate`` expression, expected order value), no Python UDF.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property, reduce

import numpy as np
from numpy.typing import NDArray
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from scipy.optimize import minimize  # type: ignore[import-untyped]
from scipy.special import betaln, gammaln  # type: ignore[import-untyped]

from seg_spark.errors import DataError

FloatArray = NDArray[np.float64]

# Where the expected-purchases series stops: the last term below this.
SERIES_TOLERANCE = 1e-13
# A series whose last term is still above this has not converged (checked on every forecast).
CONVERGED_LAST_TERM = 1e-9

# Starting points of the fits, in the models' own parameters (r, alpha, a, b) and (p, q, v).
BGNBD_STARTS: tuple[tuple[float, ...], ...] = ((1.0, 1.0, 1.0, 1.0), (0.5, 5.0, 0.5, 2.0), (2.0, 20.0, 1.5, 5.0))
GAMMA_GAMMA_STARTS: tuple[tuple[float, ...], ...] = ((1.0, 1.0, 1.0), (5.0, 3.0, 10.0), (10.0, 5.0, 50.0))


class ClvFitError(DataError):
    """The data cannot support the model (too few customers or repeat buyers, or no convergence)."""


@dataclass(frozen=True)
class Fit:
    """A maximum-likelihood fit: parameters by name, log-likelihood, standard errors, how it ended."""

    params: dict[str, float]
    log_likelihood: float
    std_errors: dict[str, float]
    converged: bool
    message: str
    starts: int
    observations: int = 0  # distinct rows fitted: (x, t_x, T) triples or (x, m_x) pairs


@dataclass(frozen=True)
class Summaries:
    """Distinct ``(x, t_x, T)`` triples (``T`` as ``age``) with the number of customers sharing each."""

    x: FloatArray
    t_x: FloatArray
    age: FloatArray  # the literature's T: time from the first purchase to the end of the period
    weights: FloatArray

    @cached_property
    def x_levels(self) -> tuple[FloatArray, NDArray[np.intp]]:
        """The distinct values of ``x``, and for each summary the index of its value."""
        levels, index = np.unique(self.x, return_inverse=True)
        return levels, index

    @classmethod
    def compress(cls, x: Sequence[float], t_x: Sequence[float], age: Sequence[float]) -> Summaries:
        """Group per-customer triples into distinct ones with counts (what Spark's groupBy gives)."""
        triples = np.column_stack([np.asarray(v, dtype=float) for v in (x, t_x, age)])
        distinct, counts = np.unique(triples, axis=0, return_counts=True)
        return cls(distinct[:, 0], distinct[:, 1], distinct[:, 2], counts.astype(float))


def bgnbd_log_likelihood(params: Sequence[float] | FloatArray, s: Summaries) -> float:
    """The BG/NBD log-likelihood of the weighted summaries at ``(r, alpha, a, b)``.

    The gamma and beta functions depend on a summary only through ``x``, which takes few values
    (tens) against many summaries (hundreds of thousands): they are computed once per value of
    ``x``, and only the logarithms of ``alpha + t_x`` and ``alpha + T`` once per summary.
    """
    r, alpha, a, b = params
    levels, index = s.x_levels
    with np.errstate(divide="ignore", invalid="ignore"):  # b + x - 1 = 0 (b underflows at x = 1): rejected
        common = (gammaln(r + levels) - gammaln(r) + r * np.log(alpha) + betaln(a, b + levels) - betaln(a, b))[index]
        drop_odds = np.where(levels > 0, np.log(a) - np.log(b + levels - 1), -np.inf)[index]
    x = s.x
    alive = -(r + x) * np.log(alpha + s.age)
    # log(a / (b + x - 1)) - (r + x) log(alpha + t_x), only where x > 0 (the drop-out term)
    dropped = np.where(x > 0, drop_odds - (r + x) * np.log(alpha + s.t_x), -np.inf)
    return float(np.sum(s.weights * (common + np.logaddexp(alive, dropped))))


def gamma_gamma_log_likelihood(
    params: Sequence[float] | FloatArray,
    x: FloatArray,
    m_x: FloatArray,
    weights: FloatArray,
    x_levels: tuple[FloatArray, NDArray[np.intp]] | None = None,
) -> float:
    """The Gamma-Gamma log-likelihood of repeat buyers' mean values ``m_x`` at ``(p, q, v)``.

    ``x_levels`` (``np.unique(x, return_inverse=True)``, given by a fit that evaluates many times)
    lets the gamma functions run once per value of ``x``.
    """
    p, q, v = params
    levels, index = x_levels if x_levels is not None else np.unique(x, return_inverse=True)
    gammas = (gammaln(p * levels + q) - gammaln(p * levels) - gammaln(q))[index]
    px = p * x
    terms = gammas + q * np.log(v) + (px - 1) * np.log(m_x) + px * np.log(x) - (px + q) * np.log(x * m_x + v)
    return float(np.sum(weights * terms))


def fit_bgnbd(s: Summaries, penalizer: float = 0.0) -> Fit:
    """Fit BG/NBD to weighted summaries.

    Raises:
        ClvFitError: No customer, or no repeat purchase (the drop-out process is then unidentified).
    """
    if s.weights.sum() == 0 or not np.any(s.x > 0):
        raise ClvFitError(
            "BG/NBD needs customers with repeat purchases: every customer bought once (or there is none); "
            "use a longer calibration period or a finer time unit"
        )
    fit = _fit(lambda theta: bgnbd_log_likelihood(theta, s), ("r", "alpha", "a", "b"), BGNBD_STARTS, penalizer)
    return replace(fit, observations=len(s.x))


def fit_gamma_gamma(x: Sequence[float], m_x: Sequence[float], penalizer: float = 0.0, min_buyers: int = 10) -> Fit:
    """Fit Gamma-Gamma to repeat buyers' repeat-purchase counts ``x`` and mean values ``m_x``.

    Rows with ``x == 0`` or a non-positive mean value are left out (the model is for repeat buyers).

    Raises:
        ClvFitError: Fewer than ``min_buyers`` repeat buyers with a positive mean value.
    """
    xs, ms = np.asarray(x, dtype=float), np.asarray(m_x, dtype=float)
    keep = (xs > 0) & (ms > 0)
    if keep.sum() < min_buyers:
        raise ClvFitError(
            f"Gamma-Gamma needs at least {min_buyers} repeat buyers with a positive mean value; found {keep.sum()}"
        )
    pairs, counts = np.unique(np.column_stack([xs[keep], ms[keep]]), axis=0, return_counts=True)
    weights = counts.astype(float)
    levels = np.unique(pairs[:, 0], return_inverse=True)
    fit = _fit(
        lambda theta: gamma_gamma_log_likelihood(theta, pairs[:, 0], pairs[:, 1], weights, levels),
        ("p", "q", "v"),
        GAMMA_GAMMA_STARTS,
        penalizer,
    )
    return replace(fit, observations=len(pairs))


def _fit(
    log_likelihood: Callable[[FloatArray], float],
    names: tuple[str, ...],
    starts: tuple[tuple[float, ...], ...],
    penalizer: float,
) -> Fit:
    """Maximise ``log_likelihood`` over positive parameters from each start; keep the best."""

    def objective(log_theta: FloatArray) -> float:
        # A line search may step far out (exp overflows, a log of 0): such points are rejected below.
        with np.errstate(all="ignore"):
            theta = np.exp(log_theta)
            value = -log_likelihood(theta) + penalizer * float(np.sum(theta**2))
        return value if np.isfinite(value) else 1e300

    results = [minimize(objective, np.log(start), method="L-BFGS-B") for start in starts]
    best = min(results, key=lambda result: result.fun)
    theta = np.exp(best.x)
    if not np.all(np.isfinite(theta)):
        raise ClvFitError(f"the {'/'.join(names)} fit did not reach finite parameters: {best.message}")
    errors = _std_errors(log_likelihood, theta)
    return Fit(
        params=dict(zip(names, map(float, theta), strict=True)),
        log_likelihood=log_likelihood(theta),
        std_errors=dict(zip(names, map(float, errors), strict=True)),
        converged=bool(best.success),
        message=str(best.message),
        starts=len(starts),
    )


def _std_errors(log_likelihood: Callable[[FloatArray], float], theta: FloatArray) -> FloatArray:
    """Square roots of the diagonal of the inverse observed information (central differences)."""
    k = len(theta)
    steps = 1e-4 * np.maximum(np.abs(theta), 1e-3)
    hessian = np.empty((k, k))
    for i in range(k):
        for j in range(i, k):
            shifted = []
            for si, sj in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
                point = theta.copy()
                point[i] += si * steps[i]
                point[j] += sj * steps[j]
                shifted.append(log_likelihood(point))
            hessian[i, j] = hessian[j, i] = (shifted[0] - shifted[1] - shifted[2] + shifted[3]) / (
                4 * steps[i] * steps[j]
            )
    try:
        covariance = np.linalg.inv(-hessian)
    except np.linalg.LinAlgError:
        return np.full(k, np.nan)
    return np.sqrt(np.where(np.diag(covariance) > 0, np.diag(covariance), np.nan))


# --- scoring in Spark (column expressions only) -------------------------------------------------


def _hyp2f1(a: Column, b: Column, c: Column, z: Column, terms: int) -> Column:
    """Gauss's hypergeometric 2F1(a, b; c; z) for 0 <= z < 1 as at most ``terms`` terms of its series.

    One ``aggregate`` over a sequence (a loop inside one expression, no Python UDF); each term is
    the previous one times (a + n)(b + n) / ((c + n)(n + 1)) z. Each row takes only the terms its
    ``z`` needs: where the coefficients' ratio stays at or below 1 (as in ``expected_purchases``),
    term n is at most z^n, so ``log(SERIES_TOLERANCE) / log(z)`` terms reach the tolerance (40 at
    z = 0.5, 300 at z = 0.9), not ``terms`` for every row. The struct also carries the last term,
    so convergence is checked.
    """
    start = F.struct(F.lit(1.0).alias("term"), F.lit(1.0).alias("total"))
    needed = F.ceil(F.lit(math.log(SERIES_TOLERANCE)) / F.log(F.greatest(z, F.lit(1e-300)))) + 2
    count = F.least(F.lit(terms), F.greatest(needed, F.lit(2))).cast("int")

    def step(acc: Column, n: Column) -> Column:
        term = acc["term"] * (a + n) * (b + n) / ((c + n) * (n + 1)) * z
        return F.struct(term.alias("term"), (acc["total"] + term).alias("total"))

    return F.aggregate(F.sequence(F.lit(0), count - 1), start, step)


def _dropout_odds(params: dict[str, float]) -> Column:
    """The drop-out odds a / (b + x - 1) ((alpha + T) / (alpha + t_x))^(r + x); 0 without a repeat purchase."""
    r, alpha, a, b = (F.lit(params[n]) for n in ("r", "alpha", "a", "b"))
    x, t_x, age = F.col("x"), F.col("t_x"), F.col("age")
    odds = a / (b + x - 1) * F.pow((alpha + age) / (alpha + t_x), r + x)
    return F.when(x > 0, odds).otherwise(F.lit(0.0))


def p_alive(params: dict[str, float]) -> Column:
    """P(alive at the end of the calibration period | x, t_x, age) under BG/NBD."""
    return 1.0 / (1.0 + _dropout_odds(params))


def expected_purchases(params: dict[str, float], horizon: float, terms: int) -> Column:
    """Expected purchases in the next ``horizon`` time units | x, t_x, age (Fader et al. 2005, eq. 10).

    Eq. 10 holds ``((alpha + T) / (alpha + T + t))^(r + x) 2F1(r + x, b + x; a + b + x - 1; z)``
    with ``z = t / (alpha + T + t)``. Its series converges slowly for frequent buyers when ``z``
    is near 1 (its terms grow like ``n^(r + x - a) z^n`` at first), as for a recent customer a
    year ahead. Euler's transformation
    ``2F1(a', b'; c'; z) = (1 - z)^(c' - a' - b') 2F1(c' - a', c' - b'; c'; z)`` turns the product
    into ``(1 - z)^(a - 1) 2F1(a + b - 1 - r, a - 1; a + b + x - 1; z)``, whose terms fall like
    ``n^(a - r - x - 2) z^n`` from the start. With CDNOW's parameters, for x = 20 over three weeks,
    a year ahead (z = 0.88): 9 terms to 1e-9 where the original needs 415; at worst (x = 0, z
    near 1) a few hundred.

    A struct: ``value``, and ``last_term`` of the hypergeometric series (for the convergence check).
    """
    r, alpha, a, b = (F.lit(params[n]) for n in ("r", "alpha", "a", "b"))
    x, age, t = F.col("x"), F.col("age"), F.lit(float(horizon))
    series = _hyp2f1(a + b - 1 - r, a - 1, a + b + x - 1, t / (alpha + age + t), terms)
    bracket = 1 - F.pow((alpha + age) / (alpha + age + t), a - 1) * series["total"]
    value = (a + b + x - 1) / (a - 1) * bracket / (1 + _dropout_odds(params))
    return F.struct(value.alias("value"), series["term"].alias("last_term"))


def expected_order_value(params: dict[str, float]) -> Column:
    """Gamma-Gamma's expected mean purchase value | x, m_x; the population mean for one-time buyers."""
    p, q, v = (F.lit(params[n]) for n in ("p", "q", "v"))
    x, m_x = F.col("x"), F.col("m_x")
    conditional = p * (v + x * m_x) / (p * x + q - 1)
    return F.when((x > 0) & m_x.isNotNull(), conditional).otherwise(p * v / (q - 1))


# Days in a month of the CLV horizon and its discounting (a twelfth of a Julian year).
MONTH_DAYS = 365.25 / 12


@dataclass(frozen=True)
class ClvHorizon:
    """What ``clv_scores`` forecasts: months ahead, their discount rate, in which time unit."""

    months: int
    monthly_discount_rate: float
    time_unit_days: int
    series_terms: int

    def month_units(self, month: int) -> float:
        """The end of month ``month`` of the horizon, in time units."""
        return month * MONTH_DAYS / self.time_unit_days


def triple_forecasts(bgnbd: dict[str, float], horizon: ClvHorizon) -> Callable[[DataFrame], DataFrame]:
    """A transformation of repeat-purchase summaries into forecasts per distinct ``(x, t_x, age)``.

    The forecasts depend on a customer only through that triple, so they are computed once per
    distinct triple (far fewer than customers) and joined back by ``clv_scores``. The
    discounted purchases sum each month's expected purchases (the growth of the cumulative
    expectation over the month), discounted by ``(1 + rate)^month``.

    Returns:
        ``x, t_x, age, p_alive, expected_purchases`` (over the whole horizon),
        ``discounted_purchases`` and ``series_last_term`` (the largest last term of the
        series, for the convergence check).
    """
    triple = ["x", "t_x", "age"]
    months = range(1, horizon.months + 1)

    def transform(summaries: DataFrame) -> DataFrame:
        cumulative = [
            expected_purchases(bgnbd, horizon.month_units(m), horizon.series_terms).alias(f"_m{m}") for m in months
        ]
        forecasts = summaries.select(*triple).distinct().select(*triple, p_alive(bgnbd).alias("p_alive"), *cumulative)
        values = [F.lit(0.0), *[F.col(f"_m{m}.value") for m in months]]
        discount = 1.0 + horizon.monthly_discount_rate
        discounted = reduce(lambda a, b: a + b, [(values[m] - values[m - 1]) / discount**m for m in months])
        last_terms = [F.abs(F.col(f"_m{m}.last_term")) for m in months]
        return forecasts.select(
            *triple,
            "p_alive",
            values[-1].alias("expected_purchases"),
            discounted.alias("discounted_purchases"),
            (F.greatest(*last_terms) if len(last_terms) > 1 else last_terms[0]).alias("series_last_term"),
        )

    return transform


def clv_scores(forecasts: DataFrame, gamma_gamma: dict[str, float] | None) -> Callable[[DataFrame], DataFrame]:
    """A transformation of repeat-purchase summaries into CLV scores, one row per customer.

    Args:
        forecasts: ``triple_forecasts`` of the same summaries.
        gamma_gamma: Gamma-Gamma parameters ``p, q, v``; None: the expected order value is the
            customer's own mean purchase-day value (``mean_value``).

    Returns:
        ``customer_id, x, t_x, age, p_alive, expected_purchases, expected_order_value, clv``.
    """
    order_value = expected_order_value(gamma_gamma) if gamma_gamma else F.col("mean_value")

    def transform(summaries: DataFrame) -> DataFrame:
        return summaries.join(forecasts, ["x", "t_x", "age"]).select(
            "customer_id",
            "x",
            "t_x",
            "age",
            "p_alive",
            "expected_purchases",
            order_value.alias("expected_order_value"),
            (order_value * F.col("discounted_purchases")).alias("clv"),
        )

    return transform


def require_converged(forecasts: DataFrame, last_term: Column, terms: int) -> None:
    """Stop when the expected-purchases series of some row has not converged.

    Args:
        forecasts: Rows of forecasts.
        last_term: The last term of each row's series (``expected_purchases(...)["last_term"]``).
        terms: The configured most terms (``predict.clv.series_terms``), for the message.

    Raises:
        ClvFitError: Some row's last term is above ``CONVERGED_LAST_TERM``.
    """
    if not forecasts.filter(F.abs(last_term) > CONVERGED_LAST_TERM).isEmpty():
        raise ClvFitError(
            f"the expected-purchases series did not converge in {terms} terms for some customers: "
            "raise predict.clv.series_terms, or use predict.clv.time_unit: week"
        )


# --- fitting from Spark summaries -------------------------------------------------------------


def fit_bgnbd_on(summaries: DataFrame, max_distinct: int, penalizer: float = 0.0) -> Fit:
    """Fit BG/NBD on the distinct ``(x, t_x, age)`` triples of Spark summaries (with their counts).

    Raises:
        ClvFitError: More than ``max_distinct`` distinct triples (the fit would not be bounded), or
            no repeat purchase.
    """
    rows = summaries.groupBy("x", "t_x", "age").count().limit(max_distinct + 1).collect()
    if len(rows) > max_distinct:
        raise ClvFitError(
            f"more than {max_distinct:,} distinct (frequency, recency, age) summaries: use weeks as the time unit "
            "(predict.clv.time_unit: week) or raise predict.clv.max_distinct_summaries"
        )
    columns = np.array([[r["x"], r["t_x"], r["age"], r["count"]] for r in rows], dtype=float).reshape(-1, 4)
    return fit_bgnbd(Summaries(columns[:, 0], columns[:, 1], columns[:, 2], columns[:, 3]), penalizer)


def fit_gamma_gamma_on(
    summaries: DataFrame, max_buyers: int, min_buyers: int, penalizer: float = 0.0, seed: int = 42
) -> Fit:
    """Fit Gamma-Gamma on the repeat buyers of Spark summaries (a uniform sample of at most ``max_buyers``).

    Raises:
        ClvFitError: Fewer than ``min_buyers`` repeat buyers with a positive mean value.
    """
    buyers = summaries.filter((F.col("x") > 0) & (F.col("m_x") > 0)).select("x", "m_x")
    count = buyers.count()
    if count > max_buyers:
        buyers = buyers.sample(fraction=max_buyers / count, seed=seed)
    rows = buyers.collect()
    return fit_gamma_gamma([r["x"] for r in rows], [r["m_x"] for r in rows], penalizer, min_buyers)
