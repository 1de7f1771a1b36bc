"""Stable segment ids from customer overlap (optimal one-to-one assignment)."""

import pytest

from seg_spark.stages.publish.identity import CONTINUED, NEW, match_segments


def cells(new_of: dict[str, int], old_of: dict[str, int]) -> list[tuple[int, int, int]]:
    """Overlap cells of two labellings (customer -> segment) as the stage builds them in Spark."""
    counts: dict[tuple[int, int], int] = {}
    for customer, a in new_of.items():
        if customer in old_of:
            counts[(a, old_of[customer])] = counts.get((a, old_of[customer]), 0) + 1
    return [(a, b, n) for (a, b), n in counts.items()]


def sizes(labels: dict[str, int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for segment in labels.values():
        out[segment] = out.get(segment, 0) + 1
    return out


def match(new_of, old_of, min_jaccard=0.5, next_id=0):
    return match_segments(sizes(new_of), sizes(old_of), cells(new_of, old_of), min_jaccard=min_jaccard, next_id=next_id)


OLD = {f"c{i}": i // 10 for i in range(40)}  # published ids 0..3, ten customers each


def test_the_first_publish_numbers_segments_as_the_model_does():
    first = match({"a": 1, "b": 0, "c": 2}, {})
    assert first.ids() == {0: 0, 1: 1, 2: 2}
    assert {s.status for s in first.segments} == {NEW} and first.vanished == ()


def test_a_renumbered_model_on_the_same_customers_keeps_every_id():
    renumbered = {customer: (3 - segment) for customer, segment in OLD.items()}
    result = match(renumbered, OLD, next_id=4)
    assert result.ids() == {3: 0, 2: 1, 1: 2, 0: 3}
    assert all(s.status == CONTINUED and s.jaccard == 1.0 for s in result.segments)
    assert result.vanished == ()


def test_a_small_shift_keeps_ids_and_a_planted_change_gets_a_fresh_id_and_a_vanished_one():
    shifted = dict(OLD)
    shifted["c0"], shifted["c11"] = 1, 2  # two customers move
    assert match(shifted, OLD, next_id=4).ids() == {0: 0, 1: 1, 2: 2, 3: 3}
    # Segment 3's customers spread over 0 and 1; twelve new customers form a new group.
    changed = {c: (s if s < 3 else int(c[1:]) % 2) for c, s in OLD.items()} | {f"n{i}": 3 for i in range(12)}
    result = match(changed, OLD, next_id=4)
    assert result.ids() == {0: 0, 1: 1, 2: 2, 3: 4}  # the next id never used before
    assert [s.status for s in result.segments] == [CONTINUED, CONTINUED, CONTINUED, NEW]
    assert result.vanished == (3,)
    assert result.segments[0].jaccard == pytest.approx(10 / 15)  # 10 kept of 10 + 5 joining


def test_an_overlap_below_the_minimum_is_a_new_segment():
    # Segment 0's ten customers split 4 / 6: Jaccard 0.4 and 0.6 with the old segment 0.
    split = {c: (0 if int(c[1:]) < 4 else 9) for c, s in OLD.items() if s == 0}
    default = match(split, OLD, min_jaccard=0.5, next_id=4)
    assert default.ids() == {0: 4, 9: 0}  # the larger part continues; one old id per new segment
    assert default.vanished == (1, 2, 3)
    strict = match(split, OLD, min_jaccard=0.7, next_id=4)
    assert strict.ids() == {0: 4, 9: 5} and strict.vanished == (0, 1, 2, 3)
