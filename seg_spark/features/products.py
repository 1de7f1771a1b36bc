"""Product groups from product descriptions, for sources without a category column.

One row per product (its most frequent description) goes through a Spark ML text pipeline
(RegexTokenizer -> StopWordsRemover -> CountVectorizer + IDF, or Word2Vec -> L2 Normalizer)
and K-Means with cosine distance; products without a known word form group -1. Each group
is named after its most frequent words. The fitted pipeline is saved next to the tables so that later runs assign new
products to the same groups while known products keep theirs: categories, and so the daily
aggregates, stay stable from day to day. Each fit is saved in a folder of its own, which the
table's ``model_path`` column names: a rollback that restores the table to an earlier version
(``seg_spark.recovery``) brings back the model that version was assigned with.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from pyspark.ml import Estimator, Pipeline, PipelineModel, Transformer
from pyspark.ml.clustering import KMeans
from pyspark.ml.feature import IDF, CountVectorizer, Normalizer, RegexTokenizer, StopWordsRemover, Word2Vec
from pyspark.ml.functions import vector_to_array
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from seg_spark.config import ProductGroupSettings
from seg_spark.errors import DataError
from seg_spark.tables import Table, TableStore

log = logging.getLogger(__name__)

NO_WORDS_GROUP = -1
NO_WORDS_NAME = "no description"
GROUP_COLUMNS = ("product_id", "description", "group_id", "group_name", "lines", "example_rank", "model_path")


def product_catalogue(tx: DataFrame) -> DataFrame:
    """One row per product: its most frequent description and how many lines mention it."""
    return (
        tx.filter(F.col("product_id").isNotNull())
        .groupBy("product_id")
        .agg(
            F.mode(F.trim(F.col("description")), deterministic=True).alias("description"),
            F.count(F.lit(1)).alias("lines"),
        )
        .fillna({"description": ""})
    )


def text_pipeline(settings: ProductGroupSettings) -> Pipeline:
    """Tokenise, drop stop words, vectorise (TF-IDF or Word2Vec) and L2-normalise the descriptions."""
    stop_words = [*StopWordsRemover.loadDefaultStopWords("english"), *(w.lower() for w in settings.extra_stop_words)]
    stages: list[Estimator[Any] | Transformer] = [
        RegexTokenizer(inputCol="description", outputCol="tokens", pattern="[^a-zA-Z]+", minTokenLength=3),
        StopWordsRemover(inputCol="tokens", outputCol="words", stopWords=stop_words),
    ]
    if settings.method == "tfidf":
        stages += [
            CountVectorizer(
                inputCol="words", outputCol="tf", vocabSize=settings.vocab_size, minDF=float(settings.min_doc_freq)
            ),
            IDF(inputCol="tf", outputCol="text_vector"),
        ]
    else:
        stages.append(
            Word2Vec(
                inputCol="words",
                outputCol="text_vector",
                vectorSize=settings.vector_size,
                minCount=settings.min_doc_freq,
                seed=settings.seed,
                numPartitions=1,
                maxIter=5,
            )
        )
    stages.append(Normalizer(inputCol="text_vector", outputCol="text_unit", p=2.0))
    return Pipeline(stages=stages)


def _no_words() -> Column:
    """No vocabulary word in the description: an all-zero vector (cosine distance is undefined)."""
    return F.aggregate(vector_to_array(F.col("text_unit")), F.lit(0.0), lambda acc, x: acc + F.abs(x)) == 0


def assign(model: PipelineModel, products: DataFrame) -> DataFrame:
    """Apply a fitted text model: ``product_id``, ``description``, ``lines``, ``group_id``, ``words``."""
    text, clusters = PipelineModel(stages=model.stages[:-1]), model.stages[-1]
    vectors = text.transform(products).withColumn("_empty", _no_words())
    columns = ["product_id", "description", "lines", "group_id", "words"]
    grouped = clusters.transform(vectors.filter(~F.col("_empty"))).withColumn("group_id", F.col("group_id").cast("int"))
    empty = vectors.filter(F.col("_empty")).withColumn("group_id", F.lit(NO_WORDS_GROUP))
    return grouped.select(*columns).unionByName(empty.select(*columns))


def name_groups(assigned: DataFrame, top_words: int = 3) -> DataFrame:
    """``group_id`` -> ``group_name``: the group's most frequent words (by lines), joined by '/'."""
    counts = (
        assigned.filter(F.col("group_id") != NO_WORDS_GROUP)
        .select("group_id", "lines", F.explode(F.array_distinct("words")).alias("word"))
        .groupBy("group_id", "word")
        .agg(F.sum("lines").alias("weight"))
    )
    rank = Window.partitionBy("group_id").orderBy(F.desc("weight"), "word")
    top = counts.withColumn("rank", F.row_number().over(rank)).filter(F.col("rank") <= top_words)
    names = top.groupBy("group_id").agg(
        F.array_join(
            F.transform(F.array_sort(F.collect_list(F.struct("rank", "word"))), lambda s: s["word"]), "/"
        ).alias("group_name")
    )
    return names


