"""What a run writes to MLflow besides the registry's aliases and tags: its parameters, the
models it registers (no pickle), held-out sets as datasets, compiler candidates, artifacts.

Every function logs into the active run; none reads configuration from the environment.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow

from servegate.errors import ConfigError
from servegate.redact import redact_text


def flat_params(values: dict[str, Any], prefix: str = "config") -> dict[str, str]:
    """Nested settings as MLflow params (keys joined with dots; URL userinfo removed)."""
    def walk(key: str, value: object) -> dict[str, str]:
        if isinstance(value, dict):
            out: dict[str, str] = {}
            for inner, item in value.items():
                out |= walk(f"{key}.{inner}" if key else str(inner), item)
            return out
        return {key: redact_text(str(value))}
    return walk(prefix, values)


def registered_version(uri: str) -> tuple[str, str]:
    """(name, version) of ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``."""
    path = uri.removeprefix("models:/")
    if "@" in path:
        name, alias = path.split("@", 1)
        return name, str(mlflow.MlflowClient().get_model_version_by_alias(name, alias).version)
    name, _, version = path.partition("/")
    if not version.isdigit():
        raise ConfigError(f"expected models:/NAME/VERSION or models:/NAME@ALIAS, got {uri}")
    return name, version


@contextmanager
def step(name: str, *, nested: bool = True) -> Iterator[str]:
    """An MLflow run for a pipeline step (nested in the active run); yields its run id."""
    with mlflow.start_run(run_name=name, nested=nested) as run:
        yield run.info.run_id


def tag_active_run(key: str, value: str) -> None:
    """Tag the active run, if there is one (a repair outside a run tags nothing)."""
    if mlflow.active_run() is not None:
        mlflow.set_tag(key, value)


def log_build(params: dict[str, Any], metrics: dict[str, float]) -> None:
    """What a target's build chose and measured (params and metrics of the package step)."""
    mlflow.log_params(params)
    mlflow.log_metrics(metrics)


def register_run_artifacts(name: str) -> str:
    """A new version of ``name`` whose source is the active run's artifacts (no model logged:
    test targets); return the version."""
    client = mlflow.MlflowClient()
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        client.create_registered_model(name)
    run = mlflow.active_run()
    source = mlflow.get_artifact_uri() if run else "none"
    return str(client.create_model_version(name, source, run.info.run_id if run else None).version)


def use_experiment(name: str) -> None:
    """Runs go to the experiment ``name`` (created when missing)."""
    mlflow.set_experiment(name)


def log_config(config: Any) -> None:
    """A run's settings as params (the local servers' own settings are not the run's)."""
    servers = {"torchserve", "tfserving"}
    mlflow.log_params(flat_params(config.model_dump(mode="json", exclude=servers)))


def log_registered(name: str, version: str) -> None:
    mlflow.set_tags({"registered_model": name, "registered_version": version})


def log_deployed(champion: str | None, challenger: str, where: str, endpoint: str) -> None:
    """Which versions the run served, and where (hosts hidden where they are secret)."""
    mlflow.log_params({"champion": champion or "none", "challenger": challenger,
                       "server": redact_text(where), "endpoint": redact_text(endpoint)})


def log_report(report: Any, folder: Path, copy_to: Path | None = None) -> None:
    """The gate report written to ``folder``, logged under ``report/``, copied to ``copy_to``."""
    import shutil

    from servegate.gates.report import write_report

    write_report(report, folder)
    log_artifact_dir(folder, "report")
    if copy_to is not None:
        shutil.copytree(folder, copy_to, dirs_exist_ok=True)


def end_run(decision: str, status: str | None = None) -> None:
    """The run's decision (a tag, and ``promoted`` as a metric); ``status`` ends the run so."""
    mlflow.set_tag("servegate.decision", decision)
    if status is None:
        mlflow.log_metric("promoted", 1.0 if decision == "promoted" else 0.0)
    else:
        mlflow.end_run(status)


def log_source(model: Any, source: str) -> None:
    """The model's own params and metrics, where it came from, and its evaluation note."""
    mlflow.log_params({f"model.{k}": redact_text(str(v)) for k, v in model.params.items()}
                      | {"source": redact_text(source)})
    if note := getattr(model, "eval_note", ""):
        mlflow.set_tag("servegate.eval_data", redact_text(note)[:5000])
    if model.metrics:
        mlflow.log_metrics(model.metrics)


