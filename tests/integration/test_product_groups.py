"""Text-derived product groups on the real Online Retail descriptions."""

from pathlib import Path

import pytest
from pyspark.ml import PipelineModel
from pyspark.sql import functions as F

from seg_spark.config import ProductGroupSettings, load_config
from seg_spark.errors import DataError
from seg_spark.features.products import NO_WORDS_GROUP, fit_groups, needs_groups, product_catalogue, refresh_groups
from seg_spark.tables import Table, TableStore

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "online_retail.csv.gz"


@pytest.fixture(scope="module")
def products(spark):
    if not DATA.is_file():
        pytest.skip(f"{DATA} not found (../shared/data beside the clone)")
    raw = spark.read.option("header", "true").csv(str(DATA))
    lines = raw.select(F.col("StockCode").alias("product_id"), F.col("Description").alias("description"))
    return product_catalogue(lines).cache()


def test_groups_are_non_trivial_named_and_stable_for_a_seed(products):
    settings = ProductGroupSettings(groups=12, seed=7)
    _, table = fit_groups(products, settings)
    table = table.cache()
    sizes = {r.group_id: r["count"] for r in table.groupBy("group_id").count().collect()}
    n = sum(sizes.values())
    assert n == products.count() > 3000
    real = {g: size for g, size in sizes.items() if g != NO_WORDS_GROUP}
    assert len(real) == 12
    assert max(real.values()) < 0.5 * n  # no catch-all group
    assert sum(size >= 0.02 * n for size in real.values()) >= 8
    names = {r.group_id: r.group_name for r in table.select("group_id", "group_name").distinct().collect()}
    assert all(len(names[g].split("/")) == 3 for g in real)
    examples = table.filter(F.col("example_rank").isNotNull()).groupBy("group_id").count().collect()
    assert all(r["count"] == min(5, sizes[r.group_id]) for r in examples)
    again = fit_groups(products, settings)[1].select("product_id", "group_id")
    assert table.select("product_id", "group_id").exceptAll(again).count() == 0


def test_word2vec_method_groups_products_too(products):
    settings = ProductGroupSettings(method="word2vec", groups=6, vector_size=16, seed=3)
    _, table = fit_groups(products.limit(800), settings)
    sizes = [r["count"] for r in table.filter(F.col("group_id") >= 0).groupBy("group_id").count().collect()]
    assert len(sizes) == 6 and max(sizes) < 0.7 * sum(sizes)


def test_known_products_keep_their_group_and_new_ones_join_existing_groups(spark, products, tmp_path):
    settings = ProductGroupSettings(groups=8, seed=1)
    store = TableStore(spark, load_config([], [f"storage.root={tmp_path}"]))
    first_products = products.filter(F.col("product_id") < "5")
    as_lines = lambda p: p.select("product_id", "description")  # noqa: E731 - product_catalogue input
    first, refitted = refresh_groups(store, as_lines(first_products), settings)
    assert refitted
    before = {r.product_id: r.group_id for r in first.collect()}
    after, refitted = refresh_groups(store, as_lines(products), settings)
    assert not refitted
    after_rows = after.collect()
    assert len(after_rows) == products.count()
    assert {r.product_id: r.group_id for r in after_rows if r.product_id in before} == before
    names = {r.group_id: r.group_name for r in first.collect()}
    assert all(names.get(r.group_id) == r.group_name for r in after_rows if r.group_id in names)


def test_lines_without_categories_or_descriptions_get_no_groups_and_always_says_why(spark):
    lines = spark.createDataFrame(
        [("p1", None, None), ("p2", None, "  "), ("p3", None, None)],
        "product_id string, category string, description string",
    )
    assert not needs_groups(lines, ProductGroupSettings(enabled="auto"))  # nothing to group by: no fit
    assert not needs_groups(lines, ProductGroupSettings(enabled="never"))
    with pytest.raises(DataError, match="no clean transaction line has a product description") as err:
        needs_groups(lines, ProductGroupSettings(enabled="always"))
    assert "sources.transactions.columns.description" in str(err.value)
    described = lines.union(spark.createDataFrame([("p4", None, "RED MUG")], lines.schema))
    assert needs_groups(described, ProductGroupSettings(enabled="auto"))
    categorised = described.union(spark.createDataFrame([("p5", "mugs", "BLUE MUG")], lines.schema))
    assert not needs_groups(categorised, ProductGroupSettings(enabled="auto"))
    assert needs_groups(categorised, ProductGroupSettings(enabled="always"))


def test_each_fit_keeps_its_own_model_so_a_restored_table_assigns_with_the_model_it_was_made_with(
    spark, products, tmp_path
):
    store = TableStore(spark, load_config([], [f"storage.root={tmp_path}"]))
    lines = products.filter(F.col("product_id") < "20").select("product_id", "description")
    refresh_groups(store, lines, ProductGroupSettings(groups=4, seed=1))
    refitted, again = refresh_groups(store, lines, ProductGroupSettings(groups=5, seed=2, refit=True))
    assert again
    paths = [{r.model_path for r in store.read(Table.PRODUCT_GROUPS, version=v).collect()} for v in (0, 1)]
    assert all(len(p) == 1 for p in paths) and paths[0] != paths[1]
    (first,), (second,) = paths
    # Version 0's model is still where version 0 says (a rollback to it assigns new products with it).
    assert len(PipelineModel.load(first).stages[-1].clusterCenters()) == 4
    assert len(PipelineModel.load(second).stages[-1].clusterCenters()) == 5
    assert {r.group_id for r in refitted.collect()} <= {NO_WORDS_GROUP, 0, 1, 2, 3, 4}
