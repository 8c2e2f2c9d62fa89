"""TF Serving's configuration files, built through the real protos and written in text format.

* ``models.config``: ``ModelServerConfig`` (tensorflow-serving-api) with a ``specific`` version
  policy and version labels (``stable`` = the champion, ``canary`` = the challenger);
* ``batching.config``: ``BatchingParameters`` (``--batching_parameters_file``): with
  ``--enable_per_model_batching_parameters`` only its thread pool counts, and each version's own
  ``batching_params.pbtxt`` (``PER_MODEL_BATCHING_FILE``, written at build) sets its batching
  when it loads; a version without that file is served unbatched;
* ``monitoring.config``: ``MonitoringConfig`` with Prometheus (``--monitoring_config_file``).

The last two messages are not in tensorflow-serving-api's wheel: ``servegate.tfserving_protos``
holds them, generated once from ``.proto`` files with the server's field names and numbers.
Every file is written atomically (``servegate._atomic``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from servegate._atomic import atomic_write_text
from servegate.errors import ConfigError, PackagingError

STABLE = "stable"
CANARY = "canary"
#: The desired state: the file a local server starts with, in the model root.
MODELS_CONFIG = "models.config"
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
#: The batching file TF Serving reads from a version's directory when that version loads, if it
#: was started with ``PER_MODEL_BATCHING_FLAG`` (and ``--enable_batching=true``).
PER_MODEL_BATCHING_FILE = "batching_params.pbtxt"
PER_MODEL_BATCHING_FLAG = "--enable_per_model_batching_parameters=true"

M = TypeVar("M")


@dataclass(frozen=True)
class ModelEntry:
    """One model of ``models.config``: the versions to serve and the labels pointing at them."""

    name: str
    base_path: str
    versions: tuple[int, ...]
    labels: Mapping[str, int] = field(default_factory=dict)
    platform: str = "tensorflow"

    def __post_init__(self) -> None:
        unknown = {k: v for k, v in self.labels.items() if v not in self.versions}
        if unknown:
            raise ConfigError(f"{self.name}: labels {unknown} point at versions not served "
                              f"({list(self.versions)})")


def model_server_config(entries: Iterable[ModelEntry]) -> Any:
    """A ``tensorflow.serving.ModelServerConfig`` serving exactly the given versions."""
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    model_list = config.model_config_list  # present (and empty) even with no model
    model_list.SetInParent()
    for entry in entries:
        model = model_list.config.add(name=entry.name, base_path=entry.base_path,
                                      model_platform=entry.platform)
        model.model_version_policy.specific.versions.extend(sorted(entry.versions))
        for label, version in sorted(entry.labels.items()):
            model.version_labels[label] = version
    return config


def model_entries(config: Any) -> list[ModelEntry]:
    """The entries of a ``ModelServerConfig`` (the inverse of ``model_server_config``)."""
    entries = []
    for model in config.model_config_list.config:
        policy = model.model_version_policy
        if policy.WhichOneof("policy_choice") not in (None, "specific"):
            raise ConfigError(f"{model.name}: servegate manages only the 'specific' version policy")
        entries.append(ModelEntry(name=model.name, base_path=model.base_path,
                                  versions=tuple(policy.specific.versions),
                                  labels=dict(model.version_labels),
                                  platform=model.model_platform or "tensorflow"))
    return entries


def batching_parameters(*, max_batch_size: int = 8, batch_timeout_ms: float = 5.0,
                        num_batch_threads: int | None = None, max_enqueued_batches: int = 100,
                        allowed_batch_sizes: Iterable[int] = ()) -> Any:
    """``BatchingParameters``: a full queue answers at once (UNAVAILABLE) instead of waiting."""
    from servegate.tfserving_protos.batching_pb2 import BatchingParameters

    allowed = sorted(set(allowed_batch_sizes))
    if allowed and allowed[-1] != max_batch_size:
        raise ConfigError(f"allowed_batch_sizes {allowed} must end with max_batch_size "
                          f"{max_batch_size}")
    params = BatchingParameters(allowed_batch_sizes=allowed)
    params.max_batch_size.value = max_batch_size
    params.batch_timeout_micros.value = int(batch_timeout_ms * 1000)
    params.num_batch_threads.value = num_batch_threads or os.cpu_count() or 1
    params.max_enqueued_batches.value = max_enqueued_batches
    return params


def monitoring_config(path: str = PROMETHEUS_PATH) -> Any:
    """``MonitoringConfig`` exposing Prometheus metrics on the REST port at ``path``."""
    from servegate.tfserving_protos.monitoring_pb2 import MonitoringConfig, PrometheusConfig

    return MonitoringConfig(prometheus_config=PrometheusConfig(enable=True, path=path))


def write_text_proto(message: Any, path: Path) -> Path:
    """Write ``message`` in protobuf text format, atomically."""
    from google.protobuf import text_format

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return atomic_write_text(path, text_format.MessageToString(message))
    except OSError as exc:
        raise PackagingError(f"cannot write {path}: {exc}") from exc


def read_text_proto(path: Path, message_type: type[M]) -> M:
    """Parse a text-format file into a new ``message_type``."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(Path(path).read_text(encoding="utf-8"), message_type())
    except (OSError, text_format.ParseError) as exc:
        raise ConfigError(f"cannot read {message_type.__name__} from {path}: {exc}") from exc