def installable(requirements: list[str]) -> list[str]:
    """A flavor's own pinned requirements without local version labels (``torch==2.13.0+cpu``
    -> ``torch==2.13.0``, installable from PyPI). Given explicitly, they spare each logged model
    MLflow's requirement inference, which loads the model again in a subprocess (~5 s a run)."""
    return [re.sub(r"(==[^+;\s]+)\+[^;\s]+", r"\1", r) for r in requirements]


def log_torch_model(model: Any, registered_name: str) -> str:
    """Log (MLflow 3's ExportedProgram format, no pickle) and register a tensor model, with its
    signature, a two-row input example (a dynamic batch) and its held-out set as a dataset of
    the run, so that a later import of ``models:/`` gates on the same data; return the version."""
    import mlflow.pytorch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema
    from mlflow.types import TensorSpec as MlflowTensorSpec

    from servegate.sources.schema import batch_rows

    example = model.model_inputs(batch_rows(model.example_batch(2), 2))
    outputs = model.forward_all(*example)
    names = ([s.name for s in model.outputs] if len(model.outputs) == len(outputs)
             else [None] * len(outputs))
    signature = ModelSignature(
        Schema([MlflowTensorSpec(a.dtype, (-1, *a.shape[1:]), s.name)
                for s, a in zip(model.inputs, example, strict=True)]),
        Schema([MlflowTensorSpec(o.dtype, (-1, *o.shape[1:]), n)
                for n, o in zip(names, outputs, strict=True)]))
    log_eval_dataset(model)
    info = mlflow.pytorch.log_model(
        model.module, name="model",
        input_example=example if len(example) > 1 else example[0], signature=signature,
        registered_model_name=registered_name, serialization_format="pt2",
        metadata={"labels": list(model.labels)} if model.labels else None,
        pip_requirements=installable(mlflow.pytorch.get_default_pip_requirements()),
    )
    return str(info.registered_model_version)


def log_text_model(model: Any, registered_name: str) -> str:
    """A text model as a pyfunc that tokenises as the worker does; return the version."""
    from servegate.sources.text_pyfunc import log_text_model as log_pyfunc

    return str(log_pyfunc(model, name="model", registered_model_name=registered_name)
               .registered_model_version)


def log_keras_model(model: Any, registered_name: str) -> str:
    """A Keras model with its signature (mlflow.keras 3.17 fails writing an input example: its
    directory is not made yet); return the version."""
    import mlflow.keras
    from mlflow.models import infer_signature

    example = model.example_batch(2)
    signature = infer_signature(example, model.reference(example))
    import mlflow.tensorflow

    requirements = installable([*mlflow.keras.get_default_pip_requirements(),
                                *mlflow.tensorflow.get_default_pip_requirements()])
    info = mlflow.keras.log_model(model.model, name="model", signature=signature,
                                  registered_model_name=registered_name,
                                  pip_requirements=requirements)
    return str(info.registered_model_version)


def log_eval_dataset(model: Any) -> None:
    """The held-out set as ``eval/eval.npz`` of the run, and an MLflow dataset (context eval)."""
    import numpy as np
    from mlflow.data.numpy_dataset import from_numpy  # mlflow.data.from_numpy, typed

    from servegate.sources.artifact_source import register_artifact_source
    from servegate.sources.schema import batch_arrays

    if model.eval_x is None:
        return
    arrays = dict(zip([s.name for s in model.inputs], batch_arrays(model.eval_x), strict=True))
    if model.eval_y is not None:
        arrays["y"] = np.asarray(model.eval_y)
    with tempfile.TemporaryDirectory(prefix="servegate-eval-") as tmp:
        path = Path(tmp) / "eval.npz"
        np.savez(path, **arrays)
        mlflow.log_artifact(str(path), artifact_path="eval")
    register_artifact_source()  # the source may be an mlflow server's artifact proxy
    source = f"{mlflow.get_artifact_uri('eval')}/eval.npz"
    features = {k: v for k, v in arrays.items() if k != "y"}
    labelled: dict[str, Any] = {"targets": arrays["y"]} if "y" in arrays else {}
    dataset = from_numpy(features if len(features) > 1 else next(iter(features.values())),
                         source=source, name="held-out", **labelled)
    mlflow.log_input(dataset, context="eval")


