"""spark-submit entry point for the explain stage alone.

    spark-submit [spark options] jobs/explain.py --config conf/local.yaml --run-id RUN [--set key=value ...]

Arguments are those of ``seg-spark run --stage explain``; the stages of one run share ``--run-id``.
"""

import sys

from seg_spark.cli import run_stage_main

if __name__ == "__main__":
    sys.exit(run_stage_main("explain"))
