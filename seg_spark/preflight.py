"""Checks that need no Spark, run before a session starts.

A wrong path then fails in a second, not after a JVM start, and with seg-spark's own
message instead of a Java exception.
"""

from __future__ import annotations

import os
from pathlib import Path

from seg_spark.config import Settings
from seg_spark.errors import ConfigError


def local_folder(location: str) -> Path | None:
    """The local folder a location names (None: a remote URI such as s3a:// or dbfs:)."""
    if location.startswith("file:"):
        return Path(location.removeprefix("file:").removeprefix("//"))
    if "://" in location or location.startswith("dbfs:"):
        return None
    return Path(location).expanduser()


def check_writable_folder(location: str, key: str) -> None:
    """A local folder setting must be a folder seg-spark can create and write in.

    Raises:
        ConfigError: It is a file, or it (or the first existing parent) is not writable.
    """
    folder = local_folder(location)
    if folder is None:
        return
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{key} = {location!r} is a file, not a folder: point {key} at a folder (it is created)")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key} = {location!r}: {existing} is a file, so the folder cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{key} = {location!r}: {existing} is not writable by this user; choose a folder you can write to"
        )


def check(settings: Settings) -> None:
    """Every check that needs no Spark (storage root, local MLflow folder, demo output folder)."""
    check_writable_folder(settings.storage.root, "storage.root")
    uri = settings.tracking.tracking_uri
    if settings.tracking.enabled and uri and "://" not in uri and uri not in ("databricks", "databricks-uc"):
        check_writable_folder(uri, "tracking.tracking_uri")
    source = settings.sources.transactions
    if source.path is None and source.table is None:
        check_writable_folder(settings.demo.out, "demo.out")
