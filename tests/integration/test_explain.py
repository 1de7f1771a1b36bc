"""The explain stage on the shared end-to-end run: profiles, names carried into the published
tables, the HTML report opened in headless Chromium, and ``seg-spark report`` rebuilding it."""

from __future__ import annotations

import io
import os
import re
import shutil
from contextlib import redirect_stdout
from datetime import timedelta
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from seg_spark import cli
from seg_spark.stages.explain import report
from seg_spark.tables import Table, TableStore, where

from conftest import E2E_END, E2E_RUN, e2e_settings

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def profiles(spark: SparkSession, e2e, e2e_root: Path) -> list[dict]:
    store = TableStore(spark, e2e_settings(e2e_root))
    rows = store.read(Table.SEGMENT_PROFILES).filter(where(run_id=E2E_RUN).column()).collect()
    return sorted((r.asDict(recursive=True) for r in rows), key=lambda r: r["model_segment_id"])


def test_every_segment_has_a_unique_name_a_description_and_a_profile(e2e, profiles):
    segment = e2e.stages["segment"]
    assert [p["model_segment_id"] for p in profiles] == list(range(segment.k))
    assert sum(p["customers"] for p in profiles) == segment.rows_out
    assert sum(p["share"] for p in profiles) == pytest.approx(1.0)
    names = [p["segment_name"] for p in profiles]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"(High|Mid|Low)-value [a-z ]+", n) for n in names), names
    for p in profiles:
        assert not p["suppressed"]  # 1,500 customers in six segments: all above 50
        assert p["description"].endswith("of revenue.") and "orders on average" in p["description"]
        recency = p["features"]["recency_days"]
        assert recency["p10"] <= recency["median"] <= recency["p90"]
        assert p["rules"] and all(0 < r["precision"] <= 1 and 0 < r["coverage"] <= 1 for r in p["rules"])
        assert p["mean_clv"] is not None and 0 <= p["mean_p_alive"] <= 1
    assert profiles[0]["surrogate_accuracy"] >= 0.8
    assert sum(profiles[0]["surrogate_importances"].values()) == pytest.approx(1.0)


def test_the_names_are_carried_into_the_published_tables(spark, e2e, e2e_root, profiles):
    store = TableStore(spark, e2e_settings(e2e_root))
    named = {p["model_segment_id"]: p["segment_name"] for p in profiles}
    segments = store.read(Table.SEGMENTS).filter(where(run_id=E2E_RUN).column()).collect()
    assert {r["model_segment_id"]: r["segment_name"] for r in segments} == named
    published = store.read(Table.CUSTOMER_SEGMENTS).filter(where(run_id=E2E_RUN).column())
    pairs = published.select("model_segment_id", "segment_name").distinct().collect()
    assert dict((r[0], r[1]) for r in pairs) == named
    current = store.read(Table.SEGMENTS_CURRENT).filter(F.col("segment_name").isNull()).count()
    assert current == 0


def test_the_stage_reports_the_names_and_the_report_path(e2e, profiles):
    lines = e2e.stages["explain"].report()
    report = Path(lines[-1].removeprefix("report: "))
    assert report.is_file() and report.name == "report.html" and E2E_RUN in report.parts
    for p in profiles:
        assert f"  {p['model_segment_id']}: {p['segment_name']} - {p['description']}" in lines


def _open(report: Path, screenshot: Path, profile_dir: Path) -> tuple[list[int], list[dict]]:
    """Each image's natural width and the console's severe messages, and a screenshot of the page."""
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not look for drivers online
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # As root, in a container, on a closed network (see the machine's notes on Chromium).
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic", f"--user-data-dir={profile_dir}", "--window-size=1400,1000"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(report.as_uri())
        widths = driver.execute_script("return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1400, min(int(height), 16000))
        driver.save_screenshot(str(screenshot))
    finally:
        driver.quit()
    return widths, errors


def test_the_report_opens_in_headless_chromium_with_every_image(e2e, profiles, tmp_path):
    assert Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(), "Chromium missing: run make browser"
    report = Path(e2e.stages["explain"].report_path)
    screenshot = tmp_path / "report.png"
    widths, errors = _open(report, screenshot, tmp_path / "chromium-profile")
    text = report.read_text()
    # Model selection, sizes, heatmap, parallel view, projection; the demo's k-means has no split tree.
    assert len(widths) >= 5 and all(w > 0 for w in widths), widths
    assert errors == []
    assert screenshot.stat().st_size > 10_000 and screenshot.read_bytes()[:4] == b"\x89PNG"
    assert "src='http" not in text and 'src="http' not in text  # self-contained
    for p in profiles:
        assert p["segment_name"] in text


def test_seg_spark_report_rebuilds_a_past_run_from_the_tables_alone(e2e, e2e_copy):
    original = Path(e2e.stages["explain"].report_path)
    out = io.StringIO()
    with redirect_stdout(out):
        code = cli.main(["report", "--set", f"storage.root={e2e_copy}/warehouse", "--run-id", E2E_RUN])
    assert code == 0, out.getvalue()
    rebuilt = e2e_copy / "warehouse" / "reports" / E2E_RUN / "report.html"
    assert str(rebuilt) in out.getvalue()

    def without_images(html: str) -> str:
        return re.sub(r"base64,[A-Za-z0-9+/=]+", "", html)

    assert without_images(rebuilt.read_text()) == without_images(original.read_text())
    shutil.rmtree(e2e_copy / "warehouse" / "reports")
    with redirect_stdout(io.StringIO()):
        assert cli.main(["report", "--set", f"storage.root={e2e_copy}/warehouse"]) == 0  # the latest run
    assert rebuilt.is_file()


def test_the_migration_counts_moves_from_the_previous_published_date(spark, e2e, e2e_copy, profiles):
    store = TableStore(spark, e2e_settings(e2e_copy, "storage.database="))
    k, earlier = e2e.stages["segment"].k, E2E_END - timedelta(days=28)
    # An earlier published date on which every customer was one segment further on, under another name.
    shifted = (
        store.read(Table.CUSTOMER_SEGMENTS)
        .withColumn("segment_id", ((F.col("model_segment_id") + 1) % k).cast("int"))
        .withColumn("segment_name", F.concat(F.lit("old "), F.col("segment_id").cast("string")))
        .withColumn("as_of_date", F.lit(earlier))
    )
    store.append(Table.CUSTOMER_SEGMENTS, shifted)
    moves = report.migration(store, E2E_RUN, E2E_END)
    assert moves is not None and moves.previous_as_of_date == earlier
    assert moves.counts == {((p["model_segment_id"] + 1) % k, p["model_segment_id"]): p["customers"] for p in profiles}
    assert moves.previous_names == {s: f"old {s}" for s in range(k)}
    with redirect_stdout(io.StringIO()):
        assert cli.main(["report", "--set", f"storage.root={e2e_copy}/warehouse", "--run-id", E2E_RUN]) == 0
    text = (e2e_copy / "warehouse" / "reports" / E2E_RUN / "report.html").read_text()
    assert "Migration since the previous published date" in text
    assert text.count("<img") == Path(e2e.stages["explain"].report_path).read_text().count("<img") + 1
