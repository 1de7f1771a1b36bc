"""Spark MLlib K-Means next to scikit-learn's on the same matrix, in the same run.

    .venv/bin/python bench/bench_kmeans.py --rows 1000000      # and --rows 10000000

Both fit k=8 with a fixed number of iterations (tol=0; the data is uniform noise, so neither
side converges early: the iteration counts are checked and recorded) from random centres.
scikit-learn is limited to as many threads as Spark has cores (threadpoolctl); Spark reads the
matrix once from Parquet as a ``vector`` column (the engine's own input type; ``--input array``
for ``array<double>``), cached in as many partitions as cores, and its JVM is warmed by one
untimed fit.

Each side is also timed with a single iteration, which splits its time into a fixed cost per
fit (initialisation, Spark's blockify pass and summary) and a cost per iteration:
``per_iteration = (t[iterations] - t[1]) / (iterations - 1)``. Appends a JSON line to
bench/results/kmeans.jsonl.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark import StorageLevel
from pyspark.ml.clustering import KMeans
from pyspark.ml.functions import array_to_vector
from pyspark.sql import functions as F
from record import record  # bench/record.py: the script's folder is on sys.path
from sklearn.cluster import KMeans as SkKMeans
from threadpoolctl import threadpool_info, threadpool_limits

from seg_spark.config import SparkSettings
from seg_spark.session import get_spark


def matrix(rows: int, dims: int, seed: int) -> np.ndarray:
    """Uniform noise: K-Means keeps moving its centres for many iterations."""
    return np.random.default_rng(seed).random((rows, dims))


def write_parquet(x: np.ndarray, path: Path) -> None:
    """The matrix as one ``features: list<double>`` column, written in row groups."""
    path.mkdir(parents=True, exist_ok=True)
    step = 1_000_000
    for i in range(0, len(x), step):
        chunk = x[i : i + step]
        column = pa.FixedSizeListArray.from_arrays(pa.array(chunk.ravel()), chunk.shape[1]).cast(pa.list_(pa.float64()))
        pq.write_table(pa.table({"features": column}), path / f"part-{i // step:05d}.parquet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dims", type=int, default=16)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--solver", default="block", choices=["auto", "row", "block"])
    parser.add_argument("--repeats", type=int, default=3, help="timed fits per side; the median is reported")
    parser.add_argument("--input", default="vector", choices=["array", "vector"], help="Spark's features column type")
    parser.add_argument("--block-mb", type=float, default=0.0, help="MLlib maxBlockSizeInMB (0: its default, 1 MB)")
    parser.add_argument("--driver-memory", default="8g", help="room to cache the matrix and MLlib's blocks")
    parser.add_argument("--out", default="/tmp/seg-bench/kmeans")
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)), help="for both sides")
    args = parser.parse_args()

    # The JVM may see the host's processors; both sides get the cores this process may use.
    cores = args.cores
    spark = get_spark(
        SparkSettings(master=f"local[{cores}]", shuffle_partitions=cores, driver_memory=args.driver_memory)
    )
    x = matrix(args.rows, args.dims, seed=7)
    path = Path(args.out) / f"{args.rows}x{args.dims}"
    if not path.is_dir():
        write_parquet(x, path)
    # MLlib wants array<double> without null elements; Parquet lists are read as nullable.
    features = F.transform("features", lambda v: F.coalesce(v, F.lit(0.0)))
    if args.input == "vector":
        features = array_to_vector(features)
    data = (
        spark.read.parquet(str(path))
        .select(features.alias("features"))
        .repartition(cores)
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    assert data.count() == args.rows

    def spark_fit(iterations: int) -> tuple[float, int]:
        kmeans = KMeans(k=args.k, maxIter=iterations, tol=0.0, initMode="random", seed=1, solver=args.solver)
        kmeans.setMaxBlockSizeInMB(args.block_mb)
        started = time.perf_counter()
        model = kmeans.fit(data)
        return time.perf_counter() - started, model.summary.numIter

    def sklearn_fit(iterations: int) -> tuple[float, int]:
        reference = SkKMeans(n_clusters=args.k, init="random", n_init=1, max_iter=iterations, tol=0.0, random_state=1)
        started = time.perf_counter()
        reference.fit(x)
        return time.perf_counter() - started, int(reference.n_iter_)

    spark_fit(args.iterations)  # warm the JVM (JIT, class loading) on the same data
    spark_runs = [spark_fit(args.iterations) for _ in range(args.repeats)]
    spark_single = [spark_fit(1)[0] for _ in range(args.repeats)]
    data.unpersist()
    with threadpool_limits(limits=cores):
        sklearn_runs = [sklearn_fit(args.iterations) for _ in range(args.repeats)]
        sklearn_single = [sklearn_fit(1)[0] for _ in range(args.repeats)]
        blas = sorted({f"{i['internal_api']}:{i.get('num_threads')}" for i in threadpool_info()})

    spark_times = [t for t, _ in spark_runs]
    sklearn_times = [t for t, _ in sklearn_runs]
    spark_iterations = {n for _, n in spark_runs}
    sklearn_iterations = {n for _, n in sklearn_runs}

    def split(total: float, single: float) -> dict[str, float]:
        per_iteration = (total - single) / (args.iterations - 1)
        return {"fixed_seconds": round(single - per_iteration, 3), "per_iteration_seconds": round(per_iteration, 4)}

    spark_seconds, sklearn_seconds = float(np.median(spark_times)), float(np.median(sklearn_times))
    record(
        "kmeans",
        {
            "rows": args.rows,
            "dims": args.dims,
            "k": args.k,
            "iterations": {"spark": sorted(spark_iterations), "sklearn": sorted(sklearn_iterations)},
            "spark_cores": cores,
            "spark_solver": args.solver,
            "spark_input": args.input,
            "spark_block_mb": args.block_mb,
            "spark_seconds": round(spark_seconds, 2),
            "sklearn_seconds": round(sklearn_seconds, 2),
            "ratio": round(spark_seconds / sklearn_seconds, 2),
            "spark_split": split(spark_seconds, float(np.median(spark_single))),
            "sklearn_split": split(sklearn_seconds, float(np.median(sklearn_single))),
            "sklearn_threadpools": blas,
            "spark_times": [round(t, 2) for t in spark_times],
            "sklearn_times": [round(t, 2) for t in sklearn_times],
        },
    )


if __name__ == "__main__":
    main()
