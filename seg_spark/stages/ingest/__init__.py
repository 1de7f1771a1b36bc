"""The ingest stage: sources -> transactions_clean, transactions_quarantine, data_quality (+ side tables)."""

from seg_spark.stages.ingest.stage import IngestStageResult, run

__all__ = ["IngestStageResult", "run"]
