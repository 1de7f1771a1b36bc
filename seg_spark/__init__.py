"""seg-spark: customer segmentation on Apache Spark and Delta Lake."""

from seg_spark._version import __version__

__all__ = ["__version__"]
