"""The publish stage: segment_assignments -> segments, customer_segments, segment_migration, history, current."""

from seg_spark.stages.publish.stage import PublishStageResult, run

__all__ = ["PublishStageResult", "run"]
