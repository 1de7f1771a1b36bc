"""The bad-input corpus (issue 15): every case runs ``seg-spark run`` in-process against one warehouse that
holds a good run, and must stop with its exit code and a one-line ``seg-spark: ...`` message, print no Java
stack trace, and leave every table a consumer reads at its Delta version and row count.

The inputs that are not failures by design (ids with leading zeros, undecodable bytes, a repeated header line,
zero or negative quantities, duplicate profiles, a broken JSON line and events after the as-of date) are part
of that good run, so they cost no run of their own; their tests read what it wrote. README.md's "When the
input is wrong" table lists every case of both lists (a test below keeps the two equal).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from seg_spark.cli import main
from seg_spark.config import load_config
from seg_spark.lock import warehouse_lock
from seg_spark.stages.ingest.stage import TooFewCustomersError, check_customers
from seg_spark.tables import Table, TableStore

from conftest import NO_EXPLAIN, NO_PREDICT

pytestmark = pytest.mark.slow  # one good run of every stage, then a failing run per case

README = Path(__file__).resolve().parents[2] / "README.md"
HEADER = "order,customer,when,product,qty,price,description"
MAPPING = (
    "sources.transactions.columns={customer_id: customer, order_id: order, ts: when, product_id: product, "
    "quantity: qty, unit_price: price, description: description, category: null, channel: null, "
    "discount: null, country: null}"
)
# Tables a failed run may write for diagnosis: its own pipeline_runs row and data_quality slice.
DIAGNOSIS = {Table.PIPELINE_RUNS, Table.DATA_QUALITY}
# What a JVM error or a Python crash leaves on stderr.
STACK_TRACE_MARKS = ("Traceback", "\tat org.", "Exception in thread", "ERROR Executor", "py4j")


def _line(
    i: int, customer: str | None = None, when: str | None = None, qty: object = None, price: object = None
) -> str:
    """Line ``i`` of a log over ten customers ('000'..'009') in March 2025; any field can be replaced."""
    customer = f"{i % 10:03d}" if customer is None else customer
    when = when or f"2025-03-{1 + i % 28:02d} 10:00:00"
    qty = 1 + i % 3 if qty is None else qty
    price = 2.5 + i if price is None else price
    return f"o{i},{customer},{when},p{i % 5},{qty},{price},mug\n"


def _log(lines: list[str]) -> str:
    return HEADER + "\n" + "".join(lines)


GOOD_LINES = [_line(i) for i in range(40)]


def settings_overrides(root: Path) -> list[str]:
    """The corpus's configuration: a tiny CSV log beside ``root``, no MLflow, k = 2 fitted directly (no sweep,
    no bootstraps), two customers per segment at least."""
    return [
        f"storage.root={root}",
        "tracking.enabled=false",
        f"sources.transactions.path={root.parent / 'transactions.csv'}",  # the good run's log
        "sources.transactions.format=csv",
        "sources.transactions.timestamp_format=yyyy-MM-dd HH:mm:ss",
        MAPPING,
        "quality.clock=2025-06-01T00:00:00",
        "features.families=[rfm]",
        "features.product_groups.enabled=never",
        "model.features=[recency_days, frequency, monetary]",
        "model.prep.log1p_features=[recency_days, frequency, monetary]",
        "model.selection.enabled=false",
        "model.k=2",
        "model.stability.bootstraps=0",
        "model.kmeans_restarts=1",
        "model.min_customers_per_segment=2",
        # Four customers with a few orders each: too few for CLV or churn (their own errors are tested in
        # tests/unit/test_predict_stage.py).
        *NO_PREDICT,
        *NO_EXPLAIN,
    ]


def _args(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def _run(args: list[str]) -> tuple[int, str, str]:
    """``seg-spark ARGS`` in-process: exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


COMMIT_FILE = re.compile(r"^(\d{20})\.json$")


