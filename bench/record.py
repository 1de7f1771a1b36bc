"""The one way a benchmark records its result: stamped, printed, appended to results/<bench>.jsonl."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def record(bench: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Stamp ``fields`` with the bench name, time and machine; print them and append them as one JSON line.

    Returns:
        The stamped result.
    """
    result = {
        "bench": bench,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}",
        **fields,
    }
    line = json.dumps(result)
    print(line, flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with (RESULTS / f"{bench}.jsonl").open("a") as handle:
        handle.write(line + "\n")
    return result
