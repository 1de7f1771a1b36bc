from datetime import date, datetime

import pytest
from pyspark.sql import functions as F

from seg_spark.config import GeneratorSettings, MessRates
from seg_spark.synth import ARCHETYPES, generate, write_generated

END = date(2026, 1, 1)


@pytest.fixture(scope="module")
def settings():
    return GeneratorSettings(
        customers=1500,
        days=365,
        seed=7,
        end_date=END,
        mess=MessRates(returns=0.05, missing_customer_id=0.03, duplicates=0.02, bad_price=0.04, future_timestamp=0.01),
    )


@pytest.fixture(scope="module")
def log(spark, settings):
    generated = generate(spark, settings)
    return generated.transactions.cache(), generated.truth.cache()


def _fingerprint(df):
    # Order-independent content hash: equal for equal multisets of rows.
    return df.select(F.sum(F.xxhash64(*df.columns) % 1_000_003).alias("h"), F.count("*").alias("n")).first()


def test_same_seed_same_log_other_seed_other_log(spark, settings, log):
    transactions, truth = log
    again = generate(spark, settings)
    assert _fingerprint(again.transactions) == _fingerprint(transactions)
    assert _fingerprint(again.truth) == _fingerprint(truth)
    other = generate(spark, settings.model_copy(update={"seed": 8}))
    assert _fingerprint(other.transactions) != _fingerprint(transactions)


def test_determinism_does_not_depend_on_partitioning(spark, settings, log):
    transactions, _ = log
    spark.conf.set("spark.sql.shuffle.partitions", "7")
    try:
        repartitioned = generate(spark, settings).transactions.repartition(5)
        assert _fingerprint(repartitioned) == _fingerprint(transactions)
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", "2")


def test_truth_has_every_customer_once_and_all_archetypes(log, settings):
    _, truth = log
    assert truth.count() == settings.customers
    assert truth.select("customer_id").distinct().count() == settings.customers
    shares = {r["archetype"]: r["count"] / settings.customers for r in truth.groupBy("archetype").count().collect()}
    assert set(shares) == {a.name for a in ARCHETYPES}
    assert len(shares) >= 6
    for archetype in ARCHETYPES:
        assert abs(shares[archetype.name] - archetype.weight) < 0.04, archetype.name


def test_schema_and_clean_lines_are_well_formed(log):
    transactions, _ = log
    assert transactions.columns == [
        "order_id",
        "customer_id",
        "ts",
        "product_id",
        "description",
        "category",
        "channel",
        "quantity",
        "unit_price",
        "discount",
        "country",
    ]
    sale = transactions.filter(~F.col("order_id").startswith("C"))
    bounds = sale.agg(F.min("quantity"), F.max("quantity"), F.min("ts")).first()
    assert bounds[0] >= 1 and bounds[1] <= 6
    assert bounds[2] >= datetime(2025, 1, 1)


def test_mess_rates_match_configuration(log, settings):
    transactions, _ = log
    mess = settings.mess
    originals = transactions.filter(~F.col("order_id").startswith("C")).dropDuplicates()
    n = originals.count()
    returns = transactions.filter(F.col("order_id").startswith("C"))
    assert returns.filter(F.col("quantity") >= 0).count() == 0
    assert abs(returns.dropDuplicates().count() / n - mess.returns) < 0.01
    assert abs(originals.filter(F.col("customer_id").isNull()).count() / n - mess.missing_customer_id) < 0.01
    assert abs(originals.filter(F.col("unit_price") <= 0).count() / n - mess.bad_price) < 0.01
    future = originals.filter(F.col("ts") >= F.lit(END).cast("timestamp")).count()
    assert abs(future / n - mess.future_timestamp) < 0.005
    duplicates = transactions.count() - transactions.dropDuplicates().count()
    assert abs(duplicates / transactions.dropDuplicates().count() - mess.duplicates) < 0.006


def test_no_mess_means_no_mess(spark):
    clean = generate(
        spark,
        GeneratorSettings(
            customers=200,
            end_date=END,
            mess=MessRates(returns=0, missing_customer_id=0, duplicates=0, bad_price=0, future_timestamp=0),
        ),
    ).transactions
    stats = clean.agg(
        F.count("*"),
        F.count("customer_id"),
        F.min("unit_price"),
        F.max("ts"),
        F.sum(F.col("order_id").startswith("C").cast("int")),
    ).first()
    assert stats[0] == stats[1]
    assert stats[2] > 0
    assert stats[3] < datetime(2026, 1, 1)
    assert stats[4] == 0
    assert clean.count() == clean.dropDuplicates().count()


def test_write_generated_round_trips_as_csv(spark, tmp_path):
    settings = GeneratorSettings(customers=50, days=60, end_date=END)
    paths = write_generated(spark, settings, str(tmp_path / "gen"), fmt="csv")
    back = spark.read.option("header", "true").csv(paths["transactions"])
    assert back.count() == generate(spark, settings).transactions.count()
    assert spark.read.parquet(paths["truth"]).count() == 50
