"""A single-machine reference of ``seg-spark run``: DuckDB SQL, then numpy and scikit-learn.

What a single-machine user would write for the same job: one DuckDB connection reads the
transaction log, labels every line with the first cleaning rule it breaks (the codes
seg-spark writes to ``transactions_quarantine``), and derives every feature of
``customer_features`` for the as-of date in SQL, money summed as DECIMAL(18,6) like
seg-spark's daily aggregates. The segmentation prepares the model features with numpy
(log1p, winsorising, zero-variance and correlation filters, imputation, scaling), sweeps
k with ``sklearn.cluster.KMeans`` on the same selection sample, keeps the chosen candidate
as the final model, refits it on bootstrap resamples for stability and assigns every
customer.

The definitions follow seg-spark's code (``seg_spark/quality.py``, ``seg_spark/features/``,
``seg_spark/models/``). Where seg-spark uses Spark's approximate quantiles (outlier
threshold, RFM scores, winsorising bounds, median imputation, robust scaling, activity
strata) this uses exact quantiles with the same rank rule (the value at rank
``ceil(p * n)``, what ``approxQuantile`` returns with no error); where it uses MLlib's
K-Means (k-means|| starts) this uses scikit-learn's (k-means++ starts). Both differences
can move the chosen k on close calls; the features and quarantine counts are exact.

Run ``bench/check_reference.py`` to compare it with a real seg-spark run.
"""

from __future__ import annotations

import fnmatch
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, calinski_harabasz_score, davies_bouldin_score, silhouette_score
from sklearn.metrics.cluster import contingency_matrix
from threadpoolctl import threadpool_limits

from seg_spark.catalogue import DAYPARTS, DAYS_OF_WEEK, RFM_SEGMENT_RULES
from seg_spark.config import Settings
from seg_spark.features.behaviour import _named  # column names are seg-spark's contract: the same function

# seg-spark's reason codes (seg_spark.quality.REASON_CODES), in rule order; check_reference.py keeps them equal.
REASON_CODES: tuple[str, ...] = (
    "malformed_record",
    "missing_customer_id",
    "invalid_timestamp",
    "future_timestamp",
    "before_min_timestamp",
    "invalid_number",
    "missing_amount",
    "non_positive_price",
    "non_product",
    "duplicate_customer",
    "invalid_date",
)
# Bookkeeping counts besides the reason codes (the same metric names as seg-spark's data_quality table).
COUNT_KEYS: tuple[str, ...] = ("input_rows", "clean_rows", "quarantined_rows", "duplicates_removed", "outliers_flagged")
# Columns whose seg-spark values come from approximate quantiles: compared under "approximate:<column>".
APPROXIMATE_COLUMNS: tuple[str, ...] = ("rfm_r", "rfm_f", "rfm_m", "rfm_segment")
# customer_features columns that are not per-customer values.
BOOKKEEPING_COLUMNS: tuple[str, ...] = ("as_of_date", "run_id")
MONEY = "DECIMAL(18, 6)"
SECONDS_PER_DAY = 86_400
# Above this many sample rows the silhouette is computed in closed form (O(n k d)) instead of
# scikit-learn's pairwise O(n^2) silhouette_score; both are the squared-Euclidean silhouette.
SKLEARN_SILHOUETTE_MAX_ROWS = 20_000
RFM_EDGES = (0.2, 0.4, 0.6, 0.8)


class ReferenceRunError(ValueError):
    """The data or the settings stop the reference where seg-spark would stop (or cannot be reproduced)."""


@dataclass
class ReferenceResult:
    """Everything the reference computed, with wall seconds per stage.

    Attributes:
        seconds: Wall seconds of ``clean``, ``features``, ``segment`` and ``total``.
        counts: ``input_rows``, ``clean_rows``, ``quarantined_rows``, ``duplicates_removed``,
            ``outliers_flagged`` and one entry per quarantine reason code (0 when unused).
        features: One row per customer: ``customer_id`` and every ``customer_features`` column.
        as_of_date: The as-of date of the features.
        selection: One dict per candidate k: ``k``, ``silhouette``, ``wssse``,
            ``smallest_segment_share``, ``eligible`` (plus ``status``, ``sizes``,
            ``calinski_harabasz``, ``davies_bouldin``).
        chosen_k: The chosen number of segments.
        chosen_silhouette: The chosen candidate's silhouette on the selection sample.
        final_silhouette: The final model's silhouette on the same sample (the chosen candidate is the final model).
        stability: ``bootstraps``, ``mean_ari``, ``aris``, ``jaccard`` (segment -> mean best
            Jaccard) and ``unstable_segments``.
        segment_sizes: Customers per segment after assigning every purchasing customer.
        details: How it was computed: the selection sample, the silhouette method, the
            preparation decisions, the mix keys, the reason for the choice.
    """

    seconds: dict[str, float]
    counts: dict[str, int]
    features: pd.DataFrame
    as_of_date: date
    selection: list[dict]
    chosen_k: int
    chosen_silhouette: float
    final_silhouette: float
    stability: dict
    segment_sizes: list[int]
    details: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# SQL helpers
# ---------------------------------------------------------------------------------------


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _ts_lit(value: datetime) -> str:
    return f"TIMESTAMP '{value.strftime('%Y-%m-%d %H:%M:%S.%f')}'"


def _date_lit(value: date) -> str:
    return f"DATE '{value.isoformat()}'"


def _rank(n: int, p: float) -> int:
    """The 1-based rank ``approxQuantile`` targets for probability ``p`` among ``n`` values."""
    return min(max(math.ceil(p * n), 1), n)


def exact_quantiles(values: np.ndarray, probabilities: Sequence[float]) -> list[float] | None:
    """Exact quantiles by Spark's rank rule (value at rank ceil(p n)), NaN skipped; None when no value."""
    present = np.sort(values[~np.isnan(values)])
    if present.size == 0:
        return None
    return [float(present[_rank(present.size, p) - 1]) for p in probabilities]


_SPARK_PATTERN = [
    ("yyyy", "%Y"),
    ("yy", "%y"),
    ("MMMM", "%B"),
    ("MMM", "%b"),
    ("MM", "%m"),
    ("M", "%-m"),
    ("dd", "%d"),
    ("d", "%-d"),
    ("HH", "%H"),
    ("H", "%-H"),
    ("hh", "%I"),
    ("h", "%-I"),
    ("mm", "%M"),
    ("m", "%-M"),
    ("ss", "%S"),
    ("s", "%-S"),
    ("SSSSSS", "%f"),
    ("SSS", "%g"),
    ("a", "%p"),
    ("EEEE", "%A"),
    ("EEE", "%a"),
    ("XXX", "%z"),
    ("Z", "%z"),
]


def spark_to_strptime(pattern: str) -> str:
    """Translate a Spark datetime pattern (the common letters) to a DuckDB ``strptime`` format.

    Raises:
        ReferenceRunError: The pattern uses a letter this translation does not know.
    """
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "'":
            end = pattern.find("'", i + 1)
            literal = pattern[i + 1 : end if end > 0 else len(pattern)]
            out.append(literal.replace("%", "%%") or "'")
            i = (end if end > 0 else len(pattern)) + 1
            continue
        if ch.isalpha():
            for token, directive in _SPARK_PATTERN:
                if pattern.startswith(token, i):
                    out.append(directive)
                    i += len(token)
                    break
            else:
                raise ReferenceRunError(f"timestamp_format {pattern!r}: the reference cannot translate {ch!r}")
            continue
        out.append("%%" if ch == "%" else ch)
        i += 1
    return "".join(out)


