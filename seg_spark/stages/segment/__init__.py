"""The segment stage: customer_features -> model_selection, segment_hierarchy, segment_assignments + registry."""

from seg_spark.stages.segment.stage import SegmentStageResult, run

__all__ = ["SegmentStageResult", "run"]
