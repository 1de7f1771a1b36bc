"""``seg-spark serve-sql``: the warehouse's tables over JDBC/ODBC, through Spark's Thrift server.

The PyPI wheel of PySpark ships the Thrift server (``HiveThriftServer2``) and ``beeline`` but no
start script, so the server is launched with ``spark-submit --class``, Delta enabled, its Hive
metastore (Derby) in a scratch folder that goes when the server stops. Once it listens, every
table of ``storage.root`` is registered in the configured database (``storage.database``,
default ``seg_spark``) through the server itself (``CREATE TABLE ... USING DELTA LOCATION``):
the tables stay where they are, and readers see each new version as it is committed.

The server stops on Ctrl-C or SIGTERM (it runs in its own process group, which is stopped with
it), and the command exits 0.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from seg_spark.config import Settings
from seg_spark.errors import ConfigError, SegSparkError
from seg_spark.preflight import local_folder
from seg_spark.session import DELTA_SQL_CONF, LOG4J_PROFILE
from seg_spark.tables import Table, registration_statements

log = logging.getLogger(__name__)

THRIFT_SERVER = "org.apache.spark.sql.hive.thriftserver.HiveThriftServer2"
DEFAULT_DATABASE = "seg_spark"
# Delta's own JARs go on the driver's class path: the server's session threads do not see JARs
# added with --jars. Its dependencies are Spark's own (a second, older Jackson would break Spark).
_DRIVER_JARS = ("io.delta_delta-spark_", "io.delta_delta-storage-")
_STOP_SECONDS = 30
_PROGRESS_ARTIFACT = re.compile(r"^null +\nnull", flags=re.M)


class PortInUseError(ConfigError):
    """The port asked for is taken."""


class ServerError(SegSparkError):
    """The Thrift server did not start, or stopped by itself."""


@dataclass(frozen=True)
class Endpoint:
    """Where the server listens."""

    host: str
    port: int

    def url(self, database: str = "") -> str:
        """The JDBC URL (of a database, when given)."""
        return f"jdbc:hive2://{self.host}:{self.port}/{database}"


def spark_tool(name: str) -> str:
    """A launcher of the installed PySpark (``spark-submit``, ``beeline``)."""
    import pyspark

    return str(Path(pyspark.__file__).parent / "bin" / name)


def check_port_free(endpoint: Endpoint) -> None:
    """Raise ``PortInUseError`` when something already listens on the endpoint."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((endpoint.host, endpoint.port))
        except OSError as exc:
            raise PortInUseError(
                f"cannot serve on {endpoint.host}:{endpoint.port}: {exc.strerror or exc}. Stop what listens "
                "there or choose another port with --port"
            ) from None


def database_of(settings: Settings) -> str:
    """The database the tables are registered in."""
    return settings.storage.database or DEFAULT_DATABASE


def existing_tables(settings: Settings) -> dict[str, str]:
    """Table name -> location, for every seg-spark table under a local ``storage.root``.

    Raises:
        ConfigError: ``storage.root`` is remote (query it from that platform's SQL service), or
            holds no table yet.
    """
    root = local_folder(settings.storage.root)
    if root is None:
        raise ConfigError(
            f"serve-sql serves a local storage.root, not {settings.storage.root!r}: on a cluster, register the "
            "tables with storage.database and query them with that platform's SQL service (e.g. Databricks SQL)"
        )
    tables = {}
    for table in Table:
        name = getattr(settings.tables, table.value)
        location = settings.storage_path(name)
        if (Path(location) / "_delta_log").is_dir():
            tables[name] = location
    if not tables:
        raise ConfigError(
            f"storage.root = {settings.storage.root} holds no seg-spark table yet: run the pipeline first"
        )
    return tables


def registration_sql(database: str, tables: dict[str, str]) -> str:
    """The statements that register the tables (idempotent), as one beeline script."""
    return ";\n".join(registration_statements(database, tables)) + ";\n"


def server_command(settings: Settings, endpoint: Endpoint, scratch: Path, delta_jars: list[str]) -> list[str]:
    """The ``spark-submit`` command that starts the Thrift server."""
    spark = settings.spark
    conf = {
        **DELTA_SQL_CONF,
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.enabled": "false",
        "spark.sql.warehouse.dir": str(scratch / "warehouse"),
        # Delta answers MIN/MAX of a date from its metadata with a java.sql.Date, which the Thrift
        # server's sessions (Java 8 time API on) fail to cast: a ClassCastException in the optimizer.
        "spark.databricks.delta.optimizeMetadataQuery.enabled": "false",
        **spark.conf,
    }
    java = f"-Duser.timezone=UTC -Dderby.system.home={scratch} -Dseg_spark.log_level={spark.log_level}"
    java += f" -Dlog4j2.configurationFile={LOG4J_PROFILE}"
    command = [spark_tool("spark-submit"), "--class", THRIFT_SERVER, "--name", "seg-spark serve-sql"]
    command += ["--master", spark.master or "local[*]", "--driver-java-options", java]
    command += ["--driver-class-path", os.pathsep.join(delta_jars)]
    if spark.driver_memory:
        command += ["--driver-memory", spark.driver_memory]
    for key, value in conf.items():
        command += ["--conf", f"{key}={value}"]
    metastore = f"jdbc:derby:;databaseName={scratch / 'metastore_db'};create=true"
    command += ["spark-internal", "--hiveconf", f"javax.jdo.option.ConnectionURL={metastore}"]
    command += ["--hiveconf", f"hive.server2.thrift.port={endpoint.port}"]
    return [*command, "--hiveconf", f"hive.server2.thrift.bind.host={endpoint.host}"]


