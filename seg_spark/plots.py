"""Plots as matplotlib figures, drawn from small summaries (never from rows of the full data).

Figures are built with the object-oriented API on the Agg canvas: no pyplot state, no display.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

# One colour per segment (tab10 repeats after ten).
PALETTE = tuple(f"C{i}" for i in range(10))


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


def _colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def selection_curves(candidates: Sequence[Mapping[str, Any]]) -> Figure:
    """Model-selection metrics over k per algorithm: silhouette, WSSSE (elbow marked), BIC for mixtures.

    Args:
        candidates: ``model_selection`` rows: ``algorithm``, ``k``, ``silhouette``, ``wssse``, ``bic``,
            ``elbow``, ``chosen``.
    """
    metrics = [m for m in ("silhouette", "wssse", "bic") if any(c.get(m) is not None for c in candidates)]
    figure = Figure(figsize=(4.2 * max(len(metrics), 1), 3.6), dpi=100)
    for position, metric in enumerate(metrics, start=1):
        axes = figure.add_subplot(1, len(metrics), position)
        for algorithm in sorted({c["algorithm"] for c in candidates}):
            rows = sorted((c for c in candidates if c["algorithm"] == algorithm and c.get(metric) is not None),
                          key=lambda c: c["k"])  # fmt: skip
            axes.plot([c["k"] for c in rows], [c[metric] for c in rows], marker="o", label=algorithm)
            for c in rows:
                if metric == "wssse" and c.get("elbow"):
                    axes.annotate("elbow", (c["k"], c[metric]), xytext=(6, 6), textcoords="offset points")
                if c.get("chosen"):
                    axes.plot([c["k"]], [c[metric]], marker="*", markersize=14, color="black")
        axes.set_xlabel("k")
        axes.set_title(metric + (" (chosen: *)" if position == 1 else ""))
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    figure.tight_layout()
    return figure


def sizes_and_value(names: Sequence[str], shares: Sequence[float], value_shares: Sequence[float | None]) -> Figure:
    """Each segment's share of customers beside its share of revenue."""
    figure = Figure(figsize=(8, 0.5 * len(names) + 1.6), dpi=100)
    axes = figure.add_subplot()
    positions = np.arange(len(names))
    axes.barh(positions - 0.2, shares, height=0.4, label="customers")
    axes.barh(positions + 0.2, [v or 0.0 for v in value_shares], height=0.4, label="revenue")
    axes.set_yticks(positions, names)
    axes.invert_yaxis()
    axes.xaxis.set_major_formatter(lambda x, _: f"{x:.0%}")
    axes.set_title("Share of customers and of revenue")
    axes.legend()
    figure.tight_layout()
    return figure


def profile_heatmap(names: Sequence[str], features: Sequence[str], z: Sequence[Sequence[float]]) -> Figure:
    """Standardised difference of each segment's mean from the base (rows: segments, columns: features)."""
    values = np.nan_to_num(np.asarray(z, dtype=float))
    figure = Figure(figsize=(max(6.0, 0.35 * len(features) + 3), 0.45 * len(names) + 2.6), dpi=100)
    axes = figure.add_subplot()
    limit = max(float(np.abs(values).max(initial=0.0)), 1e-9)
    image = axes.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    axes.set_yticks(range(len(names)), names)
    axes.set_xticks(range(len(features)), features, rotation=75, fontsize=7)
    figure.colorbar(image, ax=axes, label="(segment mean - base mean) / base std")
    axes.set_title("Segment profiles (z-scores)")
    figure.tight_layout()
    return figure


def projection(points: np.ndarray, labels: Sequence[int], names: Mapping[int, str], explained: np.ndarray) -> Figure:
    """A 2-D projection (PCA) of sampled customers, coloured by segment."""
    figure = Figure(figsize=(7, 5.5), dpi=100)
    axes = figure.add_subplot()
    label_array = np.asarray(labels)
    for index, segment in enumerate(sorted(names)):
        chosen = label_array == segment
        axes.scatter(points[chosen, 0], points[chosen, 1], s=6, alpha=0.6, color=_colour(index),
                     label=names[segment])  # fmt: skip
    axes.set_xlabel(f"PC1 ({explained[0]:.0%} of variance)")
    axes.set_ylabel(f"PC2 ({explained[1]:.0%} of variance)")
    axes.set_title(f"{len(label_array):,} sampled customers, projected")
    axes.legend(fontsize=7, markerscale=2)
    figure.tight_layout()
    return figure


