"""Typed, strict configuration.

YAML files are deep-merged in order (an overlay names its base with ``extends:``,
resolved next to the overlay, so ``conf/local.yaml`` pulls in ``conf/base.yaml``), then
``--set dotted.key=value`` overrides are applied, then the result is validated into
frozen pydantic models that reject unknown keys. Every error names the key path, the
bad value and what is allowed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from seg_spark.catalogue import DYNAMIC_PATTERNS, feature_names, is_known_feature
from seg_spark.errors import ConfigError


def _spark_str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _spark_options(value: Any) -> Any:
    """YAML gives booleans and numbers; Spark options are strings ('true', '4')."""
    if isinstance(value, Mapping):
        return {str(k): _spark_str(v) for k, v in value.items()}
    return value


SparkOptions = Annotated[dict[str, str], BeforeValidator(_spark_options)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SparkSettings(_Strict):
    """How the SparkSession is obtained.

    Under spark-submit or on Databricks the given session and master are reused and
    ``master``/``delta_packages`` are ignored; everything in ``conf`` is still applied.
    """

    app_name: str = "seg-spark"
    master: str | None = Field(
        default=None,
        description="Master for the embedded default; null means local[*]. "
        "Never applied when a master is already given (spark-submit, Databricks).",
    )
    shuffle_partitions: int | None = Field(
        default=None, ge=1, description="null: 4 x cores in local mode (AQE coalesces)."
    )
    ui_enabled: bool = False
    delta_packages: bool = Field(
        default=True,
        description="Resolve the Delta Lake JARs from Maven Central (cached in ~/.ivy2*) "
        "when seg-spark starts Spark itself.",
    )
    driver_memory: str | None = "4g"
    log_level: str = "WARN"
    conf: SparkOptions = Field(default_factory=dict, description="Any extra spark.* settings.")


class StorageSettings(_Strict):
    """Where Delta tables live: ``<root>/<table name>``."""

    root: str = "./seg-spark-local/warehouse"
    database: str | None = Field(
        default=None,
        description="When set, tables are also registered in this catalog database "
        "so SQL consumers can query them by name.",
    )
    retention_hours: int = Field(
        default=168,
        ge=0,
        description="seg-spark maintain deletes files no version younger than this needs "
        "(time travel reaches back this far; Delta's default is 168).",
    )
    maintain_after_run: bool = Field(
        default=False, description="Compact and vacuum every table after each successful run."
    )
    commit_retries: int = Field(
        default=3,
        ge=0,
        description="A commit that conflicts with another writer's (Delta's optimistic concurrency) is retried "
        "this many times, after a short pause, before the run fails naming the table and the other writer.",
    )


class TableNames(_Strict):
    """Table names under ``storage.root`` (and in ``storage.database`` when set)."""

    transactions_clean: str = "transactions_clean"
    transactions_quarantine: str = "transactions_quarantine"
    data_quality: str = "data_quality"
    customer_profiles: str = "customer_profiles"
    events_clean: str = "events_clean"
    customer_daily: str = "customer_daily"
    feature_refresh_log: str = "feature_refresh_log"
    customer_state: str = "customer_state"
    product_groups: str = "product_groups"
    customer_features: str = "customer_features"
    segment_assignments: str = "segment_assignments"
    model_selection: str = "model_selection"
    segment_hierarchy: str = "segment_hierarchy"
    customer_segments: str = "customer_segments"
    segments: str = "segments"
    segment_migration: str = "segment_migration"
    segment_membership_history: str = "segment_membership_history"
    segments_current: str = "segments_current"
    pipeline_runs: str = "pipeline_runs"
    forget_log: str = "forget_log"
    customer_scores: str = "customer_scores"
    segment_scores: str = "segment_scores"
    clv_parameters: str = "clv_parameters"
    churn_evaluation: str = "churn_evaluation"
    segment_profiles: str = "segment_profiles"


class TrackingSettings(_Strict):
    """MLflow: where runs and models are recorded."""

    enabled: bool = True
    tracking_uri: str | None = Field(
        default="./seg-spark-local/mlruns",
        description="MLflow tracking URI or local folder; null keeps MLflow's own default "
        "(e.g. 'databricks' inside a Databricks job).",
    )
    experiment: str = "seg-spark"
    log_model: bool = True
    register_model: bool = Field(
        default=True, description="Register the logged model under model.name in the registry."
    )


CANONICAL_COLUMNS: tuple[str, ...] = (
    "customer_id",
    "order_id",
    "ts",
    "product_id",
    "description",
    "category",
    "channel",
    "quantity",
    "unit_price",
    "amount",
    "currency",
    "discount",
    "country",
)


class ColumnMapping(_Strict):
    """Canonical column -> the source's own column name (null: not in the source)."""

    customer_id: str = "customer_id"
    order_id: str | None = "order_id"
    ts: str = "ts"
    product_id: str | None = "product_id"
    description: str | None = "description"
    category: str | None = "category"
    channel: str | None = "channel"
    quantity: str | None = "quantity"
    unit_price: str | None = "unit_price"
    amount: str | None = None
    currency: str | None = None
    discount: str | None = "discount"
    country: str | None = "country"
    status: str | None = Field(default=None, description="Order/line status column, for return detection.")

    @classmethod
    def only(cls, customer_id: str, ts: str, **columns: str) -> ColumnMapping:
        """A mapping of just these columns; every other canonical column is absent (null)."""
        absent = {name: None for name in cls.model_fields if name not in ("customer_id", "ts")}
        return cls(customer_id=customer_id, ts=ts, **{**absent, **columns})


