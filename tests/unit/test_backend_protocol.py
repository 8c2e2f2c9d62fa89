"""Every serving backend (TorchServe, TF Serving, the in-memory fake) implements the whole
``ServingBackend`` protocol with exactly its signatures: the pipeline types its server as that
protocol and calls nothing else."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from servegate.backends.base import ServingBackend
from servegate.backends.tfserving import TFServingBackend, TFServingClient
from servegate.backends.torchserve import Endpoints, TorchServeBackend, TorchServeClient
from servegate.testing import MemoryBackend

METHODS = sorted(name for name, value in vars(ServingBackend).items()
                 if callable(value) and not name.startswith("_"))


@pytest.fixture(params=["torchserve", "tfserving", "memory", "fleet"])
def backend(request: pytest.FixtureRequest, tmp_path: Path):
    """Each backend, built without a server (nothing is called on it)."""
    if request.param == "torchserve":
        endpoints = Endpoints("http://127.0.0.1:9", "http://127.0.0.1:9", "http://127.0.0.1:9")
        made: object = TorchServeBackend(TorchServeClient(endpoints, None), tmp_path)
    elif request.param == "tfserving":
        made = TFServingBackend(TFServingClient("http://127.0.0.1:9", "127.0.0.1:9"), tmp_path)
    elif request.param == "fleet":
        from servegate.backends.torchserve.fleet import FleetBackend, Replica

        made = FleetBackend([Replica("one", MemoryBackend()), Replica("two", MemoryBackend())])
    else:
        made = MemoryBackend()
    yield made
    made.close()  # type: ignore[attr-defined]


def test_the_protocol_is_the_pipelines_whole_interface() -> None:
    assert METHODS == ["access", "close", "default_version", "deploy", "endpoint", "names",
                       "ping", "predict", "set_default", "undeploy", "versions"]


def test_every_backend_is_a_serving_backend(backend: object) -> None:
    assert isinstance(backend, ServingBackend)
    assert isinstance(backend.kind, str) and backend.kind  # type: ignore[attr-defined]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_has_the_protocols_signature(backend: object, method: str) -> None:
    expected = inspect.signature(getattr(ServingBackend, method), eval_str=True)
    actual = inspect.signature(getattr(type(backend), method), eval_str=True)
    assert actual == expected, f"{type(backend).__name__}.{method}{actual} != {expected}"
