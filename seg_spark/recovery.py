"""Rolling back a failed attempt: every table it changed goes back to its version before the attempt.

An attempt is one process's ``run_pipeline`` call: all stages of ``seg-spark run``, or the
one stage of a stage job. Delta cannot commit to several tables at once, so each stage
commits its tables as it finishes, and a later failure would leave the run half-published
(new clean transactions and features, the previous segments). Every commit carries its
attempt in ``userMetadata`` (``TableStore.commit_tag``), so each table's own history is the
undo log: when an attempt fails (an exception here, or a killed process found ``running``
by the next start), each table it committed to is restored to the version before its first
commit, and a table it created is removed.

``pipeline_runs`` and ``data_quality`` are not rolled back: they record what happened and
why, which is what an operator needs after a failure.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from seg_spark.session import conf_set
from seg_spark.tables import Table, TableStore

log = logging.getLogger(__name__)

ATTEMPT_KEY = "attempt_id"
ROLLBACK_KEY = "rollback_of"
# What ``RunContext`` tags each commit with; a restore commit keeps the rest of the metadata.
TAG_KEYS = ("run_id", ATTEMPT_KEY, "stage")
KEPT: frozenset[Table] = frozenset({Table.PIPELINE_RUNS, Table.DATA_QUALITY})
_USER_METADATA = "spark.databricks.delta.commitInfo.userMetadata"


@dataclass(frozen=True)
class Rollback:
    """What rolling back one attempt did.

    Attributes:
        attempt_id: The attempt.
        restored: Table -> the version its content was restored to.
        removed: Tables the attempt had created, removed again.
        refused: Table -> why it was left as it is (another attempt committed after this one).
    """

    attempt_id: str
    restored: dict[str, int] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for logs and ``pipeline_runs.error``."""
        parts = [f"{t} to version {v}" for t, v in sorted(self.restored.items())]
        parts += [f"{t} removed (the attempt created it)" for t in self.removed]
        parts += [f"{t} NOT rolled back: {why}" for t, why in sorted(self.refused.items())]
        return "rolled back: " + ("; ".join(parts) if parts else "nothing had been committed")


def _commits(store: TableStore, table: Table) -> list[tuple[int, str, dict]]:
    """(version, operation, userMetadata as a dict) of every commit of the table, oldest first."""
    rows = store.history(table).select("version", "operation", "userMetadata").orderBy("version").collect()
    commits = []
    for version, operation, metadata in rows:
        try:
            parsed = json.loads(metadata) if metadata else {}
        except ValueError:  # another writer's free text
            parsed = {}
        commits.append((int(version), str(operation), parsed if isinstance(parsed, dict) else {}))
    return commits


def _restore(store: TableStore, table: Table, version: int, metadata: dict) -> None:
    """Restore ``table`` to ``version``; the restore commit repeats that version's metadata."""
    from delta.tables import DeltaTable

    # Readers of a table's last commit metadata (the running state) then see the restored one's.
    with conf_set(store.spark, _USER_METADATA, json.dumps(metadata)):
        DeltaTable.forPath(store.spark, store.path(table)).restoreToVersion(version)


def _remove(store: TableStore, table: Table) -> None:
    """Delete a table's folder (a table the failed attempt created: nothing else wrote to it)."""
    jvm: Any = store.spark._jvm  # noqa: SLF001 - Hadoop's FileSystem is reached only through the JVM
    path = jvm.org.apache.hadoop.fs.Path(store.path(table))
    path.getFileSystem(store.spark._jsc.hadoopConfiguration()).delete(path, True)  # noqa: SLF001


def rollback_attempt(store: TableStore, attempt_id: str, tables: Iterable[Table] | None = None) -> Rollback:
    """Undo every commit attempt ``attempt_id`` made (idempotent: a second call changes nothing).

    Args:
        store: The table store.
        attempt_id: The failed attempt.
        tables: Only these (the tables this process committed to); None: every table (a dead
            process's attempt, whose commits only the tables' histories know).

    Returns:
        What was restored, removed or refused.
    """
    result = Rollback(attempt_id)
    wanted = set(Table) if tables is None else set(tables)
    candidates = [t for t in Table if t in wanted and store.exists(t)]
    for table in candidates:
        if table in KEPT:
            continue
        commits = _commits(store, table)
        ours = [v for v, _, m in commits if m.get(ATTEMPT_KEY) == attempt_id and ROLLBACK_KEY not in m]
        if not ours or commits[-1][2].get(ROLLBACK_KEY) == attempt_id:
            continue  # untouched, or already rolled back
        first = min(ours)
        later = {str(m[ATTEMPT_KEY]) for v, _, m in commits if v > first and m.get(ATTEMPT_KEY)} - {attempt_id}
        if later:
            result.refused[table.value] = f"attempt(s) {', '.join(sorted(later))} committed to it afterwards"
            continue
        try:
            if first == 0:
                _remove(store, table)
                result.removed.append(table.value)
                continue
            kept = {k: v for k, v in commits[first - 1][2].items() if k not in TAG_KEYS}
            _restore(store, table, first - 1, {**kept, ROLLBACK_KEY: attempt_id})
            result.restored[table.value] = first - 1
        except Exception as exc:  # noqa: BLE001 - one table's failure must not stop the others' rollback
            result.refused[table.value] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    # Nothing to undo (a run stopped before its first commit) is routine, not a warning.
    level = logging.WARNING if result.restored or result.removed or result.refused else logging.INFO
    log.log(level, "attempt %s %s", attempt_id, result.summary())
    return result