def read_models_config(path: Path) -> list[ModelEntry]:
    """The entries of a ``models.config`` file (none if the file does not exist)."""
    if not Path(path).exists():
        return []
    return parse_models_config(Path(path).read_text(encoding="utf-8"), str(path))


def write_models_config(path: Path, entries: Iterable[ModelEntry]) -> Path:
    return write_text_proto(model_server_config(entries), path)


def models_config_text(entries: Iterable[ModelEntry]) -> str:
    """``models.config`` serving exactly ``entries``, in protobuf text format."""
    from google.protobuf import text_format

    return str(text_format.MessageToString(model_server_config(entries)))


def parse_models_config(text: str, source: str) -> list[ModelEntry]:
    """The entries of ``models.config`` text read from ``source``."""
    from google.protobuf import text_format
    from tensorflow_serving.config.model_server_config_pb2 import ModelServerConfig

    try:
        return model_entries(text_format.Parse(text, ModelServerConfig()))
    except text_format.ParseError as exc:
        raise ConfigError(f"cannot read ModelServerConfig from {source}: {exc}") from exc


@dataclass(frozen=True)
class ServerConfigFiles:
    """The three files a TF Serving started by servegate reads."""

    models: Path
    batching: Path
    monitoring: Path

    def server_flags(self, to_server_path: Any = str) -> list[str]:
        """``tensorflow_model_server`` flags naming these files (paths as the server sees them)."""
        return [
            f"--model_config_file={to_server_path(self.models)}",
            "--enable_batching=true",
            PER_MODEL_BATCHING_FLAG,
            f"--batching_parameters_file={to_server_path(self.batching)}",
            f"--monitoring_config_file={to_server_path(self.monitoring)}",
        ]


def write_server_configs(directory: Path, *, entries: Iterable[ModelEntry] = (),
                         batching: Any | None = None, monitoring: Any | None = None,
                         keep_models: bool = True) -> ServerConfigFiles:
    """Write the server's configuration files into ``directory``.

    An existing ``models.config`` is kept when ``keep_models`` (it records what is deployed).
    """
    directory = Path(directory)
    files = ServerConfigFiles(directory / MODELS_CONFIG, directory / "batching.config",
                              directory / "monitoring.config")
    if not (keep_models and files.models.exists()):
        write_models_config(files.models, entries)
    if batching is None:
        batching = batching_parameters()
    write_text_proto(batching, files.batching)
    write_text_proto(monitoring_config() if monitoring is None else monitoring, files.monitoring)
    return files


def write_version_batching(version: Path, batching: Any) -> Path:
    """``batching`` (``BatchingParameters``) as ``<version>/batching_params.pbtxt``: the batching
    a server started with per-model batching gives that version when it loads it."""
    return write_text_proto(batching, Path(version) / PER_MODEL_BATCHING_FILE)
