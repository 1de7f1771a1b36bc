import random

import pytest
from sklearn.metrics import adjusted_rand_score

from seg_spark.models.validation import adjusted_rand_index


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_adjusted_rand_matches_scikit_learn(spark, seed):
    rng = random.Random(seed)
    truth = [rng.randrange(5) for _ in range(400)]
    # Mostly agreeing labels with a renaming and noise.
    predicted = [(t + 2) % 5 if rng.random() < 0.8 else rng.randrange(4) for t in truth]
    df = spark.createDataFrame(list(zip(truth, predicted, strict=True)), "truth int, pred int")
    assert adjusted_rand_index(df, "truth", "pred") == pytest.approx(adjusted_rand_score(truth, predicted), abs=1e-12)


def test_adjusted_rand_edge_cases(spark):
    same = spark.createDataFrame([(i % 3, i % 3) for i in range(30)], "truth int, pred int")
    assert adjusted_rand_index(same, "truth", "pred") == 1.0
    one_cluster = spark.createDataFrame([(0, 0)] * 5, "truth int, pred int")
    assert adjusted_rand_index(one_cluster, "truth", "pred") == adjusted_rand_score([0] * 5, [0] * 5)
    single = spark.createDataFrame([(0, 1)], "truth int, pred int")
    assert adjusted_rand_index(single, "truth", "pred") == 1.0
