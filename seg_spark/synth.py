"""Synthetic transaction logs with planted customer archetypes, generated inside Spark.

Every random draw is a hash of (seed, purpose, row keys) turned into a uniform number,
so the output is identical for a seed whatever the partitioning or the cluster, and no
row is ever built on the driver: customers come from ``spark.range`` and orders and
lines from ``explode(sequence(...))``.

Real-log mess is injected at configurable rates (``GeneratorSettings.mess``):
returns/cancellations (an extra line on a ``C``-prefixed order with negative quantity),
missing customer ids, exact duplicate lines, zero or negative prices and timestamps far
in the future.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from seg_spark.clock import Clock
from seg_spark.config import DemoSettings, GeneratorSettings, Settings, SourceSettings

log = logging.getLogger(__name__)

CATEGORIES: tuple[str, ...] = ("grocery", "home", "fashion", "electronics", "beauty", "toys")
CHANNELS: tuple[str, ...] = ("web", "store", "app")
COUNTRIES: tuple[tuple[str, float], ...] = (
    ("United Kingdom", 0.55),
    ("Germany", 0.12),
    ("France", 0.11),
    ("Netherlands", 0.08),
    ("Spain", 0.07),
    ("Ireland", 0.07),
)
# Two words per category so product descriptions carry the category (issue: text groups).
PRODUCT_NOUNS: dict[str, tuple[str, ...]] = {
    "grocery": ("coffee beans", "green tea", "olive oil", "dark chocolate", "pasta"),
    "home": ("candle holder", "cushion cover", "storage box", "wall clock", "tea towel"),
    "fashion": ("cotton scarf", "leather belt", "wool socks", "denim jacket", "sun hat"),
    "electronics": ("usb cable", "phone charger", "bluetooth speaker", "headphones", "power bank"),
    "beauty": ("face cream", "lip balm", "shampoo bar", "body lotion", "nail polish"),
    "toys": ("wooden puzzle", "toy car", "plush bear", "building blocks", "card game"),
}
ADJECTIVES: tuple[str, ...] = ("red", "blue", "vintage", "large", "small", "classic", "organic", "deluxe")
PRODUCTS_PER_CATEGORY = 40
CUSTOMERS_PER_PARTITION = 20_000
_TWO_53 = float(1 << 53)


@dataclass(frozen=True)
class Archetype:
    """One planted behaviour. Times are fractions of the generated window before its end."""

    name: str
    weight: float
    first_purchase: tuple[float, float]
    last_purchase: tuple[float, float]
    orders_per_year: float
    lines_per_order: float
    max_quantity: int
    price_level: float
    discount_share: float
    channels: tuple[float, float, float]
    categories: tuple[float, ...]
    peak_hour: int


ARCHETYPES: tuple[Archetype, ...] = (
    Archetype(
        "loyal_high_value", 0.12, (0.7, 1.0), (0.0, 0.03), 30, 6, 3, 1.8, 0.05, (0.4, 0.3, 0.3), (1, 2, 3, 3, 2, 1), 19
    ),
    Archetype(
        "frequent_low_basket",
        0.18,
        (0.6, 1.0),
        (0.0, 0.02),
        80,
        1.5,
        2,
        0.5,
        0.02,
        (0.1, 0.6, 0.3),
        (6, 1, 1, 0.5, 2, 0.5),
        8,
    ),
    Archetype(
        "bargain_hunter", 0.20, (0.5, 1.0), (0.02, 0.15), 10, 3, 4, 0.35, 0.6, (0.7, 0.1, 0.2), (2, 3, 3, 1, 2, 2), 21
    ),
    Archetype(
        "occasional_big_basket",
        0.15,
        (0.5, 1.0),
        (0.05, 0.3),
        3,
        14,
        6,
        1.6,
        0.05,
        (0.3, 0.6, 0.1),
        (1, 4, 2, 3, 1, 2),
        14,
    ),
    Archetype(
        "new_customer", 0.15, (0.0, 0.1), (0.0, 0.05), 20, 4, 3, 1.0, 0.1, (0.4, 0.2, 0.4), (2, 2, 2, 2, 2, 2), 12
    ),
    Archetype("lapsing", 0.20, (0.6, 1.0), (0.45, 0.8), 12, 4, 3, 1.0, 0.1, (0.4, 0.4, 0.2), (2, 2, 2, 2, 2, 2), 17),
)


@dataclass(frozen=True)
class GeneratedLog:
    """The two DataFrames of a generated log (lazy; nothing is computed yet)."""

    transactions: DataFrame
    truth: DataFrame


def uniform(seed: int, purpose: str, *keys: Column) -> Column:
    """A deterministic uniform number in [0, 1) from a hash of the seed, purpose and keys."""
    hashed = F.xxhash64(F.lit(seed), F.lit(purpose), *keys)
    return F.pmod(hashed, F.lit(1 << 53)).cast("double") / F.lit(_TWO_53)


def _pick(cumulative: Column, u: Column) -> Column:
    """Index (0-based) of the bucket that ``u`` falls into, given cumulative weights."""
    return F.size(F.filter(cumulative, lambda c: c <= u))


def _cumulative(weights: tuple[float, ...]) -> list[float]:
    total = float(sum(weights))
    acc, out = 0.0, []
    for w in weights[:-1]:
        acc += w / total
        out.append(acc)
    return out


def _archetype_table(spark: SparkSession) -> DataFrame:
    rows = [
        (
            i,
            a.name,
            a.first_purchase[0],
            a.first_purchase[1],
            a.last_purchase[0],
            a.last_purchase[1],
            float(a.orders_per_year),
            float(a.lines_per_order),
            a.max_quantity,
            a.price_level,
            a.discount_share,
            _cumulative(a.channels),
            _cumulative(a.categories),
            a.peak_hour,
        )
        for i, a in enumerate(ARCHETYPES)
    ]
    schema = (
        "archetype_id int, archetype string, first_lo double, first_hi double, last_lo double, "
        "last_hi double, orders_per_year double, lines_per_order double, max_quantity int, "
        "price_level double, discount_share double, channel_cum array<double>, "
        "category_cum array<double>, peak_hour int"
    )
    return spark.createDataFrame(rows, schema)


def _end_epoch(end: date) -> int:
    return int(datetime(end.year, end.month, end.day, tzinfo=UTC).timestamp())


def generate(spark: SparkSession, settings: GeneratorSettings) -> GeneratedLog:
    """Build the synthetic transaction log and its ground truth (lazily).

    Args:
        spark: The session to build in.
        settings: Size, seed, window end and mess rates.

    Returns:
        The transaction lines and the per-customer planted archetype.
    """
    seed, days = settings.seed, settings.days
    end = settings.end_date or Clock().today()
    end_epoch = _end_epoch(end)
    partitions = max(1, settings.customers // CUSTOMERS_PER_PARTITION)

    weights = _cumulative(tuple(a.weight for a in ARCHETYPES))
    country_cum = _cumulative(tuple(w for _, w in COUNTRIES))
    cust = F.col("cust_idx")

    customers = (
        spark.range(0, settings.customers, numPartitions=partitions)
        .withColumnRenamed("id", "cust_idx")
        .withColumn(
            "archetype_id",
            _pick(F.array(*[F.lit(w) for w in weights]), uniform(seed, "archetype", cust)).cast("int"),
        )
        .join(F.broadcast(_archetype_table(spark)), "archetype_id")
        .withColumn("customer_id", F.format_string("%08d", cust + F.lit(10_000_000)))
        .withColumn(
            "country",
            F.element_at(
                F.array(*[F.lit(c) for c, _ in COUNTRIES]),
                _pick(F.array(*[F.lit(w) for w in country_cum]), uniform(seed, "country", cust)) + 1,
            ),
        )
    )
    truth = customers.select("customer_id", "archetype_id", "archetype")

    first_ago = F.lit(float(days)) * (
        F.col("first_lo") + uniform(seed, "first", cust) * (F.col("first_hi") - F.col("first_lo"))
    )
    last_ago = F.least(
        first_ago,
        F.lit(float(days)) * (F.col("last_lo") + uniform(seed, "last", cust) * (F.col("last_hi") - F.col("last_lo"))),
    )
    spans = customers.withColumn("first_ago", first_ago).withColumn("last_ago", last_ago)
    n_orders = F.greatest(
        F.lit(1),
        F.round(
            F.col("orders_per_year")
            * (F.col("first_ago") - F.col("last_ago"))
            / 365.0
            * (F.lit(0.5) + uniform(seed, "n_orders", cust))
        ).cast("int"),
    )
    order_key = (cust, F.col("order_no"))
    orders = (
        spans.withColumn("order_no", F.explode(F.sequence(F.lit(0), n_orders - 1)))
        .withColumn(
            "days_ago",
            F.floor(
                F.col("last_ago") + uniform(seed, "order_day", *order_key) * (F.col("first_ago") - F.col("last_ago"))
            ),
        )
        .withColumn(
            "hour",
            F.pmod(F.col("peak_hour") + F.floor(uniform(seed, "hour", *order_key) * 7) - 3, F.lit(24)),
        )
        .withColumn(
            "epoch",
            F.lit(end_epoch)
            - (F.col("days_ago") + 1) * 86_400
            + F.col("hour") * 3_600
            + F.floor(uniform(seed, "second", *order_key) * 3_600),
        )
        .withColumn("order_id", (cust * 100_000 + F.col("order_no") + 500_000).cast("string"))
        .withColumn(
            "channel",
            F.element_at(
                F.array(*[F.lit(c) for c in CHANNELS]),
                _pick(F.col("channel_cum"), uniform(seed, "channel", *order_key)) + 1,
            ),
        )
    )
    n_lines = F.greatest(
        F.lit(1), F.round(F.col("lines_per_order") * (F.lit(0.5) + uniform(seed, "n_lines", *order_key))).cast("int")
    )
    line_key = (cust, F.col("order_no"), F.col("line_no"))
    category_idx = _pick(F.col("category_cum"), uniform(seed, "category", *line_key))
    product_no = F.floor(uniform(seed, "product", *line_key) * PRODUCTS_PER_CATEGORY).cast("int")
    noun_table = F.array(*[F.array(*[F.lit(n) for n in PRODUCT_NOUNS[c]]) for c in CATEGORIES])
    lines = (
        orders.withColumn("line_no", F.explode(F.sequence(F.lit(0), n_lines - 1)))
        .withColumn("category_idx", category_idx)
        .withColumn("product_no", product_no)
        .withColumn("category", F.element_at(F.array(*[F.lit(c) for c in CATEGORIES]), F.col("category_idx") + 1))
        .withColumn(
            "product_id", F.format_string("%s-%03d", F.upper(F.substring("category", 1, 3)), F.col("product_no"))
        )
        .withColumn(
            "description",
            F.upper(
                F.concat_ws(
                    " ",
                    F.element_at(
                        F.array(*[F.lit(a) for a in ADJECTIVES]),
                        F.pmod(F.col("product_no"), F.lit(len(ADJECTIVES))) + 1,
                    ),
                    F.element_at(
                        F.element_at(noun_table, F.col("category_idx") + 1),
                        F.pmod(F.col("product_no"), F.lit(5)) + 1,
                    ),
                )
            ),
        )
        .withColumn(
            "unit_price",
            F.round(
                (F.lit(1.0) + uniform(seed, "base_price", F.col("product_id")) * 19.0)
                * F.col("price_level")
                * (F.lit(0.9) + uniform(seed, "price_noise", *line_key) * 0.2),
                2,
            ),
        )
        .withColumn(
            "quantity",
            (F.lit(1) + F.floor(uniform(seed, "quantity", *line_key) * F.col("max_quantity"))).cast("double"),
        )
        .withColumn(
            "discount",
            F.when(
                uniform(seed, "discount", *line_key) < F.col("discount_share"),
                F.round(
                    F.col("unit_price") * F.col("quantity") * (0.1 + uniform(seed, "discount_pct", *line_key) * 0.3), 2
                ),
            ).otherwise(F.lit(0.0)),
        )
    )

    mess = settings.mess
    u_bad_price = uniform(seed, "bad_price", *line_key)
    messy = (
        lines.withColumn(
            "customer_id",
            F.when(uniform(seed, "missing_customer", *line_key) < mess.missing_customer_id, F.lit(None)).otherwise(
                F.col("customer_id")
            ),
        )
        .withColumn(
            "unit_price",
            F.when(u_bad_price < mess.bad_price / 2, F.lit(0.0))
            .when(u_bad_price < mess.bad_price, -F.col("unit_price"))
            .otherwise(F.col("unit_price")),
        )
        .withColumn(
            "epoch",
            F.when(
                uniform(seed, "future", *line_key) < mess.future_timestamp,
                # Clock errors far ahead (400 days to 4 years): future for any run near the window.
                F.lit(end_epoch) + F.floor((F.lit(400) + uniform(seed, "future_days", *line_key) * 1060) * 86_400),
            ).otherwise(F.col("epoch")),
        )
        # variant 0: the line itself; 1: its later return; 2: an exact duplicate of it.
        .withColumn(
            "variant",
            F.explode(
                F.filter(
                    F.array(F.lit(0), F.lit(1), F.lit(2)),
                    lambda v: (
                        (v == 0)
                        | ((v == 1) & (uniform(seed, "return", *line_key) < mess.returns))
                        | ((v == 2) & (uniform(seed, "duplicate", *line_key) < mess.duplicates))
                    ),
                )
            ),
        )
    )
    is_return = F.col("variant") == 1
    returned_at = F.col("epoch") + F.floor((F.lit(1) + uniform(seed, "return_lag", *line_key) * 13) * 86_400)
    transactions = messy.select(
        F.when(is_return, F.concat(F.lit("C"), F.col("order_id"))).otherwise(F.col("order_id")).alias("order_id"),
        "customer_id",
        F.timestamp_seconds(
            F.when(
                is_return,
                # A return follows its sale by 1-14 days but stays inside the window.
                F.when(F.col("epoch") < end_epoch, F.least(returned_at, F.lit(end_epoch - 1))).otherwise(returned_at),
            ).otherwise(F.col("epoch"))
        ).alias("ts"),
        "product_id",
        "description",
        "category",
        "channel",
        F.when(is_return, -F.col("quantity")).otherwise(F.col("quantity")).alias("quantity"),
        "unit_price",
        F.when(is_return, F.lit(0.0)).otherwise(F.col("discount")).alias("discount"),
        "country",
    )
    return GeneratedLog(transactions=transactions, truth=truth)


def write_generated(
    spark: SparkSession,
    settings: GeneratorSettings,
    out: str,
    fmt: str = "parquet",
) -> dict[str, str]:
    """Generate a log and write it under ``out`` (``transactions/`` and ``truth/``).

    Args:
        spark: The session to generate with.
        settings: Generator settings.
        out: Output folder; existing output there is replaced.
        fmt: ``parquet``, ``csv``, ``json`` or ``delta`` for the transactions.

    Returns:
        The paths written, by name.
    """
    generated = generate(spark, settings)
    paths = {"transactions": f"{out.rstrip('/')}/transactions", "truth": f"{out.rstrip('/')}/truth"}
    writer = generated.transactions.write.mode("overwrite").format(fmt)
    if fmt == "csv":
        writer = writer.option("header", "true")
    log.info("generating %s customers over %s days into %s (%s)", settings.customers, settings.days, out, fmt)
    writer.save(paths["transactions"])
    generated.truth.write.mode("overwrite").parquet(paths["truth"])
    return paths


def is_demo(settings: Settings) -> bool:
    """Whether the run uses the generated demo log (no transaction source configured)."""
    source = settings.sources.transactions
    return source.path is None and source.table is None


def demo_paths(demo: DemoSettings) -> dict[str, str]:
    """Where the demo log's ``transactions`` and ``truth`` (planted archetypes) are written."""
    out = Path(demo.out).expanduser().resolve()
    return {"transactions": str(out / "transactions"), "truth": str(out / "truth")}


def ensure_demo_log(spark: SparkSession, demo: DemoSettings, today: date) -> SourceSettings:
    """Generate the demo log (once per generator settings) and describe it as a source.

    Args:
        spark: The session.
        demo: The ``demo`` section.
        today: The run's current date: the log ends the day before, unless ``end_date`` is set.

    Returns:
        The source settings for the generated transactions.
    """
    out = Path(demo.out).expanduser().resolve()
    generator = demo.generator
    if generator.end_date is None:
        generator = generator.model_copy(update={"end_date": today})
    marker = out / "_generator.json"
    wanted = generator.model_dump_json()
    if marker.is_file() and marker.read_text() == wanted:
        log.info("no transaction source configured: reusing the demo log in %s", out)
    else:
        log.info("no transaction source configured: generating a demo log in %s", out)
        write_generated(spark, generator, str(out))
        marker.write_text(wanted)
    return SourceSettings(path=demo_paths(demo)["transactions"], format="parquet")
