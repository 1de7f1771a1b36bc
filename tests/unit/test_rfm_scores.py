from collections import Counter

from seg_spark.catalogue import RFM_SEGMENT_RULES
from seg_spark.features.behaviour import with_rfm_scores


def test_rules_name_every_cell_of_the_r_by_f_grid():
    for r in "12345":
        for f in "12345":
            assert any(r in rs and f in fs for rs, fs, _ in RFM_SEGMENT_RULES), (r, f)


def test_quintile_scores_and_named_segments(spark):
    rows = [(f"c{i}", float(11 - i), float(i), 10.0 * i) for i in range(1, 11)]
    rows.append(("returns-only", None, 0.0, -5.0))
    features = spark.createDataFrame(rows, "customer_id string, recency_days double, frequency double, monetary double")
    scored = {r.customer_id: r for r in with_rfm_scores(features, relative_error=0.0).collect()}
    assert Counter(r.rfm_f for r in scored.values()) == {1: 2, 2: 2, 3: 2, 4: 2, 5: 2, None: 1}
    assert Counter(r.rfm_r for r in scored.values()) == {1: 2, 2: 2, 3: 2, 4: 2, 5: 2, None: 1}
    best, worst, none = scored["c10"], scored["c1"], scored["returns-only"]
    assert (best.rfm_r, best.rfm_f, best.rfm_m, best.rfm_segment) == (5, 5, 5, "Champions")
    assert (worst.rfm_r, worst.rfm_f, worst.rfm_m, worst.rfm_segment) == (1, 1, 1, "Lost")
    assert (none.rfm_r, none.rfm_segment) == (None, "No purchase")
    assert scored["c5"].rfm_segment == "Need attention"  # r = 3, f = 3
