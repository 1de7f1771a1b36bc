import math

import pytest
from pyspark.ml import Pipeline
from pyspark.ml.functions import vector_to_array
from pyspark.sql import functions as F

from seg_spark.config import PrepSettings
from seg_spark.models.prep import PreparationError, plan_preparation


@pytest.fixture(scope="module")
def data(spark):
    rows = []
    for i in range(100):
        spread = float(i)
        gappy = None if i % 10 == 0 else (float("nan") if i % 10 == 1 else float(i % 7))
        rows.append((f"c{i}", spread, 2 * spread + 1, 5.0, None, gappy, 1000.0 if i == 99 else float(i * 37 % 100)))
    schema = "customer_id string, a double, twice_a double, constant double, empty double, gappy double, spiky double"
    return spark.createDataFrame(rows, schema).cache()


def test_decisions_name_each_dropped_feature_and_why(data):
    settings = PrepSettings(log1p_features=(), winsorize=(0.1, 0.9), quantile_error=1e-6)
    prep = plan_preparation(data, ["a", "twice_a", "constant", "empty", "gappy", "spiky"], settings)
    reasons = {d.feature: d.reason for d in prep.decisions}
    assert prep.kept == ("a", "gappy", "spiky")
    assert reasons["twice_a"].startswith("dropped: |correlation| 1.000 with a")
    assert reasons["constant"].startswith("dropped: zero variance")
    assert reasons["empty"] == "dropped: no customer has a value"
    spiky = next(d for d in prep.decisions if d.feature == "spiky")
    # 0..99 without 63, plus the 1000.0 outlier, which is clipped to the 90% quantile
    assert spiky.lower in (9.0, 10.0) and spiky.upper in (89.0, 90.0)


def test_stages_clip_impute_and_standardise(data):
    settings = PrepSettings(log1p_features=("spiky",), winsorize=(0.1, 0.9), quantile_error=1e-6)
    prep = plan_preparation(data, ["a", "gappy", "spiky"], settings)
    out = Pipeline(stages=list(prep.stages)).fit(data).transform(data)
    vectors = out.select(vector_to_array("features").alias("v"), vector_to_array("features_raw").alias("raw"))
    stats = vectors.select(
        *[F.avg(F.col("v")[i]).alias(f"m{i}") for i in range(3)],
        *[F.stddev_samp(F.col("v")[i]).alias(f"s{i}") for i in range(3)],
        *[F.avg(F.col("raw")[i]).alias(f"rm{i}") for i in range(3)],
        *[F.stddev_samp(F.col("raw")[i]).alias(f"rs{i}") for i in range(3)],
    ).first()
    for i in range(3):
        # Scaled to unit spread, not centred (see prep._stages).
        assert stats[f"s{i}"] == pytest.approx(1.0)
        assert stats[f"m{i}"] == pytest.approx(stats[f"rm{i}"] / stats[f"rs{i}"])
    prepared = {r.customer_id: r for r in out.select("customer_id", "gappy__prep__imputed", "spiky__prep").collect()}
    median = prepared["c2"].gappy__prep__imputed  # gappy is never missing for c2: i % 7 = 2
    assert median == 2.0
    assert prepared["c0"].gappy__prep__imputed == prepared["c1"].gappy__prep__imputed  # null and NaN both imputed
    spiky = next(d for d in prep.decisions if d.feature == "spiky")
    assert spiky.upper == pytest.approx(math.log1p(89.0)) or spiky.upper == pytest.approx(math.log1p(90.0))
    assert prepared["c99"].spiky__prep == spiky.upper  # log1p, then clipped


def test_robust_scaler_and_pca(data):
    settings = PrepSettings(log1p_features=(), scaler="robust", pca_components=2)
    prep = plan_preparation(data, ["a", "gappy", "spiky"], settings)
    out = Pipeline(stages=list(prep.stages)).fit(data).transform(data)
    assert len(out.first()["features"]) == 2


def test_nothing_usable_is_a_clear_error(data):
    with pytest.raises(PreparationError, match="constant dropped: zero variance"):
        plan_preparation(data, ["constant", "empty"], PrepSettings(log1p_features=()))
