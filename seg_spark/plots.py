"""Plots as matplotlib figures, drawn from small summaries (never from rows of the full data).

Figures are built with the object-oriented API on the Agg canvas: no pyplot state, no display.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure


def calibration_vs_holdout(by_frequency: Sequence[Mapping[str, Any]], time_unit: str) -> Figure:
    """Mean predicted and actual holdout purchases per calibration frequency (the classic CLV backtest plot).

    Args:
        by_frequency: Rows with ``frequency`` (label), ``customers``, ``predicted_mean``, ``actual_mean``.
        time_unit: The time unit of the summaries, for the title.
    """
    figure = Figure(figsize=(7, 4.5), dpi=100)
    axes = figure.add_subplot()
    labels = [str(row["frequency"]) for row in by_frequency]
    positions = range(len(labels))
    axes.plot(positions, [row["actual_mean"] for row in by_frequency], marker="o", label="actual")
    axes.plot(positions, [row["predicted_mean"] for row in by_frequency], marker="s", linestyle="--", label="BG/NBD")
    axes.set_xticks(list(positions), labels)
    axes.set_xlabel("repeat purchases in the calibration period")
    axes.set_ylabel("mean repeat purchases in the holdout")
    axes.set_title(f"Calibration vs holdout ({time_unit}s); customers per bucket under each point")
    for x, row in zip(positions, by_frequency, strict=True):
        axes.annotate(
            f"{row['customers']:,}",
            (x, row["actual_mean"]),
            textcoords="offset points",
            xytext=(0, -14),
            ha="center",
            fontsize=7,
        )
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure
