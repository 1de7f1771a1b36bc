"""spark-submit entry point for the synthetic transaction-log generator.

    spark-submit [spark options] jobs/generate.py --customers 2000000 --days 365 --out /data/synth

Arguments are those of ``seg-spark generate``.
"""

import sys

from seg_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