# ---------------------------------------------------------------------------------------
# Ingest: canonical columns, cleaning rules, counts
# ---------------------------------------------------------------------------------------


def _source_relation(source: Path, fmt: str, options: dict[str, str]) -> str:
    """A DuckDB table function reading the source as seg-spark's reader would (columns as the source has them)."""
    text = str(source)
    if fmt == "parquet":
        pattern = str(source / "**" / "*.parquet") if source.is_dir() else text
        return f"read_parquet({_lit(pattern)}, union_by_name = true)"
    if fmt == "csv":
        pattern = str(source / "**" / "*.csv*") if source.is_dir() else text
        sep = options.get("sep", options.get("delimiter", ","))
        header = str(options.get("header", "true")).lower() == "true"
        return f"read_csv({_lit(pattern)}, all_varchar = true, header = {str(header).lower()}, delim = {_lit(sep)})"
    if fmt == "json":
        pattern = str(source / "**" / "*.json*") if source.is_dir() else text
        return f"read_json_auto({_lit(pattern)}, format = 'newline_delimited')"
    raise ReferenceRunError(
        f"sources.transactions.format {fmt!r} is not supported by the reference (parquet, csv, json)"
    )


def _is_fractional(column_type: str) -> bool:
    return column_type.startswith(("DOUBLE", "FLOAT", "DECIMAL", "REAL"))


def _is_numeric(column_type: str) -> bool:
    return _is_fractional(column_type) or column_type in {
        "TINYINT",
        "SMALLINT",
        "INTEGER",
        "BIGINT",
        "HUGEINT",
        "UTINYINT",
        "USMALLINT",
        "UINTEGER",
        "UBIGINT",
    }


def _text(column: str | None, types: dict[str, str]) -> str:
    """seg-spark's ``_text``: as text, trimmed of spaces, empty as null; integral floats keep their integer form."""
    if column is None:
        return "CAST(NULL AS VARCHAR)"
    col = _ident(column)
    if _is_fractional(types[column]):
        integral = f"CAST(CAST(floor({col}) AS BIGINT) AS VARCHAR)"
        value = f"CASE WHEN {col} = floor({col}) THEN {integral} ELSE CAST({col} AS VARCHAR) END"
    else:
        value = f"CAST({col} AS VARCHAR)"
    return f"NULLIF(trim({value}, ' '), '')"


def _number(column: str | None) -> str:
    return "CAST(NULL AS DOUBLE)" if column is None else f"TRY_CAST({_ident(column)} AS DOUBLE)"


def _timestamp(column: str, types: dict[str, str], fmt: str | None) -> str:
    col, column_type = _ident(column), types[column]
    if column_type.startswith(("TIMESTAMP", "DATE")):
        return f"CAST({col} AS TIMESTAMP)"
    if _is_numeric(column_type):
        return f"CAST(to_timestamp(CAST(trunc({col}) AS BIGINT)) AS TIMESTAMP)"
    if fmt:
        return f"CAST(try_strptime(CAST({col} AS VARCHAR), {_lit(spark_to_strptime(fmt))}) AS TIMESTAMP)"
    return f"TRY_CAST(CAST({col} AS VARCHAR) AS TIMESTAMP)"


def _clock(settings: Settings) -> datetime:
    """The run's 'now' as a naive UTC datetime (``seg_spark.clock.Clock``)."""
    fixed = settings.quality.clock
    if fixed is None:
        return datetime.now(UTC).replace(tzinfo=None)
    return fixed.astimezone(UTC).replace(tzinfo=None) if fixed.tzinfo else fixed


def _labelled_sql(relation: str, types: dict[str, str], settings: Settings) -> str:
    """Distinct input lines with their copies, canonical columns and reason code (null: clean)."""
    source, quality = settings.sources.transactions, settings.quality
    m = source.columns
    kept = [c for c in types if c not in source.drop_columns]
    columns = ", ".join(_ident(c) for c in kept)
    if quality.drop_exact_duplicates:
        deduped = f"SELECT {columns}, count(*) AS _copies FROM {relation} GROUP BY ALL"
    else:
        deduped = f"SELECT {columns}, 1 AS _copies FROM {relation}"
    numbers = [c for c in (m.quantity, m.unit_price, m.amount, m.discount) if c is not None]
    bad_number = " OR ".join(f"({_ident(c)} IS NOT NULL AND {_number(c)} IS NULL)" for c in numbers) or "false"
    customer_id = _text(m.customer_id, types)
    ts = _timestamp(m.ts, types, source.timestamp_format)
    order_id = _text(m.order_id, types) if m.order_id else f"concat_ws('|', {customer_id}, CAST({ts} AS VARCHAR))"
    canonical = f"""
        SELECT _copies,
            {customer_id} AS customer_id, {order_id} AS order_id, {ts} AS ts,
            {_text(m.product_id, types)} AS product_id, {_text(m.description, types)} AS description,
            {_text(m.category, types)} AS category, {_text(m.channel, types)} AS channel,
            {_number(m.quantity)} AS quantity, {_number(m.unit_price)} AS unit_price,
            {_number(m.amount)} AS source_amount, {_number(m.discount)} AS discount,
            {_text(m.status, types)} AS status, ({bad_number}) AS bad_number
        FROM deduped"""
    is_return = ["coalesce(quantity < 0, false)"]
    if quality.cancellation_prefix and m.order_id:
        is_return.append(f"coalesce(starts_with(order_id, {_lit(quality.cancellation_prefix)}), false)")
    if m.status and quality.return_statuses:
        statuses = ", ".join(_lit(s.lower()) for s in quality.return_statuses)
        is_return.append(f"coalesce(lower(status) IN ({statuses}), false)")
    amount = "source_amount" if m.amount else "quantity * unit_price - coalesce(discount, 0.0)"
    signed = f"""
        SELECT *, CASE WHEN is_return THEN -abs(amount) ELSE amount END AS signed_amount
        FROM (SELECT *, {" OR ".join(is_return)} AS is_return, {amount} AS amount FROM canonical)"""
    latest = _clock(settings) + timedelta(hours=quality.future_tolerance_hours)
    rules = [
        ("customer_id IS NULL", "missing_customer_id"),
        ("ts IS NULL", "invalid_timestamp"),
        (f"ts > {_ts_lit(latest)}", "future_timestamp"),
    ]
    if quality.min_timestamp is not None:
        rules.append((f"ts < CAST({_date_lit(quality.min_timestamp)} AS TIMESTAMP)", "before_min_timestamp"))
    rules += [("bad_number", "invalid_number"), ("signed_amount IS NULL", "missing_amount")]
    if m.unit_price is not None:
        rules.append(("unit_price <= 0", "non_positive_price"))
    non_product = _non_product_sql(settings)
    if non_product:
        rules.append((f"coalesce({non_product}, false)", "non_product"))
    reason = "CASE " + " ".join(f"WHEN {cond} THEN {_lit(code)}" for cond, code in rules) + " END"
    return f"""
        WITH deduped AS ({deduped}), canonical AS ({canonical}), signed AS ({signed})
        SELECT {reason} AS reason, _copies, customer_id, order_id, ts, product_id, category, channel,
            quantity, signed_amount AS amount, discount, is_return,
            coalesce(length(trim(description, ' ')) > 0, false) AS has_description
        FROM signed"""


