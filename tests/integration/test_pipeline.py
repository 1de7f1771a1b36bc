"""The shared end-to-end run (conftest ``e2e``) and reruns on private copies of its warehouse."""

from datetime import date

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from seg_spark.config import SelectionSettings, StabilitySettings
from seg_spark.models import clustering, metrics, selection
from seg_spark.models.prep import FEATURES_COL
from seg_spark.models.validation import label_agreement
from seg_spark.pipeline import run_pipeline
from seg_spark.tracking import resolve_tracking_uri

from conftest import E2E_END, E2E_RUN, FAST, NO_EXPLAIN, NO_PREDICT, e2e_settings

pytestmark = pytest.mark.slow


def test_run_reconciles_and_writes_the_clean_and_quarantine_tables(spark, e2e):
    counts = e2e.stages["ingest"].counts
    assert counts.input_rows == counts.clean_rows + counts.quarantined_rows + counts.duplicates_removed
    assert counts.duplicates_removed > 0
    assert set(counts.by_reason) == {"missing_customer_id", "non_positive_price", "future_timestamp"}
    clean = spark.read.format("delta").load(e2e.tables["transactions_clean"])
    quarantine = spark.read.format("delta").load(e2e.tables["transactions_quarantine"])
    assert clean.count() == counts.clean_rows
    by_reason = {r["reason_code"]: r["count"] for r in quarantine.groupBy("reason_code").count().collect()}
    assert by_reason == counts.by_reason
    dq = spark.read.format("delta").load(e2e.tables["data_quality"])
    assert dq.filter("metric = 'input_rows'").first()["value"] == counts.input_rows


def test_features_table_is_per_customer_as_of_the_day_after_the_last_sale(spark, e2e):
    assert e2e.stages["features"].as_of_date == E2E_END
    features = spark.read.format("delta").load(e2e.tables["customer_features"])
    assert features.select("as_of_date", "run_id").distinct().collect() == [(E2E_END, E2E_RUN)]
    assert features.count() == features.select("customer_id").distinct().count() == e2e.stages["features"].rows_out
    stats = features.agg(F.min("recency_days"), F.min("frequency"), F.max("tenure_days")).first()
    assert stats[0] >= 1 and stats[1] >= 0 and stats[2] <= 365


def test_segments_table_carries_lineage_and_recovers_planted_archetypes(spark, e2e):
    segment = e2e.stages["segment"]
    segments = spark.read.format("delta").load(e2e.tables["customer_segments"])
    assert segments.columns == [
        "customer_id",
        "segment_id",
        "segment_name",
        "model_segment_id",
        "segment_distance",
        "segment_probability",
        "runner_up_segment_id",
        "runner_up_distance",
        "runner_up_probability",
        "membership",
        "algorithm",
        "run_id",
        "as_of_date",
        "model_name",
        "model_version",
        "k",
        "config_hash",
    ]
    # The sweep (k = 5..7, best silhouette) recovers the six planted archetypes (agreement below): two
    # of them are close enough that k = 5 can win on silhouette.
    assert segments.select("segment_id").distinct().count() == segment.k
    lineage = segments.select("algorithm", "as_of_date", "run_id", "model_name", "model_version", "k").distinct()
    assert lineage.collect() == [("kmeans", E2E_END, E2E_RUN, "seg-spark-segments", segment.model_version, segment.k)]
    # The first publish numbers segments as the model does; later ones keep ids (tests/integration/test_publish.py).
    assert segments.filter("segment_id <> model_segment_id").isEmpty()
    assert segment.metrics["truth_adjusted_rand_index"] >= 0.7
    assert segment.metrics["truth_v_measure"] >= 0.7
    stats = segments.agg(
        F.min("segment_distance"), F.sum((F.col("runner_up_distance") < F.col("segment_distance")).cast("int"))
    ).first()
    assert stats[0] >= 0 and stats[1] == 0
    assert sum(row["customers"] for row in segment.segment_summary) == segments.count()
    assert spark.sql("SELECT count(*) FROM seg_e2e.customer_segments").first()[0] == segments.count()


