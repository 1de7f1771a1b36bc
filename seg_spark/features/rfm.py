"""Point-in-time guard shared by every feature family."""

from __future__ import annotations

from datetime import date

from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def before(as_of: date):
    """Filter to transactions strictly before ``as_of`` (the point-in-time guard)."""

    def _filter(tx: DataFrame) -> DataFrame:
        return tx.filter(F.col("ts") < F.lit(as_of).cast("timestamp"))

    return _filter
