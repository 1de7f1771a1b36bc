"""Segment profiles: size, value, the distribution of every feature and its lift over the whole base.

One aggregation (``rollup`` by segment: every segment and the whole base in one pass) brings
k + 1 rows of statistics to the driver; quantiles are Spark's ``percentile_approx``. The rest
is arithmetic on those rows, so profiles never depend on collected customer rows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

SEGMENT = "segment_id"
QUANTILES = (0.1, 0.5, 0.9)
VALUE_FEATURE = "monetary"  # net spend: the revenue a segment brings
RFM_SEGMENT = "rfm_segment"
NOT_DESCRIPTIVE = {"customer_id", "run_id"}
# Share columns read as "top categories / channels": cat_<name>_share, channel_<name>_share.
MIX_PATTERNS = {"categories": re.compile(r"cat_(.+)_share"), "channels": re.compile(r"channel_(.+)_share")}
CONFIDENT_MEMBERSHIP = 0.9


@dataclass(frozen=True)
class FeatureProfile:
    """One feature in one segment: its distribution and how it differs from the whole base."""

    mean: float | None
    median: float | None
    p10: float | None
    p90: float | None
    lift: float | None  # segment mean / base mean (None when the base mean is 0)
    std_diff: float | None  # (segment mean - base mean) / base standard deviation (a z-score)


@dataclass(frozen=True)
class SegmentProfile:
    """Who is in one segment. A suppressed profile (fewer customers than the minimum) keeps counts only."""

    segment_id: int
    customers: int
    share: float
    revenue_share: float | None
    suppressed: bool
    features: dict[str, FeatureProfile] = field(default_factory=dict)
    top: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # kind -> (value, share)
    rfm_segments: dict[str, float] = field(default_factory=dict)  # classic RFM segment -> share of customers
    membership: dict[str, float] = field(default_factory=dict)  # mixtures: p10/median/p90, share_confident


@dataclass(frozen=True)
class Columns:
    """What the profiles describe: numeric features, mix shares (kind -> column -> label), labels."""

    numeric: tuple[str, ...]
    mixes: dict[str, dict[str, str]]
    labels: tuple[str, ...]

    @classmethod
    def of(cls, frame: DataFrame) -> Columns:
        """The descriptive columns of a ``customer_features`` frame."""
        numeric = tuple(
            f.name
            for f in frame.schema.fields
            if isinstance(f.dataType, T.NumericType) and f.name not in NOT_DESCRIPTIVE and f.name != SEGMENT
        )
        mixes: dict[str, dict[str, str]] = {}
        for kind, pattern in MIX_PATTERNS.items():
            found = {c: m.group(1) for c in numeric if (m := pattern.fullmatch(c)) and m.group(1) != "other"}
            mixes[kind] = found
        labels = tuple(
            f.name
            for f in frame.schema.fields
            if isinstance(f.dataType, T.StringType) and f.name not in NOT_DESCRIPTIVE
        )
        return cls(numeric=numeric, mixes=mixes, labels=labels)


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def statistics(labelled: DataFrame, columns: Columns, accuracy: int) -> dict[int | None, dict[str, Any]]:
    """Per segment and for the whole base (key None): count, value, and every feature's statistics.

    Args:
        labelled: One row per customer with ``segment_id`` and the feature columns.
        columns: The columns to describe.
        accuracy: ``percentile_approx`` accuracy.

    Returns:
        For each segment id and None: ``customers``, ``value`` (sum of ``monetary`` when present),
        ``mean:<f>``, ``std:<f>``, ``quantiles:<f>`` and, for mix shares, ``buyers:<f>`` (customers
        with a positive share).
    """
    aggs = [F.count(F.lit(1)).alias("customers")]
    if VALUE_FEATURE in columns.numeric:
        aggs.append(F.sum(VALUE_FEATURE).alias("value"))
    for name in columns.numeric:
        value = F.col(name).cast("double")
        aggs += [
            F.avg(value).alias(f"mean:{name}"),
            F.stddev_pop(value).alias(f"std:{name}"),
            F.percentile_approx(value, list(QUANTILES), accuracy).alias(f"quantiles:{name}"),
        ]
    for mix in columns.mixes.values():
        aggs += [F.count_if(F.col(c) > 0).alias(f"buyers:{c}") for c in mix]
    rows = labelled.rollup(SEGMENT).agg(*aggs).collect()  # k + 1 rows
    return {(None if r[SEGMENT] is None else int(r[SEGMENT])): r.asDict() for r in rows}


def label_counts(labelled: DataFrame, labels: Sequence[str]) -> dict[str, dict[int, dict[str, int]]]:
    """Customers per (segment, value) of each label column (at most k x distinct values rows each)."""
    counts: dict[str, dict[int, dict[str, int]]] = {}
    for name in labels:
        rows = labelled.filter(F.col(name).isNotNull()).groupBy(SEGMENT, name).count().collect()
        per_segment: dict[int, dict[str, int]] = {}
        for r in rows:
            per_segment.setdefault(int(r[SEGMENT]), {})[str(r[name])] = int(r["count"])
        counts[name] = per_segment
    return counts


def membership_quantiles(labelled: DataFrame, accuracy: int) -> dict[int, dict[str, float]]:
    """Mixtures: how sure the assignments are (quantiles of the membership probability per segment)."""
    rows = (
        labelled.filter(F.col("segment_probability").isNotNull())
        .groupBy(SEGMENT)
        .agg(
            F.percentile_approx("segment_probability", list(QUANTILES), accuracy).alias("q"),
            F.avg((F.col("segment_probability") >= CONFIDENT_MEMBERSHIP).cast("double")).alias("confident"),
        )
        .collect()
    )
    return {
        int(r[SEGMENT]): {"p10": r["q"][0], "median": r["q"][1], "p90": r["q"][2], "share_confident": r["confident"]}
        for r in rows
    }


def feature_profile(segment: Mapping[str, Any], base: Mapping[str, Any], name: str) -> FeatureProfile:
    """One feature's profile in a segment against the whole base."""
    mean = _finite(segment.get(f"mean:{name}"))
    base_mean, base_std = _finite(base.get(f"mean:{name}")), _finite(base.get(f"std:{name}"))
    quantiles = segment.get(f"quantiles:{name}") or [None] * len(QUANTILES)
    lift = mean / base_mean if mean is not None and base_mean else None
    std_diff = (mean - base_mean) / base_std if mean is not None and base_mean is not None and base_std else None
    p10, median, p90 = (_finite(q) for q in quantiles)
    return FeatureProfile(mean=mean, median=median, p10=p10, p90=p90, lift=lift, std_diff=std_diff)