def _non_product_sql(settings: Settings) -> str | None:
    rules = settings.quality.non_product
    conditions = []
    if rules.product_ids:
        conditions.append(f"product_id IN ({', '.join(_lit(p) for p in rules.product_ids)})")
    if rules.product_id_pattern:
        conditions.append(f"regexp_matches(product_id, {_lit(rules.product_id_pattern)})")
    if rules.description_pattern:
        conditions.append(f"regexp_matches(description, {_lit(rules.description_pattern)})")
    conditions += [f"starts_with(order_id, {_lit(prefix)})" for prefix in rules.order_id_prefixes]
    return "(" + " OR ".join(conditions) + ")" if conditions else None


def _check_supported(settings: Settings) -> None:
    """Refuse settings whose results the reference does not reproduce."""
    model, sources = settings.model, settings.sources
    if sources.profiles is not None or sources.events is not None:
        raise ReferenceRunError("the reference supports the transaction source only (no profiles/events)")
    if settings.privacy.pseudonymise_customer_id:
        raise ReferenceRunError("the reference does not pseudonymise customer ids (privacy.pseudonymise_customer_id)")
    if model.algorithm != "kmeans" or any(a != "kmeans" for a in model.selection.algorithms):
        raise ReferenceRunError(f"the reference supports model.algorithm kmeans only, not {model.algorithm!r}")
    if model.selection.enabled and model.selection.rule != "silhouette":
        raise ReferenceRunError(
            f"the reference supports model.selection.rule silhouette only, not {model.selection.rule!r}"
        )


def _ingest(con: duckdb.DuckDBPyConnection, source: Path, settings: Settings) -> dict[str, int]:
    """Create the ``labelled`` table (every distinct input line with its reason) and count where rows went."""
    src = settings.sources.transactions
    relation = _source_relation(source, src.format, dict(src.options))
    types = {row[0]: row[1] for row in con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()}
    missing = [c for c in src.drop_columns if c not in types]
    if missing:
        raise ReferenceRunError(f"sources.transactions.drop_columns names {missing}, which the source does not have")
    for canonical, column in src.columns.model_dump().items():
        if column is not None and column not in types:
            raise ReferenceRunError(f"sources.transactions.columns.{canonical} maps to {column!r}: not in the source")
    con.execute(f"CREATE OR REPLACE TEMP TABLE labelled AS {_labelled_sql(relation, types, settings)}")
    rows = con.execute(
        "SELECT reason, count(*), sum(_copies), count(DISTINCT customer_id) FROM labelled GROUP BY reason"
    ).fetchall()
    by_reason = {r[0]: int(r[1]) for r in rows if r[0] is not None}
    clean = next((int(r[1]) for r in rows if r[0] is None), 0)
    input_rows = sum(int(r[2]) for r in rows)
    distinct = sum(int(r[1]) for r in rows)
    counts = {
        "input_rows": input_rows,
        "clean_rows": clean,
        "quarantined_rows": sum(by_reason.values()),
        "duplicates_removed": input_rows - distinct,
        "outliers_flagged": _outliers(con, settings),
        **{code: by_reason.get(code, 0) for code in REASON_CODES},
    }
    customers = next((int(r[3]) for r in rows if r[0] is None), 0)
    _check_thresholds(counts, customers, settings)
    return counts


def _outliers(con: duckdb.DuckDBPyConnection, settings: Settings) -> int:
    """Clean lines whose |value| exceeds multiplier x the quantile of |value| (exact quantile here)."""
    rule = settings.quality.outliers
    if not rule.enabled:
        return 0
    value = f"abs({rule.column})"
    n = con.execute(f"SELECT count({value}) FROM labelled WHERE reason IS NULL").fetchone()
    if not n or not n[0]:
        return 0
    offset = _rank(int(n[0]), rule.quantile) - 1
    row = con.execute(
        f"SELECT {value} AS v FROM labelled WHERE reason IS NULL AND v IS NOT NULL ORDER BY v LIMIT 1 OFFSET {offset}"
    ).fetchone()
    if row is None or row[0] is None or row[0] <= 0:
        return 0
    threshold = float(row[0]) * rule.multiplier
    flagged = con.execute(f"SELECT count(*) FROM labelled WHERE reason IS NULL AND {value} > {threshold!r}").fetchone()
    return int(flagged[0]) if flagged else 0


def _check_thresholds(counts: dict[str, int], customers: int, settings: Settings) -> None:
    """``quality.check_thresholds`` and the ingest stage's ``check_customers``: stop where seg-spark stops."""
    thresholds, total = settings.quality.thresholds, max(counts["input_rows"], 1)
    breaches = []
    if counts["quarantined_rows"] / total > thresholds.max_quarantined_share:
        breaches.append("quality.thresholds.max_quarantined_share")
    breaches += [
        f"quality.thresholds.max_rule_share.{rule}"
        for rule, limit in sorted(thresholds.max_rule_share.items())
        if counts.get(rule, 0) / total > limit
    ]
    if counts["clean_rows"] < thresholds.min_clean_rows:
        breaches.append("quality.thresholds.min_clean_rows")
    if customers < thresholds.min_clean_customers:
        breaches.append("quality.thresholds.min_clean_customers")
    model = settings.model
    k = model.selection.k_min if model.selection.enabled else model.k
    if customers < k * model.min_customers_per_segment:
        breaches.append(f"{customers} customers, fewer than k x model.min_customers_per_segment")
    if breaches:
        raise ReferenceRunError(f"the source breaks seg-spark's checks ({', '.join(breaches)}); counts {counts}")


# ---------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------


def _as_of(con: duckdb.DuckDBPyConnection, settings: Settings) -> date:
    """The configured as-of date, or the day after the last clean transaction (checked as seg-spark does)."""
    row = con.execute(
        "SELECT min(CAST(ts AS DATE)), max(CAST(ts AS DATE)) FROM labelled WHERE reason IS NULL"
    ).fetchone()
    first, last = (row[0], row[1]) if row else (None, None)
    if first is None or last is None:
        raise ReferenceRunError("no clean transaction: there is nothing to build features from")
    as_of: date = settings.features.as_of_date or last + timedelta(days=1)
    if as_of <= first:
        raise ReferenceRunError(f"as-of date {as_of} is on or before the first clean transaction ({first})")
    return as_of


def _ratio(numerator: str, denominator: str) -> str:
    """seg-spark's ``_ratio``: both sides as doubles, null unless the denominator is positive."""
    return f"(CAST({numerator} AS DOUBLE) / CASE WHEN {denominator} > 0 THEN CAST({denominator} AS DOUBLE) END)"