def group_table(assigned: DataFrame, examples: int, model_path: str) -> DataFrame:
    """The product -> group table, with the ``examples`` most-bought products of each group ranked."""
    names = name_groups(assigned)
    by_lines = Window.partitionBy("group_id").orderBy(F.desc("lines"), "product_id")
    rank = F.row_number().over(by_lines)
    return (
        assigned.join(F.broadcast(names), "group_id", "left")
        .withColumn("group_name", F.coalesce("group_name", F.lit(NO_WORDS_NAME)))
        .withColumn("example_rank", F.when(rank <= examples, rank))
        .withColumn("model_path", F.lit(model_path))
        .select(*GROUP_COLUMNS)
    )


def fit_groups(
    products: DataFrame, settings: ProductGroupSettings, model_path: str = ""
) -> tuple[PipelineModel, DataFrame]:
    """Fit the text model on ``products`` (``product_catalogue``) and build the group table.

    ``model_path`` is where the caller saves the model; the table names it in every row.

    K-Means uses cosine distance: with Euclidean distance sparse TF-IDF vectors collapse
    into one giant group (measured on Online Retail: 3,508 of 4,070 products).
    """
    products = products.repartition(1, "product_id").sortWithinPartitions("product_id")  # same order, same fit
    text = text_pipeline(settings).fit(products)
    vectors = text.transform(products).filter(~_no_words()).cache()
    try:
        clusters = KMeans(
            featuresCol="text_unit",
            predictionCol="group_id",
            k=settings.groups,
            seed=settings.seed,
            maxIter=settings.max_iter,
            distanceMeasure="cosine",
        ).fit(vectors)
    finally:
        vectors.unpersist()
    model = PipelineModel(stages=[*text.stages, clusters])
    return model, group_table(assign(model, products), settings.examples, model_path)


def refresh_groups(store: TableStore, tx: DataFrame, settings: ProductGroupSettings) -> tuple[DataFrame, bool]:
    """Keep ``product_groups`` complete: fit it once (or on ``refit``), later only add new products.

    The fitted text model is saved beside the tables, in a folder of its own per fit that
    the table names, so later runs (and the table's earlier versions) assign new products
    with the model their groups came from.

    Returns:
        The product -> group table as stored, and whether the groups were (re)fitted now
        (then every day's categories change and the daily aggregates need a full refresh).
    """
    products = product_catalogue(tx)
    known = store.read(Table.PRODUCT_GROUPS) if store.exists(Table.PRODUCT_GROUPS) else None
    # A table written before each fit had its own folder names no model: it is refitted once.
    if settings.refit or known is None or "model_path" not in known.columns:
        log.info("product groups: fitting %s groups on product descriptions (%s)", settings.groups, settings.method)
        # A new folder per fit: the model of the table's previous version stays where that version says.
        model_path = store.model_path(f"product_groups-{uuid.uuid4().hex}")
        model, table = fit_groups(products, settings, model_path)
        model.write().save(model_path)
        store.overwrite(Table.PRODUCT_GROUPS, table)
        return store.read(Table.PRODUCT_GROUPS), True
    new = products.join(known.select("product_id"), "product_id", "left_anti")
    if new.limit(1).count():
        model_path = known.select("model_path").first()[0]  # type: ignore[index]
        model = PipelineModel.load(model_path)
        names = known.select("group_id", "group_name").distinct()
        added = (
            assign(model, new)
            .join(F.broadcast(names), "group_id", "left")
            .withColumn("group_name", F.coalesce("group_name", F.lit(NO_WORDS_NAME)))
            .withColumn("example_rank", F.lit(None).cast("int"))
            .withColumn("model_path", F.lit(model_path))
            .select(*GROUP_COLUMNS)
        )
        store.append(Table.PRODUCT_GROUPS, added)
        log.info("product groups: assigned new products to the existing groups")
    return store.read(Table.PRODUCT_GROUPS), False


def with_groups_as_categories(groups: DataFrame) -> Callable[[DataFrame], DataFrame]:
    """A transform that sets ``category`` to the product's group name (lines keep their columns)."""

    def _apply(lines: DataFrame) -> DataFrame:
        names = groups.select("product_id", F.col("group_name").alias("_group"))
        joined = lines.join(F.broadcast(names), "product_id", "left")
        return joined.withColumn("category", F.col("_group")).drop("_group").select(*lines.columns)

    return _apply


def needs_groups(tx: DataFrame, settings: ProductGroupSettings) -> bool:
    """Whether categories come from product groups: always, never, or (auto) when no line has one.

    Groups need words: without any product description there is nothing to group, so auto
    leaves the lines without categories.

    Raises:
        DataError: ``enabled`` is always and no line has a description.
    """
    if settings.enabled == "never":
        return False
    if settings.enabled == "auto" and tx.filter(F.col("category").isNotNull()).limit(1).count() > 0:
        return False
    if tx.filter(F.length(F.trim(F.col("description"))) > 0).limit(1).count() > 0:
        return True
    if settings.enabled == "always":
        raise DataError(
            "features.product_groups.enabled is always, but no clean transaction line has a product description "
            "to group products by: map sources.transactions.columns.description to the description column, "
            "or set features.product_groups.enabled to auto"
        )
    log.info("product groups: no line has a category or a description; the lines keep no category")
    return False