def test_the_run_manifest_records_every_stage(spark, e2e):
    rows = spark.sql(f"SELECT * FROM seg_e2e.pipeline_runs WHERE run_id = '{E2E_RUN}' ORDER BY started_at").collect()
    assert [(r.stage, r.status, r.error) for r in rows] == [
        ("ingest", "succeeded", None),
        ("features", "succeeded", None),
        ("segment", "succeeded", None),
        ("predict", "succeeded", None),
        ("explain", "succeeded", None),
        ("publish", "succeeded", None),
    ]
    counts = e2e.stages["ingest"].counts
    assert (rows[0].rows_in, rows[0].rows_out, rows[0].as_of_date) == (counts.input_rows, counts.clean_rows, None)
    assert [r.as_of_date for r in rows[1:]] == [E2E_END] * 5
    assert rows[2].rows_in == rows[1].rows_out == 1500 and rows[2].rows_out == rows[5].rows_in == 1500
    assert rows[3].rows_out == 1500  # every customer of the demo has a purchase, so a score
    assert (rows[4].rows_in, rows[4].rows_out) == (1500, e2e.stages["segment"].k)  # explained: one profile each
    assert {r.mlflow_run_id for r in rows} == {e2e.mlflow_run_id}
    assert all(r.started_at <= r.ended_at and r.seconds > 0 for r in rows)
    # Each stage's end and the next one's start are one commit: the run made one per stage, plus its first start.
    assert all(earlier.ended_at == later.started_at for earlier, later in zip(rows, rows[1:], strict=False))
    assert spark.sql("DESCRIBE HISTORY seg_e2e.pipeline_runs").count() == len(rows) + 1


def test_mlflow_run_has_config_metrics_and_a_loadable_model(spark, e2e, e2e_root):
    settings = e2e_settings(e2e_root)
    segment = e2e.stages["segment"]
    uri, _ = resolve_tracking_uri(settings.tracking.tracking_uri)
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(e2e.mlflow_run_id)
    assert run.data.params["model.k"] == "6"
    assert run.data.params["storage.root"] == settings.storage.root
    assert run.data.metrics["transactions.input_rows"] == e2e.stages["ingest"].counts.input_rows
    assert run.data.metrics["transactions.customers_clean"] == 1500
    assert run.data.metrics["silhouette"] == pytest.approx(segment.metrics["silhouette"])
    assert run.data.metrics["stability_mean_ari"] == pytest.approx(segment.metrics["stability_mean_ari"])
    assert run.data.tags["as_of_date"] == E2E_END.isoformat()
    # One nested run per model-selection candidate, and the same candidates in the Delta table.
    children = client.search_runs(
        [run.info.experiment_id], f"tags.mlflow.parentRunId = '{e2e.mlflow_run_id}'", max_results=50
    )
    assert sorted(int(c.data.params["k"]) for c in children) == [5, 6, 7]
    candidates = spark.read.format("delta").load(e2e.tables["model_selection"]).filter(f"run_id = '{E2E_RUN}'")
    assert candidates.count() == 3
    chosen = candidates.filter("chosen").collect()
    assert [(r.algorithm, r.k, r.rule) for r in chosen] == [("kmeans", segment.k, "silhouette")]
    by_k = {c.data.params["k"]: c.data.metrics for c in children}
    for row in candidates.collect():
        assert by_k[str(row.k)]["silhouette"] == pytest.approx(row.silhouette)
        assert row.silhouette <= chosen[0].silhouette or row.smallest_segment_share < 0.02
    version = client.get_model_version(settings.model.name, segment.model_version)
    assert version.run_id == e2e.mlflow_run_id

    import mlflow
    from mlflow import spark as mlflow_spark

    mlflow.set_tracking_uri(uri)  # runs:/ URIs resolve against the current store
    model = mlflow_spark.load_model(segment.model_uri, dfs_tmpdir=str(e2e_root / "model-tmp"))
    features = spark.read.format("delta").load(e2e.tables["customer_features"]).filter("frequency > 0")
    rescored = model.transform(features).select("customer_id", F.col("segment_id").cast("int"))
    published = spark.read.format("delta").load(e2e.tables["customer_segments"])
    assertDataFrameEqual(rescored, published.select("customer_id", F.col("model_segment_id").alias("segment_id")))


def test_rerun_for_the_same_as_of_date_replaces_rather_than_duplicates(spark, e2e, e2e_copy):
    rerun = e2e_settings(e2e_copy, "storage.database=", "run.run_id=e2e-run-2", *FAST)
    second = run_pipeline(spark, rerun, ["features", "segment", "publish"])
    features = second.stages["features"]
    assert features.as_of_date == E2E_END
    assert (features.refresh.mode, features.state.mode) == ("unchanged", "reused")
    for table in ("customer_features", "segment_assignments", "customer_segments", "segments_current"):
        df = spark.read.format("delta").load(second.tables[table])
        assert df.count() == df.select("customer_id").distinct().count(), table
    for table in ("customer_features", "segment_assignments", "customer_segments", "segments"):
        df = spark.read.format("delta").load(second.tables[table])
        assert [r[0] for r in df.select("run_id").distinct().collect()] == ["e2e-run-2"], table
    segments = spark.read.format("delta").load(second.tables["customer_segments"])
    assert segments.count() == int(e2e.stages["segment"].metrics["customers_modelled"])
    # The replaced rows stay reachable through Delta time travel.
    earlier = spark.read.format("delta").option("versionAsOf", 0).load(second.tables["segment_assignments"])
    assert [r[0] for r in earlier.select("run_id").distinct().collect()] == [E2E_RUN]