class ProfileMapping(_Strict):
    """Customer-profile columns: canonical name -> the source's column (null: absent)."""

    customer_id: str = "customer_id"
    age_band: str | None = None
    gender: str | None = None
    signup_date: str | None = None
    country: str | None = None
    region: str | None = None
    city: str | None = None


class EventMapping(_Strict):
    """Web/app event columns: canonical name -> the source's column (null: absent)."""

    customer_id: str = "customer_id"
    ts: str = "ts"
    session_id: str | None = "session_id"
    event_type: str | None = "event_type"


class SourceBase(_Strict):
    """What every source has: location, format, reader options, malformed-line and PII handling."""

    path: str | None = Field(default=None, description="File, folder (partitioned or not) or glob.")
    table: str | None = Field(default=None, description="Catalog table name instead of a path (e.g. Delta).")
    format: Literal["csv", "parquet", "json", "delta"] = "parquet"
    options: SparkOptions = Field(
        default_factory=dict,
        description="Spark reader options, e.g. {sep: ';', encoding: ISO-8859-1, header: true}.",
    )
    timestamp_format: str | None = Field(default=None, description="Spark datetime pattern for string timestamps.")
    on_malformed: Literal["quarantine", "fail"] = Field(
        default="quarantine",
        description="CSV/JSON lines that cannot be parsed: quarantine them, or fail the run naming the line.",
    )
    drop_columns: tuple[str, ...] = Field(
        default=(), description="PII columns dropped at ingestion, before anything is written."
    )

    @property
    def location(self) -> str:
        """Where the source is, for messages."""
        return self.table or self.path or "<not configured>"


class SourceSettings(SourceBase):
    """The transaction log: where it is, how to read it and how its columns map to ours.

    ``path`` null (and no ``table``): a demo log is generated (see ``demo``).
    """

    columns: ColumnMapping = Field(default_factory=ColumnMapping)
    mode: Literal["snapshot", "append"] = Field(
        default="snapshot",
        description="snapshot: the source holds the whole history and replaces transactions_clean; "
        "append: the source holds new rows (new days, late rows for old days) added to transactions_clean.",
    )


class ProfileSourceSettings(SourceBase):
    """Optional customer profiles (demographics, geography), one row per customer."""

    columns: ProfileMapping = Field(default_factory=ProfileMapping)


class EventSourceSettings(SourceBase):
    """Optional web/app events (sessions, page views)."""

    columns: EventMapping = Field(default_factory=EventMapping)


class SourcesSettings(_Strict):
    """The input sources; only the transaction log is required."""

    transactions: SourceSettings = Field(default_factory=SourceSettings)
    profiles: ProfileSourceSettings | None = None
    events: EventSourceSettings | None = None


class MessRates(_Strict):
    """Share of generated lines that get each kind of real-world mess."""

    returns: float = Field(default=0.02, ge=0, le=0.5)
    missing_customer_id: float = Field(default=0.01, ge=0, le=0.5)
    duplicates: float = Field(default=0.005, ge=0, le=0.5)
    bad_price: float = Field(default=0.003, ge=0, le=0.5)
    future_timestamp: float = Field(default=0.001, ge=0, le=0.5)