def delta_state(path: Path) -> tuple[int, int] | None:
    """(latest version, rows) of the Delta table at ``path``, replayed from its log; None: no table there.

    The rows are the sum of the live files' ``numRecords`` statistics, which Delta answers ``count(*)``
    from too: no Spark job, so it can run after every case (the fixture checks it against Spark once).
    """
    log = path / "_delta_log"
    commits = sorted(int(m[1]) for p in log.glob("*.json") if (m := COMMIT_FILE.match(p.name)))
    if not commits:
        return None
    live: dict[str, int] = {}
    first = 0
    if (log / "_last_checkpoint").exists():
        first = json.loads((log / "_last_checkpoint").read_text())["version"]
        adds = pq.read_table(log / f"{first:020d}.checkpoint.parquet", columns=["add"]).column("add").to_pylist()
        live = {add["path"]: json.loads(add["stats"])["numRecords"] for add in adds if add}
        first += 1
    for version in (v for v in commits if v >= first):
        for line in (log / f"{version:020d}.json").read_text().splitlines():
            action = json.loads(line)
            if "add" in action:
                live[action["add"]["path"]] = json.loads(action["add"]["stats"])["numRecords"]
            elif "remove" in action:
                live.pop(action["remove"]["path"], None)
    return commits[-1], sum(live.values())


def consumer_state(store: TableStore) -> dict[str, tuple[int, int] | None]:
    """(Delta version, rows) of every table a consumer reads; None for a table that does not exist."""
    return {t.value: delta_state(Path(store.path(t))) for t in Table if t not in DIAGNOSIS}


# ---------------------------------------------------------------------------------------
# The good run: a warehouse every failing case must leave as it is
# ---------------------------------------------------------------------------------------

# Bytes a Windows/Latin-1 export holds for 'Café crème', read with the default UTF-8.
LATIN1_DESCRIPTION = "Café crème".encode("latin-1")
PROFILES = "cust,age\n000,18-24\n001,25-34\n007,35-44\n007,45-54\n"  # customer 007 twice: one is quarantined
AS_OF = date(2025, 3, 29)  # the day after the last clean line
EVENTS = [
    {"user": "007", "at": "2025-03-10 09:00:00", "session": "s1"},
    {"user": "007", "at": "2025-03-10 09:05:00", "session": "s1"},
    {"user": "007", "at": "2025-03-29 09:00:00", "session": "s2"},  # on the as-of date: not counted
    {"user": "007", "at": "2025-04-15 09:00:00", "session": "s3"},  # after the as-of date: not counted
    {"user": "001", "at": "2025-03-12 12:00:00", "session": "s4"},
]


def _good_source(folder: Path) -> list[str]:
    """The good run's sources, holding every input that must not fail a run; returns their overrides."""
    text = _log(
        [
            *GOOD_LINES[:20],
            HEADER + "\n",  # a second export appended to the first: its header line is quarantined
            *GOOD_LINES[20:],
            _line(40, qty="two"),  # a word for a number: quarantined
            _line(41, qty=-2),  # a negative quantity without a cancellation prefix: kept as a return
            _line(42, qty=0),  # a zero quantity: kept, amount 0
        ]
    ).encode()
    tx = folder / "transactions.csv"
    tx.write_bytes(text.replace(b",mug\no3,", b"," + LATIN1_DESCRIPTION + b"\no3,"))
    profiles = folder / "profiles.csv"
    profiles.write_text(PROFILES)
    events = folder / "events.json"
    lines = [json.dumps(e) for e in EVENTS]
    events.write_text("\n".join([*lines[:2], '{"user": "009", "at": "2025-03-1', *lines[2:]]) + "\n")
    return [
        f"sources.profiles.path={profiles}",
        "sources.profiles.format=csv",
        "sources.profiles.columns={customer_id: cust, age_band: age}",
        f"sources.events.path={events}",
        "sources.events.format=json",
        "sources.events.timestamp_format=yyyy-MM-dd HH:mm:ss",
        "sources.events.columns={customer_id: user, ts: at, session_id: session, event_type: null}",
    ]


