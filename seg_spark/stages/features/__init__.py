"""The features stage: transactions_clean -> customer_daily, customer_state, customer_features."""

from seg_spark.stages.features.stage import FeaturesStageResult, run

__all__ = ["FeaturesStageResult", "run"]
