"""Checks before Spark starts: a storage root that is a file or not writable is a configuration error."""

import pytest

from seg_spark.cli import main
from seg_spark.config import load_config
from seg_spark.errors import ConfigError
from seg_spark.preflight import check


def test_a_storage_root_that_is_a_file_is_refused_before_spark_starts(tmp_path, capsys):
    afile = tmp_path / "lake"
    afile.write_text("not a folder")
    with pytest.raises(ConfigError, match=r"storage.root = '.*lake' is a file, not a folder"):
        check(load_config([], [f"storage.root={afile}"]))
    with pytest.raises(ConfigError, match="is a file, so the folder cannot be created"):
        check(load_config([], [f"storage.root={afile}/below"]))
    assert main(["run", "--set", f"storage.root={afile}", "--set", f"tracking.tracking_uri={tmp_path}/ml"]) == 2
    assert capsys.readouterr().err.startswith("seg-spark: storage.root = ")


def test_remote_and_creatable_locations_pass(tmp_path):
    check(load_config([], ["storage.root=s3a://bucket/lake", f"tracking.tracking_uri={tmp_path}/new/mlruns"]))
    check(load_config([], [f"storage.root={tmp_path}/not/yet/there", "tracking.tracking_uri=http://mlflow:5000"]))
