"""The ``seg-spark`` command line (also behind the thin scripts in ``jobs/``).

Exit codes (``seg_spark.errors``): 0 success, 2 configuration error, 3 data error
(unreadable source, mapping that does not fit, rows lost, a stage's input missing,
unusable model input), 1 anything unexpected.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from datetime import date
from typing import TYPE_CHECKING

from seg_spark import preflight
from seg_spark.config import Settings, load_config
from seg_spark.errors import EXIT_OK, SegSparkError
from seg_spark.stages import STAGE_NAMES

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from seg_spark.pipeline import PipelineResult

log = logging.getLogger("seg_spark")


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="YAML config; repeat to layer overlays (later wins). Default: conf/local.yaml",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        metavar="KEY=VALUE",
        help="override one dotted key, e.g. --set model.k=8 (repeatable)",
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warn", "error"],
        default="info",
        help="seg-spark's messages from this level; debug also shows Spark's own start-up and INFO output",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="the same as --log-level debug")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for all seg-spark commands."""
    parser = argparse.ArgumentParser(prog="seg-spark", description="Customer segmentation on Spark and Delta Lake.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the pipeline's stages (all, or those named with --stage)")
    _config_args(run)
    run.add_argument(
        "--stage",
        action="append",
        default=[],
        choices=STAGE_NAMES,
        help="run only this stage (repeatable; they run in pipeline order). Default: every stage",
    )
    run.add_argument("--run-id", help="the run's id (shared by the stages of one run started as separate processes)")
    run.add_argument("--as-of", metavar="YYYY-MM-DD", help="as-of date of the features (sets features.as_of_date)")

    maintain = sub.add_parser(
        "maintain", help="compact every table and delete files older than storage.retention_hours"
    )
    _config_args(maintain)

    forget = sub.add_parser(
        "forget",
        help="delete customers from every table, vacuum with forget.retention_hours and record it in forget_log",
    )
    _config_args(forget)
    who = forget.add_mutually_exclusive_group(required=True)
    who.add_argument("--customer-id", action="append", default=[], metavar="ID", help="a customer id (repeatable)")
    who.add_argument("--file", metavar="IDS_TXT", help="a UTF-8 file of customer ids, one per line")

    serve = sub.add_parser(
        "serve-sql", help="serve every table over JDBC/ODBC (Spark's Thrift server) until Ctrl-C or SIGTERM"
    )
    _config_args(serve)
    serve.add_argument("--port", type=int, default=10000, help="port to listen on (default 10000)")
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only)"
    )

    backtest = sub.add_parser(
        "clv-backtest",
        help="fit BG/NBD and Gamma-Gamma on a calibration period of the source and forecast the holdout period",
    )
    _config_args(backtest)
    backtest.add_argument("--calibration-end", required=True, type=_day, metavar="YYYY-MM-DD")
    backtest.add_argument("--holdout-end", required=True, type=_day, metavar="YYYY-MM-DD")
    backtest.add_argument("--time-unit", default="week", choices=["week", "day"])
    backtest.add_argument("--json", action="store_true", help="print one JSON object instead of the report")

    report = sub.add_parser("report", help="rebuild a run's HTML report from the Delta tables (no model is refitted)")
    _config_args(report)
    report.add_argument("--run-id", help="the run (default: the run of the latest as-of date in segment_profiles)")

    gen = sub.add_parser("generate", help="write a synthetic transaction log with planted archetypes")
    _config_args(gen)
    gen.add_argument("--customers", type=int, help="number of customers (default from config)")
    gen.add_argument("--days", type=int, help="days of history (default from config)")
    gen.add_argument("--seed", type=int, help="random seed (default from config)")
    gen.add_argument("--end-date", help="first day after the log, YYYY-MM-DD (default: today)")
    gen.add_argument("--out", required=True, help="output folder (transactions/ and truth/)")
    gen.add_argument("--format", default="parquet", choices=["parquet", "csv", "json", "delta"])
    return parser


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date: write YYYY-MM-DD") from None


def _settings(args: argparse.Namespace) -> Settings:
    paths = args.config or ["conf/local.yaml"]
    overrides = list(args.overrides)
    # Validated by the config like any --set: a run id with odd characters is refused there.
    if getattr(args, "run_id", None):
        overrides.append(f"run.run_id={args.run_id}")
    if getattr(args, "as_of", None):
        overrides.append(f"features.as_of_date={args.as_of}")
    if _level(args) == logging.DEBUG:
        overrides.append("spark.log_level=INFO")
    return load_config(paths, overrides)


def _level(args: argparse.Namespace) -> int:
    if args.verbose:
        return logging.DEBUG
    return {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}[
        args.log_level
    ]


def _print_run(result: PipelineResult) -> None:
    as_of = next((r.as_of_date for r in result.stages.values() if r.as_of_date), None)
    print(f"\nseg-spark run {result.run_id}" + (f" as of {as_of}" if as_of else "") + f": {', '.join(result.stages)}")
    for stage in result.stages.values():
        for line in stage.report():
            print(f"  {line}")
    print("  Delta tables:")
    for name, path in result.tables.items():
        print(f"    {name:<24} {path}")
    if result.mlflow_run_id:
        print(f"  MLflow: run {result.mlflow_run_id} in {result.tracking_uri}")
    print(f"  finished in {result.seconds:.1f}s")
    for stage in result.stages.values():
        for line in stage.closing():
            print(line)


