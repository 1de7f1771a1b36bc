"""The predict stage's consumer tables, created with comments and constraints on first use.

``customer_scores`` names its horizon's columns after it (``expected_purchases_12m``, ``clv_12m``): a
run with another ``predict.clv.horizon_months`` adds that horizon's columns, and earlier rows keep theirs.
``clv_parameters`` and ``churn_evaluation``, which record its models, take the schema of their rows.
"""

from __future__ import annotations

from seg_spark.tables import ConsumerTable, Table

PROBABILITY_CHECK = "{column} IS NULL OR ({column} >= 0 AND {column} <= 1)"


def expected_purchases_column(horizon_months: int) -> str:
    """The expected-purchases column of a CLV horizon, e.g. ``expected_purchases_12m``."""
    return f"expected_purchases_{horizon_months}m"


def clv_column(horizon_months: int) -> str:
    """The CLV column of a horizon, e.g. ``clv_12m``."""
    return f"clv_{horizon_months}m"


def horizon_columns(horizon_months: int) -> dict[str, str]:
    """One horizon's columns: name -> DDL with its comment."""
    purchases, clv = expected_purchases_column(horizon_months), clv_column(horizon_months)
    return {
        purchases: f"{purchases} DOUBLE COMMENT 'BG/NBD expected purchase days over the next {horizon_months} months.'",
        clv: f"{clv} DOUBLE COMMENT 'Expected value over the next {horizon_months} months, each month discounted by "
        "predict.clv.monthly_discount_rate.'",
    }


def horizon_constraints(horizon_months: int) -> dict[str, str]:
    """CHECK constraints of one horizon's columns."""
    purchases, clv = expected_purchases_column(horizon_months), clv_column(horizon_months)
    return {
        f"{clv}_not_negative": f"{clv} IS NULL OR {clv} >= 0",
        f"{purchases}_not_negative": f"{purchases} IS NULL OR {purchases} >= 0",
    }


def customer_scores(horizon_months: int) -> ConsumerTable:
    """``customer_scores`` with the columns of the configured CLV horizon."""
    return ConsumerTable(
        Table.CUSTOMER_SCORES,
        "Lifetime value, P(alive) and churn probability of every customer with a purchase before the as-of "
        "date (grain: customer x as-of date). Expected purchases and CLV are named after their horizon in months "
        "(clv_12m); a row fills the columns of the horizon its run used. CLV columns are null when "
        "predict.clv.enabled is false; the churn columns when predict.churn.enabled is false or the history is too "
        "short (see churn_evaluation).",
        "customer_id STRING NOT NULL COMMENT 'Customer (pseudonymised when privacy.pseudonymise_customer_id).', "
        "repeat_purchases BIGINT COMMENT 'x: purchase days after the first one, before the as-of date.', "
        "recency DOUBLE COMMENT 't_x: first to last purchase day, in time_unit.', "
        "age DOUBLE COMMENT 'T: first purchase day to the day before the as-of date, in time_unit.', "
        "time_unit STRING COMMENT 'day or week (predict.clv.time_unit).', "
        "p_alive DOUBLE COMMENT 'BG/NBD probability that the customer is still active.', "
        "expected_order_value DOUBLE COMMENT 'Gamma-Gamma expected value of a purchase day (or the customer''s "
        "mean when Gamma-Gamma could not be fitted, see clv_parameters).', "
        f"{', '.join(horizon_columns(horizon_months).values())}, "
        "churn_probability DOUBLE COMMENT 'Probability of no purchase in the next churn horizon_days.', "
        "churn_model STRING COMMENT 'The churn classifier chosen out of time: logistic_regression or gbt.', "
        "churn_model_version STRING COMMENT 'Its registered version (MLflow), or unregistered.', "
        "run_id STRING NOT NULL COMMENT 'The seg-spark run that wrote the row (pipeline_runs.run_id).', "
        "as_of_date DATE NOT NULL COMMENT 'Scores use behaviour strictly before this date.'",
        partitioned_by=("as_of_date",),
        constraints={
            "p_alive_is_probability": PROBABILITY_CHECK.format(column="p_alive"),
            "churn_is_probability": PROBABILITY_CHECK.format(column="churn_probability"),
            **horizon_constraints(horizon_months),
        },
    )


SEGMENT_SCORES = ConsumerTable(
    Table.SEGMENT_SCORES,
    "Value and risk of every segment of a run (grain: run x model segment). Join segments on as_of_date "
    "and model_segment_id for the stable segment_id.",
    "model_segment_id INT NOT NULL COMMENT 'The model''s cluster index, as in segment_assignments.segment_id.', "
    "customers BIGINT NOT NULL COMMENT 'Scored customers in the segment.', "
    "total_clv DOUBLE COMMENT 'Sum of the customers'' CLV over the run''s horizon (predict.clv.horizon_months).', "
    "mean_clv DOUBLE COMMENT 'Mean CLV over that horizon.', "
    "mean_expected_purchases DOUBLE COMMENT 'Mean expected purchase days over the CLV horizon.', "
    "mean_p_alive DOUBLE COMMENT 'Mean P(alive).', "
    "mean_churn_probability DOUBLE COMMENT 'Mean churn probability.', "
    "clv_share DOUBLE COMMENT 'Share of the total CLV of all segments.', "
    "run_id STRING NOT NULL COMMENT 'The seg-spark run.', "
    "as_of_date DATE NOT NULL COMMENT 'The run''s as-of date.'",
    constraints={"customers_positive": "customers > 0"},
)
