"""Helpers for the tests that kill a seg-spark process (SIGKILL) and look at what it left: Delta
versions and commit infos read from the tables' log folders, without Spark."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def versions(warehouse: Path) -> dict[str, int]:
    """Each table's latest Delta version, from its log folder."""
    return {
        log.parent.name: max(int(f.stem) for f in log.glob("*.json"))
        for log in warehouse.glob("*/_delta_log")
        if any(log.glob("*.json"))
    }


def commit_info(warehouse: Path, table: str, version: int) -> dict:
    """The ``commitInfo`` action of one commit file."""
    lines = (warehouse / table / "_delta_log" / f"{version:020d}.json").read_text().splitlines()
    return next(json.loads(line)["commitInfo"] for line in lines if '"commitInfo"' in line)


def stage_began(warehouse: Path, runs_before: int) -> bool:
    """A stage has begun once its ``running`` row is appended to pipeline_runs (the start's recovery,
    before it, replaces rows)."""
    last = versions(warehouse).get("pipeline_runs", -1)
    return last > runs_before and commit_info(warehouse, "pipeline_runs", last)["operationParameters"]["mode"] == (
        "Append"
    )


def wait_until(condition: Callable[[], bool], proc: subprocess.Popen, what: str, timeout: float = 600) -> None:
    """Poll ``condition``; fail when the process ends first or the time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the process ended (exit {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