def test_profiles_and_events_flow_into_the_features_of_another_as_of_date(spark, e2e_copy, tmp_path):
    """Side sources join the features; a run for another as-of date adds its partitions next to the shared run's.

    Ingest and features only: publishing another date next to the latest is the publish tests' backfill."""
    truth = spark.read.parquet(str(e2e_copy / "demo" / "truth"))
    truth.selectExpr("customer_id AS cust", "'UK' AS ctry", "'2020-01-0' || (archetype_id + 1) AS since").write.parquet(
        str(tmp_path / "profiles")
    )
    events = spark.createDataFrame(
        [
            ("10000000", "2025-11-10 10:00:00", "s1"),
            ("10000000", "2025-11-10 10:01:00", "s1"),
            ("10000000", "2025-11-12 09:00:00", "s2"),
            ("10000000", "2025-11-20 09:00:00", "s3"),  # on/after as-of 2025-11-15: not counted
            (None, "2025-11-10 10:00:00", "s9"),  # quarantined
        ],
        "user string, at string, session string",
    )
    events.write.json(str(tmp_path / "events"))
    with_sides = e2e_settings(
        e2e_copy,
        "storage.database=",
        "run.run_id=e2e-run-4",
        "features.as_of_date=2025-11-15",
        f"sources.profiles.path={tmp_path / 'profiles'}",
        "sources.profiles.timestamp_format=yyyy-MM-dd",
        "sources.profiles.columns={customer_id: cust, country: ctry, signup_date: since}",
        f"sources.events.path={tmp_path / 'events'}",
        "sources.events.format=json",
        "sources.events.columns={customer_id: user, ts: at, session_id: session, event_type: null}",
        *FAST,
        *NO_PREDICT,
        *NO_EXPLAIN,
    )
    result = run_pipeline(spark, with_sides, ["ingest", "features"])
    assert result.stages["features"].as_of_date == date(2025, 11, 15)
    dates = spark.read.format("delta").load(result.tables["customer_features"]).select("as_of_date").distinct()
    assert sorted(r[0] for r in dates.collect()) == [date(2025, 11, 15), E2E_END]
    assert {"customer_profiles", "events_clean"} <= set(result.tables)
    assert set(result.stages["ingest"].side_counts) == {"profiles", "events"}
    features = spark.read.format("delta").load(result.tables["customer_features"]).filter("as_of_date = '2025-11-15'")
    assert features.agg(F.min("recency_days")).first()[0] >= 1  # nothing after the as-of date counts
    row = features.filter("customer_id = '10000000'").first()
    expected_signup = 1 + truth.filter("customer_id = '10000000'").first()["archetype_id"]
    assert row["profile_country"] == "UK"
    assert row["days_since_signup"] == (date(2025, 11, 15) - date(2020, 1, expected_signup)).days
    assert (row["web_events"], row["web_sessions"], row["days_since_last_event"]) == (3.0, 2.0, 3.0)
    assert features.filter("web_events > 0").count() == 1
    quarantine = spark.read.format("delta").load(result.tables["transactions_quarantine"])
    by_source = {
        r["source"]: r["count"] for r in quarantine.filter("run_id = 'e2e-run-4'").groupBy("source").count().collect()
    }
    assert by_source["events"] == 1 and "profiles" not in by_source


@pytest.fixture(scope="module")
def modelled(spark, e2e, e2e_root):
    """The shared run's model input and the planted archetype of each customer."""
    features = spark.read.format("delta").load(e2e.tables["customer_features"]).filter(F.col("as_of_date") == E2E_END)
    data = clustering.model_input(features).cache()
    truth = spark.read.parquet(str(e2e_root / "demo" / "truth")).select("customer_id", "archetype")
    yield data, clustering.resolve_features(data.columns, e2e_settings(e2e_root).model), truth
    data.unpersist()


