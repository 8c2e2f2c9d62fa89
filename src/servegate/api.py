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
from typing import TYPE_CHECKING, Any

from rich.console import Console

from servegate.config import (
    BatchingConfig,
    PipelineConfig,
    TorchServeSettings,
    experiment_name,
    inside_mlflow_run,
    server_mode,
)
from servegate.errors import ConfigError, GateFailed, ServegateError, ServerError
from servegate.pipeline import PipelineResult

if TYPE_CHECKING:
    from servegate.tuning.report import Tuned
    from servegate.tuning.search import Space, TuneResult


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


def tune(name: str, *, version: str | None = None, config: PipelineConfig | None = None,
         space: Space | None = None, max_points: int = 12, seconds: float = 5.0,
         cores: int | None = None, console: Console | None = None) -> Tuned:
    """Search the batching of ``name`` (``version``, else the server's default) for the highest
    throughput within ``config.slos`` (p95, p99, error rate), measuring scratch versions with
    Locust on the live server: TorchServe's batch size, batch delay, workers and threads per
    worker, or TF Serving's ``max_batch_size``, ``batch_timeout_micros`` and
    ``num_batch_threads`` (``config.target``). The frontier is logged to an MLflow run (params,
    metrics, a plot). Returns a ``tuning.report.Tuned``. ``space``: the values searched (default:
    batch sizes 1-32, delays 1-20 ms, workers 1..cores (at most 4), 4-32 users); ``cores``: the
    server's (default: this host's). Scratch versions an interrupted tune left behind are
    removed first."""
    import os
    import tempfile

    from servegate import tracking
    from servegate.interrupts import signals_as_errors
    from servegate.locks import model_lock
    from servegate.naming import validate_name, validate_version
    from servegate.tuning.report import Tuned, mlflow_figures, write_files
    from servegate.tuning.search import SLO, Space

    validate_name(name)
    if version is not None:
        validate_version(version)
    config = config or PipelineConfig(name=name)
    cores = cores or os.cpu_count() or 1
    space = space or Space(workers=tuple(range(1, min(cores, 4) + 1)), users=(4, 8, 16, 32))
    slo = SLO(config.slos.p95_ms, config.slos.p99_ms, config.slos.max_error_rate)
    say = (console or Console(stderr=True)).print
    if not inside_mlflow_run():
        tracking.use_experiment(experiment_name())
    backend, unreachable = open_backend(config)
    if backend is None:
        raise unreachable or ServegateError(f"no {config.target} server")
    try:
        with model_lock(name), signals_as_errors():
            version = version or backend.default_version(name)
            if version is None:
                raise ConfigError(f"{name} is not served: deploy it first")
            search_on = _tfserving_search if config.target == "tfserving" else _torchserve_search
            say(f"tune {name} v{version}: timing the model in process and the frontend")
            with tracking.step(f"tune-{name}", nested=inside_mlflow_run()) as run_id:
                result = search_on(backend, name, version, space=space, slo=slo,
                                   max_points=max_points, seconds=seconds, cores=cores,
                                   processes=config.load.processes, say=say)
                params, metrics = mlflow_figures(result)
                with tempfile.TemporaryDirectory(prefix="servegate-tune-") as tmp:
                    plot = write_files(result, Path(tmp))
                    tracking.log_tuning({"tune.name": name, "tune.version": version} | params,
                                        metrics, Path(tmp))
                return Tuned(result, name, version, run_id, plot.name)
    finally:
        backend.close()


def _torchserve_search(backend: Any, name: str, version: str, **search: Any) -> TuneResult:
    """``tune`` on TorchServe: scratch versions of the version's archive in the model store."""
    from servegate.naming import archive_file_name
    from servegate.tuning.measure import tune_archive

    if not hasattr(backend, "delivery") or not hasattr(backend, "client"):
        raise ConfigError("tune runs against one TorchServe, not a fleet: tune on one "
                          "replica (its settings then go to every replica)")
    store = getattr(backend.delivery, "model_store", None)
    archive = Path(store) / archive_file_name(name, version) if store else None
    if archive is None or not archive.is_file():
        raise ConfigError(f"{name} v{version}'s archive is not in the server's model store "
                          f"({store}): tune needs it to make scratch versions")
    return tune_archive(backend, name, archive, version, **search)


def _tfserving_search(backend: Any, name: str, version: str, **search: Any) -> TuneResult:
    """``tune`` on TF Serving: scratch versions copied from the version's SavedModel directory."""
    from servegate.tuning.tfserving import tune_savedmodel

    root = getattr(backend, "model_root", None)
    if root is None:
        raise ConfigError("tune copies scratch versions from TF Serving's model root; a root "
                          "on a remote filesystem is not supported: tune on a server whose "
                          "model root is a directory here")
    version_dir = Path(root) / name / version
    if not (version_dir / "saved_model.pb").is_file():
        raise ConfigError(f"{name} v{version} is not a SavedModel under {root}")
    return tune_savedmodel(backend, name, version_dir, version, **search)


def package(model: str, *, name: str, version: str, output_dir: Path, compiler: str = "eager",
            batching: BatchingConfig | None = None, target: str = "torchserve",
            eval_data: str | None = None) -> Path:
    """What ``target``'s server serves, built from ``model`` into ``output_dir`` without MLflow:
    TorchServe's ``.mar`` (handlers, model-config.yaml, labels, warm-up sample), TF Serving's
    SavedModel version directory."""
    from servegate.naming import validate_name, validate_version
    from servegate.targets import get_target

    validate_name(name)  # before the model is loaded or trained
    validate_version(version)
    chosen = get_target(target)
    config = PipelineConfig(model=model, name=name, target=target, compiler=compiler,
                            eval_data=eval_data,
                            **({"batching": batching} if batching is not None else {}))
    chosen.check_compiler(compiler)
    return chosen.package(chosen.load_model(config), config, version, output_dir)


def load_model(uri: str, **options: Any) -> Any:
    """A model source (``builtin:``, ``models:/``, ``runs:/``, files, ``hf:``) as a TorchModel."""
    from servegate.sources import load_torch_model

    return load_torch_model(uri, **options)


__all__ = ["GateFailed", "PipelineConfig", "PipelineResult", "ServegateError", "deploy",
           "load_model", "open_backend", "package", "reconcile", "rollback", "tune"]