def build_profiles(
    stats: Mapping[int | None, Mapping[str, Any]],
    columns: Columns,
    labels: Mapping[str, Mapping[int, Mapping[str, int]]],
    membership: Mapping[int, Mapping[str, float]],
    *,
    min_customers: int,
    top_values: int,
) -> list[SegmentProfile]:
    """Every segment's profile, smallest segment id first; those under ``min_customers`` suppressed."""
    base = stats[None]
    total_customers, total_value = int(base["customers"]), _finite(base.get("value"))
    profiles = []
    for segment_id in sorted(s for s in stats if s is not None):
        row = stats[segment_id]
        customers = int(row["customers"])
        value = _finite(row.get("value"))
        revenue_share = value / total_value if value is not None and total_value else None
        share = customers / total_customers
        if customers < min_customers:
            profiles.append(SegmentProfile(segment_id, customers, share, revenue_share, suppressed=True))
            continue
        top = {kind: _top_mix(row, mix, min_customers, top_values) for kind, mix in columns.mixes.items() if mix}
        for name, counts in labels.items():
            if name != RFM_SEGMENT:
                top[name] = _top_labels(counts.get(segment_id, {}), customers, min_customers, top_values)
        rfm = labels.get(RFM_SEGMENT, {}).get(segment_id, {})
        profiles.append(
            SegmentProfile(
                segment_id,
                customers,
                share,
                revenue_share,
                suppressed=False,
                features={name: feature_profile(row, base, name) for name in columns.numeric},
                top=top,
                rfm_segments={label: n / customers for label, n in sorted(rfm.items()) if n >= min_customers},
                membership=dict(membership.get(segment_id, {})),
            )
        )
    return profiles


def _top_mix(row: Mapping[str, Any], mix: Mapping[str, str], min_customers: int, top: int) -> list[tuple[str, float]]:
    """The mix values with the highest mean share, among those at least ``min_customers`` customers have."""
    shown = [
        (label, _finite(row[f"mean:{c}"]) or 0.0) for c, label in mix.items() if row[f"buyers:{c}"] >= min_customers
    ]
    return _largest(shown, top)


def _top_labels(counts: Mapping[str, int], customers: int, min_customers: int, top: int) -> list[tuple[str, float]]:
    """The most common values of a label (share of the segment's customers), each held by enough customers."""
    shown = [(label, n / customers) for label, n in counts.items() if n >= min_customers]
    return _largest(shown, top)


def _largest(shown: list[tuple[str, float]], top: int) -> list[tuple[str, float]]:
    """The ``top`` values with the largest shares (ties by value, so the order is stable)."""
    return sorted(shown, key=lambda item: (-item[1], item[0]))[:top]