def test_a_gaussian_mixture_sweep_finds_the_planted_archetypes(spark, e2e_root, modelled):
    """Six archetypes planted; a mixture sweep over k = 6..7 (silhouette rule, three starts per k)."""
    data, features, truth = modelled
    model = e2e_settings(e2e_root).model.model_copy(
        update={
            "algorithm": "gaussian_mixture",
            "selection": SelectionSettings(k_min=6, k_max=7),
            "stability": StabilitySettings(bootstraps=0),
        }
    )
    seg = selection.segment(spark, data, features, model)
    try:
        assert model.gmm_restarts == 3
        assert [c.k for c in seg.candidates] == [6, 7] and all(c.status == "ok" for c in seg.candidates)
        assert all(np.isfinite(c.metrics["bic"]) and np.isfinite(c.metrics["log_likelihood"]) for c in seg.candidates)
        assert seg.algorithm == "gaussian_mixture"
        agreement = label_agreement(seg.assignments.join(truth, "customer_id"), "archetype", "segment_id")
        assert agreement["adjusted_rand_index"] >= 0.7 and agreement["v_measure"] >= 0.7
        probabilities = seg.assignments.agg(F.min("segment_probability"), F.max("segment_probability")).first()
        assert 0 < probabilities[0] <= probabilities[1] <= 1
        # The membership vector is a distribution whose largest entry is the assigned segment's.
        row = seg.assignments.first()
        assert abs(sum(row["membership"]) - 1) < 1e-9
        assert row["segment_probability"] == max(row["membership"]) == row["membership"][row["segment_id"]]
    finally:
        seg.release()


def test_bisecting_kmeans_keeps_a_consistent_split_hierarchy(spark, e2e_root, modelled):
    data, features, truth = modelled
    model = e2e_settings(e2e_root).model.model_copy(
        update={
            "algorithm": "bisecting_kmeans",
            "selection": SelectionSettings(enabled=False),
            "stability": StabilitySettings(bootstraps=1),  # the stability check's shape, at one refit's cost
        }
    )
    seg = selection.segment(spark, data, features, model)
    try:
        nodes = {n["node_id"]: n for n in seg.hierarchy}
        root = nodes[0]
        assert root["parent_id"] is None and root["size"] == data.count()
        leaves = [n for n in nodes.values() if n["segment_id"] is not None]
        assert sorted(n["segment_id"] for n in leaves) == list(range(seg.k)) and seg.k == 6
        assert sum(n["size"] for n in leaves) == sum(seg.segment_sizes)
        for node in nodes.values():
            children = [c for c in nodes.values() if c["parent_id"] == node["node_id"]]
            if node["segment_id"] is not None:
                assert not children
                continue
            # An internal node splits in two; its size and centre are its children's total and weighted mean.
            assert len(children) == 2 and node["size"] == sum(c["size"] for c in children)
            weighted = sum(np.array(c["center"]) * c["size"] for c in children) / node["size"]
            assert np.allclose(weighted, node["center"], atol=1e-9)
            assert all(c["depth"] == node["depth"] + 1 for c in children)
        assert seg.stability["bootstraps"] == 1 and 0 <= seg.stability["mean_ari"] <= 1
        assert set(seg.stability["jaccard"]) == set(range(seg.k))
    finally:
        seg.release()


def test_the_final_model_is_the_chosen_candidate_and_fits_everyone_as_well_as_a_full_fit(spark, e2e_root, modelled):
    """Selection on a sample of half the customers: the final model is the chosen candidate as fitted on
    it (same silhouette on the sample), and on every customer its WSSSE is within 0.5% of a fit on all."""
    data, features, _ = modelled
    model = e2e_settings(e2e_root).model.model_copy(
        update={
            "selection": SelectionSettings(k_min=6, k_max=6, sample_rows=700),
            "stability": StabilitySettings(bootstraps=0),
        }
    )
    seg = selection.segment(spark, data, features, model)
    try:
        (chosen,) = [c for c in seg.candidates if c.chosen]
        sample_rows = seg.metrics["selection_sample_rows"]
        assert 600 <= sample_rows <= 710 and seg.metrics["customers_modelled"] == data.count() > 2 * 600
        assert abs(seg.metrics["silhouette"] - chosen.metrics["silhouette"]) <= 0.01
        # The chosen candidate was fitted on the driver; the final MLlib model has exactly its centres.
        final = seg.model.stages[-1]
        assert sorted(map(tuple, clustering.centers(final).tolist())) == sorted(
            map(tuple, chosen.model.centers.tolist())
        )

        dimension = len(seg.vectors.first()[FEATURES_COL])

        def wssse(fitted) -> float:
            labelled = metrics.collect_labelled(fitted.transform(seg.vectors), FEATURES_COL, "segment_id", dimension)
            return metrics.within_sum_of_squares(metrics.segment_summary(labelled))

        everyone = clustering.fit_clusterer(spark, seg.vectors, "kmeans", 6, model, lower_k=False)
        assert wssse(final) <= 1.005 * wssse(everyone)
    finally:
        seg.release()
