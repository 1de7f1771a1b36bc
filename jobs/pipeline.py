"""spark-submit entry point for the whole pipeline (ingest, features, segment, publish).

    spark-submit [spark options] jobs/pipeline.py --config conf/local.yaml [--set key=value ...]

Arguments are those of ``seg-spark run``; all work happens in the ``seg_spark`` library.
"""

import sys

from seg_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
