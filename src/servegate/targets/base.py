"""What a serving target is to the pipeline: how a model is loaded and registered for it, built
(compiled and packaged into the artifact its server serves), measured (parity through the
server, load through Locust) and shown to a person. A new server (KServe, Triton) is one new
module implementing ``Target``, registered by name in ``servegate.targets``."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from rich.console import Console

from servegate.backends._local import LocalServer
from servegate.backends.base import ServingBackend
from servegate.choices import CLASS_TASKS
from servegate.config import LoadSettings, PipelineConfig, RequestLimits
from servegate.errors import ServerError
from servegate.gates.load import Adaptive, LoadResult
from servegate.gates.parity import ParityResult
from servegate.probes import Probe


@dataclass(frozen=True)
class Built:
    """An artifact built for a target: the local file or directory, its MLflow artifact URI
    (from which a server on another host fetches it), and how it was compiled."""

    path: Path
    uri: str
    compiled_with: str
    precision: str
    #: An archive routed by shape: each artifact with the requests that reach it (rows, and a
    #: text model's token counts; none when it owns only chunks larger than one request); the
    #: parity gate checks each on its own (empty: one artifact).
    routes: tuple[tuple[str, tuple[Probe, ...]], ...] = ()


@dataclass(frozen=True)
class LoadProfile:
    """How Locust loads a version: the request bodies, and the locustfile and user class that
    send them (each target names its own: there is no default server)."""

    samples: list[Any]
    locustfile: Path
    user_class: str


#: What a target serves: its model type (``TorchModel`` for TorchServe, ``KerasModel`` for TF
#: Serving), loaded by ``load_model`` and handed back to every other step.
ModelT = TypeVar("ModelT")


@runtime_checkable
class Target(Protocol[ModelT]):
    """One serving target: every step of the pipeline that depends on the server."""

    name: str
    #: The environment variables an attached server of this kind needs (``|``: alternatives);
    #: the workflow's validator checks them before anything is installed.
    attach_needs: tuple[str, ...]

    def check_compiler(self, compiler: str) -> None:
        """``ConfigError`` unless ``compiler`` (a name, ``auto``, or a comma list) applies."""

    def open_backend(self, config: PipelineConfig) -> tuple[ServingBackend | None, ServerError | None]:
        """The server (attached or local); None and the reason when a run may still build."""

    def running_backend(self, config: PipelineConfig) -> ServingBackend:
        """The server that runs now (attached, per ``config.server``, else the local one);
        never starts one: ``ServerNotRunning`` says how to (``servegate models|predict``)."""

    def local_server(self, config: PipelineConfig) -> LocalServer[Any]:
        """This host's server of ``config`` (``servegate serve start|stop|status``)."""

    def load_model(self, config: PipelineConfig) -> ModelT:
        """The model of ``config.model`` with its held-out data."""

    def register(self, model: ModelT, name: str) -> str:
        """Log the model to the active MLflow run, register it as ``name``; return the version."""

    def build(self, model: ModelT, config: PipelineConfig, version: str, workdir: Path,
              console: Console) -> Built:
        """Compile and package ``model`` for this server, logged to the active run."""

    def package(self, model: ModelT, config: PipelineConfig, version: str, output_dir: Path) -> Path:
        """What ``build`` makes, into ``output_dir`` and without MLflow (``servegate package``);
        returns the artifact's path."""

    def load_profile(self, model: ModelT) -> LoadProfile:
        """What the load gate sends."""

    def example_row(self, model: ModelT) -> Any:
        """One request instance, for the curl shown to a person."""

    def curl(self, url: str, key_shell: str | None, model: ModelT, ca_bundle: str | None = None) -> str:
        """A curl against ``url`` that works as pasted (the key read by ``key_shell``; an
        https server verified against ``ca_bundle``)."""

    def check_parity(self, backend: ServingBackend, name: str, version: str, model: ModelT,
                     champion: str | None, limits: RequestLimits | None = None, *,
                     rows: int = 32) -> ParityResult:
        """The held-out rows through the served challenger (and champion) against the reference,
        in requests of at most ``rows`` rows that fit ``limits``."""

    def measure_load(self, backend: ServingBackend, name: str, versions: list[tuple[str, str]],
                     settings: LoadSettings, profile: LoadProfile,
                     adaptive: Adaptive | None = None) -> dict[str, LoadResult]:
        """Load each (label, version), alternating (more rounds while ``adaptive`` says the
        comparison is inconclusive); the merged result per label."""


class MeasuredTarget(Generic[ModelT]):
    """The part of ``Target`` every real server shares (a server module subclasses it and adds
    the rest): parity through its REST API read by its decoder, load through Locust, and a curl a
    person can paste."""

    def example_row(self, model: ModelT) -> Any:
        raise NotImplementedError

    def curl(self, url: str, key_shell: str | None, model: ModelT, ca_bundle: str | None = None) -> str:
        return curl_command(url, key_shell, self.example_row(model), ca_bundle)

    def check_parity(self, backend: ServingBackend, name: str, version: str, model: ModelT,
                     champion: str | None, limits: RequestLimits | None = None, *,
                     rows: int = 32) -> ParityResult:
        from servegate.gates.parity import run_parity

        return run_parity(backend, name, version, model, champion, limits,
                          decode=self.prediction_values, rows=rows)

    def prediction_values(self, prediction: Any, task: str, outputs: list[str]) -> list[Any]:
        """One answer row as its output values, in the model's output order (``outputs``: their
        names). The answer format servegate's handlers and SavedModel signatures share: a
        classifier's row is a mapping holding ``probabilities``; a model of several outputs
        answers ``{name: value}``, of one output the value itself. A server whose answers
        differ overrides this."""
        if task in CLASS_TASKS:
            return [_field(prediction, "probabilities")]
        if len(outputs) > 1:
            return [_field(prediction, n) for n in outputs]
        return [prediction]

    def measure_load(self, backend: ServingBackend, name: str, versions: list[tuple[str, str]],
                     settings: LoadSettings, profile: LoadProfile,
                     adaptive: Adaptive | None = None) -> dict[str, LoadResult]:
        from servegate.gates.load import run_ab

        access = backend.access()
        return run_ab(versions, settings=settings, adaptive=adaptive, host=access.inference_url,
                      model=name, inference_key=access.inference_key, samples=profile.samples,
                      locustfile=profile.locustfile, user_class=profile.user_class,
                      ca_bundle=access.ca_bundle, replicas=access.replicas)


def _field(prediction: Any, key: str) -> Any:
    if not isinstance(prediction, dict) or key not in prediction:
        raise ServerError(f"the server's answer row has no {key!r}: {str(prediction)[:120]}")
    return prediction[key]


def curl_command(url: str, key_shell: str | None, example: Any, ca_bundle: str | None = None) -> str:
    """A curl that works as pasted; the token comes from ``key_shell`` (a shell expression
    reading it where the server's keys are), never printed; an https server is verified against
    ``ca_bundle`` (``--cacert``). ``example`` is one request instance (a list, a dict of named
    inputs, or a string)."""
    body = shlex.quote(json.dumps({"instances": [_rounded(example)]}))
    auth = f'-H "Authorization: Bearer {key_shell}" ' if key_shell else ""
    return f"curl -s {curl_cacert(url, ca_bundle)}{auth}-H 'Content-Type: application/json' -d {body} {url}"


def curl_cacert(url: str, ca_bundle: str | None) -> str:
    """curl's ``--cacert`` option (and a space) for an https ``url``, or ``""``."""
    return f"--cacert {shlex.quote(ca_bundle)} " if ca_bundle and url.startswith("https://") else ""


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value
