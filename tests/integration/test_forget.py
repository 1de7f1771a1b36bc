"""``seg-spark forget`` on a copy of the shared end-to-end warehouse: rows gone from every table and
from every version still reachable, other customers untouched, one audit row per customer."""

from __future__ import annotations

import hashlib
import io
import re
import shutil
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from seg_spark import cli
from seg_spark.tables import Table, TableStore

from conftest import e2e_settings

pytestmark = pytest.mark.slow

UNKNOWN = "no-such-customer"


def _customer_key(df: DataFrame, table: str):
    """A hand-written key, independent of the forget's join: the customer a row of one table belongs to."""
    if table == "transactions_quarantine":
        return F.get_json_object("canonical_record", "$.customer_id")
    return F.col("customer_id") if "customer_id" in df.columns else None


def _counts(df: DataFrame, table: str, customers: list[str]) -> tuple[int, dict[str, int]]:
    """All rows, and the rows of each customer, in one pass."""
    key = _customer_key(df, table)
    per_customer = [F.sum((key == c).cast("int")) if key is not None else F.lit(0) for c in customers]
    row = df.agg(F.count(F.lit(1)), *per_customer).first()
    return int(row[0]), {c: int(row[i + 1] or 0) for i, c in enumerate(customers)}


def _files_holding(warehouse: Path, customer: str) -> list[str]:
    """Parquet files anywhere under the warehouse (old versions and change data included) with the customer."""
    in_record = f'"customer_id":"{re.escape(customer)}"'
    found = []
    for path in warehouse.rglob("*.parquet"):
        data = pq.read_table(path)
        ids = [data.column(n) for n in data.column_names if n == "customer_id"]
        records = [data.column(n) for n in data.column_names if n.endswith("_record")]
        if any(pc.any(pc.equal(c, customer)).as_py() for c in ids) or any(
            pc.any(pc.match_substring_regex(c, in_record)).as_py() for c in records
        ):
            found.append(str(path))
    return found


@dataclass(frozen=True)
class Forgotten:
    store: TableStore
    customers: list[str]
    before: dict[str, dict[str, int]]  # table -> customer -> rows before the forget
    totals: dict[str, int]  # table -> rows before the forget
    printed: str
    warehouse: Path
    touched: list[Table]


@pytest.fixture(scope="module")
def forgotten(spark: SparkSession, e2e, e2e_root: Path, tmp_path_factory) -> Forgotten:
    """Two customers (one with quarantined lines) and an unknown id forgotten through the CLI, retention 0."""
    root = tmp_path_factory.mktemp("forget")
    shutil.copytree(e2e_root / "warehouse", root / "warehouse")
    store = TableStore(spark, e2e_settings(root, "storage.database="))
    current = store.read(Table.SEGMENTS_CURRENT).select("customer_id")
    quarantined = store.read(Table.TRANSACTIONS_QUARANTINE).select(
        F.get_json_object("canonical_record", "$.customer_id").alias("customer_id")
    )
    customers = [
        quarantined.join(current, "customer_id").orderBy("customer_id").first()[0],
        current.orderBy("customer_id").first()[0],
    ]
    counted = {t.value: _counts(store.read(t), t.value, customers) for t in store.tables if t is not Table.FORGET_LOG}
    before = {table: per_customer for table, (_, per_customer) in counted.items()}
    totals = {table: total for table, (total, _) in counted.items()}
    ids_file = root / "ids.txt"
    ids_file.write_text(f"# requests of the week\n{customers[0]}\n\n {customers[1]} \n{UNKNOWN}\n", encoding="utf-8")
    argv = ["forget", "--config", "conf/local.yaml", "--file", str(ids_file)]
    argv += ["--set", f"storage.root={root / 'warehouse'}", "--set", "forget.retention_hours=0"]
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli.main(argv) == 0
    touched = [Table(t) for t, removed in before.items() if sum(removed.values())]
    return Forgotten(store, customers, before, totals, out.getvalue(), root / "warehouse", touched)


def test_forget_leaves_no_row_of_the_customers_in_any_reachable_version_or_file(forgotten):
    """No Parquet file under the warehouse (any version's data, change data) holds the customers, so no
    version can return them; the version before the forget, which did, is no longer readable."""
    store, customers = forgotten.store, forgotten.customers
    assert forgotten.before["transactions_quarantine"][customers[0]] > 0
    assert all(forgotten.before[t][c] > 0 for t in ("transactions_clean", "segments_current") for c in customers)
    for customer in customers:
        assert _files_holding(forgotten.warehouse, customer) == []
    for table in forgotten.touched:
        merges = store.history(table).filter("operation = 'MERGE'").select("version").collect()
        forget_commit = max(r[0] for r in merges)  # (VACUUM START and END are commits too)
        assert _counts(store.read(table), table.value, customers)[1] == dict.fromkeys(customers, 0), table
        with pytest.raises(Exception, match="FILE_NOT_EXIST|does not exist"):  # vacuumed
            _counts(store.read(table, forget_commit - 1), table.value, customers)
        # Time travel works from now on: the usual retention is back on the table.
        properties = dict(store.spark.sql(f"SHOW TBLPROPERTIES delta.`{store.path(table)}`").collect())
        assert properties.get("delta.deletedFileRetentionDuration", "interval 168 hours") == "interval 168 hours", table


def test_forget_removes_only_those_rows_and_records_each_customer_hashed(forgotten):
    store, customers, before = forgotten.store, forgotten.customers, forgotten.before
    for table, removed in before.items():
        total, left = _counts(store.read(Table(table)), table, customers)
        assert total == forgotten.totals[table] - sum(removed.values()) and not any(left.values()), table
    audit = store.read(Table.FORGET_LOG).collect()
    assert len(audit) == 3 and len({r["forget_id"] for r in audit}) == 1
    by_hash = {r["customer_id_sha256"]: r for r in audit}
    for customer in (*customers, UNKNOWN):
        row = by_hash[hashlib.sha256(customer.encode()).hexdigest()]
        expected = {t: n[customer] for t, n in before.items() if n.get(customer)}
        assert row["rows_by_table"] == expected
        assert (row["rows_removed"], row["tables_touched"]) == (sum(expected.values()), sorted(expected))
        assert row["retention_hours"] == 0
        assert customer not in str(row)
    assert f"{UNKNOWN}: not found in any table" in forgotten.printed
    removed = sum(b[customers[0]] for b in before.values())
    assert f"{customers[0]}: {removed:,} rows removed" in forgotten.printed