def _quiet_libraries() -> None:
    """Libraries' own INFO chatter (MLflow sets its level when imported: call again after)."""
    for noisy in ("py4j", "mlflow", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def _run(args: argparse.Namespace) -> int:
    from seg_spark.pipeline import run_pipeline

    _quiet_libraries()

    settings, spark = _checked_session(args)
    _print_run(run_pipeline(spark, settings, args.stage))
    return EXIT_OK


def _checked_session(args: argparse.Namespace) -> tuple[Settings, SparkSession]:
    """The settings, checked for what needs no Spark (storage root, folders), then the session."""
    from seg_spark.session import get_spark

    settings = _settings(args)
    preflight.check(settings)
    return settings, get_spark(settings.spark)


def _maintain(args: argparse.Namespace) -> int:
    from seg_spark.lock import warehouse_lock
    from seg_spark.maintenance import maintain
    from seg_spark.tables import TableStore

    settings, spark = _checked_session(args)
    with warehouse_lock(settings.storage.root, "seg-spark maintain"):  # never vacuum under a running run
        done = maintain(TableStore(spark, settings), settings.storage.retention_hours)
    print(f"seg-spark maintain {settings.storage.root} (retention {settings.storage.retention_hours:g} h):")
    for table in done:
        print(f"  {table.report()}")
    if not done:
        print("  no table yet")
    return EXIT_OK


def _forget(args: argparse.Namespace) -> int:
    from seg_spark.forget import checked_ids, forget, read_ids_file
    from seg_spark.lock import warehouse_lock
    from seg_spark.tables import TableStore

    ids = checked_ids(read_ids_file(args.file) if args.file else args.customer_id)
    settings, spark = _checked_session(args)
    with warehouse_lock(settings.storage.root, "seg-spark forget"):  # no run may write the rows back meanwhile
        result = forget(TableStore(spark, settings), settings, ids)
    print(f"seg-spark forget {result.forget_id} in {settings.storage.root}:")
    for line in result.report():
        print(f"  {line}")
    print(f"  audit: {len(result.removed)} row(s) in table {settings.tables.forget_log}")
    return EXIT_OK


def _serve_sql(args: argparse.Namespace) -> int:
    from seg_spark.serve import Endpoint, serve

    return serve(_settings(args), Endpoint(args.host, args.port))


def _clv_backtest(args: argparse.Namespace) -> int:
    import json

    from seg_spark.backtest import BACKTEST_PLOT, check_periods, clv_backtest, log_backtest
    from seg_spark.tracking import Tracker

    check_periods(args.calibration_end, args.holdout_end, args.time_unit)  # before Spark starts
    settings, spark = _checked_session(args)
    result = clv_backtest(spark, settings, args.calibration_end, args.holdout_end, args.time_unit)
    tracker = Tracker(settings)
    mlflow_run_id = log_backtest(tracker, result)
    if args.json:
        print(json.dumps(result.as_json()))
    else:
        print("seg-spark clv-backtest")
        for line in result.report():
            print(f"  {line}")
        if mlflow_run_id:
            print(f"  MLflow: run {mlflow_run_id} in {tracker.tracking_uri()} (table and {BACKTEST_PLOT})")
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    from seg_spark.stages.explain import report
    from seg_spark.tables import TableStore

    settings, spark = _checked_session(args)
    written = report.build(TableStore(spark, settings), settings, args.run_id)
    print(f"seg-spark report: run {written.run_id}, as of {written.as_of_date}")
    for segment_id, name in sorted(written.names.items()):
        print(f"  {segment_id}: {name}")
    print(f"  {written.path}")
    return EXIT_OK


def _generate(args: argparse.Namespace) -> int:
    from seg_spark.session import get_spark
    from seg_spark.synth import write_generated

    settings = _settings(args)
    updates = {
        key: value
        for key, value in (("customers", args.customers), ("days", args.days), ("seed", args.seed))
        if value is not None
    }
    overrides = [f"demo.generator.{k}={v}" for k, v in updates.items()]
    if args.end_date:
        overrides.append(f"demo.generator.end_date={args.end_date}")
    generator = settings.with_overrides(overrides).demo.generator
    spark = get_spark(settings.spark)
    paths = write_generated(spark, generator, args.out, args.format)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``seg-spark`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=_level(args),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    _quiet_libraries()
    try:
        return {
            "run": _run,
            "maintain": _maintain,
            "forget": _forget,
            "serve-sql": _serve_sql,
            "clv-backtest": _clv_backtest,
            "report": _report,
            "generate": _generate,
        }[args.command](args)
    except SegSparkError as exc:
        print(f"seg-spark: {exc}", file=sys.stderr)
        return exc.exit_code


def run_stage_main(stage: str | None, argv: Sequence[str] | None = None) -> int:
    """``seg-spark run [--stage STAGE] ARGV``: what ``jobs/<stage>.py`` and the wheel's stage entry points run."""
    args = list(sys.argv[1:] if argv is None else argv)
    return main(["run", *(["--stage", stage] if stage else []), *args])


def ingest() -> int:
    """Console entry point ``seg-spark-ingest`` (e.g. a Databricks ``python_wheel_task``)."""
    return run_stage_main("ingest")


def features() -> int:
    """Console entry point ``seg-spark-features``."""
    return run_stage_main("features")


def segment() -> int:
    """Console entry point ``seg-spark-segment``."""
    return run_stage_main("segment")


def predict() -> int:
    """Console entry point ``seg-spark-predict``."""
    return run_stage_main("predict")


def explain() -> int:
    """Console entry point ``seg-spark-explain``."""
    return run_stage_main("explain")


def publish() -> int:
    """Console entry point ``seg-spark-publish``."""
    return run_stage_main("publish")


if __name__ == "__main__":
    sys.exit(main())
