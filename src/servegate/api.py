"""servegate as a library: what the CLI, the MLflow Project's entry script and the benchmarks
call. Each function takes typed settings (``servegate.config``) and raises ``ServegateError``
subclasses (``servegate.errors``); none prints except through the ``console`` it is given.

    from servegate import api
    from servegate.config import PipelineConfig

    result = api.deploy(PipelineConfig(model="models:/fraud/7", server="attach"))
    print(result.decision, result.endpoint)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from servegate.config import (
    BatchingConfig,
    PipelineConfig,
    TorchServeSettings,
    experiment_name,
    inside_mlflow_run,
    server_mode,
)
from servegate.errors import GateFailed, ServegateError, ServerError
from servegate.pipeline import PipelineResult


def open_backend(config: PipelineConfig) -> tuple[Any, ServerError | None]:
    """The server of ``config``'s target (attached or local, by ``config.server``); None and
    the reason when a run may still build without one."""
    from servegate.targets import get_target

    return get_target(config.target).open_backend(config)


def deploy(config: PipelineConfig, console: Console | None = None) -> PipelineResult:
    """The gated deployment of ``config.model``: source, build, deploy as a new version with no
    default traffic, gate, then promote or reject (``GateFailed``). Opens the target's server
    (attached or local, by ``config.server``) and closes it afterwards."""
    from servegate import tracking
    from servegate.pipeline import DeployPipeline
    from servegate.targets import get_target

    target = get_target(config.target)
    target.check_compiler(config.compiler)  # before a server is started for nothing
    if not inside_mlflow_run():
        tracking.use_experiment(experiment_name())
    backend, unreachable = open_backend(config)
    try:
        return DeployPipeline(config, backend, console, unreachable, target=target).run()
    finally:
        if backend is not None:
            backend.close()


def rollback(name: str, *, target: str = "torchserve", server: str | None = None,
             torchserve: TorchServeSettings | None = None,
             console: Console | None = None) -> tuple[str, str]:
    """``name``'s previous champion back, registry and server together; (restored, demoted)."""
    from servegate.naming import validate_name
    from servegate.pipeline import rollback as rollback_pipeline

    config = PipelineConfig(name=validate_name(name), target=target, server=server_mode(server),
                            torchserve=torchserve or TorchServeSettings())
    backend, unreachable = open_backend(config)
    if backend is None:
        raise unreachable or ServegateError(f"no {target} server")
    try:
        return rollback_pipeline(config, backend, console)
    finally:
        backend.close()


def reconcile(name: str, *, target: str = "torchserve", server: str | None = None,
              torchserve: TorchServeSettings | None = None,
              console: Console | None = None) -> str:
    """The registry's champion of ``name`` served (restored where a server or a fleet's
    replica lacks it) and the default everywhere; a sentence saying what was done."""
    from servegate.naming import validate_name
    from servegate.reconcile import reconcile_locked

    config = PipelineConfig(name=validate_name(name), target=target, server=server_mode(server),
                            torchserve=torchserve or TorchServeSettings())
    backend, unreachable = open_backend(config)
    if backend is None:
        raise unreachable or ServegateError(f"no {target} server")
    say = (console or Console(stderr=True)).print
    try:
        return reconcile_locked(backend, config.model_name, config.batching.min_workers,
                                say).describe(config.model_name)
    finally:
        backend.close()


def package(model: str, *, name: str, version: str, output_dir: Path, compiler: str = "eager",
            batching: BatchingConfig | None = None) -> Path:
    """A ``.mar`` archive of ``model`` (handlers, model-config.yaml, labels, warm-up sample)."""
    from servegate.packaging.builder import package_torch_model

    return package_torch_model(model, name=name, version=version, compiler=compiler,
                               batching=batching or BatchingConfig(), output_dir=output_dir)


def load_model(uri: str, **options: Any) -> Any:
    """A model source (``builtin:``, ``models:/``, ``runs:/``, files, ``hf:``) as a TorchModel."""
    from servegate.sources import load_torch_model

    return load_torch_model(uri, **options)


__all__ = ["GateFailed", "PipelineConfig", "PipelineResult", "ServegateError", "deploy",
           "load_model", "open_backend", "package", "reconcile", "rollback"]