class GeneratorSettings(_Strict):
    """The synthetic log: size, seed, window and mess."""

    customers: int = Field(default=3000, ge=1)
    days: int = Field(default=365, ge=1)
    seed: int = 42
    end_date: date | None = Field(
        default=None, description="Last day of the log is the day before this; null: today (UTC)."
    )
    mess: MessRates = Field(default_factory=MessRates)


class DemoSettings(_Strict):
    """Used when no transaction source is configured: a log is generated first."""

    out: str = "./seg-spark-local/demo"
    generator: GeneratorSettings = Field(default_factory=GeneratorSettings)


class NonProductRules(_Strict):
    """Lines that are not product sales (postage, fees, bad-debt adjustments)."""

    product_ids: tuple[str, ...] = Field(default=(), description="Exact product ids, e.g. [POST, BANK CHARGES].")
    product_id_pattern: str | None = Field(default=None, description="Java regex on the product id.")
    description_pattern: str | None = Field(default=None, description="Java regex on the description.")
    order_id_prefixes: tuple[str, ...] = Field(default=(), description="e.g. [A] for bad-debt adjustments.")


class OutlierRule(_Strict):
    """Flag (never drop) clean lines whose absolute value is extreme."""

    enabled: bool = True
    column: Literal["amount", "quantity", "unit_price"] = "amount"
    quantile: float = Field(default=0.999, gt=0, lt=1)
    multiplier: float = Field(default=10.0, gt=0, description="Flag |value| > multiplier x quantile of |value|.")


class Thresholds(_Strict):
    """Fail the run, before any model is touched, when the data looks this bad."""

    max_quarantined_share: float = Field(default=0.5, ge=0, le=1)
    max_rule_share: dict[str, float] = Field(
        default_factory=dict, description="Per reason code, e.g. {missing_customer_id: 0.3}."
    )
    min_clean_rows: int = Field(default=1, ge=0)
    min_clean_customers: int = Field(default=1, ge=0)


class QualitySettings(_Strict):
    """Cleaning rules applied at ingestion."""

    drop_exact_duplicates: bool = True
    clock: datetime | None = Field(
        default=None, description="The time the run treats as now (UTC); null: the wall clock."
    )
    future_tolerance_hours: float = Field(
        default=0.0, ge=0, description="Timestamps later than the run's clock + this are rejected."
    )
    min_timestamp: date | None = Field(default=date(1990, 1, 1))
    cancellation_prefix: str | None = Field(
        default="C", description="Order ids starting with this are returns/cancellations."
    )
    return_statuses: tuple[str, ...] = Field(
        default=("returned", "cancelled", "canceled", "refunded"),
        description="Values of the mapped status column (case-insensitive) that mark a return.",
    )
    non_product: NonProductRules = Field(default_factory=NonProductRules)
    outliers: OutlierRule = Field(default_factory=OutlierRule)
    thresholds: Thresholds = Field(default_factory=Thresholds)


class PrivacySettings(_Strict):
    """Pseudonymisation of customer ids with a keyed hash (HMAC-SHA256)."""

    pseudonymise_customer_id: bool = False
    key_env: str = Field(
        default="SEG_SPARK_PSEUDONYM_KEY",
        description="Environment variable holding the key; the key itself is never written anywhere.",
    )


FeatureFamily = Literal["rfm", "value", "cadence", "mix", "trend"]


class MixSettings(_Strict):
    """Category and channel shares."""

    top_categories: int = Field(default=8, ge=1, description="Categories with a share column; the rest is 'other'.")
    categories: tuple[str, ...] | None = Field(
        default=None, description="Fixed category list instead of the top ones by spend (keeps columns stable)."
    )
    top_channels: int = Field(default=4, ge=1, description="Channels with a share column; the rest is 'other'.")


class ProductGroupSettings(_Strict):
    """Product groups derived from descriptions when the source has no category column."""

    enabled: Literal["auto", "always", "never"] = Field(
        default="auto", description="auto: only when no transaction has a category."
    )
    method: Literal["tfidf", "word2vec"] = "tfidf"
    groups: int = Field(default=12, ge=2)
    vocab_size: int = Field(default=2000, ge=10)
    min_doc_freq: int = Field(default=2, ge=1, description="A word must occur in this many products.")
    vector_size: int = Field(default=32, ge=2, description="word2vec only.")
    extra_stop_words: tuple[str, ...] = Field(default=(), description="Words ignored besides English stop words.")
    examples: int = Field(default=5, ge=1, description="Example products marked per group.")
    max_iter: int = Field(default=30, ge=1)
    seed: int = 42
    refit: bool = Field(
        default=False, description="Refit the groups; otherwise known products keep theirs and new ones are assigned."
    )


