"""External validity of a segmentation against known labels, computed in Spark.

The contingency table is aggregated in Spark; only its cells (labels x segments, a few
hundred at most) reach the driver.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def _pairs(n: float) -> float:
    return n * (n - 1) / 2


def contingency(df: DataFrame, label_col: str, prediction_col: str) -> list[tuple[object, object, int]]:
    """The (label, prediction, count) cells; one Spark aggregation, a small result."""
    cells = df.groupBy(label_col, prediction_col).agg(F.count(F.lit(1)).alias("n")).collect()
    return [(r[0], r[1], int(r[2])) for r in cells]


def adjusted_rand_index(df: DataFrame, label_col: str, prediction_col: str) -> float:
    """Adjusted Rand index (Hubert & Arabie) between two labellings of the same rows.

    Args:
        df: One row per item with both labellings.
        label_col: The reference labelling (e.g. planted archetypes).
        prediction_col: The labelling to judge (e.g. segment ids).

    Returns:
        1.0 for identical partitions, about 0 for independent ones.
    """
    cells = contingency(df, label_col, prediction_col)
    row_sums: dict[object, int] = {}
    col_sums: dict[object, int] = {}
    for label, prediction, n in cells:
        row_sums[label] = row_sums.get(label, 0) + n
        col_sums[prediction] = col_sums.get(prediction, 0) + n
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
