"""The consumer tables' schemas, comments and constraints (created by the publish stage on first use).

NOT NULL and CHECK constraints are Delta writer features: readers, including delta-rs,
need nothing for them. Change data feed is on, so a consumer can follow each table's row
changes. Deletion vectors and liquid clustering stay off (``delta.enableDeletionVectors``
is set false explicitly) so every Delta reader can read the tables.
"""

from __future__ import annotations

from seg_spark.tables import ConsumerTable, Table

# Columns every consumer row carries: which run, date, model and configuration made it.
VERSION_COLUMNS = (
    "run_id STRING NOT NULL COMMENT 'The seg-spark run that wrote the row (pipeline_runs.run_id).', "
    "as_of_date DATE NOT NULL COMMENT 'The as-of date of the run: segments reflect behaviour before it.', "
    "model_name STRING NOT NULL COMMENT 'Registered model name (MLflow).', "
    "model_version STRING NOT NULL COMMENT 'Registered model version, or unregistered.', "
    "k INT NOT NULL COMMENT 'Segments of the model.', "
    "config_hash STRING NOT NULL COMMENT 'SHA-256 prefix of the feature and model configuration.'"
)


CONSUMER_TABLES = (
    ConsumerTable(
        Table.CUSTOMER_SEGMENTS,
        "Segment of every modelled customer at every published as-of date (history; grain: customer x as-of date).",
        "customer_id STRING NOT NULL COMMENT 'Customer (pseudonymised when privacy.pseudonymise_customer_id).', "
        "segment_id INT NOT NULL COMMENT 'Stable segment id: the same group keeps its id across runs.', "
        "segment_name STRING COMMENT 'Readable segment name, when the explain stage has named it.', "
        "model_segment_id INT NOT NULL COMMENT 'The model''s own cluster index (0..k-1); not stable across runs.', "
        "segment_distance DOUBLE COMMENT 'Euclidean distance to the segment centre in the prepared space (K-Means).', "
        "segment_probability DOUBLE COMMENT 'Membership probability of the segment (Gaussian mixture).', "
        "runner_up_segment_id INT COMMENT 'Stable id of the second-closest or second-likeliest segment.', "
        "runner_up_distance DOUBLE COMMENT 'Distance to the runner-up segment centre (K-Means).', "
        "runner_up_probability DOUBLE COMMENT 'Membership probability of the runner-up segment (mixture).', "
        "membership ARRAY<DOUBLE> COMMENT 'Membership probability of every segment, by model_segment_id (mixture).', "
        "algorithm STRING NOT NULL COMMENT 'kmeans, bisecting_kmeans or gaussian_mixture.', " + VERSION_COLUMNS,
        partitioned_by=("as_of_date",),
        constraints={
            "segment_id_non_negative": "segment_id >= 0",
            "model_segment_id_within_k": "model_segment_id >= 0 AND model_segment_id < k",
        },
    ),
    ConsumerTable(
        Table.SEGMENTS_CURRENT,
        "Current segment of every customer ever segmented (grain: customer). Maintained by MERGE: a row "
        "changes only when its customer's segment or activity changes.",
        "customer_id STRING NOT NULL COMMENT 'Customer.', "
        "segment_id INT NOT NULL COMMENT 'Stable id of the current (or, when inactive, the last) segment.', "
        "segment_name STRING COMMENT 'Readable segment name, when known.', "
        "segment_since DATE NOT NULL COMMENT 'As-of date from which the customer has been in this segment.', "
        "is_active BOOLEAN NOT NULL COMMENT 'False when the latest run did not segment the customer.', "
        "changed_as_of_date DATE NOT NULL COMMENT 'As-of date of the run that last changed this row.', "
        "changed_run_id STRING NOT NULL COMMENT 'The run that last changed this row.', "
        "model_version STRING NOT NULL COMMENT 'Model version of the run that last changed this row.'",
        constraints={"segment_id_non_negative": "segment_id >= 0"},
    ),
    ConsumerTable(
        Table.SEGMENT_MEMBERSHIP_HISTORY,
        "Type-2 history of segment membership (grain: customer x membership period). valid_to is the as-of "
        "date the membership ended (exclusive) and null while current; exactly one current row per active customer.",
        "customer_id STRING NOT NULL COMMENT 'Customer.', "
        "segment_id INT NOT NULL COMMENT 'Stable segment id.', "
        "segment_name STRING COMMENT 'Readable segment name, when known.', "
        "valid_from DATE NOT NULL COMMENT 'First as-of date of the membership.', "
        "valid_to DATE COMMENT 'As-of date at which the membership ended (exclusive); null while current.', "
        "is_current BOOLEAN NOT NULL COMMENT 'True for the open membership.', "
        "run_id STRING NOT NULL COMMENT 'The run that opened the membership.'",
        constraints={
            "current_is_open": "is_current = (valid_to IS NULL)",
            "range_not_empty": "valid_to IS NULL OR valid_to > valid_from",
        },
    ),
    ConsumerTable(
        Table.SEGMENT_MIGRATION,
        "Customers moving between segments from one published as-of date to the next (grain: run x from x to).",
        "previous_as_of_date DATE COMMENT 'The previous published as-of date (null on the first run).', "
        "from_segment_id INT COMMENT 'Stable id before (null: a customer new to the segmentation).', "
        "to_segment_id INT COMMENT 'Stable id now (null: a customer no longer segmented).', "
        "customers BIGINT NOT NULL COMMENT 'Customers making this move.', "
        "share_of_from DOUBLE COMMENT 'Share of the from segment (or of new customers) making this move.', "
        + VERSION_COLUMNS,
        constraints={"customers_positive": "customers > 0"},
    ),
    ConsumerTable(
        Table.SEGMENTS,
        "Every segment of every published run, including the vanished ones (grain: run x segment).",
        "segment_id INT NOT NULL COMMENT 'Stable segment id.', "
        "model_segment_id INT COMMENT 'The model''s cluster index (null for a vanished segment).', "
        "status STRING NOT NULL COMMENT 'new, continued or vanished (relative to the previous published run).', "
        "matched_from_segment_id INT COMMENT 'The previous run''s segment this one continues.', "
        "match_jaccard DOUBLE COMMENT 'Customer overlap (Jaccard) with the segment it continues.', "
        "customers BIGINT NOT NULL COMMENT 'Customers in the segment (0 when vanished).', "
        "share DOUBLE NOT NULL COMMENT 'Share of the modelled customers.', "
        "feature_means MAP<STRING, DOUBLE> COMMENT 'Mean of every model feature over the segment (raw units).', "
        "segment_name STRING COMMENT 'Readable segment name, when known.', "
        "algorithm STRING NOT NULL COMMENT 'Clustering algorithm.', " + VERSION_COLUMNS,
        constraints={
            "status_known": "status IN ('new', 'continued', 'vanished')",
            "vanished_is_empty": "(status = 'vanished') = (model_segment_id IS NULL)",
        },
    ),
)
