"""The explain stage's consumer table, created with comments and constraints on first use."""

from __future__ import annotations

from seg_spark.tables import ConsumerTable, Table

PROFILES_TABLE = ConsumerTable(
    Table.SEGMENT_PROFILES,
    "Who is in each segment of a run, in plain words (grain: run x model segment). Segments with fewer "
    "customers than explain.min_profile_customers are suppressed: counts only. Join segments on as_of_date "
    "and model_segment_id for the stable segment_id.",
    "model_segment_id INT NOT NULL COMMENT 'The model''s cluster index, as in segment_assignments.segment_id.', "
    "segment_name STRING NOT NULL COMMENT 'Readable name, unique within the run (explain.naming rules).', "
    "description STRING NOT NULL COMMENT 'One sentence: spend against the average, recency, orders, weight.', "
    "customers BIGINT NOT NULL COMMENT 'Customers in the segment.', "
    "share DOUBLE NOT NULL COMMENT 'Share of the run''s segmented customers.', "
    "revenue_share DOUBLE COMMENT 'Share of the net spend (monetary) of all segmented customers.', "
    "suppressed BOOLEAN NOT NULL COMMENT 'True: too few customers to show a profile; the profile columns are null.', "
    "features MAP<STRING, STRUCT<mean: DOUBLE, median: DOUBLE, p10: DOUBLE, p90: DOUBLE, lift: DOUBLE, "
    "std_diff: DOUBLE>> COMMENT 'Every numeric feature: mean, approximate median/p10/p90, lift (segment mean / "
    "base mean) and standardised difference ((segment mean - base mean) / base std).', "
    "top_values MAP<STRING, ARRAY<STRUCT<value: STRING, share: DOUBLE>>> COMMENT 'Top categories and channels "
    "(mean share of spend or orders) and top values of label features such as profile_country (share of "
    "customers); only values at least min_profile_customers customers of the segment have.', "
    "rfm_segments MAP<STRING, DOUBLE> COMMENT 'Share of the segment in each classic RFM segment (large enough ones).', "
    "membership MAP<STRING, DOUBLE> COMMENT 'Mixtures: p10, median, p90 of the membership probability and the "
    "share of customers at or above 0.9.', "
    "rules ARRAY<STRUCT<rule: STRING, precision: DOUBLE, coverage: DOUBLE>> COMMENT 'The decision-tree "
    "surrogate''s leaves for this segment: conditions, share of the leaf in the segment, share of the segment in "
    "the leaf.', "
    "mean_clv DOUBLE COMMENT 'From segment_scores, when the predict stage ran.', "
    "clv_share DOUBLE COMMENT 'Share of the total CLV, from segment_scores.', "
    "mean_p_alive DOUBLE COMMENT 'From segment_scores.', "
    "mean_churn_probability DOUBLE COMMENT 'From segment_scores.', "
    "surrogate_accuracy DOUBLE COMMENT 'Run-level: held-out accuracy of the surrogate tree (the same on every row).', "
    "surrogate_importances MAP<STRING, DOUBLE> COMMENT 'Run-level: the surrogate''s feature importances.', "
    "algorithm STRING NOT NULL COMMENT 'kmeans, bisecting_kmeans or gaussian_mixture.', "
    "k INT NOT NULL COMMENT 'Segments of the model.', "
    "model_version STRING COMMENT 'The registered segmentation model version.', "
    "run_id STRING NOT NULL COMMENT 'The seg-spark run that wrote the row (pipeline_runs.run_id).', "
    "as_of_date DATE NOT NULL COMMENT 'The run''s as-of date.'",
    constraints={
        "customers_positive": "customers > 0",
        "share_is_fraction": "share > 0 AND share <= 1",
        "suppressed_has_no_profile": "NOT suppressed OR (features IS NULL AND rules IS NULL AND top_values IS NULL)",
    },
)
