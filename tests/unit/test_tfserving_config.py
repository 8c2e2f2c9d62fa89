"""TF Serving configuration files built through the real protos, written in text format and
parsed back: models.config (ModelServerConfig), batching and monitoring."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("tensorflow_serving")

from google.protobuf import text_format  # noqa: E402
from tensorflow_serving.config.model_server_config_pb2 import ModelServerConfig  # noqa: E402

from servegate.backends.tfserving.config import (  # noqa: E402
    CANARY,
    STABLE,
    ModelEntry,
    batching_parameters,
    model_entries,
    monitoring_config,
    read_models_config,
    read_text_proto,
    write_models_config,
    write_server_configs,
    write_text_proto,
)
from servegate.errors import ConfigError  # noqa: E402
from servegate.tfserving_protos.batching_pb2 import BatchingParameters  # noqa: E402
from servegate.tfserving_protos.monitoring_pb2 import MonitoringConfig  # noqa: E402


def test_models_config_round_trips_through_model_server_config(tmp_path: Path) -> None:
    entries = [
        ModelEntry("digits", "/models/digits", (3, 4), {STABLE: 3, CANARY: 4}),
        ModelEntry("other", "/models/other", (1,), {STABLE: 1}),
    ]
    path = write_models_config(tmp_path / "models.config", entries)
    parsed = text_format.Parse(path.read_text(), ModelServerConfig())
    digits = parsed.model_config_list.config[0]
    assert digits.name == "digits" and digits.base_path == "/models/digits"
    assert digits.model_platform == "tensorflow"
    assert digits.model_version_policy.WhichOneof("policy_choice") == "specific"
    assert list(digits.model_version_policy.specific.versions) == [3, 4]
    assert dict(digits.version_labels) == {"stable": 3, "canary": 4}
    assert model_entries(parsed) == entries == read_models_config(path)
    assert "version_labels" in path.read_text() and "specific" in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["models.config"]  # no temp file left


def test_empty_and_missing_models_config(tmp_path: Path) -> None:
    assert read_models_config(tmp_path / "absent.config") == []
    path = write_models_config(tmp_path / "models.config", [])
    assert path.read_text().strip() == "model_config_list {\n}"
    assert read_text_proto(path, ModelServerConfig).WhichOneof("config") == "model_config_list"


def test_labels_must_point_at_served_versions() -> None:
    with pytest.raises(ConfigError, match="not served"):
        ModelEntry("digits", "/m/digits", (1,), {CANARY: 2})


def test_other_version_policies_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "models.config"
    path.write_text('model_config_list { config { name: "x" base_path: "/x" '
                    "model_version_policy { latest { num_versions: 2 } } } }")
    with pytest.raises(ConfigError, match="specific"):
        read_models_config(path)
    path.write_text("model_config_list { nonsense: 1 }")
    with pytest.raises(ConfigError, match="cannot read ModelServerConfig"):
        read_models_config(path)


def test_batching_parameters_round_trip(tmp_path: Path) -> None:
    params = batching_parameters(max_batch_size=8, batch_timeout_ms=5, num_batch_threads=2,
                                 max_enqueued_batches=50, allowed_batch_sizes=[8, 2, 4])
    path = write_text_proto(params, tmp_path / "batching.config")
    parsed = text_format.Parse(path.read_text(), BatchingParameters())
    assert parsed.max_batch_size.value == 8
    assert parsed.batch_timeout_micros.value == 5000
    assert parsed.num_batch_threads.value == 2
    assert parsed.max_enqueued_batches.value == 50
    assert list(parsed.allowed_batch_sizes) == [2, 4, 8]
    assert "max_batch_size {\n  value: 8\n}" in path.read_text()
    with pytest.raises(ConfigError, match="must end with max_batch_size"):
        batching_parameters(max_batch_size=8, allowed_batch_sizes=[2, 4])


def test_our_protos_read_tf_servings_documented_text_and_keep_its_field_numbers() -> None:
    documented = """
        max_batch_size { value: 128 }
        batch_timeout_micros { value: 0 }
        max_enqueued_batches { value: 1000000 }
        num_batch_threads { value: 8 }
        thread_pool_name { value: "batch_threads" }
        allowed_batch_sizes: 64
        allowed_batch_sizes: 128
        pad_variable_length_inputs: true
    """
    parsed = text_format.Parse(documented, BatchingParameters())
    assert parsed.max_batch_size.value == 128 and parsed.pad_variable_length_inputs
    numbers = {f.name: f.number for f in BatchingParameters.DESCRIPTOR.fields}
    assert numbers == {"max_batch_size": 1, "batch_timeout_micros": 2, "max_enqueued_batches": 3,
                       "num_batch_threads": 4, "thread_pool_name": 5, "allowed_batch_sizes": 6,
                       "pad_variable_length_inputs": 7}
    monitoring = text_format.Parse(
        'prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }',
        MonitoringConfig())
    assert monitoring.prometheus_config.enable
    fields = MonitoringConfig.DESCRIPTOR.fields
    assert {f.name: f.number for f in fields} == {"prometheus_config": 1}


def test_monitoring_and_server_files(tmp_path: Path) -> None:
    files = write_server_configs(tmp_path, entries=[ModelEntry("d", "/m/d", (1,), {STABLE: 1})])
    monitoring = read_text_proto(files.monitoring, MonitoringConfig)
    assert monitoring.prometheus_config.enable
    assert monitoring.prometheus_config.path == "/monitoring/prometheus/metrics"
    assert read_text_proto(files.batching, BatchingParameters).max_batch_size.value == 8
    assert read_models_config(files.models)[0].name == "d"
    # an existing models.config records what is deployed: it is kept
    write_server_configs(tmp_path, monitoring=monitoring_config("/metrics"))
    assert read_models_config(files.models)[0].labels == {STABLE: 1}
    assert read_text_proto(files.monitoring, MonitoringConfig).prometheus_config.path == "/metrics"
    flags = files.server_flags(lambda p: f"/models/{Path(p).name}")
    assert flags == ["--model_config_file=/models/models.config", "--enable_batching=true",
                     "--enable_per_model_batching_parameters=true",
                     "--batching_parameters_file=/models/batching.config",
                     "--monitoring_config_file=/models/monitoring.config"]