def _build_order_tables(con: duckdb.DuckDBPyConnection, as_of: date, mix: bool) -> None:
    """Clean lines before the as-of date, grouped as seg-spark's daily aggregates see them.

    ``orders``: one row per (customer, UTC day, order); an order is a purchase order when none
    of its lines that day is a return. ``order_spend`` (mix family): the purchase lines'
    spend per purchase order and category. Money is DECIMAL(18,6).
    """
    con.execute(f"""
        CREATE OR REPLACE TEMP VIEW lines AS
        SELECT customer_id, order_id, ts, CAST(ts AS DATE) AS day, product_id,
            CAST(amount AS {MONEY}) AS amount, CAST(quantity AS {MONEY}) AS quantity,
            coalesce(CAST(discount AS {MONEY}), 0) AS discount, is_return,
            coalesce(category, 'unknown') AS category, coalesce(channel, 'unknown') AS channel
        FROM labelled
        WHERE reason IS NULL AND ts < CAST({_date_lit(as_of)} AS TIMESTAMP)
    """)
    con.execute("""
        CREATE OR REPLACE TEMP TABLE orders AS
        SELECT customer_id, day, order_id,
            min(ts) AS order_ts,
            NOT bool_or(is_return) AS purchase,
            sum(amount) AS net,
            coalesce(sum(amount) FILTER (WHERE NOT is_return), 0) AS gross,
            coalesce(sum(quantity) FILTER (WHERE NOT is_return), 0) AS items,
            count(DISTINCT product_id) AS products,
            sum(discount) AS discount,
            count(*) AS lines,
            count(*) FILTER (WHERE is_return) AS return_lines,
            min(channel) AS channel
        FROM lines
        GROUP BY customer_id, day, order_id
    """)
    if mix:
        # Per (order, category): the window that drops return orders runs over these groups, not every line.
        con.execute("""
            CREATE OR REPLACE TEMP TABLE order_spend AS
            SELECT customer_id, category, spend
            FROM (
                SELECT customer_id, day, order_id, category,
                    sum(amount) FILTER (WHERE NOT is_return) AS spend,
                    bool_or(bool_or(is_return)) OVER (PARTITION BY customer_id, day, order_id) AS return_order
                FROM lines
                GROUP BY customer_id, day, order_id, category
            )
            WHERE NOT return_order AND spend IS NOT NULL
        """)


def _top_keys(con: duckdb.DuckDBPyConnection, query: str, n: int) -> list[str]:
    return [r[0] for r in con.execute(f"{query} ORDER BY total DESC, key LIMIT {int(n)}").fetchall()]


def _feature_sql(
    as_of: date, settings: Settings, categories: Sequence[tuple[str, str]], channels: Sequence[tuple[str, str]]
) -> str:
    """The per-customer state (one aggregation over the orders) and every feature derived from it."""
    families = set(settings.features.families)
    as_of_lit = _date_lit(as_of)
    state = [
        "count(*) FILTER (WHERE purchase) AS n_orders",
        "sum(net) AS net",
        "coalesce(sum(gross) FILTER (WHERE purchase), 0) AS gross",
        "max(order_ts) FILTER (WHERE purchase) AS last_purchase",
    ]
    features = [
        f"CAST(datediff('day', CAST(last_purchase AS DATE), {as_of_lit}) AS DOUBLE) AS recency_days",
        "CAST(n_orders AS DOUBLE) AS frequency",
        "CAST(net AS DOUBLE) AS monetary",
    ]
    joins = []
    if "value" in families:
        state += [
            "max(gross) FILTER (WHERE purchase) AS max_order",
            "coalesce(sum(items) FILTER (WHERE purchase), 0) AS items",
            "coalesce(sum(products) FILTER (WHERE purchase), 0) AS basket_products",
            "sum(discount) AS discount",
        ]
        features += [
            f"{_ratio('gross', 'n_orders')} AS avg_order_value",
            "CAST(max_order AS DOUBLE) AS max_order_value",
            f"{_ratio('items', 'n_orders')} AS avg_basket_items",
            f"{_ratio('basket_products', 'n_orders')} AS avg_basket_products",
            f"{_ratio('discount', '(gross + discount)')} AS discount_share",
        ]
    if "cadence" in families:
        state += [
            "min(order_ts) AS first_ts",
            "min(order_ts) FILTER (WHERE purchase) AS first_purchase",
            "CAST(count(DISTINCT date_trunc('month', day)) FILTER (WHERE purchase) AS BIGINT) AS active_months",
        ]
        # Exact integer arithmetic in seconds (HUGEINT), then doubles: seg-spark's decimal(38,0) formulas.
        gaps = "CAST(n_orders - 1 AS HUGEINT)"
        last, first = (f"CAST(epoch_us({c}) // 1000000 AS HUGEINT)" for c in ("last_purchase", "first_purchase"))
        span = f"({last} - {first})"
        mean_gap = f"({_ratio(span, gaps)} / {SECONDS_PER_DAY})"
        variance = _ratio(
            f"({gaps} * coalesce(g.gap_sq, 0) - {span} * {span})",
            f"CASE WHEN {gaps} >= 2 THEN {gaps} * ({gaps} - 1) END",
        )
        # greatest() skips nulls: clamp rounding below zero, but keep "null below 3 purchase orders".
        std_gap = f"(CASE WHEN {variance} IS NOT NULL THEN sqrt(greatest({variance}, 0.0)) END / {SECONDS_PER_DAY})"
        features += [
            f"CAST(datediff('day', CAST(first_ts AS DATE), {as_of_lit}) AS DOUBLE) AS tenure_days",
            f"{mean_gap} AS mean_interpurchase_days",
            f"{std_gap} AS std_interpurchase_days",
            f"(1.0 / (1.0 + {std_gap} / CASE WHEN {mean_gap} > 0 THEN {mean_gap} END)) AS purchase_regularity",
            "CAST(active_months AS DOUBLE) AS active_months",
            f"{_ratio('n_orders', 'active_months')} AS orders_per_active_month",
        ]
        # Squared gaps between consecutive purchase orders (sorted by time), in whole seconds.
        joins.append("""
            LEFT JOIN (
                SELECT customer_id, sum(CAST(gap AS HUGEINT) * CAST(gap AS HUGEINT)) AS gap_sq
                FROM (
                    SELECT customer_id, epoch_us(order_ts) // 1000000
                        - lag(epoch_us(order_ts) // 1000000) OVER (PARTITION BY customer_id ORDER BY order_ts) AS gap
                    FROM orders WHERE purchase
                ) GROUP BY customer_id
            ) g USING (customer_id)""")
    if "mix" in families:
        state += [
            f"count(*) FILTER (WHERE purchase AND isodow(day) = {i + 1}) AS dow_{day}"
            for i, day in enumerate(DAYS_OF_WEEK)
        ]
        state += [
            f"count(*) FILTER (WHERE purchase AND hour(order_ts) >= {lo} AND hour(order_ts) < {hi}) AS daypart_{name}"
            for name, lo, hi in DAYPARTS
        ]
        state += [
            f"count(*) FILTER (WHERE purchase AND channel = {_lit(value)}) AS {_ident('n_' + col)}"
            for value, col in channels
        ]
        if categories:
            spend = ", ".join(
                f"sum(spend) FILTER (WHERE category = {_lit(value)}) AS {_ident('s_' + col)}"
                for value, col in categories
            )
            joins.append(f"""
                LEFT JOIN (
                    SELECT customer_id, {spend} FROM order_spend GROUP BY customer_id
                ) c USING (customer_id)""")
        covered = " + ".join(f"coalesce({_ident('s_' + col)}, 0)" for _, col in categories) or "0"
        parts = [(f"coalesce({_ident('s_' + col)}, 0)", col) for _, col in categories]
        features += [f"{_ratio(part, 'gross')} AS {_ident(col)}" for part, col in parts]
        features.append(f"{_ratio(f'(gross - ({covered}))', 'gross')} AS cat_other_share")
        covered = " + ".join(_ident("n_" + col) for _, col in channels) or "0"
        features += [f"{_ratio(_ident('n_' + col), 'n_orders')} AS {_ident(col)}" for _, col in channels]
        features.append(f"{_ratio(f'(n_orders - ({covered}))', 'n_orders')} AS channel_other_share")
        features += [f"{_ratio(f'dow_{day}', 'n_orders')} AS dow_{day}_share" for day in DAYS_OF_WEEK]
        features.append(f"{_ratio('(dow_sat + dow_sun)', 'n_orders')} AS weekend_share")
        features += [f"{_ratio(f'daypart_{name}', 'n_orders')} AS daypart_{name}_share" for name, _, _ in DAYPARTS]
    if "trend" in families:
        for w in settings.features.windows_days:
            recent = f"day >= {as_of_lit} - INTERVAL {w} DAY AND day < {as_of_lit}"
            prior = f"day >= {as_of_lit} - INTERVAL {2 * w} DAY AND day < {as_of_lit} - INTERVAL {w} DAY"
            state += [
                f"coalesce(sum(gross) FILTER (WHERE purchase AND {recent}), 0) AS spend_{w}",
                f"coalesce(sum(gross) FILTER (WHERE purchase AND {prior}), 0) AS spend_prior_{w}",
                f"count(*) FILTER (WHERE purchase AND {recent}) AS orders_{w}",
                f"count(*) FILTER (WHERE purchase AND {prior}) AS orders_prior_{w}",
            ]
            features += [
                f"CAST(spend_{w} AS DOUBLE) AS spend_{w}d",
                f"{_ratio(f'(spend_{w} - spend_prior_{w})', f'(spend_{w} + spend_prior_{w})')} AS spend_trend_{w}d",
                f"{_ratio(f'(orders_{w} - orders_prior_{w})', f'(orders_{w} + orders_prior_{w})')} "
                f"AS orders_trend_{w}d",
            ]
        state += [
            "coalesce(sum(-net) FILTER (WHERE NOT purchase), 0) AS returned",
            "sum(lines) AS lines",
            "sum(return_lines) AS return_lines",
        ]
        features += [
            f"{_ratio('returned', 'gross')} AS return_rate_value",
            f"{_ratio('return_lines', 'lines')} AS return_rate_lines",
        ]
    return f"""
        WITH state AS (SELECT customer_id, {", ".join(state)} FROM orders GROUP BY customer_id)
        SELECT customer_id, {", ".join(features)}
        FROM state {" ".join(joins)}
        ORDER BY customer_id"""


