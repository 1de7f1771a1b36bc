"""The ``seg-spark`` command line (also behind the thin scripts in ``jobs/``).

Exit codes: 0 success, 2 configuration error, 3 data error (unreadable source, mapping
that does not fit, rows lost, unusable model input), 1 anything unexpected.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from seg_spark.config import ConfigError, Settings, load_config

log = logging.getLogger("seg_spark")

EXIT_OK, EXIT_UNEXPECTED, EXIT_CONFIG, EXIT_DATA = 0, 1, 2, 3


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
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for all seg-spark commands."""
    parser = argparse.ArgumentParser(prog="seg-spark", description="Customer segmentation on Spark and Delta Lake.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="ingest, features, segment and publish, end to end")
    _config_args(run)

    gen = sub.add_parser("generate", help="write a synthetic transaction log with planted archetypes")
    _config_args(gen)
    gen.add_argument("--customers", type=int, help="number of customers (default from config)")
    gen.add_argument("--days", type=int, help="days of history (default from config)")
    gen.add_argument("--seed", type=int, help="random seed (default from config)")
    gen.add_argument("--end-date", help="first day after the log, YYYY-MM-DD (default: today)")
    gen.add_argument("--out", required=True, help="output folder (transactions/ and truth/)")
    gen.add_argument("--format", default="parquet", choices=["parquet", "csv", "json", "delta"])
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    paths = args.config or ["conf/local.yaml"]
    return load_config(paths, args.overrides)


def _print_run(result) -> None:  # noqa: ANN001 - RunResult, imported lazily with Spark
    counts = result.counts
    print(f"\nseg-spark run {result.run_id} as of {result.as_of_date}")
    print(
        f"  input rows {counts.input_rows:,}: clean {counts.clean_rows:,}, quarantined "
        f"{counts.quarantined_rows:,} {counts.by_reason or ''}, duplicates removed {counts.duplicates_removed:,}"
    )
    refresh = result.refresh
    print(f"  features: {refresh.mode} refresh of the daily aggregates ({refresh.reason}), {refresh.seconds:.1f}s")
    state = result.state
    print(f"            running state {state.mode} ({state.reason}), {state.seconds:.1f}s")
    print("  Delta tables:")
    for name, path in result.tables.items():
        print(f"    {name:<24} {path}")
    if result.mlflow_run_id:
        print(f"  MLflow: run {result.mlflow_run_id} in {result.tracking_uri}")
        print(f"          model {result.model_uri} (version {result.model_version})")
    m, chosen = result.metrics, result.selection
    print(f"  model: {chosen['algorithm']} k={chosen['k']} ({chosen['reason']})")
    line = (
        f"  fit on a sample of {int(m['selection_sample_rows']):,}: silhouette {m.get('silhouette', float('nan')):.3f}"
    )
    line += f", Calinski-Harabasz {m.get('calinski_harabasz', float('nan')):.1f}"
    line += f", Davies-Bouldin {m.get('davies_bouldin', float('nan')):.3f}; {int(m['customers_modelled']):,} customers"
    print(line)
    if "stability_mean_ari" in m:
        unstable = chosen["unstable_segments"]
        print(
            f"  stability: mean adjusted Rand {m['stability_mean_ari']:.3f} over {chosen['bootstraps']} bootstraps; "
            + (f"unstable segments {unstable}" if unstable else "no unstable segment")
        )
    if "truth_adjusted_rand_index" in m:
        print(
            f"  vs known labels: adjusted Rand {m['truth_adjusted_rand_index']:.3f}, "
            f"V-measure {m['truth_v_measure']:.3f}"
        )
    if result.segment_summary:
        columns = list(result.segment_summary[0])
        print("  segments:")
        print("    " + "  ".join(f"{c:>15}" for c in columns))
        for row in result.segment_summary:
            print("    " + "  ".join(f"{row[c]:>15}" for c in columns))
    print(f"  finished in {m['seconds']:.1f}s")


def _run(args: argparse.Namespace) -> int:
    from seg_spark.pipeline import run_pipeline
    from seg_spark.session import get_spark

    settings = _settings(args)
    spark = get_spark(settings.spark)
    _print_run(run_pipeline(spark, settings))
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
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("py4j", "mlflow", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from seg_spark.io import SourceError
    from seg_spark.models.clustering import FitTimeoutError, ModelInputError
    from seg_spark.models.prep import PreparationError
    from seg_spark.privacy import PrivacyError
    from seg_spark.quality import MappingError, QualityThresholdError, ReconciliationError

    try:
        return {"run": _run, "generate": _generate}[args.command](args)
    except ConfigError as exc:
        print(f"seg-spark: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (
        SourceError,
        MappingError,
        ReconciliationError,
        QualityThresholdError,
        PrivacyError,
        ModelInputError,
        PreparationError,
        FitTimeoutError,
    ) as exc:
        print(f"seg-spark: {exc}", file=sys.stderr)
        return EXIT_DATA


if __name__ == "__main__":
    sys.exit(main())
