"""Archive contents, atomic writes and the rendered TorchServe configuration."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest
import yaml

from servegate.backends.torchserve.local import render_config
from servegate.config import BatchingConfig, TorchServeSettings
from servegate.errors import PackagingError
from servegate.packaging.mar import MarContents, build_mar, read_archive_member
from servegate.packaging.spec import ArtifactSpec, InputSpec


def test_archive_holds_handlers_spec_config_labels_and_warmup(build_archive) -> None:
    batching = BatchingConfig(batch_size=4, max_batch_delay_ms=7, min_workers=1, max_workers=2,
                              response_timeout_s=30, startup_timeout_s=60)
    archive = build_archive("3", batching=batching)
    assert archive.name == "digits.v3.mar"
    names = set(zipfile.ZipFile(archive).namelist())
    assert {"tensor_handler.py", "sg_base.py", "sg_codecs.py", "sg_loaders.py", "sg_errors.py",
            "sg_classification.py", "digits_net.py", "model.pt", "servegate.json",
            "model-config.yaml", "index_to_name.json", "warmup.json", "MAR-INF/MANIFEST.json"} <= names
    manifest = json.loads(read_archive_member(archive, "MAR-INF/MANIFEST.json"))
    assert manifest["model"]["modelName"] == "digits"
    assert manifest["model"]["modelVersion"] == "3"
    assert manifest["model"]["handler"] == "tensor_handler.py"
    spec = ArtifactSpec.model_validate_json(read_archive_member(archive, "servegate.json"))
    assert spec.format == "state_dict" and spec.model_class == "digits_net.DigitsMLP"
    assert [(i.name, i.shape, i.dtype) for i in spec.inputs] == [("input", [64], "float32")]
    assert spec.max_batch == 4 * 64 and spec.schema_version == 2  # batch_size 4 x 64 rows
    config = yaml.safe_load(read_archive_member(archive, "model-config.yaml"))
    assert config == {"batchSize": 4, "maxBatchDelay": 7, "minWorkers": 1, "maxWorkers": 2,
                      "responseTimeout": 30, "startupTimeout": 60, "deviceType": "cpu"}
    labels = json.loads(read_archive_member(archive, "index_to_name.json"))
    assert labels == {str(i): str(i) for i in range(10)}
    warmup = json.loads(read_archive_member(archive, "warmup.json"))
    assert len(warmup["instances"]) == 2 and len(warmup["instances"][0]) == 64


def test_threads_per_worker_is_a_run_parameter_that_reaches_the_archive(build_archive) -> None:
    """`-P threads=3`: each worker of the version runs 3 intra-op threads (the spec the handler
    reads); 0, the default, leaves the handler's own rule (no value in the spec)."""
    from servegate.config import config_from_parameters

    batching = config_from_parameters({"threads": "3"}).batching
    assert batching.threads_per_worker == 3
    spec = ArtifactSpec.model_validate_json(
        read_archive_member(build_archive("4", batching=batching), "servegate.json"))
    assert spec.intra_op_threads == 3
    default = ArtifactSpec.model_validate_json(read_archive_member(build_archive("5"), "servegate.json"))
    assert default.intra_op_threads is None


def test_failed_build_leaves_nothing_in_the_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    contents = MarContents(
        name="broken", version="1", artifact=tmp_path / "model.pt",
        spec=ArtifactSpec(task="classification", format="state_dict", artifact="model.pt",
                          inputs=[InputSpec(shape=[4])]),
    )
    (tmp_path / "model.pt").write_bytes(b"weights")
    with pytest.raises(PackagingError, match="needs the model file"):
        build_mar(contents, store)
    missing = MarContents(**{**contents.__dict__, "artifact": tmp_path / "absent.pt"})
    with pytest.raises(PackagingError, match="not found"):
        build_mar(missing, store)
    assert list(store.iterdir()) == []


def test_rebuild_replaces_the_archive_in_one_step(build_archive, tmp_path: Path) -> None:
    first = build_archive("1", store=tmp_path)
    before = first.stat().st_ino
    second = build_archive("1", store=tmp_path)
    assert second == first and second.stat().st_ino != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits.v1.mar"]


