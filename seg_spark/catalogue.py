"""The feature catalogue: every feature's name, unit and definition, by family (no Spark needed).

``docs/FEATURES.md`` is generated from it (``python -m seg_spark.catalogue``) and a
test keeps the two equal. Names with ``{w}`` exist once per configured window
(``features.windows_days``); names with ``{category}`` or ``{channel}`` once per top value.
"""

from __future__ import annotations

import fnmatch
import re
import sys
from collections.abc import Iterable, Sequence

DEFAULT_WINDOWS: tuple[int, ...] = (30, 90)
DAYS_OF_WEEK: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# (name, first hour, hour after the last), UTC
DAYPARTS: tuple[tuple[str, int, int], ...] = (
    ("night", 0, 6),
    ("morning", 6, 12),
    ("afternoon", 12, 18),
    ("evening", 18, 24),
)

# family -> name -> (unit, definition)
FAMILIES: dict[str, dict[str, tuple[str, str]]] = {
    "rfm": {
        "recency_days": ("days", "days from the last purchase day to the as-of date (1 = the day before)"),
        "frequency": ("orders", "distinct purchase orders (returns excluded)"),
        "monetary": ("currency", "net spend to date: purchases minus returns (historical CLV)"),
    },
    "value": {
        "avg_order_value": ("currency", "gross purchase value per purchase order"),
        "max_order_value": ("currency", "largest gross purchase order"),
        "avg_basket_items": ("items", "mean quantity per purchase order"),
        "avg_basket_products": ("products", "mean distinct products per purchase order"),
        "discount_share": ("ratio 0-1", "discounts / (gross purchases + discounts)"),
    },
    "cadence": {
        "tenure_days": ("days", "days from the first transaction day to the as-of date (days since first purchase)"),
        "mean_interpurchase_days": ("days", "mean days between consecutive purchase orders (null below 2 orders)"),
        "std_interpurchase_days": ("days", "standard deviation of the days between purchase orders (null below 3)"),
        "purchase_regularity": ("ratio 0-1", "1 / (1 + coefficient of variation of inter-purchase days)"),
        "active_months": ("months", "calendar months with at least one purchase"),
        "orders_per_active_month": ("orders", "frequency / active_months"),
    },
    "mix": {
        "cat_{category}_share": ("ratio 0-1", "share of gross purchase value in this category (top categories)"),
        "cat_other_share": ("ratio 0-1", "share of gross purchase value in all other categories"),
        "channel_{channel}_share": ("ratio 0-1", "share of purchase orders in this channel (top channels)"),
        "channel_other_share": ("ratio 0-1", "share of purchase orders in all other channels"),
        **{
            f"dow_{day}_share": ("ratio 0-1", f"share of purchase orders placed on a {day.title()} (UTC)")
            for day in DAYS_OF_WEEK
        },
        "weekend_share": ("ratio 0-1", "share of purchase orders placed on Saturday or Sunday (UTC)"),
        **{
            f"daypart_{name}_share": ("ratio 0-1", f"share of purchase orders placed {lo:02d}:00-{hi:02d}:00 UTC")
            for name, lo, hi in DAYPARTS
        },
    },
    "trend": {
        "spend_{w}d": ("currency", "gross purchases in the last {w} days before the as-of date"),
        "spend_trend_{w}d": ("ratio -1..1", "(last {w} days - the {w} days before) / (both) of gross purchases"),
        "orders_trend_{w}d": ("ratio -1..1", "(last {w} days - the {w} days before) / (both) of purchase orders"),
        "return_rate_value": ("ratio", "value returned / gross purchases"),
        "return_rate_lines": ("ratio 0-1", "return lines / all lines"),
    },
}

RFM_SCORES: dict[str, tuple[str, str]] = {
    "rfm_r": ("score 1-5", "recency quintile among purchasing customers (5 = most recent)"),
    "rfm_f": ("score 1-5", "frequency quintile (5 = most orders)"),
    "rfm_m": ("score 1-5", "monetary quintile (5 = highest net spend)"),
    "rfm_segment": ("label", "classic rule-based RFM segment from the R and F scores (see below)"),
}

