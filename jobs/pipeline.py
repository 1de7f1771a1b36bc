"""spark-submit entry point for the whole pipeline (every stage, in order).

    spark-submit [spark options] jobs/pipeline.py --config conf/local.yaml [--set key=value ...]

Arguments are those of ``seg-spark run``; all work happens in the ``seg_spark`` library.
"""

import sys

from seg_spark.cli import run_stage_main

if __name__ == "__main__":
    sys.exit(run_stage_main(None))
