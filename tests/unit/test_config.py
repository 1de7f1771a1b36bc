from pathlib import Path

import pytest

from seg_spark.config import ConfigError, Settings, deep_merge, load_config

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"


def test_base_yaml_states_exactly_the_code_defaults():
    assert load_config([CONF / "base.yaml"]) == Settings()


def test_local_overlay_extends_base_and_wins():
    settings = load_config([CONF / "local.yaml"])
    assert settings.spark.master == "local[*]"
    assert settings.model.k == 6  # from base.yaml


def test_overlays_merge_in_order_and_set_overrides_last(tmp_path):
    first = tmp_path / "a.yaml"
    first.write_text("model:\n  k: 4\n  seed: 7\nstorage:\n  root: /data/a\n")
    second = tmp_path / "b.yaml"
    second.write_text("model:\n  k: 5\n")
    settings = load_config([first, second], ["storage.root=/data/c", "spark.conf.spark.executor.cores=3"])
    assert settings.model.k == 5
    assert settings.model.seed == 7
    assert settings.storage.root == "/data/c"
    assert settings.spark.conf == {"spark.executor.cores": "3"}


def test_set_values_are_parsed_as_yaml_types():
    settings = load_config([], ["model.k=9", "tracking.enabled=false", "features.as_of_date=2024-03-01"])
    assert settings.model.k == 9
    assert settings.tracking.enabled is False
    assert str(settings.features.as_of_date) == "2024-03-01"


def test_deep_merge_replaces_lists_and_merges_mappings():
    merged = deep_merge({"a": {"x": 1, "y": [1, 2]}, "b": 1}, {"a": {"y": [3]}, "c": 2})
    assert merged == {"a": {"x": 1, "y": [3]}, "b": 1, "c": 2}


def test_unknown_key_names_path_and_allowed_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  kk: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config([bad])
    message = str(err.value)
    assert "model.kk: unknown key" in message
    assert (
        "allowed keys here: algorithm, features, fit_attempts, fit_timeout_seconds, gmm_regularization, gmm_restarts, "
        "k, kmeans_restarts, max_iter" in message
    )
    assert str(bad) in message


def test_bad_value_names_path_value_and_what_is_allowed():
    with pytest.raises(ConfigError) as err:
        load_config([], ["model.k=1"])
    assert "model.k = 1: Input should be greater than or equal to 2" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config([], ["model.algorithm=dbscan"])
    assert "model.algorithm = 'dbscan': Input should be 'kmeans'" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config([], ["sources.transactions.format=xlsx"])
    assert "sources.transactions.format = 'xlsx'" in str(err.value)
    assert "'csv', 'parquet', 'json' or 'delta'" in str(err.value)


def test_unknown_feature_is_rejected_with_the_allowed_list():
    with pytest.raises(ConfigError) as err:
        load_config([], ["model.features=[recency_days, shoe_size]"])
    assert "unknown feature(s) ['shoe_size']" in str(err.value)
    assert "recency_days" in str(err.value)
    # A check across sections has no key path: the message stands alone, without the whole config echoed.
    assert str(err.value).splitlines()[1].startswith("  model.features: unknown feature(s)")
    assert "'spark':" not in str(err.value)


def test_missing_file_and_malformed_yaml_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config([tmp_path / "nope.yaml"])
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config([broken])
    with pytest.raises(ConfigError, match="must look like dotted.key=value"):
        load_config([], ["model.k"])
    with pytest.raises(ConfigError, match="model.k is a value, not a section"):
        load_config([CONF / "base.yaml"], ["model.k.x=1"])
    with pytest.raises(ConfigError, match=r"model.k = \{'x': 1\}: Input should be a valid integer"):
        load_config([], ["model.k.x=1"])


def test_extends_loop_is_reported(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="extend each other in a loop"):
        load_config([tmp_path / "a.yaml"])


def test_environment_variables_expand(tmp_path, monkeypatch):
    monkeypatch.setenv("SEG_ROOT", "/mnt/lake")
    conf = tmp_path / "env.yaml"
    conf.write_text("storage:\n  root: ${SEG_ROOT}/segments\n")
    assert load_config([conf]).storage.root == "/mnt/lake/segments"


