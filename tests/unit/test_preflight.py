"""Checks before Spark starts: a storage root that is a file or not writable is a configuration error;
a warehouse another process is running on is refused."""

import subprocess
import sys

import pytest

from seg_spark.cli import main
from seg_spark.config import load_config
from seg_spark.errors import ConfigError
from seg_spark.lock import LOCK_FILE, WarehouseInUseError, warehouse_lock
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


def test_a_warehouse_takes_one_process_at_a_time_and_a_killed_holder_frees_it(tmp_path):
    root = tmp_path / "warehouse"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from seg_spark.lock import warehouse_lock\n"
            f"with warehouse_lock({str(root)!r}, 'run r1 (ingest)'):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WarehouseInUseError) as refused, warehouse_lock(str(root), "run r2 (ingest)"):
            pass
        assert str(refused.value).startswith(
            f"storage.root = '{root}' is in use by another seg-spark process (run r1 (ingest), pid {holder.pid} on "
        )
        assert refused.value.exit_code == 2
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, the kernel drops the lock with the process
        holder.wait()
    with warehouse_lock(str(root), "run r2 (ingest)"):
        assert "run r2 (ingest), pid" in (root / LOCK_FILE).read_text()
    assert (root / LOCK_FILE).read_text() == ""  # released: nobody named as holding it
    with warehouse_lock("s3a://bucket/warehouse", "run r3"):  # remote: the scheduler keeps runs apart
        pass
