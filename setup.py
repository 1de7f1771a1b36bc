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
    python_requires=">=3.10,<3.13",
    # Pinned together: delta-spark 4.4.0 ships JARs for Spark 4.2 (io.delta:delta-spark_4.2_2.13).
    install_requires=[
        "pyspark==4.2.0",
        "delta-spark==4.4.0",
        "mlflow==3.17.2",
        "pyyaml==6.0.3",
        "pydantic==2.14.3",
        "pandas==2.3.3",  # PySpark warns on pandas 3
        "pyarrow==25.0.1",
        "numpy==2.4.6",  # pyspark.ml and the metrics on per-segment summaries
    ],
    extras_require={
        "dev": [
            "pytest==9.2.0",
            "ruff==0.17.6",
            "scikit-learn==1.9.1",  # test-only reference for metrics
        ],
    },
    entry_points={"console_scripts": ["seg-spark=seg_spark.cli:main"]},
)