def _rfm_sql(quantile_rank: dict[str, list[int]]) -> str:
    """R, F, M quintile scores from exact edges (rank rule of approxQuantile) and the named RFM segment."""
    edges = []
    for column, ranks in quantile_rank.items():
        edges += [
            f"list_sort(list({column}) FILTER (WHERE frequency > 0))[{r}] AS {column}_{i}" for i, r in enumerate(ranks)
        ]

    def score(column: str, higher_is_better: bool) -> str:
        above = " + ".join(f"CAST({column} > e.{column}_{i} AS INTEGER)" for i in range(len(quantile_rank[column])))
        above = above or "0"
        value = f"1 + {above}" if higher_is_better else f"5 - ({above})"
        return f"CAST(CASE WHEN frequency > 0 THEN {value} END AS INTEGER)"

    segment = " ".join(
        f"WHEN rfm_r IN ({', '.join(r)}) AND rfm_f IN ({', '.join(f)}) THEN {_lit(name)}"
        for r, f, name in RFM_SEGMENT_RULES
    )
    edges_sql = ", ".join(edges) if edges else "NULL AS none"
    return f"""
        WITH e AS (SELECT {edges_sql} FROM features),
        scored AS (
            SELECT f.*, {score("recency_days", False)} AS rfm_r, {score("frequency", True)} AS rfm_f,
                {score("monetary", True)} AS rfm_m
            FROM features f, e
        )
        SELECT *, CASE {segment} ELSE 'No purchase' END AS rfm_segment FROM scored ORDER BY customer_id"""


def _check_categories(con: duckdb.DuckDBPyConnection, settings: Settings) -> None:
    """Refuse a source seg-spark would categorise with product groups (``products.needs_groups``).

    Those categories come from a Spark ML text model (TF-IDF or Word2Vec and K-Means) that
    the reference does not reproduce.
    """
    enabled = settings.features.product_groups.enabled
    if enabled == "never":
        return
    row = con.execute(
        "SELECT bool_or(category IS NOT NULL), bool_or(has_description) FROM labelled WHERE reason IS NULL"
    ).fetchone()
    has_category, has_description = (bool(row[0]), bool(row[1])) if row else (False, False)
    if enabled == "auto" and has_category:
        return
    if has_description:
        raise ReferenceRunError(
            "seg-spark derives this source's categories from product descriptions (features.product_groups: "
            f"{enabled}, {'no line has a category' if not has_category else 'always'}); the reference does not "
            "reproduce product groups: set features.product_groups.enabled to never on both sides"
        )


def _features(con: duckdb.DuckDBPyConnection, settings: Settings) -> tuple[pd.DataFrame, date, dict[str, Any]]:
    """Every ``customer_features`` column for the as-of date, one row per customer with a clean line before it."""
    _check_categories(con, settings)
    as_of = _as_of(con, settings)
    _build_order_tables(con, as_of, "mix" in settings.features.families)
    mix = settings.features.mix
    categories: Sequence[tuple[str, str]] = ()
    channels: Sequence[tuple[str, str]] = ()
    if "mix" in settings.features.families:
        names = mix.categories
        if names is None:
            query = "SELECT category AS key, sum(spend) AS total FROM order_spend GROUP BY 1"
            names = _top_keys(con, query, mix.top_categories)
        categories = _named(names, "cat")
        query = "SELECT channel AS key, count(*) AS total FROM orders WHERE purchase GROUP BY 1"
        channels = _named(_top_keys(con, query, mix.top_channels), "channel")
    con.execute(f"CREATE OR REPLACE TEMP TABLE features AS {_feature_sql(as_of, settings, categories, channels)}")
    counts = con.execute(
        "SELECT count(recency_days), count(frequency), count(monetary) FROM features WHERE frequency > 0"
    ).fetchone()
    n = dict(zip(("recency_days", "frequency", "monetary"), counts or (0, 0, 0), strict=True))
    ranks = {c: ([_rank(n[c], p) for p in RFM_EDGES] if n[c] else []) for c in n}
    frame = con.execute(_rfm_sql(ranks)).df()
    mix_keys = {"categories": [v for v, _ in categories], "channels": [v for v, _ in channels]}
    return frame, as_of, mix_keys


# ---------------------------------------------------------------------------------------
# Segmentation
# ---------------------------------------------------------------------------------------


