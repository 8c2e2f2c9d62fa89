"""Issue 21.3: `servegate export kserve` writes manifests that KServe's released CRD schemas
accept (tests/data/kserve, v0.20.0), with field validation as strict as `kubectl apply
--validate=strict` (an unknown field is an error), and the storage TorchServe reads."""

from __future__ import annotations

import copy
import json
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from servegate.errors import ConfigError, IntegrityError
from servegate.kserve import KServeOptions, export, inference_service, service_name, serving_runtime
from servegate.registry import ARCHIVE_SHA256_TAG, ARCHIVE_TAG, CHALLENGER, CHAMPION, Registry

DATA = Path(__file__).resolve().parents[1] / "data" / "kserve"
OPTIONS = KServeOptions(image="registry.example/servegate-torchserve:0.1.0",
                        storage_uri="s3://models/servegate/digits", namespace="models",
                        cpu="2", memory="4Gi", gpus=1, protocol="v2", canary_percent=20)


def strict(schema: Any) -> Any:
    """``schema`` with unknown fields refused wherever the API server's strict field validation
    refuses them: objects that list their properties and keep no unknown fields."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    return schema


@pytest.fixture(scope="module")
def validators() -> dict[str, jsonschema.Draft7Validator]:
    loaded = {kind: strict(json.loads((DATA / f"{file}.schema.json").read_text()))
              for kind, file in (("InferenceService", "inferenceservice-v1beta1"),
                                 ("ServingRuntime", "servingruntime-v1alpha1"))}
    return {kind: jsonschema.Draft7Validator(schema) for kind, schema in loaded.items()}


def errors(validators: dict[str, jsonschema.Draft7Validator], manifest: dict[str, Any]) -> list[str]:
    found = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
             for e in validators[manifest["kind"]].iter_errors(manifest)]
    name = manifest["metadata"]["name"]  # ObjectMeta is checked by the API server itself
    if manifest["kind"] == "InferenceService" and not (len(name) <= 63 and name.replace("-", "").isalnum()):
        found.append(f"metadata.name: {name!r} is not a DNS-1035 label")
    return found


def test_the_manifests_are_valid_against_kserves_crds(validators) -> None:
    manifests = [serving_runtime(OPTIONS), inference_service("digits", "3", OPTIONS),
                 inference_service("Fraud_Model", "4", OPTIONS, canary=True)]
    for manifest in manifests:
        assert errors(validators, manifest) == [], manifest["kind"]
    canary = manifests[2]["spec"]["predictor"]
    assert canary["canaryTrafficPercent"] == 20 and canary["model"]["storageUri"].endswith("/v4")
    assert canary["model"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert canary["model"]["protocolVersion"] == "v2"
    assert manifests[2]["metadata"]["name"] == "fraud-model"


def test_the_validation_fails_on_what_the_api_server_refuses(validators) -> None:
    good = inference_service("digits", "3", OPTIONS, canary=True)
    broken = []
    for path, value in ((("spec", "predictor", "canaryTrafficPercnt"), 10),  # a typo
                        (("spec", "predictor", "canaryTrafficPercent"), "10"),  # a string
                        (("spec", "predictor", "model", "modelFormat"), {"version": "1"})):
        manifest = copy.deepcopy(good)
        node = manifest
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        broken.append(errors(validators, manifest))
    assert all(broken), broken
    runtime = serving_runtime(OPTIONS)
    runtime["spec"]["containers"][0]["port"] = 8080
    assert errors(validators, runtime)


def test_options_are_checked_before_anything_is_written() -> None:
    for bad in ({"image": "two words"}, {"storage_uri": "/local/path"}, {"namespace": "Bad_NS"},
                {"cpu": "lots"}, {"canary_percent": 100}, {"protocol": "grpc"},
                {"min_replicas": 4, "max_replicas": 2}):
        with pytest.raises(ConfigError):
            KServeOptions(**({"image": "i:1", "storage_uri": "s3://b/p"} | bad))  # type: ignore[arg-type]
    assert service_name("9lives") == "m-9lives"


def registered(mlflow_store: Path, archives: dict[str, Path], name: str = "digits") -> Registry:
    from servegate.integrity import artifact_sha256

    client = MlflowClient()
    client.create_registered_model(name)
    mlflow.set_experiment("kserve")
    registry = Registry.for_model(name)
    with mlflow.start_run():
        for version, archive in archives.items():
            mlflow.log_artifact(str(archive), artifact_path=f"archive-{version}")
            uri = f"{mlflow.get_artifact_uri(f'archive-{version}')}/{archive.name}"
            client.create_model_version(name, source=uri)
            registry.tag(version, {ARCHIVE_TAG: uri, ARCHIVE_SHA256_TAG: artifact_sha256(archive)})
    return registry


def test_export_writes_the_storage_torchserve_reads_and_the_canary(
        mlflow_store: Path, build_archive, validators) -> None:
    archives = {v: build_archive(v, store=mlflow_store / f"built{v}") for v in ("1", "2")}
    registry = registered(mlflow_store, archives)
    registry.set_alias(CHAMPION, "1")
    registry.set_alias(CHALLENGER, "2")
    done = export("digits", OPTIONS, mlflow_store / "out")
    assert (done.champion, done.challenger) == ("1", "2")
    out = mlflow_store / "out"
    for manifest_file in ("servingruntime.yaml", "inferenceservice.yaml",
                          "inferenceservice-canary.yaml"):
        assert errors(validators, yaml.safe_load((out / manifest_file).read_text())) == []
    for version in ("1", "2"):
        root = out / "storage" / f"v{version}"
        archive = root / "model-store" / f"digits.v{version}.mar"
        assert archive.read_bytes() == archives[version].read_bytes()
        properties = (root / "config" / "config.properties").read_text()
        assert f"load_models=digits.v{version}.mar" in properties
        assert "management_address=http://127.0.0.1:8081" in properties
        assert "enable_model_api=false" in properties and "disable_token_authorization=true" in properties
        sample = json.loads((root / "config" / "readiness.json").read_text())
        assert len(sample["instances"]) >= 1
    canary = yaml.safe_load((out / "inferenceservice-canary.yaml").read_text())
    assert canary["spec"]["predictor"]["canaryTrafficPercent"] == 20


def test_export_refuses_an_archive_that_is_not_the_one_built(mlflow_store: Path, build_archive) -> None:
    archive = build_archive("1", store=mlflow_store / "built")
    registry = registered(mlflow_store, {"1": archive})
    registry.set_alias(CHAMPION, "1")
    registry.tag("1", {ARCHIVE_SHA256_TAG: "0" * 64})
    with pytest.raises(IntegrityError):
        export("digits", OPTIONS, mlflow_store / "out")
    assert not list((mlflow_store / "out").rglob("*.mar"))
    assert zipfile.is_zipfile(archive)
