"""What separates the segments: a decision-tree surrogate (Spark ML) of the segment labels.

The tree is trained on the model features in their own units (missing values filled with the
base median), on a bounded sample of customers, four in five of them; its accuracy is measured
on the fifth (chosen by a hash of the customer id, so a rerun splits alike). Each leaf is a
readable rule ('recency_days <= 30.5 and frequency > 8.5'); a segment's top rules are its leaves
that hold most of its customers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pyspark.ml.classification import DecisionTreeClassificationModel, DecisionTreeClassifier
from pyspark.ml.feature import VectorAssembler
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from seg_spark.stages.explain.profiles import SEGMENT

VECTOR, LABEL = "_surrogate_features", "_surrogate_label"
HOLDOUT_BUCKETS = 5  # one bucket in five is held out


@dataclass(frozen=True)
class Rule:
    """One leaf of the surrogate: the conditions on the way to it and how well it picks its segment."""

    segment_id: int
    conditions: tuple[str, ...]
    precision: float  # share of the leaf's training customers in the segment
    coverage: float  # share of the segment's training customers in the leaf

    def text(self) -> str:
        """The conditions joined with 'and' ('all customers' for a tree of one leaf)."""
        return " and ".join(self.conditions) or "all customers"


@dataclass(frozen=True)
class Surrogate:
    """The surrogate's held-out accuracy, feature importances and the top rules per segment."""

    accuracy: float | None
    importances: dict[str, float]
    rules: dict[int, list[Rule]]
    training_rows: int
    holdout_rows: int


def surrogate(
    labelled: DataFrame,
    features: Sequence[str],
    fill: Mapping[str, float],
    *,
    max_depth: int,
    max_rows: int,
    rules_per_segment: int,
    seed: int,
) -> Surrogate:
    """Fit the surrogate tree and read its rules.

    Args:
        labelled: One row per customer with ``customer_id``, ``segment_id`` and ``features``.
        features: The model features, in the tree's order.
        fill: Value for a missing feature (the base median).
        max_depth: The tree's depth.
        max_rows: Customers used at most (a uniform sample beyond).
        rules_per_segment: Rules kept per segment.
        seed: Sampling and tree seed.
    """
    rows = labelled.select("customer_id", F.col(SEGMENT).cast("double").alias(LABEL), *features)
    rows = rows.na.fill({name: float(value) for name, value in fill.items() if name in features})
    total = rows.count()
    if total > max_rows:
        rows = rows.sample(fraction=max_rows / total, seed=seed)
    assembled = VectorAssembler(inputCols=list(features), outputCol=VECTOR, handleInvalid="skip").transform(rows)
    held_out = F.pmod(F.xxhash64("customer_id"), F.lit(HOLDOUT_BUCKETS)) == 0
    train, holdout = assembled.filter(~held_out).cache(), assembled.filter(held_out)
    try:
        tree = DecisionTreeClassifier(
            featuresCol=VECTOR, labelCol=LABEL, maxDepth=max_depth, seed=seed, minInstancesPerNode=1
        ).fit(train)
        training_rows = train.count()
    finally:
        train.unpersist()
    scored = tree.transform(holdout).agg(
        F.count(F.lit(1)).alias("rows"), F.avg((F.col("prediction") == F.col(LABEL)).cast("double")).alias("hit")
    )
    outcome = scored.first()
    holdout_rows = int(outcome["rows"]) if outcome else 0
    importances = dict(zip(features, (float(v) for v in tree.featureImportances.toArray()), strict=True))
    return Surrogate(
        accuracy=float(outcome["hit"]) if outcome and outcome["hit"] is not None else None,
        importances=importances,
        rules=top_rules(leaves(tree, features), rules_per_segment),
        training_rows=training_rows,
        holdout_rows=holdout_rows,
    )


@dataclass(frozen=True)
class Leaf:
    """A leaf: the path's bounds per feature and its training customers per segment."""

    bounds: dict[str, tuple[float | None, float | None]]  # feature -> (lower exclusive, upper inclusive)
    counts: tuple[float, ...]  # training customers of each segment in the leaf


def leaves(tree: DecisionTreeClassificationModel, features: Sequence[str]) -> list[Leaf]:
    """Every leaf of a fitted tree (read from the JVM model: Spark ML has no Python tree API)."""
    found: list[Leaf] = []

    def walk(node: Any, bounds: dict[str, tuple[float | None, float | None]]) -> None:
        if node.getClass().getSimpleName() != "InternalNode":
            found.append(Leaf(bounds, tuple(float(c) for c in node.impurityStats().stats())))
            return
        split = node.split()
        if split.getClass().getSimpleName() != "ContinuousSplit":  # features are numeric: never expected
            raise ValueError(f"unexpected split {split.getClass().getSimpleName()} in the surrogate tree")
        name, threshold = features[split.featureIndex()], float(split.threshold())
        lower, upper = bounds.get(name, (None, None))
        walk(node.leftChild(), {**bounds, name: (lower, threshold if upper is None else min(upper, threshold))})
        walk(node.rightChild(), {**bounds, name: (threshold if lower is None else max(lower, threshold), upper)})

    java_model: Any = tree._java_obj  # noqa: SLF001 - the tree's structure is only in the JVM model
    walk(java_model.rootNode(), {})
    return found


def _condition(name: str, lower: float | None, upper: float | None) -> str:
    if lower is not None and upper is not None:
        return f"{lower:.4g} < {name} <= {upper:.4g}"
    return f"{name} <= {upper:.4g}" if upper is not None else f"{name} > {lower:.4g}"


def top_rules(found: Sequence[Leaf], per_segment: int) -> dict[int, list[Rule]]:
    """Each segment's leaves (those predicting it) by the segment's customers they hold, most first."""
    width = max((len(leaf.counts) for leaf in found), default=0)
    segment_totals = [sum(leaf.counts[i] for leaf in found if i < len(leaf.counts)) for i in range(width)]
    rules: dict[int, list[Rule]] = {}
    for leaf in found:
        if not leaf.counts or sum(leaf.counts) == 0:
            continue
        segment = max(range(len(leaf.counts)), key=lambda i: (leaf.counts[i], -i))
        conditions = tuple(_condition(n, lo, hi) for n, (lo, hi) in sorted(leaf.bounds.items()))
        held = leaf.counts[segment]
        rules.setdefault(segment, []).append(
            Rule(segment, conditions, held / sum(leaf.counts), held / segment_totals[segment])
        )
    return {
        s: sorted(r, key=lambda rule: (-rule.coverage, rule.text()))[:per_segment] for s, r in sorted(rules.items())
    }