def delta_driver_jars(settings: Settings) -> list[str]:
    """Delta's JAR files, resolved from Maven Central on first use (by starting Spark once) and cached."""
    from seg_spark.session import cached_jars, delta_packages, get_spark

    packages = delta_packages()
    jars = cached_jars(packages)
    if jars is None:
        log.info("resolving the Delta Lake JARs (first use)")
        get_spark(settings.spark).stop()
        jars = cached_jars(packages)
    paths = [jar.removeprefix("file://") for jar in (jars or "").split(",")]
    wanted = [p for p in paths if Path(p).name.startswith(_DRIVER_JARS)]
    if len(wanted) != len(_DRIVER_JARS):
        raise ServerError(f"Delta's JARs ({packages}) could not be resolved; check access to Maven Central")
    return wanted


def beeline(endpoint: Endpoint, sql: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run SQL statements through the server with beeline (CSV output, no banner)."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write(sql)
    try:
        command = [spark_tool("beeline"), "-u", endpoint.url(), "--silent=true", "--outputformat=csv2"]
        command += ["--showHeader=true", "-f", script.name]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    finally:
        Path(script.name).unlink(missing_ok=True)
    # Beeline's progress line, when there is no terminal, comes out as "null" padded with spaces and
    # a "null" stuck to the next line, at times: take it out so the output is plain CSV.
    done.stdout = _PROGRESS_ARTIFACT.sub("", done.stdout)
    return done


@contextmanager
def _stop_signals() -> Iterator[list[int]]:
    """Collect SIGINT/SIGTERM instead of dying of them, so the server is always stopped first."""
    received: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def serve(settings: Settings, endpoint: Endpoint, start_timeout: float = 300) -> int:
    """Start the Thrift server, register the tables, and serve until Ctrl-C or SIGTERM.

    Returns:
        The exit code (0 after a requested stop).

    Raises:
        PortInUseError: The port is taken.
        ServerError: The server did not start or stopped by itself (its log's end is shown).
    """
    check_port_free(endpoint)
    tables, database = existing_tables(settings), database_of(settings)
    jars = delta_driver_jars(settings)
    scratch = Path(tempfile.mkdtemp(prefix="seg-spark-serve-sql-"))
    server_log = scratch / "server.log"
    with _stop_signals() as stop, server_log.open("w") as sink:
        server = subprocess.Popen(
            server_command(settings, endpoint, scratch, jars),
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches this process only, which stops the server cleanly
        )
        try:
            registration = registration_sql(database, tables)
            if _register_when_serving(endpoint, server, registration, stop, start_timeout, server_log):
                log.info("registered %s in %s", ", ".join(tables), database)
                print(f"serving {len(tables)} tables of {settings.storage.root} in database {database}")
                print(f"JDBC URL: {endpoint.url(database)}   (Ctrl-C or SIGTERM stops the server)", flush=True)
            while not stop and server.poll() is None:
                time.sleep(0.2)
            if not stop:
                raise ServerError(
                    f"the Thrift server stopped by itself (exit {server.returncode}):\n{_tail(server_log)}"
                )
        finally:
            _stop(server)
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"stopped the server on {endpoint.host}:{endpoint.port}", file=sys.stderr)
    return 0


def _register_when_serving(
    endpoint: Endpoint,
    server: subprocess.Popen[bytes],
    registration: str,
    stop: list[int],
    timeout: float,
    server_log: Path,
) -> bool:
    """Register the tables as soon as the server opens sessions (it listens a little before it can).

    Returns:
        True once registered; False when a stop was asked for first.

    Raises:
        ServerError: The server ended, or did not answer in time, or refused the statements.
    """
    deadline = time.monotonic() + timeout
    while not stop:
        if server.poll() is not None:
            raise ServerError(f"the Thrift server did not start (exit {server.returncode}):\n{_tail(server_log)}")
        if time.monotonic() > deadline:
            raise ServerError(f"the Thrift server did not answer within {timeout:.0f} s:\n{_tail(server_log)}")
        if _listening(endpoint):
            done = beeline(endpoint, registration)
            if done.returncode == 0:
                return True
            if "Could not open client transport" not in done.stderr:  # connected, and a statement failed
                raise ServerError(f"registering the tables failed:\n{done.stderr[-3000:]}\n{_tail(server_log)}")
        time.sleep(1)
    return False


def _listening(endpoint: Endpoint) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        return probe.connect_ex((endpoint.host, endpoint.port)) == 0


def _stop(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group, SIGKILL if it is still there after a while."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=_STOP_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def _tail(path: Path, lines: int = 30) -> str:
    """The end of the server's log, without Java stack frames."""
    text = path.read_text(errors="replace").splitlines() if path.exists() else []
    kept = [line for line in text if not line.startswith("\tat ")]
    return "\n".join(kept[-lines:]) or "(no output)"
