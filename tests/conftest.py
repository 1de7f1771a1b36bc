"""One SparkSession for the whole suite: local[2], 2 shuffle partitions, UTC, UI off, Delta."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pyspark.sql import SparkSession

from seg_spark.config import SparkSettings
from seg_spark.session import get_spark


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    warehouse = tmp_path_factory.mktemp("spark-warehouse")
    settings = SparkSettings(
        app_name="seg-spark-tests",
        master="local[2]",
        shuffle_partitions=2,
        driver_memory="2g",
        log_level="ERROR",
        conf={
            "spark.sql.warehouse.dir": str(warehouse),
            "spark.driver.extraJavaOptions": f"-Dderby.system.home={warehouse} -Duser.timezone=UTC",
        },
    )
    session = get_spark(settings)
    yield session
    session.stop()
