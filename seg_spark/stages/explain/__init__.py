"""The explain stage: who is in each segment, in plain words.

segment_assignments, customer_features, segment_scores -> segment_profiles (profiles, names,
descriptions, surrogate rules) and the run's HTML report.
"""

from seg_spark.stages.explain.stage import ExplainStageResult, run

__all__ = ["ExplainStageResult", "run"]