def parallel_profiles(names: Sequence[str], features: Sequence[str], z: Sequence[Sequence[float]]) -> Figure:
    """Parallel coordinates of each segment's z-scores over the features."""
    figure = Figure(figsize=(max(7.0, 0.45 * len(features) + 2), 4.5), dpi=100)
    axes = figure.add_subplot()
    positions = range(len(features))
    for index, (name, row) in enumerate(zip(names, z, strict=True)):
        axes.plot(positions, np.nan_to_num(np.asarray(row, dtype=float)), marker="o", color=_colour(index), label=name)
    axes.axhline(0, color="grey", linewidth=0.8)
    axes.set_xticks(list(positions), features, rotation=75, fontsize=7)
    axes.set_ylabel("z-score against the base")
    axes.legend(fontsize=7)
    axes.set_title("Segment profiles, side by side")
    figure.tight_layout()
    return figure


def dendrogram(nodes: Sequence[Mapping[str, Any]], names: Mapping[int, str]) -> Figure:
    """The bisecting K-Means split tree: each node at its depth, leaves labelled with their segment.

    Args:
        nodes: ``segment_hierarchy`` rows: ``node_id``, ``parent_id``, ``depth``, ``segment_id``, ``size``.
        names: Segment id -> name, for the leaves.
    """
    by_id = {node["node_id"]: node for node in nodes}
    children: dict[Any, list[Mapping[str, Any]]] = {}
    for node in nodes:
        children.setdefault(node["parent_id"], []).append(node)
    x: dict[int, float] = {}

    def place(node: Mapping[str, Any], next_leaf: list[int]) -> float:
        below = sorted(children.get(node["node_id"], []), key=lambda n: n["node_id"])
        if not below:
            x[node["node_id"]] = float(next_leaf[0])
            next_leaf[0] += 1
        else:
            x[node["node_id"]] = float(np.mean([place(child, next_leaf) for child in below]))
        return x[node["node_id"]]

    counter = [0]
    for root in sorted(children.get(None, []), key=lambda n: n["node_id"]):
        place(root, counter)
    figure = Figure(figsize=(max(6.0, 1.3 * counter[0]), 4.5), dpi=100)
    axes = figure.add_subplot()
    for node in nodes:
        if node["parent_id"] is not None and node["parent_id"] in x:
            parent = by_id[node["parent_id"]]
            axes.plot([x[parent["node_id"]], x[node["node_id"]]], [-parent["depth"], -node["depth"]], color="grey")
        axes.scatter([x[node["node_id"]]], [-node["depth"]], s=30, color="black")
        label = f"{node['size']:,}"
        if node.get("segment_id") is not None and not children.get(node["node_id"]):
            label = f"{names.get(node['segment_id'], node['segment_id'])}\n{label}"
        axes.annotate(label, (x[node["node_id"]], -node["depth"]), xytext=(0, -14), textcoords="offset points",
                      ha="center", va="top", fontsize=7)  # fmt: skip
    axes.set_yticks([])
    axes.set_xticks([])
    axes.set_title("Bisecting K-Means split tree (customers per node)")
    axes.margins(0.15, 0.25)
    figure.tight_layout()
    return figure


def migration_matrix(
    rows: Sequence[str], columns: Sequence[str], counts: Sequence[Sequence[int]], title: str
) -> Figure:
    """Customers moving from each earlier segment (rows) to each segment of the run (columns)."""
    values = np.asarray(counts, dtype=float)
    figure = Figure(figsize=(0.9 * len(columns) + 4, 0.5 * len(rows) + 2.8), dpi=100)
    axes = figure.add_subplot()
    image = axes.imshow(values, cmap="Blues", aspect="auto")
    axes.set_yticks(range(len(rows)), rows, fontsize=8)
    axes.set_xticks(range(len(columns)), columns, rotation=40, ha="right", fontsize=8)
    for (i, j), value in np.ndenumerate(values):
        axes.text(j, i, f"{int(value):,}", ha="center", va="center", fontsize=7,
                  color="white" if value > values.max() / 2 else "black")  # fmt: skip
    figure.colorbar(image, ax=axes, label="customers")
    axes.set_title(title)
    figure.tight_layout()
    return figure