@dataclass(frozen=True)
class Warehouse:
    """The good run's warehouse, the warnings it logged, and the state every failing case must leave."""

    root: Path
    store: TableStore
    state: dict[str, tuple[int, int] | None]
    warnings: list[str]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def warehouse(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Warehouse:
    folder = tmp_path_factory.mktemp("bad-input")
    root = folder / "warehouse"
    overrides = [*settings_overrides(root), *_good_source(folder)]
    records = _Records()
    logging.getLogger("seg_spark").addHandler(records)
    try:
        code, _, err = _run(["run", "--run-id", "good", *_args(overrides)])
    finally:
        logging.getLogger("seg_spark").removeHandler(records)
    assert code == 0, err
    assert not [mark for mark in STACK_TRACE_MARKS if mark in err], err
    store = TableStore(spark, load_config([], overrides))
    state = consumer_state(store)
    assert state[Table.SEGMENT_ASSIGNMENTS] == (0, 10), state  # every stage committed, once
    # The log replay agrees with Delta's own history and count.
    assert state == {
        t.value: (store.version(t), store.read(t).count()) if store.exists(t) else None
        for t in Table
        if t not in DIAGNOSIS
    }
    return Warehouse(root, store, state, records.messages)


# ---------------------------------------------------------------------------------------
# The failing cases
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One bad input: what it is (README), how to make it, and how the run must end.

    ``make(folder)`` writes the input under ``folder`` and returns the path the message names and the
    command-line arguments the run adds. ``message`` is the start of the first stderr line after
    ``seg-spark: ``, with ``{path}`` for that path (``<path>`` in the README); ``later`` are texts the
    rest of the message holds (the rule that failed, the setting to change).
    """

    id: str
    input: str
    exit: int
    message: str
    make: Callable[[Path], tuple[Path, list[str]]]
    later: tuple[str, ...] = ()


def _source(path: Path, fmt: str, *extra: str) -> list[str]:
    return _args([f"sources.transactions.path={path}", f"sources.transactions.format={fmt}", *extra])


def _file(name: str, content: str | bytes, *extra: str, fmt: str = "csv") -> Callable[[Path], tuple[Path, list[str]]]:
    def make(folder: Path) -> tuple[Path, list[str]]:
        path = folder / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path, _source(path, fmt, *extra)

    return make


def _parquet(name: str, table: pa.Table, fmt: str = "parquet") -> Callable[[Path], tuple[Path, list[str]]]:
    def make(folder: Path) -> tuple[Path, list[str]]:
        path = folder / name
        pq.write_table(table, path)
        return path, _source(path, fmt)

    return make


def _parquet_folder(name: str, fmt: str) -> Callable[[Path], tuple[Path, list[str]]]:
    def make(folder: Path) -> tuple[Path, list[str]]:
        path = folder / name
        path.mkdir()
        pq.write_table(GOOD_TABLE, path / "part-00000.parquet")
        return path, _source(path, fmt)

    return make


def _unset_variable(folder: Path) -> tuple[Path, list[str]]:
    conf = folder / "env.yaml"
    conf.write_text("sources:\n  transactions:\n    path: ${DATA_DIR}/transactions.csv\n    format: csv\n")
    return conf, ["--config", str(conf)]


def _root_is_a_file(folder: Path) -> tuple[Path, list[str]]:
    path = folder / "lake"
    path.write_text("a file where the warehouse belongs\n")
    return path, _args([f"storage.root={path}"])


# Locks the cases hold for the rest of the session (their folders are the cases' own).
_HELD: list[contextlib.AbstractContextManager[None]] = []


@pytest.fixture(scope="module", autouse=True)
def _release_held_locks() -> Iterator[None]:
    yield
    while _HELD:
        _HELD.pop().__exit__(None, None, None)


def _warehouse_in_use(folder: Path) -> tuple[Path, list[str]]:
    """A warehouse whose lock another holder has (flock: another open file conflicts even in this process)."""
    root = folder / "busy"
    lock = warehouse_lock(str(root), "seg-spark maintain")
    lock.__enter__()
    _HELD.append(lock)
    return root, _args([f"storage.root={root}"])


def _gzipped(fraction: float) -> bytes:
    packed = gzip.compress(_log(GOOD_LINES).encode())
    return packed[: int(len(packed) * fraction)]


GOOD_TABLE = pa.table(
    {
        "order": [f"o{i}" for i in range(40)],
        "customer": [f"{i % 10:03d}" for i in range(40)],
        "when": [f"2025-03-{1 + i % 28:02d} 10:00:00" for i in range(40)],
        "product": [f"p{i % 5}" for i in range(40)],
        "qty": [1 + i % 3 for i in range(40)],
        "price": [{"amount": 2.5 + i, "currency": "EUR"} for i in range(40)],  # a struct where a number belongs
        "description": ["mug"] * 40,
    }
)
THRESHOLDS = "sources.transactions (40 rows) fails its quality thresholds; nothing was modelled."

CASES = [
    Case(
        "day_first_dates",
        "dates written dd/mm/yyyy where `timestamp_format` says yyyy-MM-dd",
        3,
        THRESHOLDS,
        _file("day_first.csv", _log([_line(i, when=f"{1 + i % 28:02d}/03/2025 10:00:00") for i in range(40)])),
        ("invalid_timestamp: 40 rows, e.g.", "-> set sources.transactions.timestamp_format"),
    ),
    Case(
        "european_decimals",
        'European decimals (`"1.234,56"`)',
        3,
        THRESHOLDS,
        _file("decimals.csv", _log([_line(i, price='"1.234,56"') for i in range(40)])),
        ("invalid_number: 40 rows, e.g.", "(a decimal comma such as 1.234,56?)"),
    ),
    Case(
        "future_timestamps",
        "every timestamp after `quality.clock` (now)",
        3,
        THRESHOLDS,
        _file("future.csv", _log([_line(i, when=f"2027-03-{1 + i % 28:02d} 10:00:00") for i in range(40)])),
        ("future_timestamp: 40 rows, e.g.", "or set quality.clock for a historical log"),
    ),
    Case(
        "parquet_with_odd_types",
        "a Parquet file whose price column is a struct",
        3,
        "sources.transactions ({path}): column 'price' (mapped as unit_price) has type "
        "struct<amount:double,currency:string>, expected a number or text holding a number.",
        _parquet("odd_types.parquet", GOOD_TABLE),
    ),
    Case(
        "missing_path",
        "a path that does not exist",
        3,
        "cannot read sources.transactions at '{path}' as csv: [PATH_NOT_FOUND]",
        lambda folder: (folder / "nowhere.csv", _source(folder / "nowhere.csv", "csv")),
    ),
    Case(
        "unset_environment_variable",
        "`${DATA_DIR}` in a config file with `DATA_DIR` unset",
        2,
        "config file {path} uses environment variable(s) that are not set: DATA_DIR (line 3)",
        _unset_variable,
    ),
    Case(
        "truncated_gzip",
        "a truncated `.csv.gz` (an interrupted download)",
        3,
        "sources.transactions at '{path}' is a truncated gzip file: its compressed data ends before the gzip "
        "end marker",
        _file("cut.csv.gz", _gzipped(0.6)),
    ),
    Case(
        "corrupt_gzip",
        "a `.csv.gz` that is not gzip (random bytes)",
        3,
        "sources.transactions at '{path}' is not a valid gzip file (the gzip reader says: not a gzip file)",
        _file("noise.csv.gz", bytes(random.Random(15).randrange(256) for _ in range(2048))),
    ),
    Case(
        "storage_root_is_a_file",
        "`storage.root` that is a file",
        2,
        "storage.root = '{path}' is a file, not a folder: point storage.root at a folder",
        _root_is_a_file,
    ),
    Case(
        "warehouse_in_use",
        "a `storage.root` another seg-spark process is running on (its lock is held)",
        2,
        "storage.root = '{path}' is in use by another seg-spark process (seg-spark maintain, pid ",
        _warehouse_in_use,
        later=("runs of one warehouse take turns",),
    ),
    Case(
        "zero_byte_file",
        "a 0-byte CSV file",
        3,
        "sources.transactions at '{path}' is empty (no header line, no rows)",
        _file("empty.csv", b""),
    ),
    Case(
        "semicolon_delimited",
        "a `;`-delimited CSV read with the default `,`",
        3,
        "sources.transactions at '{path}' has a single column 'order;customer;when;product;qty;price;description' "
        "that contains ';': the file looks ';'-delimited. Set sources.transactions.options.sep: \";\"",
        _file("semicolons.csv", _log(GOOD_LINES).replace(",", ";")),
    ),
    Case(
        "parquet_configured_as_csv",
        "a Parquet file configured as `format: csv`",
        3,
        "sources.transactions at '{path}' does not look like CSV: its first line holds binary bytes",
        _parquet("export.parquet", GOOD_TABLE.drop_columns(["price"]), fmt="csv"),
    ),
    Case(
        "duplicate_column_names",
        "a header that names a mapped column twice",
        3,
        "sources.transactions ({path}): sources.transactions.columns.customer_id maps to column 'customer', which "
        "the source's header names 2 times (read as customer1, customer7).",
        _file("twice.csv", _log(GOOD_LINES).replace("\n", ",000\n").replace("description,000", "description,customer")),
    ),
    Case(
        "delta_path_not_a_delta_table",
        "a `format: delta` path that holds plain Parquet files",
        3,
        "sources.transactions at '{path}' is not a Delta table (Delta finds no _delta_log there",
        _parquet_folder("not_delta", "delta"),
    ),
    Case(
        "one_customer",
        "every line from one customer",
        3,
        "sources.transactions holds 1 customer with clean lines; the segmentation needs at least 4 "
        "(model.k = 2 x model.min_customers_per_segment = 2): nothing was written",
        _file("one_customer.csv", _log([_line(i, customer="042") for i in range(40)])),
    ),
    Case(
        "fewer_customers_than_k_min",
        "fewer customers than `model.selection.k_min`",
        3,
        "sources.transactions holds 2 customers with clean lines; the segmentation needs at least 6 "
        "(model.selection.k_min = 3 x model.min_customers_per_segment = 2)",
        _file(
            "two_customers.csv",
            _log([_line(i, customer=f"{i % 2:03d}") for i in range(40)]),
            "model.selection.enabled=true",
            "model.selection.k_min=3",
            "model.selection.k_max=4",
        ),
    ),
    Case(
        "k_50_on_10_customers",
        "`model.k: 50` with selection off on 10 customers",
        3,
        "sources.transactions holds 10 customers with clean lines; the segmentation needs at least 100 "
        "(model.k = 50 x model.min_customers_per_segment = 2)",
        _file("ten_customers.csv", _log(GOOD_LINES), "model.k=50"),
    ),
    Case(
        "unknown_config_key",
        "an unknown key (`--set model.kk=3`)",
        2,
        "invalid configuration (conf/local.yaml + --set",
        lambda folder: (folder, _args(["model.kk=3"])),
    ),
]


def _first_line(stderr: str) -> str:
    return stderr.splitlines()[0] if stderr else ""


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_stops_the_run_and_changes_nothing_a_consumer_reads(
    warehouse: Warehouse, case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATA_DIR", raising=False)
    path, args = case.make(tmp_path)
    before = _files(tmp_path)

    # The case's own arguments come last: a --set there wins over the corpus's settings.
    code, _, stderr = _run(["run", *_args(settings_overrides(warehouse.root)), *args])

    assert code == case.exit, stderr
    assert _first_line(stderr).startswith("seg-spark: " + case.message.format(path=path)), stderr
    assert [text for text in case.later if text in stderr] == list(case.later), stderr
    assert not [mark for mark in STACK_TRACE_MARKS if mark in stderr], stderr
    assert consumer_state(warehouse.store) == warehouse.state
    # Nothing appeared or changed beside the input either (a storage root that is a file stays that file).
    assert _files(tmp_path) == before


def _files(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


def test_an_appended_batch_counts_the_customers_already_clean(spark: SparkSession, warehouse: Warehouse) -> None:
    """A daily batch's customers add to the ten already in transactions_clean (the check only reads)."""
    batch = SimpleNamespace(
        profile={("customers_clean", ""): 2.0},
        clean=spark.createDataFrame([("042",), ("007",)], "customer_id string"),  # 007 is already there
    )

    def context(*overrides: str) -> SimpleNamespace:
        settings = load_config(
            [], [*settings_overrides(warehouse.root), "sources.transactions.mode=append", *overrides]
        )
        return SimpleNamespace(settings=settings, store=warehouse.store)

    check_customers(context("model.k=5"), batch)  # 11 customers, 10 needed
    with pytest.raises(
        TooFewCustomersError, match=r"holds 11 customers with clean lines; .* at least 12 \(model.k = 6"
    ):
        check_customers(context("model.k=6"), batch)
    assert consumer_state(warehouse.store) == warehouse.state


# ---------------------------------------------------------------------------------------
# Inputs that are not failures by design: all in the good run, checked in what it wrote
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Accepted:
    """An input the run accepts (exit 0); ``test_accepted_<id>`` checks what it does."""

    id: str
    input: str
    outcome: str


ACCEPTED = [
    Accepted("leading_zero_ids", "customer ids with leading zeros (`007`)", "kept as text: `007` stays `007`"),
    Accepted(
        "latin1_read_as_utf8",
        "Latin-1 bytes in a file read as UTF-8 (the default)",
        "loaded with U+FFFD, counted as `invalid_encoding` in `data_quality`, and a warning "
        "`sources.transactions: <n> rows hold characters that could not be decoded ... set "
        "sources.transactions.options.encoding`",
    ),
    Accepted(
        "repeated_header_line",
        "a header line in the middle of the file (two exports concatenated)",
        "that line quarantined (`invalid_timestamp`, its text in `raw_record`)",
    ),
    Accepted("words_in_a_few_numbers", "a quantity written as a word on a few lines", "quarantined (`invalid_number`)"),
    Accepted(
        "non_positive_quantities",
        "a negative or zero quantity on an order that is not a cancellation",
        "negative: kept as a return (`is_return`, negative amount); zero: kept with amount 0",
    ),
    Accepted(
        "duplicate_profiles",
        "a profiles file with two rows for one customer",
        "one row per customer in `customer_profiles`, the other quarantined (`duplicate_customer`)",
    ),
    Accepted(
        "json_broken_line",
        "a JSON source (events) with one broken line",
        "that line quarantined (`malformed_record`, its text in `raw_record`)",
    ),
    Accepted(
        "events_after_as_of",
        "events on or after the as-of date",
        "kept in `events_clean`, not counted in `web_events`, `web_sessions`, `days_since_last_event`",
    ),
]


def _quarantined(warehouse: Warehouse, source: str) -> list[tuple[str, str]]:
    rows = warehouse.store.read(Table.TRANSACTIONS_QUARANTINE).filter(F.col("source") == source).collect()
    return sorted((r.reason_code, r.raw_record) for r in rows)


def test_accepted_leading_zero_ids(warehouse: Warehouse) -> None:
    ids = {f"{i:03d}" for i in range(10)}
    clean = warehouse.store.read(Table.TRANSACTIONS_CLEAN).select("customer_id").distinct().collect()
    assert {r.customer_id for r in clean} == ids
    segments = warehouse.store.read(Table.CUSTOMER_SEGMENTS).select("customer_id").collect()
    assert {r.customer_id for r in segments} == ids


def test_accepted_latin1_read_as_utf8(warehouse: Warehouse) -> None:
    (warning,) = [m for m in warehouse.warnings if "could not be decoded" in m]
    assert warning.startswith(
        "sources.transactions: 1 rows hold characters that could not be decoded (shown as U+FFFD)"
    )
    assert "set sources.transactions.options.encoding (e.g. ISO-8859-1 or windows-1252)" in warning
    dq = warehouse.store.read(Table.DATA_QUALITY).filter("run_id = 'good' AND metric = 'invalid_encoding'").collect()
    assert [(r.source, r.value) for r in dq] == [("transactions", 1.0)]
    (line,) = warehouse.store.read(Table.TRANSACTIONS_CLEAN).filter(F.col("order_id") == "o2").collect()
    assert line.description == "Caf\ufffd cr\ufffdme"


def test_accepted_repeated_header_line(warehouse: Warehouse) -> None:
    header = json.dumps(dict(zip(HEADER.split(","), HEADER.split(","), strict=True)), separators=(",", ":"))
    assert ("invalid_timestamp", header) in _quarantined(warehouse, "transactions")


def test_accepted_words_in_a_few_numbers(warehouse: Warehouse) -> None:
    bad = [raw for reason, raw in _quarantined(warehouse, "transactions") if reason == "invalid_number"]
    assert [json.loads(raw)["qty"] for raw in bad] == ["two"]


def test_accepted_non_positive_quantities(warehouse: Warehouse) -> None:
    lines = warehouse.store.read(Table.TRANSACTIONS_CLEAN).filter(F.col("order_id").isin("o41", "o42")).collect()
    by_order = {r.order_id: (r.quantity, r.amount, r.is_return) for r in lines}
    assert by_order == {"o41": (-2.0, -2 * 43.5, True), "o42": (0.0, 0.0, False)}


def test_accepted_duplicate_profiles(warehouse: Warehouse) -> None:
    profiles = warehouse.store.read(Table.CUSTOMER_PROFILES).collect()
    assert sorted(r.customer_id for r in profiles) == ["000", "001", "007"]
    assert [reason for reason, _ in _quarantined(warehouse, "profiles")] == ["duplicate_customer"]


def test_accepted_json_broken_line(warehouse: Warehouse) -> None:
    assert _quarantined(warehouse, "events") == [("malformed_record", '{"user": "009", "at": "2025-03-1')]


def test_accepted_events_after_as_of(warehouse: Warehouse) -> None:
    assert warehouse.store.read(Table.EVENTS_CLEAN).count() == len(EVENTS)
    features = warehouse.store.read(Table.CUSTOMER_FEATURES).filter(F.col("customer_id") == "007").collect()
    (row,) = features
    assert row.as_of_date == AS_OF
    # Only the two events of 2025-03-10 (one session) are before the as-of date.
    assert (row.web_events, row.web_sessions, row.days_since_last_event) == (2.0, 1.0, 19.0)


# ---------------------------------------------------------------------------------------
# The README lists the corpus
# ---------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def readme_tables() -> str:
    """README.md's corpus tables, generated from CASES and ACCEPTED."""
    lines = ["| case | input | message (after `seg-spark: `) starts with | exit |", "|---|---|---|---|"]
    for case in CASES:
        message = f"`{case.message.format(path='<path>')}`" + "".join(f" … `{text}`" for text in case.later)
        lines.append(f"| `{case.id}` | {_cell(case.input)} | {_cell(message)} | {case.exit} |")
    lines += ["", "Not failures by design (exit 0):", "", "| case | input | what happens |", "|---|---|---|"]
    lines += [f"| `{a.id}` | {_cell(a.input)} | {_cell(a.outcome)} |" for a in ACCEPTED]
    return "\n".join(lines) + "\n"


def test_the_readme_lists_every_case_with_its_message_and_exit_code() -> None:
    assert readme_tables() in README.read_text(), "README.md's corpus tables should read:\n" + readme_tables()
    assert all(f"test_accepted_{a.id}" in globals() for a in ACCEPTED)
    assert len({c.id for c in CASES} | {a.id for a in ACCEPTED}) == len(CASES) + len(ACCEPTED) >= 20


# ---------------------------------------------------------------------------------------
# The JVM's own stderr at the default log level (in-process runs cannot see it)
# ---------------------------------------------------------------------------------------


def test_a_failed_task_is_not_logged_again_by_spark_at_the_default_log_level() -> None:
    """A task failing on a corrupt file is logged by the executor and the scheduler, stack trace included:
    seg-spark's log4j profile silences both (``--log-level debug`` uses Spark's own profile)."""
    profile = (README.parent / "seg_spark" / "log4j2.properties").read_text()
    pairs = dict(line.split(" = ", 1) for line in profile.splitlines() if " = " in line and not line.startswith("#"))
    levels = {pairs[f"logger.{key}.name"]: pairs[f"logger.{key}.level"] for key in ("executor", "tasks")}
    assert levels == {
        "org.apache.spark.executor.Executor": "OFF",
        "org.apache.spark.scheduler.TaskSetManager": "OFF",
    }