def log_candidates(candidates: list[Any]) -> None:
    """``auto``'s candidate table, a routed archive's routing table, and each candidate's p50
    per shape as a metric."""
    from servegate.compilers.select import routing_rows, table_rows, timed_shapes

    rows = table_rows(candidates)
    mlflow.log_table({k: [r[k] for r in rows] for k in rows[0]}, "compiler_candidates.json")
    if routed := routing_rows(candidates):
        mlflow.log_table({k: [r[k] for r in routed] for k in routed[0]}, "compiler_routing.json")
    for r in rows:
        for shape in timed_shapes(candidates):
            value = r[f"p50_ms_{shape.label}"]
            if isinstance(value, float) and value == value:
                mlflow.log_metric(f"p50_ms_{shape.label}.{r['backend']}", value)


def log_artifact_file(path: Path, artifact_path: str) -> str:
    """Log one file; return its artifact URI."""
    mlflow.log_artifact(str(path), artifact_path=artifact_path)
    return f"{mlflow.get_artifact_uri(artifact_path)}/{path.name}"


def log_artifact_dir(path: Path, artifact_path: str) -> str:
    """Log a directory's files under ``artifact_path``; return its artifact URI."""
    mlflow.log_artifacts(str(path), artifact_path=artifact_path)
    return str(mlflow.get_artifact_uri(artifact_path))


def log_parity(result: Any, checks: list[Any], params: dict[str, Any]) -> None:
    """The parity gate's settings, figures and checks."""
    mlflow.log_params(params)
    mlflow.log_metrics(result.metrics())
    mlflow.log_dict([c.as_dict() for c in checks], "checks.json")  # type: ignore[arg-type]


def log_load(challenger: Any, champion: Any | None, checks: list[Any], network: Any,
             params: dict[str, Any]) -> None:
    """The load gate's settings, where the load came from, the figures of both versions, the
    challenger's throughput over time, and the checks."""
    mlflow.log_params(params | {"load.origin": network.origin,
                                "load.target": redact_text(network.target)})
    mlflow.log_metrics(network.metrics() | challenger.metrics("challenger")
                       | (champion.metrics("champion") if champion is not None else {}))
    for point in challenger.timeline:
        mlflow.log_metric("challenger_rps_timeline", point["rps"], step=int(point["t"]))
    if (comparison := getattr(challenger, "comparison", None)) is not None:
        mlflow.log_metrics({f"ratio_{name}_{bound}": getattr(getattr(comparison, name), bound)
                            for name in ("p95", "p99", "rps") for bound in ("estimate", "low", "high")}
                           | {"load_rounds": float(len(comparison.rounds))})
        mlflow.log_dict(comparison.as_dict(), "load_comparison.json")
    mlflow.log_dict([c.as_dict() for c in checks], "checks.json")  # type: ignore[arg-type]


def compile_cache(mode: str):  # -> CompileCache | None
    """For ``shared``: the compile cache of this host's device type (the GPU where there is one,
    else the CPU) under ``SERVEGATE_HOME``, restored first from the newest one of that device
    type logged in this run's experiment when it is empty here (a fresh runner), so Inductor,
    Triton and TensorRT searches are paid once per device type. ``local``: None (torch's own
    caches on this host)."""
    if mode != "shared":
        return None
    from servegate.compilers.cache import CompileCache
    from servegate.config import home_dir
    from servegate.devices import gpu_count

    cache = CompileCache.for_device("cuda" if gpu_count() else "cpu", home_dir() / "compile-cache")
    run = mlflow.active_run()
    if not cache.files() and run is not None:
        cache.restore_from_mlflow(mlflow.MlflowClient(), [run.info.experiment_id])
    return cache


def save_compile_cache(cache: Any) -> None:
    """The cache as an artifact of the active run, tagged with its device key."""
    run = mlflow.active_run()
    if run is not None:
        cache.save_to_mlflow(mlflow.MlflowClient(), run.info.run_id)


def log_tuning(params: dict[str, Any], metrics: dict[str, float], folder: Path) -> None:
    """``servegate tune``'s settings, each measured point's figures, and its files (the
    frontier plot and table) under ``tune/``."""
    mlflow.log_params({k: redact_text(str(v)) for k, v in params.items()})
    mlflow.log_metrics(metrics)
    mlflow.log_artifacts(str(folder), artifact_path="tune")
