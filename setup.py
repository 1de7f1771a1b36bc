"""seg-spark: customer segmentation on Apache Spark and Delta Lake."""

from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version: dict[str, str] = {}
exec((here / "seg_spark" / "_version.py").read_text(), version)

setup(
    name="seg-spark",
    version=version["__version__"],
    description="Customer segmentation that runs where the data lives: Spark MLlib + Delta Lake + MLflow",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["seg_spark", "seg_spark.*"]),
    package_data={"seg_spark": ["log4j2.properties"]},
    python_requires=">=3.11,<3.13",  # datetime.UTC, enum.StrEnum
    # Ranges only: on a Databricks runtime the wheel must not replace the runtime's own
    # PySpark, Delta, MLflow, pandas or numpy. Exact versions for the local and CI
    # environment live in constraints.txt (used by `make setup`).
    install_requires=[
        "pyyaml>=6.0,<7",
        "pydantic>=2.5,<3",
        "numpy>=1.24",
        "pandas>=1.5,<3",  # PySpark warns on pandas 3
        "pyarrow>=11",
        "scipy>=1.10",  # the publish stage's optimal matching of segments, the CLV fits
        "matplotlib>=3.7",  # plots logged to MLflow (drawn from small summaries)
    ],
    extras_require={
        # Spark, Delta Lake and MLflow for a laptop or a spark-submit driver; a Databricks
        # runtime ships its own. delta-spark 4.4 ships the JARs for Spark 4.2.
        "local": [
            "pyspark>=4.2,<4.3",
            "delta-spark>=4.4,<4.5",
            "mlflow>=3.0,<4",
        ],
        "dev": [
            "pytest>=8",
            "ruff>=0.15",
            "mypy>=1.10",
            "scikit-learn>=1.5",  # test-only reference for metrics
            # bench/run.py's single-machine reference (DuckDB + scikit-learn) and its Delta reader;
            # the suite runs the harness at a smoke size.
            "duckdb>=1.1",
            "deltalake>=1.0",
            # The HTML report test opens the report in headless Chromium (Debian's, `make browser`).
            "selenium>=4.20",
        ],
    },
    entry_points={
        "console_scripts": [
            "seg-spark=seg_spark.cli:main",
            "seg-spark-ingest=seg_spark.cli:ingest",
            "seg-spark-features=seg_spark.cli:features",
            "seg-spark-segment=seg_spark.cli:segment",
            "seg-spark-predict=seg_spark.cli:predict",
            "seg-spark-explain=seg_spark.cli:explain",
            "seg-spark-publish=seg_spark.cli:publish",
        ]
    },
)
