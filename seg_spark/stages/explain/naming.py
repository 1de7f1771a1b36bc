"""Segment names and one-sentence descriptions, from profiles by transparent rules (``explain.naming``).

A name is '<value tier> <behaviour>': the tier from the lift of ``naming.value_feature``
(segment mean / base mean), the behaviour from the first rule whose feature's lift passes its
bound. Names are unique within a run: segments that would share one are told apart by their
most distinctive other feature, then by their id.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from seg_spark.config import NamingRule, NamingSettings
from seg_spark.stages.explain.profiles import SegmentProfile

# How a description says a value feature's name ("4.1x average spend"); others are said as named.
SPOKEN = {"monetary": "spend", "avg_order_value": "order value", "frequency": "orders"}


@dataclass(frozen=True)
class SegmentName:
    """A segment's name and description."""

    segment_id: int
    name: str
    description: str


def value_tier(profile: SegmentProfile, naming: NamingSettings) -> str | None:
    """'High-value', 'Mid-value' or 'Low-value' (None without the value feature)."""
    feature = profile.features.get(naming.value_feature)
    if feature is None or feature.lift is None:
        return None
    if feature.lift >= naming.high_value_lift:
        return "High-value"
    return "Low-value" if feature.lift <= naming.low_value_lift else "Mid-value"


def matches(rule: NamingRule, profile: SegmentProfile) -> bool:
    """Whether the rule's feature lift passes its bound in this segment."""
    feature = profile.features.get(rule.feature)
    if feature is None or feature.lift is None:
        return False
    return feature.lift >= rule.above if rule.above is not None else feature.lift <= (rule.below or 0.0)


def behaviour(profile: SegmentProfile, naming: NamingSettings) -> str:
    """The first matching rule's label, else the fallback."""
    return next((rule.label for rule in naming.rules if matches(rule, profile)), naming.fallback)


def describe(profile: SegmentProfile, naming: NamingSettings) -> str:
    """One sentence: spend against the average, recency, orders, and the segment's weight."""
    if profile.suppressed:
        return f"{profile.customers:,} customers: too few to profile (explain.min_profile_customers)."
    parts = []
    value = profile.features.get(naming.value_feature)
    if value is not None and value.lift is not None:
        parts.append(f"{value.lift:.1f}x average {SPOKEN.get(naming.value_feature, naming.value_feature)}")
    recency = profile.features.get("recency_days")
    if recency is not None and recency.median is not None:
        parts.append(f"last purchase {recency.median:.0f} days ago (median)")
    frequency = profile.features.get("frequency")
    if frequency is not None and frequency.mean is not None:
        parts.append(f"{frequency.mean:.1f} orders on average")
    weight = f"{profile.share:.0%} of customers"
    if profile.revenue_share is not None:
        weight += f", {profile.revenue_share:.0%} of revenue"
    return (", ".join(parts) + "; " if parts else "") + weight + "."


def _base_name(profile: SegmentProfile, naming: NamingSettings) -> str:
    if profile.suppressed:
        return f"Small segment {profile.segment_id}"
    tier, word = value_tier(profile, naming), behaviour(profile, naming)
    return f"{tier} {word}" if tier else word[:1].upper() + word[1:]


def _distinctive(profile: SegmentProfile, used: set[str]) -> str | None:
    """'high <feature>' or 'low <feature>' for the feature furthest from the base (by z-score)."""
    scored = [(abs(f.std_diff), n, f.std_diff) for n, f in profile.features.items() if n not in used and f.std_diff]
    if not scored:
        return None
    _, name, z = max(scored)
    return f"{'high' if z > 0 else 'low'} {name}"


def name_segments(profiles: Sequence[SegmentProfile], naming: NamingSettings) -> list[SegmentName]:
    """Names (unique within the run) and descriptions of every segment, in the profiles' order."""
    names = {p.segment_id: _base_name(p, naming) for p in profiles}
    used = {naming.value_feature, *(rule.feature for rule in naming.rules)}
    shared = {n for n, count in Counter(names.values()).items() if count > 1}
    for p in profiles:
        if names[p.segment_id] in shared and (extra := _distinctive(p, used)):
            names[p.segment_id] += f" ({extra})"
    repeated = {n for n, count in Counter(names.values()).items() if count > 1}
    for p in profiles:
        if names[p.segment_id] in repeated:
            names[p.segment_id] += f" #{p.segment_id}"
    return [SegmentName(p.segment_id, names[p.segment_id], describe(p, naming)) for p in profiles]
