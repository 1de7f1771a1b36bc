"""One run at a time per warehouse: an exclusive lock on a file in a local ``storage.root``.

A run's start rolls back every attempt it finds ``running`` in ``pipeline_runs``, on the
assumption that the process behind it has died. Two runs of one warehouse at the same time
would break that assumption (the second would undo the first), so the second is refused.

The lock is the kernel's (``flock``): it goes with the process that holds it, SIGKILL
included, so a dead run never leaves the warehouse locked. A remote ``storage.root``
(``s3://``, ``abfss://``, ``dbfs:``) has no such lock: there the scheduler keeps one run at
a time (a Databricks job's ``max_concurrent_runs: 1``).
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from seg_spark.clock import utc_now
from seg_spark.errors import ConfigError
from seg_spark.preflight import local_folder

LOCK_FILE = ".seg-spark.lock"


class WarehouseInUseError(ConfigError):
    """Another live process holds the warehouse's lock."""


@contextmanager
def warehouse_lock(root: str, purpose: str) -> Iterator[None]:
    """Hold the warehouse's lock for the block.

    Args:
        root: ``storage.root``.
        purpose: What the holder is doing (shown to a process that finds the lock taken).

    Raises:
        WarehouseInUseError: Another process holds it; the message names that process.
    """
    folder = local_folder(root)
    if folder is None:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "a process that has not said what it is doing yet"
            raise WarehouseInUseError(
                f"storage.root = {root!r} is in use by another seg-spark process ({holder}): runs of one "
                "warehouse take turns. Wait for it to finish, or point storage.root at another folder"
            ) from None
        try:
            handle.seek(0)
            handle.truncate()
            since = utc_now().strftime("%Y-%m-%d %H:%M:%S UTC")
            handle.write(f"{purpose}, pid {os.getpid()} on {socket.gethostname()}, since {since}\n")
            handle.flush()
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)
