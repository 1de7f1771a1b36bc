"""External validity of a segmentation against known labels, computed in Spark.

The contingency table is aggregated in Spark; only its cells (labels x segments, a few
hundred at most) reach the driver. Labellings already on the driver (stability refits of
the selection sample) are tabulated there.
"""

from __future__ import annotations

import math

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def _pairs(n: float) -> float:
    return n * (n - 1) / 2


def contingency(df: DataFrame, label_col: str, prediction_col: str) -> list[tuple[object, object, int]]:
    """The (label, prediction, count) cells; one Spark aggregation, a small result."""
    cells = df.groupBy(label_col, prediction_col).agg(F.count(F.lit(1)).alias("n")).collect()
    return [(r[0], r[1], int(r[2])) for r in cells]


def cells_of(reference: np.ndarray, other: np.ndarray) -> list[tuple[object, object, int]]:
    """The (reference, other, count) cells of two labellings of the same rows held by the driver."""
    pairs, counts = np.unique(np.column_stack([reference, other]), axis=0, return_counts=True)
    return [(int(a), int(b), int(n)) for (a, b), n in zip(pairs.tolist(), counts.tolist(), strict=True)]


def adjusted_rand_index(df: DataFrame, label_col: str, prediction_col: str) -> float:
    """Adjusted Rand index (Hubert & Arabie) between two labellings of the same rows.

    Args:
        df: One row per item with both labellings.
        label_col: The reference labelling (e.g. planted archetypes).
        prediction_col: The labelling to judge (e.g. segment ids).

    Returns:
        1.0 for identical partitions, about 0 for independent ones.
    """
    return ari_from_cells(contingency(df, label_col, prediction_col))


Cells = list[tuple[object, object, int]]


def _margins(cells: Cells) -> tuple[dict[object, int], dict[object, int]]:
    """Row and column totals of a contingency table given as cells."""
    rows: dict[object, int] = {}
    columns: dict[object, int] = {}
    for label, prediction, n in cells:
        rows[label] = rows.get(label, 0) + n
        columns[prediction] = columns.get(prediction, 0) + n
    return rows, columns


def ari_from_cells(cells: Cells) -> float:
    """Adjusted Rand index from the (label, prediction, count) cells of a contingency table."""
    row_sums, col_sums = _margins(cells)
    total = sum(row_sums.values())
    sum_cells = sum(_pairs(n) for _, _, n in cells)
    sum_rows = sum(_pairs(n) for n in row_sums.values())
    sum_cols = sum(_pairs(n) for n in col_sums.values())
    total_pairs = _pairs(total)
    if total_pairs == 0:
        return 1.0
    expected = sum_rows * sum_cols / total_pairs
    maximum = (sum_rows + sum_cols) / 2
    if maximum == expected:
        # Both partitions are trivial (all one cluster, or all singletons): identical.
        return 1.0
    return (sum_cells - expected) / (maximum - expected)


def _entropy(counts: list[int]) -> float:
    total = sum(counts)
    return -sum(n / total * math.log(n / total) for n in counts if n > 0) if total else 0.0


def label_agreement(df: DataFrame, label_col: str, prediction_col: str) -> dict[str, float]:
    """Homogeneity, completeness and V-measure (Rosenberg & Hirschberg) plus the adjusted Rand index.

    Homogeneity: each segment holds one label; completeness: each label sits in one segment;
    V-measure: their harmonic mean. Same definitions as scikit-learn's.
    """
    cells = contingency(df, label_col, prediction_col)
    labels, predictions = _margins(cells)
    total = sum(labels.values())
    mutual = sum(n / total * math.log(n * total / (labels[a] * predictions[b])) for a, b, n in cells if n > 0)
    h_labels, h_predictions = _entropy(list(labels.values())), _entropy(list(predictions.values()))
    homogeneity = 1.0 if h_labels == 0 else mutual / h_labels
    completeness = 1.0 if h_predictions == 0 else mutual / h_predictions
    both = homogeneity + completeness
    return {
        "adjusted_rand_index": ari_from_cells(cells),
        "homogeneity": homogeneity,
        "completeness": completeness,
        "v_measure": 0.0 if both == 0 else 2 * homogeneity * completeness / both,
    }


def best_jaccard(cells: Cells) -> dict[object, float]:
    """For each reference segment, the best Jaccard overlap |C & D| / |C | D| with any other segment D.

    Args:
        cells: (reference segment, other segment, rows) contingency cells over the same rows.
    """
    reference, other = _margins(cells)
    best = dict.fromkeys(reference, 0.0)
    for a, b, n in cells:
        best[a] = max(best[a], n / (reference[a] + other[b] - n))
    return best
