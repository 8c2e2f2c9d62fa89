"""A real TF Serving: attach (``SERVEGATE_TFSERVING_URL``), or a local ``tensorflow_model_server`` /
Docker ``tensorflow/serving`` started in a temporary directory. Skipped, saying why, where none is
reachable (this machine cannot install one)."""

from __future__ import annotations

import base64
import os

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_serving")

from servegate.backends.tfserving import (  # noqa: E402
    CANARY,
    ENV_URL,
    STABLE,
    LocalTFServing,
    TFServingSettings,
    open_tfserving,
)
from servegate.errors import ServerNotRunning  # noqa: E402
from servegate.packaging.savedmodel import export_savedmodel, to_png_bytes  # noqa: E402
from servegate.sources.digits_keras import builtin_digits_keras  # noqa: E402

pytestmark = pytest.mark.integration
SKIP = "no TF Serving reachable: set SERVEGATE_TFSERVING_URL or install tensorflow_model_server"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory):
    local = None if os.environ.get(ENV_URL) else LocalTFServing(
        TFServingSettings(workdir=tmp_path_factory.mktemp("tfserving")))
    try:
        backend = open_tfserving(local.settings if local else None)
    except ServerNotRunning as exc:
        pytest.skip(f"{SKIP} ({exc})")
    try:
        yield backend
    finally:
        backend.close()
        if local is not None:
            local.stop()


def test_deploy_gate_routes_promote_and_reject_on_real_tf_serving(live, tmp_path) -> None:
    name = "servegate-live-digits"
    first = live.next_version(name)
    champion = builtin_digits_keras(epochs=8, seed=0)
    challenger = builtin_digits_keras(epochs=2, seed=1)
    v1 = export_savedmodel(champion, tmp_path, name, first)
    v2 = export_savedmodel(challenger, tmp_path, name, first + 1)
    x = champion.eval_x[:8]

    live.deploy(v1.path, name, str(first))
    if live.default_version(name) != str(first):  # a champion from an earlier run: make it ours
        live.set_default(name, str(first))
    live.deploy(v2.path, name, str(first + 1))
    assert live.labels(name)[CANARY] == first + 1 and live.labels(name)[STABLE] == first

    stable = live.predict(name, {"instances": x.tolist()})
    probabilities = np.asarray([p["probabilities"] for p in stable["predictions"]], np.float32)
    assert np.abs(probabilities - champion.reference(x)).max() <= 1e-5
    canary = live.client.predict(name, {"inputs": x.tolist()}, label=CANARY)
    assert np.abs(np.asarray(canary["outputs"]["probabilities"], np.float32)
                  - challenger.reference(x)).max() <= 1e-5
    images = [{"b64": base64.b64encode(p).decode()} for p in to_png_bytes(x)]
    answer = live.predict(name, {"signature_name": "serving_images", "instances": images},
                          version=str(first))
    assert len(answer["predictions"]) == len(x)
    grpc_out = live.predict_grpc(name, {"inputs": x}, version=str(first + 1))
    assert np.abs(grpc_out["probabilities"] - challenger.reference(x)).max() <= 1e-5

    live.set_default(name, str(first + 1))
    assert live.default_version(name) == str(first + 1)
    live.set_default(name, str(first))  # roll back
    live.undeploy(name, str(first + 1))
    assert str(first + 1) not in [v.version for v in live.versions(name)]
    for older in live.entry(name).versions:  # leave one version (ours, stable) on the server
        if older != first:
            live.undeploy(name, str(older))
    assert [v.version for v in live.versions(name)] == [str(first)]
