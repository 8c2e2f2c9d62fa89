"""``ScriptedTarget``: a ``Target`` whose models are scripted accuracies and latencies, for
unit tests of the pipeline's decisions (first deploy, restore, orphans, promote, reject,
rollback, interrupted runs) in seconds, against a ``MemoryBackend`` and a real MLflow store.

Each run registers a new version whose "model" is the next entry of ``script``: its accuracy
on the held-out set and its p95 latency. Parity compares it with the champion's entry; load
returns its latency. Hooks (``before_parity``, ``before_load``) let a test fail a step or send a
signal at a chosen point.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from servegate import tracking
from servegate.backends.base import ServingBackend
from servegate.config import LoadSettings, PipelineConfig, RequestLimits
from servegate.errors import ConfigError, ServerError
from servegate.gates.load import Adaptive, LoadResult
from servegate.gates.parity import ParityResult
from servegate.targets.base import Built, LoadProfile


@dataclass(frozen=True)
class ScriptedModel:
    """What one version is: its accuracy and its p95 latency (ms)."""

    accuracy: float = 0.95
    p95_ms: float = 10.0
    eval_note: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


class ScriptedTarget:
    """A target that builds a small file per version and measures scripted figures."""

    name = "scripted"
    attach_needs: tuple[str, ...] = ()

    def __init__(self, backend: ServingBackend, script: list[ScriptedModel]) -> None:
        self.backend = backend
        self.script = list(script)
        self.by_version: dict[str, ScriptedModel] = {}
        self.before_parity: Callable[[str], None] | None = None
        self.before_load: Callable[[str], None] | None = None

    def check_compiler(self, compiler: str) -> None:
        pass

    def open_backend(self, config: PipelineConfig) -> tuple[ServingBackend | None, ServerError | None]:
        return self.backend, None

    def running_backend(self, config: PipelineConfig) -> ServingBackend:
        return self.backend

    def local_server(self, config: PipelineConfig) -> Any:
        raise ConfigError(f"{self.name} is served in memory: it has no local server to start")

    def load_model(self, config: PipelineConfig) -> ScriptedModel:
        return self.script.pop(0)

    def register(self, model: Any, name: str) -> str:
        """A registered version whose source is this run's artifacts (no model is logged)."""
        version = tracking.register_run_artifacts(name)
        self.by_version[version] = model
        return version

    def build(self, model: Any, config: PipelineConfig, version: str, workdir: Path,
              console: Console) -> Built:
        path = self.package(model, config, version, workdir)
        return Built(path, tracking.log_artifact_file(path, "archive"), "scripted", "fp32")

    def package(self, model: Any, config: PipelineConfig, version: str, output_dir: Path) -> Path:
        path = output_dir / f"{config.model_name}.v{version}.mar"
        path.write_bytes(f"scripted {version} {model.accuracy} {model.p95_ms}".encode())
        return path

    def load_profile(self, model: Any) -> LoadProfile:
        # never sent: measure_load answers from the script
        return LoadProfile(samples=[], locustfile=Path(__file__), user_class="ScriptedUser")

    def example_row(self, model: Any) -> Any:
        return [0.0]

    def curl(self, url: str, key_shell: str | None, model: Any, ca_bundle: str | None = None) -> str:
        return f"curl {url}"

    def check_parity(self, backend: ServingBackend, name: str, version: str, model: Any,
                     champion: str | None, limits: RequestLimits | None = None, *,
                     rows: int = 32) -> ParityResult:
        if self.before_parity is not None:
            self.before_parity(version)
        backend.predict(name, {"instances": [[0.0]]}, version)  # it must be served
        theirs = self.by_version.get(champion) if champion is not None else None
        return ParityResult(rows=100, max_abs_diff=0.0, top1_agreement=1.0,
                            accuracy=model.accuracy, reference_accuracy=model.accuracy,
                            champion_accuracy=None if theirs is None else theirs.accuracy,
                            abs_diffs=np.zeros(100))

    def measure_load(self, backend: ServingBackend, name: str, versions: list[tuple[str, str]],
                     settings: LoadSettings, profile: LoadProfile,
                     adaptive: Adaptive | None = None) -> dict[str, LoadResult]:
        if self.before_load is not None:
            self.before_load(versions[-1][1])
        results = {}
        for label, version in versions:
            p95 = self.by_version.get(version, ScriptedModel()).p95_ms
            results[label] = LoadResult(label=label, requests=1000, failures=0, seconds=10.0,
                                        rps=100.0, p50_ms=p95 / 2, p95_ms=p95, p99_ms=p95 * 1.2,
                                        load_cpu_seconds=1.0)
        return results
