"""The predict stage: customer lifetime value and churn propensity per customer and segment.

customer_daily, customer_features, segment_assignments -> customer_scores, segment_scores,
clv_parameters, churn_evaluation and the churn model in the registry.
"""

from seg_spark.stages.predict.stage import PredictStageResult, run

__all__ = ["PredictStageResult", "run"]