class FeatureSettings(_Strict):
    """Feature computation."""

    as_of_date: date | None = Field(
        default=None,
        description="Features use events strictly before this date. null: the day after the last clean transaction.",
    )
    families: tuple[FeatureFamily, ...] = Field(
        default=("rfm", "value", "cadence", "mix", "trend"), description="Feature families computed."
    )
    windows_days: tuple[int, ...] = Field(
        default=(30, 90), description="Recent windows (days) for spend and trends; each is compared to the one before."
    )
    refresh: Literal["incremental", "full"] = Field(
        default="incremental",
        description="incremental: re-aggregate only the days of transactions_clean that changed since the last run.",
    )
    mix: MixSettings = Field(default_factory=MixSettings)
    product_groups: ProductGroupSettings = Field(default_factory=ProductGroupSettings)

    @field_validator("windows_days")
    @classmethod
    def _positive_windows(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(w < 1 for w in value) or len(set(value)) != len(value):
            raise ValueError("give one or more distinct positive numbers of days, e.g. [30, 90]")
        return tuple(sorted(value))

    @field_validator("families")
    @classmethod
    def _rfm_required(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if "rfm" not in value:
            raise ValueError("the rfm family is always needed (recency, frequency, monetary identify the customers)")
        return value


RFM_FEATURES: tuple[str, ...] = (
    "recency_days",
    "frequency",
    "monetary",
    "avg_order_value",
    "tenure_days",
)


class PrepSettings(_Strict):
    """Preparation of the features for clustering (saved in the model pipeline)."""

    impute: Literal["median", "mean"] = Field(default="median", description="Fills missing values per feature.")
    log1p_features: tuple[str, ...] = Field(
        default=("recency_days", "frequency", "monetary", "avg_order_value", "tenure_days"),
        description="Skewed money and count features: log1p(max(x, 0)).",
    )
    winsorize: tuple[float, float] | None = Field(
        default=(0.01, 0.99), description="Clip each feature to these quantiles (after log1p); null: no clipping."
    )
    quantile_error: float = Field(default=0.001, gt=0, lt=1, description="approxQuantile relative error.")
    scaler: Literal["standard", "robust", "none"] = "standard"
    drop_zero_variance: bool = True
    max_abs_correlation: float | None = Field(
        default=0.98, gt=0, le=1, description="Of two features correlated beyond this, the later one is dropped."
    )
    pca_components: int | None = Field(default=None, ge=1, description="Project onto this many components.")

    @field_validator("winsorize")
    @classmethod
    def _quantile_pair(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0 <= value[0] < value[1] <= 1:
            raise ValueError("give [lower, upper] quantiles with 0 <= lower < upper <= 1, e.g. [0.01, 0.99]")
        return value


Algorithm = Literal["kmeans", "bisecting_kmeans", "gaussian_mixture"]


class SelectionSettings(_Strict):
    """Model selection: sweep k (and algorithms) on a sample and pick a winner."""

    enabled: bool = Field(default=True, description="false: fit model.algorithm with model.k directly.")
    k_min: int = Field(default=2, ge=2)
    k_max: int = Field(default=10, ge=2)
    algorithms: tuple[Algorithm, ...] = Field(default=(), description="Algorithms swept; empty: only model.algorithm.")
    rule: Literal["silhouette", "calinski_harabasz", "davies_bouldin", "bic", "elbow"] = Field(
        default="silhouette",
        description="Best silhouette / Calinski-Harabasz (highest), Davies-Bouldin / BIC (lowest, BIC: GMM only), "
        "or the WSSSE elbow, among candidates whose smallest segment is at least min_segment_share.",
    )
    min_segment_share: float = Field(default=0.02, ge=0, lt=1)
    sample_rows: int = Field(
        default=200_000, ge=100, description="Customers in the selection sample (stratified by activity)."
    )
    strata: int = Field(default=5, ge=1, description="Activity bands (frequency quantiles) the sample is drawn from.")
    rows_per_partition: int = Field(
        default=100_000,
        ge=1,
        description="Sample rows per partition (at most one partition per core): each K-Means iteration is a "
        "job with one task per partition, and on a small sample the tasks cost more than the arithmetic.",
    )

    @model_validator(mode="after")
    def _range(self) -> SelectionSettings:
        if self.k_max < self.k_min:
            raise ValueError(f"k_max ({self.k_max}) must be at least k_min ({self.k_min})")
        return self


class StabilitySettings(_Strict):
    """Bootstrap stability of the chosen model."""

    bootstraps: int = Field(default=5, ge=0, description="Refits on bootstrap resamples of the sample; 0: skip.")
    min_jaccard: float = Field(
        default=0.6, ge=0, le=1, description="Segments whose mean best Jaccard overlap is below this are flagged."
    )


class ModelSettings(_Strict):
    """The segmentation model."""

    name: str = "seg-spark-segments"
    algorithm: Algorithm = Field(
        default="kmeans", description="kmeans (k-means|| init) | bisecting_kmeans | gaussian_mixture."
    )
    k: int = Field(default=6, ge=2, description="Segments when selection is off (else chosen by the sweep).")
    max_iter: int = Field(default=50, ge=1)
    tol: float = Field(default=1e-4, ge=0)
    seed: int = 42
    min_divisible_cluster_size: float = Field(
        default=1.0, gt=0, description="bisecting_kmeans: smallest cluster split (count, or share if < 1)."
    )
    gmm_regularization: float = Field(
        default=0.05,
        ge=0,
        description="gaussian_mixture: std of a deterministic jitter added to the prepared (unit-spread) vectors "
        "before fitting, so point masses (e.g. every one-order customer) cannot collapse a component onto a "
        "singular covariance; 0: off (collapses are then rejected).",
    )
    gmm_restarts: int = Field(
        default=3,
        ge=1,
        description="gaussian_mixture: fits from different random starts (seeds seed, seed+1, ...); the one "
        "with the highest log-likelihood is kept, as MLlib starts a mixture from random points, not k-means.",
    )
    kmeans_restarts: int = Field(
        default=3,
        ge=1,
        description="kmeans: starts per fit (k-means++ on the driver for the selection sample, k-means|| in "
        "MLlib); the one with the lowest within-segment sum of squares is kept, as one start can end in a poor "
        "local optimum.",
    )
    fit_timeout_seconds: float = Field(
        default=1800, gt=0, description="Wall-clock limit per fit attempt; an attempt over it is cancelled."
    )
    fit_attempts: int = Field(
        default=2,
        ge=1,
        description="Attempts per fit: one past fit_timeout_seconds is cancelled (its JVM task threads logged) "
        "and the same seeded fit started again, as a fit that long has usually stopped progressing; after the "
        "last the candidate is rejected (or the run fails, for the final fit).",
    )
    parallel_fits: int = Field(
        default=2,
        ge=1,
        description="MLlib fits run at once: model-selection candidates and stability refits of bisecting "
        "K-Means and mixtures, the K-Means starts of an MLlib fit (Spark runs the jobs of several driver threads "
        "side by side): a fit on a bounded sample is many short jobs that leave cores idle. The results do not "
        "depend on it.",
    )
    features: tuple[str, ...] = Field(
        default=RFM_FEATURES,
        description="Feature columns (see docs/FEATURES.md); globs like cat_*_share select dynamic ones.",
    )
    min_customers_per_segment: int = Field(
        default=5,
        ge=1,
        description="A segmentation with fewer customers than this per segment (customers < k x this) is refused: "
        "nothing is registered or published.",
    )
    validation_label: str | None = Field(
        default=None,
        description="A customer_features column holding known labels (e.g. a profile_* column) to score the "
        "segments against (adjusted Rand, homogeneity, completeness, V-measure); the demo uses its planted truth.",
    )
    prep: PrepSettings = Field(default_factory=PrepSettings)
    selection: SelectionSettings = Field(default_factory=SelectionSettings)
    stability: StabilitySettings = Field(default_factory=StabilitySettings)


class RunSettings(_Strict):
    """Identity of one run."""

    run_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$",
        description="null: a new uuid per run. Letters, digits, '_', '.' and '-' only (it is written into "
        "table predicates and paths), at most 128 characters.",
    )


class ClvSettings(_Strict):
    """Customer lifetime value: BG/NBD for repeat purchases, Gamma-Gamma for their value (predict stage)."""

    enabled: bool = True
    time_unit: Literal["day", "week"] = Field(
        default="week", description="Unit of the repeat-purchase summaries; purchases count on distinct days."
    )
    horizon_months: int = Field(
        default=12, ge=1, le=120, description="Expected purchases and CLV over this many months (of 365.25/12 days)."
    )
    monthly_discount_rate: float = Field(
        default=0.01, ge=0, lt=1, description="CLV discounts month m's expected value by (1 + rate)^m."
    )
    penalizer: float = Field(default=0.0, ge=0, description="L2 penalty on the parameters of both fits (off: 0).")
    series_terms: int = Field(
        default=400, ge=10, description="Terms of the hypergeometric series in expected purchases (checked)."
    )
    max_distinct_summaries: int = Field(
        default=2_000_000, ge=1, description="Distinct (x, t_x, T) triples brought to the driver for the fit at most."
    )
    max_gamma_gamma_buyers: int = Field(
        default=200_000, ge=10, description="Repeat buyers the Gamma-Gamma fit uses at most (a uniform sample beyond)."
    )
    min_gamma_gamma_buyers: int = Field(
        default=10,
        ge=2,
        description="Below this many repeat buyers with a positive value, Gamma-Gamma is not fitted and each "
        "customer's expected order value is their own mean purchase-day value (a warning says so).",
    )


ChurnModel = Literal["logistic_regression", "gbt"]


class ChurnSettings(_Strict):
    """Churn propensity: a classifier of 'no purchase in the next horizon_days', trained out of time."""

    enabled: bool = True
    horizon_days: int = Field(default=90, ge=1, description="A customer churned when no purchase follows within it.")
    training_dates: int = Field(
        default=2,
        ge=1,
        description="Earlier as-of dates the training rows come from: as-of - 2 x horizon_days, then every "
        "training_step_days before it; the evaluation date is as-of - horizon_days.",
    )
    training_step_days: int = Field(default=30, ge=1)
    min_history_days: int = Field(
        default=30, ge=1, description="The earliest training date must be at least this long after the first day."
    )
    models: tuple[ChurnModel, ...] = Field(
        default=("logistic_regression", "gbt"),
        min_length=1,
        description="Candidates, chosen by area under the precision-recall curve on the evaluation date.",
    )
    max_training_rows: int = Field(default=500_000, ge=100, description="A uniform sample of the rows beyond.")
    lr_reg_param: float = Field(default=0.01, ge=0)
    gbt_max_iter: int = Field(default=30, ge=1)
    gbt_max_depth: int = Field(default=4, ge=1, le=30)
    parallel_fits: int = Field(
        default=2,
        ge=1,
        description="Candidates fitted at once (Spark runs the jobs of several driver threads side by side): "
        "each fit is a chain of short jobs, one per iteration, that leaves cores idle. The results do not "
        "depend on it.",
    )
    rows_per_partition: int = Field(
        default=100_000,
        ge=1,
        description="Training and evaluation rows per partition (at most one partition per core): every "
        "iteration, and every tree level, is a job of one task per partition, and on a few thousand rows "
        "the tasks cost more than the arithmetic.",
    )
    seed: int = 42


class PredictSettings(_Strict):
    """The predict stage: CLV and churn propensity per customer, summarised per segment."""

    clv: ClvSettings = Field(default_factory=ClvSettings)
    churn: ChurnSettings = Field(default_factory=ChurnSettings)


class PublishSettings(_Strict):
    """The consumer tables (publish stage)."""

    min_match_jaccard: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="A new segment keeps the id of the previous run's segment it best overlaps (optimal one-to-one "
        "assignment) when their Jaccard overlap of customers is at least this; otherwise it gets a new id.",
    )


class NamingRule(_Strict):
    """One behaviour word of a segment's name.

    Used when ``feature``'s lift (segment mean / base mean) is at least ``above`` or at most ``below``.
    """

    label: str = Field(min_length=1)
    feature: str = Field(min_length=1)
    above: float | None = Field(default=None, gt=0)
    below: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_bound(self) -> NamingRule:
        if (self.above is None) == (self.below is None):
            raise ValueError(f"rule {self.label!r}: give exactly one of above or below")
        return self


DEFAULT_NAMING_RULES = (
    NamingRule(label="lapsing", feature="recency_days", above=1.5),
    NamingRule(label="newcomers", feature="tenure_days", below=0.6),
    NamingRule(label="loyalists", feature="frequency", above=1.3),
    NamingRule(label="occasional buyers", feature="frequency", below=0.7),
)


class NamingSettings(_Strict):
    """How segments are named: '<value tier> <behaviour>', e.g. 'High-value loyalists'."""

    value_feature: str = Field(default="monetary", description="The feature whose lift sets the value tier.")
    high_value_lift: float = Field(default=1.5, gt=0, description="Lift at or above it: 'High-value'.")
    low_value_lift: float = Field(default=0.67, gt=0, description="Lift at or below it: 'Low-value'; else 'Mid-value'.")
    rules: tuple[NamingRule, ...] = Field(
        default=DEFAULT_NAMING_RULES, description="Behaviour words, first match wins (lift = segment / base mean)."
    )
    fallback: str = Field(default="regulars", min_length=1, description="The behaviour word when no rule matches.")

    @model_validator(mode="after")
    def _ordered_tiers(self) -> NamingSettings:
        if self.low_value_lift >= self.high_value_lift:
            raise ValueError("low_value_lift must be below high_value_lift")
        return self


class ExplainSettings(_Strict):
    """The explain stage: segment profiles, names, drivers, plots and the HTML report."""

    enabled: bool = True
    min_profile_customers: int = Field(
        default=50,
        ge=1,
        description="A segment with fewer customers shows counts only (its profile is suppressed), and no "
        "category, channel or country with fewer customers in a segment is shown.",
    )
    top_values: int = Field(default=3, ge=1, le=20, description="Top categories, channels and countries shown.")
    quantile_accuracy: int = Field(
        default=10_000, ge=100, description="percentile_approx accuracy for the profiles' quantiles."
    )
    surrogate_max_depth: int = Field(default=4, ge=1, le=10, description="Depth of the decision-tree surrogate.")
    surrogate_sample_rows: int = Field(
        default=200_000, ge=100, description="Customers the surrogate is trained and scored on at most."
    )
    rules_per_segment: int = Field(default=2, ge=1, le=10)
    plot_sample_rows: int = Field(
        default=3_000, ge=100, description="Customers in the PCA projection at most (stratified by segment)."
    )
    report_folder: str = Field(
        default="reports", description="Reports go to <storage.root>/<report_folder>/<run_id>/report.html."
    )
    naming: NamingSettings = Field(default_factory=NamingSettings)


class ForgetSettings(_Strict):
    """``seg-spark forget``: deleting customers from every table, and from the versions kept for time travel."""

    retention_hours: int = Field(
        default=168,
        ge=0,
        description="After the deletes, files no version younger than this needs are vacuumed from the tables "
        "touched; until then time travel still reaches the forgotten rows. 0 removes them at once (and "
        "breaks time travel to earlier versions of those tables, and any reader of one).",
    )


class Settings(_Strict):
    """The whole configuration of a seg-spark run."""

    spark: SparkSettings = Field(default_factory=SparkSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    tables: TableNames = Field(default_factory=TableNames)
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)
    sources: SourcesSettings = Field(default_factory=SourcesSettings)
    demo: DemoSettings = Field(default_factory=DemoSettings)
    quality: QualitySettings = Field(default_factory=QualitySettings)
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)
    features: FeatureSettings = Field(default_factory=FeatureSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    predict: PredictSettings = Field(default_factory=PredictSettings)
    explain: ExplainSettings = Field(default_factory=ExplainSettings)
    publish: PublishSettings = Field(default_factory=PublishSettings)
    forget: ForgetSettings = Field(default_factory=ForgetSettings)
    run: RunSettings = Field(default_factory=RunSettings)

    @model_validator(mode="after")
    def _model_features_exist(self) -> Settings:
        known = feature_names(self.features.families, self.features.windows_days)
        for key in ("features", "prep.log1p_features"):
            names = self.model.features if key == "features" else self.model.prep.log1p_features
            unknown = [name for name in names if not is_known_feature(name, known)]
            if unknown:
                raise ValueError(
                    f"model.{key}: unknown feature(s) {unknown} for features.families "
                    f"{list(self.features.families)} and windows_days {list(self.features.windows_days)}; "
                    f"known: {', '.join(known)} and the patterns {', '.join(DYNAMIC_PATTERNS)} (docs/FEATURES.md)"
                )
        return self

    def table_path(self, table: str) -> str:
        """Storage location of one of the configured tables (by its key in ``tables``)."""
        return self.storage_path(getattr(self.tables, table))

    def storage_path(self, relative: str) -> str:
        """A location under ``storage.root`` (tables, saved helper models)."""
        return _join(self.storage.root, relative)

    def with_overrides(self, overrides: Iterable[str]) -> Settings:
        """A copy with ``dotted.key=value`` overrides applied and validated again."""
        data = self.model_dump(mode="json")
        for item in overrides:
            _apply_override(data, item, origin="override")
        return _validate(data, origin="overrides")


def _join(root: str, name: str) -> str:
    if "://" not in root and not root.startswith(("dbfs:", "file:")):
        # Local folders become absolute so catalog LOCATIONs and logs are unambiguous.
        root = str(Path(root).expanduser().resolve())
    return root.rstrip("/") + "/" + name


def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``overlay`` into ``base``: mappings merge key by key, anything else replaces."""
    merged: dict[str, Any] = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def expand_environment(text: str, origin: str) -> str:
    """Replace ``${VAR}``, ``${VAR:-default}`` and ``$VAR`` with environment values.

    Raises:
        ConfigError: A referenced variable is unset (and has no default), naming each one,
            its line and what to do; a literal ``${...}`` never goes on as a path.
    """
    missing: dict[str, int] = {}

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        value = os.environ.get(name)
        if value is not None:
            return value
        if match.group(2) is not None:
            return match.group(2)
        missing.setdefault(name, text.count("\n", 0, match.start()) + 1)
        return match.group(0)

    expanded = _ENV_REFERENCE.sub(substitute, text)
    if missing:
        where = ", ".join(f"{name} (line {line})" for name, line in missing.items())
        raise ConfigError(
            f"config file {origin} uses environment variable(s) that are not set: {where}. "
            "Export them before the run, or write ${NAME:-default} in the file to give a default."
        )
    return expanded


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read one YAML file, first merging the files it ``extends`` (relative to it)."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (pass an existing YAML file to --config)")
    if path.resolve() in seen:
        chain = " -> ".join(str(p) for p in (*seen, path.resolve()))
        raise ConfigError(f"config files extend each other in a loop: {chain}")
    try:
        data = yaml.safe_load(expand_environment(path.read_text(encoding="utf-8"), str(path)))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of sections at the top level, found {type(data).__name__}"
        )
    parents = data.pop("extends", None) or []
    if isinstance(parents, str):
        parents = [parents]
    merged: dict[str, Any] = {}
    for parent in parents:
        merged = deep_merge(merged, _read_yaml(path.parent / parent, (*seen, path.resolve())))
    return deep_merge(merged, data)


def _override_path(key: str) -> list[str]:
    """Split a dotted key; inside a free-form mapping (``spark.conf``) the rest is one key."""
    parts = key.split(".")
    model: type[BaseModel] | None = Settings
    for i, part in enumerate(parts):
        field = model.model_fields.get(part) if model else None
        if field is None:
            return parts
        annotation = field.annotation
        if getattr(annotation, "__origin__", None) is dict:
            rest = ".".join(parts[i + 1 :])
            return [*parts[: i + 1], rest] if rest else parts
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return parts


def _apply_override(data: dict[str, Any], item: str, origin: str) -> None:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"{origin} {item!r} must look like dotted.key=value, e.g. model.k=8")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    node = data
    parts = _override_path(key)
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise ConfigError(f"{origin} {item!r}: {where} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _model_at(loc: Sequence[Any]) -> type[BaseModel] | None:
    """The pydantic model class that holds the field at ``loc`` (for listing allowed keys)."""
    model: type[BaseModel] = Settings
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            return None
    return model


def _format_errors(exc: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration ({origin}):"]
    for err in exc.errors():
        loc = err["loc"]
        path = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            model = _model_at(loc)
            allowed = sorted(model.model_fields) if model else []
            lines.append(f"  {path}: unknown key; allowed keys here: {', '.join(allowed)}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            # A check across sections (no key path) names its keys in the message; its input is the whole config.
            lines.append(f"  {path} = {err.get('input')!r}: {msg}" if loc else f"  {msg}")
    return "\n".join(lines)


def _validate(data: Mapping[str, Any], origin: str) -> Settings:
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, origin)) from None


def load_config(paths: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> Settings:
    """Load, merge and validate configuration.

    Args:
        paths: YAML files merged in order; later files win. A file may name the files it
            builds on with ``extends:`` (a path or list of paths relative to it).
            With no files at all, the defaults (identical to ``conf/base.yaml``) apply.
        overrides: ``dotted.key=value`` strings applied last (values parsed as YAML).

    Returns:
        The validated, frozen settings.

    Raises:
        ConfigError: A file is missing or malformed, or a key or value is invalid.
    """
    data: dict[str, Any] = {}
    for path in paths:
        data = deep_merge(data, _read_yaml(Path(path)))
    for item in overrides:
        _apply_override(data, item, origin="--set")
    origin = " + ".join(str(p) for p in paths) or "defaults"
    if overrides:
        origin += " + --set " + " ".join(overrides)
    return _validate(data, origin)
