"""Stable segment ids: a new model's segments take the ids of the previous run's segments they continue.

A clustering model numbers its segments arbitrarily, and a refit on nearly the same data may
number them differently. Consumers join on segment ids, so the publish stage matches the new
model's segments to the previous published run's by customer overlap: the Jaccard index
``|A & B| / |A | B|`` of their members, maximised over one-to-one pairings (the Hungarian
method, ``scipy.optimize.linear_sum_assignment``). A pair at or above
``publish.min_match_jaccard`` keeps the old id; a new segment without one gets the next id
never used before; an old segment left without a partner has vanished.

Overlap works for every algorithm and whatever the preparation (centres of differently
prepared models are not comparable); its limit is a run whose customers are all new, where
every segment is new.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment  # type: ignore[import-untyped]

NEW, CONTINUED, VANISHED = "new", "continued", "vanished"


@dataclass(frozen=True)
class SegmentIdentity:
    """One segment of the new model and its published id."""

    model_segment_id: int
    segment_id: int
    status: str  # new | continued
    jaccard: float | None  # overlap with the segment it continues


@dataclass(frozen=True)
class Matching:
    """Published ids for a model's segments and the previous ids that vanished."""

    segments: tuple[SegmentIdentity, ...]
    vanished: tuple[int, ...]

    def ids(self) -> dict[int, int]:
        """Model segment id -> published segment id."""
        return {s.model_segment_id: s.segment_id for s in self.segments}


def match_segments(
    new_sizes: Mapping[int, int],
    old_sizes: Mapping[int, int],
    overlap: Sequence[tuple[int, int, int]],
    *,
    min_jaccard: float,
    next_id: int,
) -> Matching:
    """Match the new model's segments to the previous run's by customer overlap.

    Args:
        new_sizes: Model segment id -> customers in it now.
        old_sizes: Published segment id -> customers in it in the previous run (empty: first run).
        overlap: (model segment id, previous segment id, customers in both) cells.
        min_jaccard: The least overlap that continues a segment.
        next_id: The smallest id never used before (fresh ids count up from it).

    Returns:
        Every new segment's id (fresh ones in model-segment order) and the vanished ids.
    """
    new, old = sorted(new_sizes), sorted(old_sizes)
    continued: dict[int, tuple[int, float]] = {}
    if new and old:
        jaccard = np.zeros((len(new), len(old)))
        row, column = {s: i for i, s in enumerate(new)}, {s: j for j, s in enumerate(old)}
        for a, b, both in overlap:
            if a in row and b in column and both > 0:
                jaccard[row[a], column[b]] = both / (new_sizes[a] + old_sizes[b] - both)
        for i, j in zip(*linear_sum_assignment(jaccard, maximize=True), strict=True):
            if jaccard[i, j] >= min_jaccard and jaccard[i, j] > 0:
                continued[new[i]] = (old[j], float(jaccard[i, j]))
    segments, fresh = [], next_id
    for a in new:
        if a in continued:
            segments.append(SegmentIdentity(a, continued[a][0], CONTINUED, continued[a][1]))
        else:
            segments.append(SegmentIdentity(a, fresh, NEW, None))
            fresh += 1
    kept = {old_id for old_id, _ in continued.values()}
    return Matching(segments=tuple(segments), vanished=tuple(b for b in old if b not in kept))