def resolve_features(available: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """The configured model features, globs expanded against the columns, in column order, without repeats."""
    chosen: list[str] = []
    for entry in patterns:
        matches = [c for c in available if fnmatch.fnmatchcase(c, entry)]
        if not matches:
            raise ReferenceRunError(f"model.features entry {entry!r} matches no column of customer_features")
        chosen += [m for m in matches if m not in chosen]
    return chosen


def prepare(frame: pd.DataFrame, features: Sequence[str], settings: Settings) -> tuple[np.ndarray, list[dict]]:
    """seg-spark's preparation: log1p, winsorise, drop constant / collinear features, impute, scale, project.

    Args:
        frame: The purchasing customers with the feature columns.
        features: Candidate features in priority order.
        settings: The configuration (``model.prep``).

    Returns:
        The prepared matrix (one row per customer of ``frame``) and one decision per feature.
    """
    prep = settings.model.prep
    log1p = set(prep.log1p_features)
    columns = []
    for f in features:
        x = pd.to_numeric(frame[f], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        columns.append(np.log1p(np.maximum(x, 0.0)) if f in log1p else x)
    bounds: list[tuple[float | None, float | None]] = []
    clipped = []
    for x in columns:
        q = exact_quantiles(x, prep.winsorize) if prep.winsorize else None
        lo, hi = (q[0], q[1]) if q else (None, None)
        bounds.append((lo, hi))
        clipped.append(x if lo is None else np.clip(x, lo, hi))
    present = [int((~np.isnan(x)).sum()) for x in clipped]
    spread = [float(np.nanstd(x)) if n else None for x, n in zip(clipped, present, strict=True)]
    decisions: list[dict] = []
    kept: list[int] = []
    for i, f in enumerate(features):
        reason = "kept"
        if present[i] == 0:
            reason = "dropped: no customer has a value"
        elif prep.drop_zero_variance and not spread[i]:
            reason = "dropped: zero variance"
        elif prep.max_abs_correlation is not None:
            for j in kept:
                r = _correlation(clipped[j], clipped[i], spread[j], spread[i])
                if r is not None and abs(r) > prep.max_abs_correlation:
                    reason = f"dropped: |correlation| {abs(r):.3f} with {features[j]}"
                    break
        if reason == "kept":
            kept.append(i)
        decisions.append(
            {"feature": f, "kept": reason == "kept", "reason": reason, "lower": bounds[i][0], "upper": bounds[i][1]}
        )
    if not kept:
        raise ReferenceRunError(f"no usable feature among {list(features)}")
    matrix = np.column_stack([_impute(clipped[i], prep.impute) for i in kept])
    matrix = _scale(matrix, prep.scaler)
    if prep.pca_components is not None:
        matrix = _pca(matrix, min(prep.pca_components, matrix.shape[1]))
    return matrix, decisions


def _correlation(a: np.ndarray, b: np.ndarray, sd_a: float | None, sd_b: float | None) -> float | None:
    """Population covariance over rows with both values, over the columns' own population deviations."""
    both = ~np.isnan(a) & ~np.isnan(b)
    if not both.any() or not sd_a or not sd_b:
        return None
    x, y = a[both], b[both]
    covariance = float(np.mean((x - x.mean()) * (y - y.mean())))
    return covariance / (sd_a * sd_b)


def _impute(x: np.ndarray, how: str) -> np.ndarray:
    missing = np.isnan(x)
    if not missing.any():
        return x
    if how == "mean":
        fill = float(np.nanmean(x))
    else:
        q = exact_quantiles(x, [0.5])
        fill = q[0] if q else 0.0
    return np.where(missing, fill, x)


def _scale(matrix: np.ndarray, scaler: str) -> np.ndarray:
    """Scale without centring, as seg-spark: by the sample deviation, or by the interquartile range."""
    if scaler == "none":
        return matrix
    if scaler == "standard":
        spread = matrix.std(axis=0, ddof=1) if len(matrix) > 1 else np.zeros(matrix.shape[1])
    else:
        quartiles = np.array([exact_quantiles(matrix[:, j], [0.25, 0.75]) for j in range(matrix.shape[1])])
        spread = quartiles[:, 1] - quartiles[:, 0]
    safe = np.where(spread > 0, spread, 1.0)
    return np.where(spread > 0, matrix / safe, 0.0)


def _pca(matrix: np.ndarray, k: int) -> np.ndarray:
    """Spark's PCA: components of the (centred, n - 1) covariance, applied to the uncentred rows."""
    covariance = np.cov(matrix, rowvar=False, ddof=1).reshape(matrix.shape[1], matrix.shape[1])
    values, vectors = np.linalg.eigh(covariance)
    order = np.argsort(values)[::-1][:k]
    return matrix @ vectors[:, order]


def stratified_sample(frequency: np.ndarray, ids: np.ndarray, rows: int, strata: int, seed: int) -> np.ndarray:
    """Which customers form the selection sample: all when they fit, else the same share of each activity band.

    seg-spark bands by approximate frequency quantiles and ranks within a band by Spark's
    ``xxhash64(seed, customer_id)``; this bands by exact quantiles and ranks by pandas' hash
    keyed with the seed, so above ``rows`` customers it is a different sample of the same size.
    """
    total = len(frequency)
    if total <= rows:
        return np.ones(total, dtype=bool)
    share = rows / total
    edges = sorted(set(exact_quantiles(frequency, [i / strata for i in range(1, strata)]) or []))
    band = np.zeros(total, dtype=int)
    for edge in edges:
        band += frequency > edge
    key = f"{seed:016d}"[-16:]
    hashed = pd.util.hash_array(ids.astype(str).astype(object), hash_key=key)
    chosen = np.zeros(total, dtype=bool)
    for b in np.unique(band):
        members = np.flatnonzero(band == b)
        order = members[np.lexsort((ids[members], hashed[members]))]
        chosen[order[: math.ceil(len(members) * share)]] = True
    return chosen


def silhouette(x: np.ndarray, labels: np.ndarray) -> float:
    """Mean squared-Euclidean silhouette (seg-spark's and Spark's definition); NaN with fewer than 2 segments.

    scikit-learn's ``silhouette_score(metric="sqeuclidean")`` up to ``SKLEARN_SILHOUETTE_MAX_ROWS``
    rows; above, the same quantity in closed form from per-segment sums (O(n k d)).
    """
    present, index = np.unique(labels, return_inverse=True)
    if len(present) < 2:
        return float("nan")
    if len(present) < len(x) and len(x) <= SKLEARN_SILHOUETTE_MAX_ROWS:
        return float(silhouette_score(x, labels, metric="sqeuclidean"))
    counts = np.bincount(index).astype(float)
    sums = np.zeros((len(present), x.shape[1]))
    np.add.at(sums, index, x)
    squared = np.bincount(index, weights=(x**2).sum(axis=1))
    mean_sq = (x**2).sum(axis=1)[:, None] + squared / counts - 2.0 * (x @ sums.T) / counts
    mean_sq = np.maximum(mean_sq, 0.0)
    rows = np.arange(len(x))
    size = counts[index]
    a = mean_sq[rows, index] * size / np.maximum(size - 1, 1)
    mean_sq[rows, index] = np.inf
    b = mean_sq.min(axis=1)
    larger = np.maximum(a, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.where(larger > 0, (b - a) / larger, 0.0)
    return float(np.where(size > 1, s, 0.0).mean())


def _wssse(x: np.ndarray, labels: np.ndarray) -> float:
    """Sum of squared distances to the mean of each segment's rows (not the model's centres)."""
    total = 0.0
    for label in np.unique(labels):
        rows = x[labels == label]
        total += float(((rows - rows.mean(axis=0)) ** 2).sum())
    return total


def _kmeans(x: np.ndarray, k: int, settings: Settings, seed: int) -> KMeans | str:
    """A fitted K-Means, or why it cannot be fitted (seg-spark's ``check_input`` without lowering k)."""
    if not np.isfinite(x).all():
        return "non-finite prepared features"
    distinct = len(np.unique(x, axis=0)) if len(x) else 0
    if distinct < 2:
        return f"all {len(x)} customers have identical prepared features"
    if distinct < k:
        return f"only {distinct} distinct customers: kmeans cannot find k={k} segments"
    model = settings.model
    return KMeans(
        n_clusters=k, n_init=model.kmeans_restarts, random_state=seed, max_iter=model.max_iter, tol=model.tol
    ).fit(x)


def _score(x: np.ndarray, fitted: KMeans, k: int) -> dict[str, Any]:
    labels = fitted.predict(x)
    sizes = np.bincount(labels, minlength=k)
    several = len(np.unique(labels)) >= 2
    return {
        "silhouette": silhouette(x, labels),
        "wssse": _wssse(x, labels),
        "calinski_harabasz": float(calinski_harabasz_score(x, labels)) if several else float("nan"),
        "davies_bouldin": float(davies_bouldin_score(x, labels)) if several else float("nan"),
        "smallest_segment_share": float(sizes.min() / sizes.sum()) if sizes.sum() else 0.0,
        "sizes": sizes.astype(int).tolist(),
    }


def _choose(candidates: list[dict], min_share: float) -> tuple[dict, str]:
    """Best silhouette among candidates with every segment >= min_share; else the most balanced."""
    valid = [c for c in candidates if c["status"] == "ok"]
    if not valid:
        raise ReferenceRunError(
            "no model-selection candidate could be fitted: " + "; ".join(c["status"] for c in candidates)
        )
    eligible = [c for c in valid if c["eligible"]]
    if not eligible:
        best = max(valid, key=lambda c: (c["smallest_segment_share"], -c["k"]))
        return best, f"no candidate has every segment >= {min_share:.1%}; took the most balanced (k={best['k']})"
    scored = [c for c in eligible if math.isfinite(c["silhouette"])]
    if not scored:
        raise ReferenceRunError("the silhouette scores none of the eligible candidates")
    best = max(scored, key=lambda c: (c["silhouette"], -c["k"]))
    return best, f"best silhouette ({best['silhouette']:.4f}) among candidates with every segment >= {min_share:.1%}"


def stability(sample: np.ndarray, reference: np.ndarray, k: int, settings: Settings) -> dict[str, Any]:
    """Refit on Poisson bootstrap resamples; compare each refit's labels of the sample with the reference's."""
    model = settings.model
    aris: list[float] = []
    jaccards: dict[int, list[float]] = {i: [] for i in range(k)}
    for b in range(model.stability.bootstraps):
        copies = np.random.default_rng(model.seed + 1000 + b).poisson(1.0, len(sample))
        fitted = _kmeans(np.repeat(sample, copies, axis=0), k, settings, model.seed + 1 + b)
        if isinstance(fitted, str):
            continue
        labels = fitted.predict(sample)
        aris.append(float(adjusted_rand_score(reference, labels)))
        ref_ids, ref_index = np.unique(reference, return_inverse=True)
        _, other_index = np.unique(labels, return_inverse=True)
        cells = contingency_matrix(ref_index, other_index).astype(float)
        union = cells.sum(axis=1)[:, None] + cells.sum(axis=0)[None, :] - cells
        best = np.where(cells > 0, cells / np.where(union > 0, union, 1.0), 0.0).max(axis=1)
        for segment, value in zip(ref_ids, best, strict=True):
            jaccards.setdefault(int(segment), []).append(float(value))
    mean_jaccard = {s: (sum(v) / len(v) if v else 0.0) for s, v in jaccards.items()}
    return {
        "bootstraps": len(aris),
        "mean_ari": sum(aris) / len(aris) if aris else float("nan"),
        "aris": aris,
        "jaccard": mean_jaccard,
        "unstable_segments": sorted(s for s, v in mean_jaccard.items() if v < model.stability.min_jaccard),
    }


def segment(features: pd.DataFrame, settings: Settings) -> dict[str, Any]:
    """Prepare, sweep k on the selection sample, take the chosen candidate as the final model, check and assign."""
    model = settings.model
    selection = model.selection
    buyers = features[features["frequency"] > 0].sort_values("customer_id", kind="stable")
    if buyers.empty:
        raise ReferenceRunError("no customers to segment: none has a purchase before the as-of date")
    names = resolve_features([*features.columns, *BOOKKEEPING_COLUMNS], model.features)
    x, decisions = prepare(buyers, names, settings)
    ids = buyers["customer_id"].to_numpy()
    in_sample = stratified_sample(
        buyers["frequency"].to_numpy(dtype=float), ids, selection.sample_rows, selection.strata, model.seed
    )
    sample = x[in_sample]
    ks = range(selection.k_min, selection.k_max + 1) if selection.enabled else [model.k]
    candidates, fitted_by_k = [], {}
    for k in ks:
        started = time.perf_counter()
        fitted = _kmeans(sample, k, settings, model.seed)
        if isinstance(fitted, str) and not selection.enabled:  # a fixed k is lowered to the distinct customers
            k = min(k, len(np.unique(sample, axis=0)))
            fitted = _kmeans(sample, k, settings, model.seed)
        entry: dict[str, Any] = {"k": k, "status": "ok" if not isinstance(fitted, str) else fitted}
        if isinstance(fitted, KMeans):
            fitted_by_k[k] = fitted
            entry.update(_score(sample, fitted, k))
        else:
            entry.update(silhouette=float("nan"), wssse=float("nan"), smallest_segment_share=0.0, sizes=[])
        entry["eligible"] = entry["status"] == "ok" and entry["smallest_segment_share"] >= selection.min_segment_share
        entry["seconds"] = time.perf_counter() - started
        candidates.append(entry)
    if selection.enabled:
        best, reason = _choose(candidates, selection.min_segment_share)
    else:
        best, reason = candidates[0], "model.selection.enabled is false"
        if best["status"] != "ok":
            raise ReferenceRunError(f"model.k = {model.k} cannot be fitted: {best['status']}")
    k = best["k"]
    final = fitted_by_k[k]
    reference_labels = final.predict(sample)
    final_silhouette = silhouette(sample, reference_labels)
    stable = stability(sample, reference_labels, k, settings) if model.stability.bootstraps else {"bootstraps": 0}
    sizes = np.bincount(final.predict(x), minlength=k).astype(int).tolist()
    _refuse_degenerate(sum(sizes), k, best, stable, settings)
    return {
        "selection": candidates,
        "chosen_k": k,
        "chosen_silhouette": best["silhouette"],
        "final_silhouette": final_silhouette,
        "stability": stable,
        "segment_sizes": sizes,
        "details": {
            "reason": reason,
            "model_features": names,
            "preparation": decisions,
            "sample_rows": int(in_sample.sum()),
            "customers_modelled": len(buyers),
            "sample_is_every_customer": bool(in_sample.all()),
            "silhouette": "sklearn silhouette_score(metric='sqeuclidean')"
            if len(sample) <= SKLEARN_SILHOUETTE_MAX_ROWS
            else "closed-form squared-Euclidean silhouette (O(n k d))",
        },
    }


def _refuse_degenerate(customers: int, k: int, best: dict, stable: dict, settings: Settings) -> None:
    """``selection.refuse_degenerate``: stop where seg-spark refuses to publish."""
    model = settings.model
    causes = []
    if model.selection.enabled and k < model.selection.k_min:
        causes.append(f"k lowered to {k} below model.selection.k_min")
    if customers < model.min_customers_per_segment * k:
        causes.append(f"{customers} customers for {k} segments")
    undefined = [
        m for m in ("silhouette", "calinski_harabasz", "davies_bouldin") if not math.isfinite(best.get(m, math.nan))
    ]
    if undefined:
        causes.append(f"undefined metrics {undefined}")
    if model.stability.bootstraps and not stable.get("bootstraps"):
        causes.append("no stability bootstrap could be fitted")
    if causes:
        raise ReferenceRunError(f"the segmentation (kmeans, k={k}) is degenerate: {'; '.join(causes)}")


# ---------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------


def run_reference(source: Path, settings: Settings, threads: int = 2) -> ReferenceResult:
    """Compute what ``seg-spark run`` computes on a transaction log, on one machine.

    Args:
        source: The transaction log: a Parquet file or folder (e.g. ``<out>/transactions`` of
            ``seg-spark generate``), or CSV/JSON as ``sources.transactions.format`` says.
            ``sources.transactions.path`` in ``settings`` is ignored.
        settings: The loaded seg-spark configuration; every cleaning, feature and model knob is read.
        threads: DuckDB threads, and the thread limit of numpy/scikit-learn.

    Returns:
        Counts, features, model selection, stability and segment sizes, with seconds per stage.

    Raises:
        ReferenceRunError: Unsupported settings (another algorithm or rule, side sources,
            pseudonymisation), or data where seg-spark would stop (quality thresholds, too few
            customers, a degenerate segmentation).
    """
    _check_supported(settings)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="seg-spark-reference-") as spill:
        con = duckdb.connect(config={"threads": threads, "temp_directory": spill})
        try:
            counts = _ingest(con, Path(source), settings)
            seconds["clean"] = time.perf_counter() - started
            mark = time.perf_counter()
            features, as_of, mix_keys = _features(con, settings)
            seconds["features"] = time.perf_counter() - mark
        finally:
            con.close()
    mark = time.perf_counter()
    with threadpool_limits(limits=threads):
        segmented = segment(features, settings)
    seconds["segment"] = time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - started
    return ReferenceResult(
        seconds=seconds,
        counts=counts,
        features=features,
        as_of_date=as_of,
        selection=segmented["selection"],
        chosen_k=segmented["chosen_k"],
        chosen_silhouette=segmented["chosen_silhouette"],
        final_silhouette=segmented["final_silhouette"],
        stability=segmented["stability"],
        segment_sizes=segmented["segment_sizes"],
        details={**segmented["details"], "mix_keys": mix_keys, "clock": _clock(settings).isoformat()},
    )


def _mismatches(left: pd.Series, right: pd.Series, rel_tol: float, abs_tol: float) -> np.ndarray:
    """Which rows differ: one side missing (null or NaN), or numbers not ``math.isclose``, or other values unequal."""
    numeric = all(
        pd.api.types.is_numeric_dtype(side) and not pd.api.types.is_bool_dtype(side) for side in (left, right)
    )
    if numeric:
        a = left.to_numpy(dtype=float, na_value=np.nan)
        b = right.to_numpy(dtype=float, na_value=np.nan)
        missing_a, missing_b = np.isnan(a), np.isnan(b)
        with np.errstate(invalid="ignore"):
            close = (a == b) | (np.abs(a - b) <= np.maximum(rel_tol * np.maximum(np.abs(a), np.abs(b)), abs_tol))
        return np.where(missing_a | missing_b, missing_a != missing_b, ~close)
    missing_a, missing_b = left.isna().to_numpy(), right.isna().to_numpy()
    equal = left.astype(object).to_numpy() == right.astype(object).to_numpy()
    return np.where(missing_a | missing_b, missing_a != missing_b, ~equal)


def compare_features(
    seg_spark: pd.DataFrame, reference: pd.DataFrame, rel_tol: float = 1e-9, abs_tol: float = 1e-9
) -> dict[str, int]:
    """Mismatching customers per column (only columns with mismatches; also report missing/extra columns and customers).

    Rows are matched by ``customer_id``; ``as_of_date`` and ``run_id`` are ignored. Two nulls
    (or NaNs) are equal; numbers are equal within ``rel_tol`` / ``abs_tol`` (``math.isclose``).

    Args:
        seg_spark: seg-spark's ``customer_features`` rows of one as-of date.
        reference: ``ReferenceResult.features``.
        rel_tol: Relative tolerance for numbers.
        abs_tol: Absolute tolerance for numbers.

    Returns:
        ``{column: customers}`` for columns with mismatches; RFM score columns, which
        seg-spark derives from approximate quantiles, as ``approximate:<column>``;
        ``missing_column:<c>`` / ``extra_column:<c>`` (column only in seg-spark / only in the
        reference, value: its customers); ``missing_customers`` / ``extra_customers``
        (customers only in seg-spark / only in the reference).
    """
    left = seg_spark.drop(columns=[c for c in BOOKKEEPING_COLUMNS if c in seg_spark.columns])
    right = reference.drop(columns=[c for c in BOOKKEEPING_COLUMNS if c in reference.columns])
    result: dict[str, int] = {}
    for column in left.columns.difference(right.columns):
        result[f"missing_column:{column}"] = len(left)
    for column in right.columns.difference(left.columns):
        result[f"extra_column:{column}"] = len(right)
    left_ids, right_ids = set(left["customer_id"]), set(right["customer_id"])
    if left_ids - right_ids:
        result["missing_customers"] = len(left_ids - right_ids)
    if right_ids - left_ids:
        result["extra_customers"] = len(right_ids - left_ids)
    merged = left.merge(right, on="customer_id", suffixes=("__s", "__r"))
    for column in [c for c in left.columns if c in right.columns and c != "customer_id"]:
        bad = int(_mismatches(merged[f"{column}__s"], merged[f"{column}__r"], rel_tol, abs_tol).sum())
        if bad:
            result[f"approximate:{column}" if column in APPROXIMATE_COLUMNS else column] = bad
    return result


def compare_counts(seg_spark: dict[str, int], reference: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Reason codes whose counts differ.

    Every key present on both sides is compared; a reason code present on one side only
    counts as 0 on the other (seg-spark's ``by_reason`` omits unused codes). Other keys on
    one side only (e.g. ``outliers_flagged`` when the caller did not read it) are not compared.

    Returns:
        ``{key: (seg-spark count, reference count)}`` for the counts that differ.
    """
    differing: dict[str, tuple[int, int]] = {}
    for key in sorted(set(seg_spark) | set(reference)):
        both = key in seg_spark and key in reference
        if not both and key not in REASON_CODES:
            continue
        a, b = int(seg_spark.get(key, 0)), int(reference.get(key, 0))
        if a != b:
            differing[key] = (a, b)
    return differing


__all__ = [
    "ReferenceResult",
    "ReferenceRunError",
    "compare_counts",
    "compare_features",
    "run_reference",
]