def _properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    # Java properties: a backslash escapes the next character.
    return {k: re.sub(r"\\(.)", r"\1", v) for k, v in pairs}


def test_config_is_loopback_token_auth_and_admits_no_url(tmp_path: Path) -> None:
    store = tmp_path / "my.store"
    settings = TorchServeSettings(workdir=tmp_path)
    ports = {"inference": 1, "management": 2, "metrics": 3, "grpc_inference": 4, "grpc_management": 5}
    props = _properties(render_config(settings, ports, store))
    assert props["inference_address"] == "http://127.0.0.1:1"
    assert props["management_address"] == "http://127.0.0.1:2"
    assert props["metrics_address"] == "http://127.0.0.1:3"
    assert props["grpc_inference_address"] == props["grpc_management_address"] == "127.0.0.1"
    assert (props["grpc_inference_port"], props["grpc_management_port"]) == ("4", "5")
    assert props["enable_model_api"] == "true"
    assert props["metrics_mode"] == "prometheus"
    assert props["decode_input_request"] == "false"
    assert "disable_token_authorization" not in props
    assert Path(props["model_store"]) == store.resolve()
    # No URL at all (the store's archives are registered by file name; under Java too:
    # tests/unit/test_allowed_urls.py).
    allowed = re.compile(props["allowed_urls"])
    for url in (f"file://{store.resolve()}/digits.v1.mar", "file:///etc/passwd",
                f"file://{store.resolve()}/%2e%2e%2fx.mar", "https://example.com/model.mar"):
        assert not allowed.fullmatch(url), url
    assert "log4j.configurationFile=file://" in props["vmargs"]


def test_token_auth_cannot_be_turned_off(tmp_path: Path) -> None:
    from servegate.backends.torchserve import LocalTorchServe
    from servegate.errors import ServerStartError

    with pytest.raises(ServerStartError, match="token auth"):
        LocalTorchServe(TorchServeSettings(workdir=tmp_path, token_auth=False)).start()


def test_batching_refuses_a_zero_delay_that_torchserve_reads_as_100_ms() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="100 ms default"):
        BatchingConfig(batch_size=8, max_batch_delay_ms=0)
    assert BatchingConfig(batch_size=1, max_batch_delay_ms=0).model_config_yaml()["maxBatchDelay"] == 0
    assert BatchingConfig(batch_size=8, max_batch_delay_ms=1).model_config_yaml()["maxBatchDelay"] == 1


def test_a_users_handler_is_the_entry_point_with_ours_beside_it(digits, tmp_path: Path) -> None:
    import json
    import zipfile

    from servegate.compilers import get_compiler
    from servegate.packaging.mar import build_mar, contents_for

    handler = tmp_path / "my_handler.py"
    handler.write_text("from tensor_handler import TensorHandler\n\n\nclass Mine(TensorHandler):\n    pass\n")
    artifact = get_compiler("eager").compile(digits, tmp_path / "compiled", max_batch=8)
    contents = contents_for(digits, artifact, name="d", version="1", batching=BatchingConfig(),
                            handler_file=handler)
    archive = build_mar(contents, tmp_path / "store")
    with zipfile.ZipFile(archive) as zf:
        manifest = json.loads(zf.read("MAR-INF/MANIFEST.json"))
        names = set(zf.namelist())
    assert manifest["model"]["handler"] == "my_handler.py"
    assert {"my_handler.py", "tensor_handler.py", "sg_base.py"} <= names
    clash = tmp_path / "sg_base.py"
    clash.write_text("")
    with pytest.raises(PackagingError, match="has the name of one of ours"):
        build_mar(contents_for(digits, artifact, name="d", version="2", batching=BatchingConfig(),
                               handler_file=clash), tmp_path / "store")


def test_every_package_of_src_ships_in_the_wheel() -> None:
    """pyproject lists packages explicitly: a new subpackage missing there is lost from a wheel
    (an editable install hides it)."""
    import tomllib

    root = Path(__file__).resolve().parents[2]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root / "src").parts)
             for p in (root / "src" / "servegate").rglob("__init__.py")}
    assert found and found <= listed, sorted(found - listed)