SIDE: dict[str, tuple[str, str]] = {
    "profile_age_band": ("label", "age band from the profiles source"),
    "profile_gender": ("label", "gender from the profiles source"),
    "profile_country": ("label", "country from the profiles source"),
    "profile_region": ("label", "region from the profiles source"),
    "profile_city": ("label", "city from the profiles source"),
    "days_since_signup": ("days", "days from the profile's signup date to the as-of date (null if not before it)"),
    "web_events": ("events", "web/app events before the as-of date"),
    "web_sessions": ("sessions", "distinct sessions before the as-of date (an event without session id is one)"),
    "days_since_last_event": ("days", "days from the last web/app event to the as-of date"),
}
SIDE_NUMERIC: tuple[str, ...] = ("days_since_signup", "web_events", "web_sessions", "days_since_last_event")

# (R scores, F scores, name): the first matching rule names the segment; together they cover all 25 cells.
RFM_SEGMENT_RULES: tuple[tuple[str, str, str], ...] = (
    ("5", "45", "Champions"),
    ("34", "45", "Loyal"),
    ("45", "23", "Potential loyalist"),
    ("5", "1", "New"),
    ("4", "1", "Promising"),
    ("3", "3", "Need attention"),
    ("3", "12", "About to sleep"),
    ("12", "5", "Can't lose"),
    ("12", "34", "At risk"),
    ("1", "1", "Lost"),
    ("12", "12", "Hibernating"),
)

DYNAMIC_PATTERNS: tuple[str, ...] = ("cat_*_share", "channel_*_share")


def feature_names(
    families: Iterable[str] = tuple(FAMILIES), windows: Sequence[int] = DEFAULT_WINDOWS
) -> tuple[str, ...]:
    """Numeric feature names with a fixed name for these families and windows (plus the side tables')."""
    names: list[str] = []
    for family in families:
        for name in FAMILIES[family]:
            if "{w}" in name:
                names += [name.format(w=w) for w in windows]
            elif "{" not in name:
                names.append(name)
    return (*names, *SIDE_NUMERIC)


def is_known_feature(name: str, known: Sequence[str]) -> bool:
    """Whether ``name`` (or glob) is a fixed feature name or selects category/channel shares."""
    if name in known or any(fnmatch.fnmatchcase(k, name) for k in known):
        return True
    return name.startswith(("cat_", "channel_")) and name.endswith("_share")


def slug(value: str) -> str:
    """A column-name-safe lower-case form of a category or channel value."""
    return re.sub(r"[^a-z0-9]+", "_", value.lower()).strip("_")[:40] or "blank"


def _rfm_rules_markdown() -> list[str]:
    lines = ["| R score | F score | segment |", "|---|---|---|"]
    lines += [f"| {', '.join(r)} | {', '.join(f)} | {name} |" for r, f, name in RFM_SEGMENT_RULES]
    return lines


def markdown() -> str:
    """The catalogue as a Markdown document."""
    lines = [
        "# Feature catalogue",
        "",
        "Generated by `python -m seg_spark.catalogue > docs/FEATURES.md`; do not edit by hand.",
        "Every feature is computed as of a date from events strictly before it, one row per customer",
        "in `customer_features` (partitioned by `as_of_date`). Families are switched on in",
        "`features.families`; `{w}` stands for each of `features.windows_days` (default "
        f"{', '.join(map(str, DEFAULT_WINDOWS))}); `{{category}}` and `{{channel}}` for the top values by spend",
        "and by orders (`features.mix`), as lower-case slugs. Without a category column in the source the",
        "categories are product groups derived from the descriptions (table `product_groups`).",
        "",
    ]
    for family, table in FAMILIES.items():
        lines += [f"## Family `{family}`", "", "| feature | unit | definition |", "|---|---|---|"]
        lines += [f"| `{name}` | {unit} | {definition} |" for name, (unit, definition) in table.items()]
        lines.append("")
    lines += ["## RFM scores and segments (with `rfm`)", "", "| feature | unit | definition |", "|---|---|---|"]
    lines += [f"| `{name}` | {unit} | {definition} |" for name, (unit, definition) in RFM_SCORES.items()]
    lines += ["", "Scores are quintiles of the as-of date's purchasing customers (approximate quantiles).", ""]
    lines += _rfm_rules_markdown()
    lines += ["", "## Side tables (profiles, events)", "", "| feature | unit | definition |", "|---|---|---|"]
    lines += [f"| `{name}` | {unit} | {definition} |" for name, (unit, definition) in SIDE.items()]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(markdown())