def test_settings_are_frozen_and_overrides_return_a_validated_copy():
    settings = Settings()
    with pytest.raises(Exception, match="frozen"):
        settings.model.k = 3  # type: ignore[misc]
    changed = settings.with_overrides(["model.k=3"])
    assert (settings.model.k, changed.model.k) == (6, 3)
    with pytest.raises(ConfigError, match="model.k = 0"):
        settings.with_overrides(["model.k=0"])


def test_table_paths_are_absolute_for_local_roots(tmp_path):
    settings = load_config([], [f"storage.root={tmp_path}/wh", "tables.customer_segments=segs"])
    assert settings.table_path("customer_segments") == f"{tmp_path}/wh/segs"
    remote = load_config([], ["storage.root=s3a://bucket/lake/"])
    assert remote.table_path("customer_features") == "s3a://bucket/lake/customer_features"


def _keys(node, prefix=""):
    if isinstance(node, dict) and node:
        return {k for key, value in node.items() for k in _keys(value, f"{prefix}{key}.")}
    return {prefix.rstrip(".")}


def test_base_yaml_lists_every_key():
    import yaml

    written = yaml.safe_load((CONF / "base.yaml").read_text())
    assert _keys(written) == _keys(Settings().model_dump(mode="json"))


def test_example_configs_validate_and_each_registers_its_own_model():
    names = [load_config([CONF / "local.yaml"]).model.name]
    for path in sorted((CONF / "examples").glob("*.yaml")):
        settings = load_config([path])
        assert settings.sources.transactions.path, path
        names.append(settings.model.name)
    assert len(names) == len(set(names)) > 1, names  # one config's versions never mix with another's


@pytest.mark.parametrize("run_id", ["a' OR '1'='1", "has space", "-leading-dash", "x" * 129, "semi;colon"])
def test_a_run_id_with_odd_characters_is_refused(run_id):
    with pytest.raises(ConfigError, match="run.run_id"):
        load_config([], [f"run.run_id={run_id}"])


def test_cli_run_id_and_as_of_become_validated_settings():
    from seg_spark.cli import _settings, build_parser

    args = build_parser().parse_args(
        ["run", "--config", str(CONF / "local.yaml"), "--stage", "features", "--run-id", "r-1", "--as-of", "2026-01-02"]
    )
    settings = _settings(args)
    assert (args.stage, settings.run.run_id, settings.features.as_of_date.isoformat()) == (
        ["features"],
        "r-1",
        "2026-01-02",
    )
    with pytest.raises(ConfigError, match="run.run_id"):
        _settings(build_parser().parse_args(["run", "--config", str(CONF / "local.yaml"), "--run-id", "a'b"]))


def test_cli_log_level_debug_also_opens_spark_output():
    from seg_spark.cli import _settings, build_parser

    def spark_level(*flags: str) -> str:
        args = build_parser().parse_args(["run", "--config", str(CONF / "local.yaml"), *flags])
        return _settings(args).spark.log_level

    assert spark_level() == spark_level("--log-level", "warn") == "WARN"  # base.yaml's level
    assert spark_level("--log-level", "debug") == spark_level("-v") == "INFO"


def test_an_unset_environment_variable_is_named_not_used_as_a_path(tmp_path, monkeypatch):
    monkeypatch.delenv("DATA_DIR", raising=False)
    monkeypatch.setenv("LAKE", "/mnt/lake")
    conf = tmp_path / "env.yaml"
    conf.write_text("storage:\n  root: $LAKE/x\nsources:\n  transactions:\n    path: ${DATA_DIR}/tx.csv\n")
    with pytest.raises(ConfigError) as err:
        load_config([conf])
    assert f"config file {conf} uses environment variable(s) that are not set: DATA_DIR (line 5)" in str(err.value)
    conf.write_text("storage:\n  root: ${DATA_DIR:-/tmp/fallback}/x\n")
    assert load_config([conf]).storage.root == "/tmp/fallback/x"
