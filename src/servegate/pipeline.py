"""The deployment pipeline: source -> package -> deploy -> gates -> promote | reject -> report.

Each step is a nested MLflow run with its params, metrics and artifacts. The champion keeps the
default endpoint for the whole run; a challenger that fails any check is removed from the server,
its registry version is tagged with the failed checks, and ``GateFailed`` is raised.
"""

from __future__ import annotations

import json
import shlex
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import mlflow
from rich.console import Console

from servegate.choices import TARGETS
from servegate.config import PipelineConfig
from servegate.errors import (
    BackendUnavailable,
    ConfigError,
    GateFailed,
    Interrupted,
    PipelineError,
    ServerError,
)
from servegate.gates.checks import Check, failed
from servegate.gates.load import LoadResult, load_checks, run_ab
from servegate.gates.network import NetworkProbe, probe
from servegate.gates.parity import ParityResult, parity_checks, run_parity
from servegate.gates.report import GateReport, write_report
from servegate.integrity import artifact_sha256, verify_artifact
from servegate.interrupts import signals_as_errors
from servegate.locks import model_lock
from servegate.promotion import move_champion, repair
from servegate.registry import ARCHIVE_SHA256_TAG, ARCHIVE_TAG, CHALLENGER, CHAMPION, PREVIOUS, Registry
from servegate.sources import TorchModel, load_torch_model


@dataclass
class PipelineResult:
    name: str
    version: str
    decision: str
    champion_before: str | None
    checks: list[Check] = field(default_factory=list)
    endpoint: str = ""
    curl: str = ""
    run_id: str = ""


def flat_params(config: PipelineConfig) -> dict[str, str]:
    """The run's parameters as MLflow params (nested settings flattened with dots)."""
    def walk(prefix: str, value: object) -> dict[str, str]:
        if isinstance(value, dict):
            out: dict[str, str] = {}
            for key, item in value.items():
                out |= walk(f"{prefix}.{key}" if prefix else str(key), item)
            return out
        return {prefix: str(value)}
    return walk("config", config.model_dump(mode="json", exclude={"torchserve"}))


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def curl_command(url: str, key_shell: str | None, example: Any) -> str:
    """A curl that works as pasted; the token comes from ``key_shell`` (a shell expression
    reading it where the server's keys are), never printed. ``example`` is one request
    instance (a list, a dict of named inputs, or a string)."""
    body = shlex.quote(json.dumps({"instances": [_rounded(example)]}))
    auth = f'-H "Authorization: Bearer {key_shell}" ' if key_shell else ""
    return f"curl -s {auth}-H 'Content-Type: application/json' -d {body} {url}"


class DeployPipeline:
    """One run of the pipeline against one server (TorchServe or TF Serving).

    ``backend`` is None when no server could be reached: the run then builds and validates the
    artifacts, logs them, and fails with ``unreachable`` (which says how to provide a server).
    """

    def __init__(self, config: PipelineConfig, backend: Any | None,
                 console: Console | None = None, unreachable: ServerError | None = None) -> None:
        if config.target not in TARGETS:
            raise ConfigError(f"unknown target {config.target!r}; known: {', '.join(TARGETS)}")
        self.config = config
        self.backend = backend
        self.unreachable = unreachable
        self.console = console or Console(stderr=True)
        #: Set once this run has put its challenger on the server (cleanup withdraws it).
        self._deployed_challenger = False
        #: The round trip to the server measured before the load phases, and load warnings.
        self.network: NetworkProbe | None = None
        self.load_notes: list[str] = []

    @property
    def is_tf(self) -> bool:
        return self.config.target == "tfserving"

    def say(self, message: str) -> None:
        self.console.print(f"[bold cyan]servegate[/] {message}")

    # ---- steps ---------------------------------------------------------------------------
    def source(self) -> tuple[TorchModel, Registry, str]:
        with mlflow.start_run(run_name="source", nested=True):
            self.say(f"source: {self.config.model}")
            registered = None
            if self.config.model.startswith("models:/"):
                registered = self._registered_version(self.config.model)
                if Registry.for_model(registered[0]).version_for_alias(CHAMPION) == registered[1]:
                    raise PipelineError(f"{registered[0]} v{registered[1]} is already the champion: "
                                        "nothing to gate (`servegate rollback` moves back)")
            model = self._load_model()
            note = getattr(model, "eval_note", "")
            if note:
                loud = note.startswith("NO EVALUATION DATA")
                self.say(f"[bold yellow]{note}[/]" if loud else f"source: {note}")
                mlflow.set_tag("servegate.eval_data", note[:5000])
            mlflow.log_params({f"model.{k}": v for k, v in model.params.items()} |
                              {"source": self.config.model})
            if model.metrics:
                mlflow.log_metrics(model.metrics)
            if registered is not None:
                name, version = registered
            else:
                name, version = self.config.model_name, self._log_and_register(model)
            registry = Registry.for_model(name)
            registry.set_alias(CHALLENGER, version)
            mlflow.set_tags({"registered_model": name, "registered_version": version})
            self.say(f"challenger: {name} v{version}")
            return model, registry, version

    def _load_model(self) -> Any:
        if self.is_tf:
            from servegate.sources.keras_import import load_keras_model
            from servegate.sources.options import read_labels

            return load_keras_model(self.config.model, eval_data=self.config.eval_data,
                                    label_column=self.config.label_column, task=self.config.task,
                                    class_names=read_labels(self.config.labels))
        return load_torch_model(self.config.model, self.config.source_options())

    @staticmethod
    def _registered_version(uri: str) -> tuple[str, str]:
        """(name, version) of ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``."""
        path = uri.removeprefix("models:/")
        if "@" in path:
            name, alias = path.split("@", 1)
            return name, str(mlflow.MlflowClient().get_model_version_by_alias(name, alias).version)
        name, _, version = path.partition("/")
        if not version.isdigit():
            raise ConfigError(f"expected models:/NAME/VERSION or models:/NAME@ALIAS, got {uri}")
        return name, version

    def _log_and_register(self, model: Any) -> str:
        from mlflow.models import infer_signature

        if getattr(model, "is_text", False):  # strings in: a pyfunc that tokenises as the worker
            from servegate.sources.text_pyfunc import log_text_model

            info = log_text_model(model, name="model", registered_model_name=self.config.name)
            return str(info.registered_model_version)
        example = model.example_batch(2)
        if self.is_tf:
            signature = infer_signature(example, model.reference(example))
            import mlflow.keras

            # mlflow.keras 3.17 fails writing an input example (its directory is not made yet):
            # the signature carries the input schema.
            info = mlflow.keras.log_model(model.model, name="model", signature=signature,
                                          registered_model_name=self.config.name)
            return str(info.registered_model_version)
        return self._log_torch_model(model)

    def _log_torch_model(self, model: TorchModel) -> str:
        """Log (MLflow 3's ExportedProgram format, no pickle) and register a tensor model, with
        its signature, a two-row input example (a dynamic batch) and its held-out set as a dataset
        of the run, so that a later import of ``models:/`` gates on the same data."""
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
        self._log_eval_dataset(model)
        info = mlflow.pytorch.log_model(
            model.module, name="model",
            input_example=example if len(example) > 1 else example[0], signature=signature,
            registered_model_name=self.config.model_name, serialization_format="pt2",
            metadata={"labels": list(model.labels)} if model.labels else None,
        )
        return str(info.registered_model_version)

    @staticmethod
    def _log_eval_dataset(model: TorchModel) -> None:
        """The held-out set as ``eval/eval.npz`` of the run, and an MLflow dataset (context eval)."""
        import numpy as np

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
        from servegate.sources.artifact_source import register_artifact_source

        register_artifact_source()  # the source may be an mlflow server's artifact proxy
        source = f"{mlflow.get_artifact_uri('eval')}/eval.npz"
        features = {k: v for k, v in arrays.items() if k != "y"}
        dataset = mlflow.data.from_numpy(features if len(features) > 1 else next(iter(features.values())),
                                         targets=arrays.get("y"), source=source, name="held-out")
        mlflow.log_input(dataset, context="eval")

    def package(self, model: TorchModel, version: str, workdir: Path) -> tuple[Path, str, str]:
        """Compile (measuring candidates for ``auto``) and build the archive; return it, its
        MLflow artifact URI and the compiler backend used."""
        from servegate.packaging.builder import artifact_max_batch, compile_model
        from servegate.packaging.mar import build_mar, contents_for

        if self.is_tf:
            return self._package_savedmodel(model, version, workdir)
        with mlflow.start_run(run_name="package", nested=True):
            self.say(f"package: compiler={self.config.compiler}")
            artifact, candidates = compile_model(model, self.config.compiler, workdir / "compile",
                                                 self.config.batching, self.config.limits)
            if candidates:
                self._log_candidates(candidates)
            contents = contents_for(model, artifact, name=self.config.model_name, version=version,
                                    batching=self.config.batching, limits=self.config.limits,
                                    max_batch=artifact_max_batch(model, self.config.batching,
                                                                 self.config.limits),
                                    handler_file=self.config.handler)
            archive = build_mar(contents, workdir)
            mlflow.log_params({"compiler": self.config.compiler, "compiler.chosen": artifact.backend,
                               "archive": archive.name} | self.config.batching.model_config_yaml())
            mlflow.log_metric("archive_bytes", archive.stat().st_size)
            mlflow.log_artifact(str(archive), artifact_path="archive")
            uri = f"{mlflow.get_artifact_uri('archive')}/{archive.name}"
            return archive, uri, artifact.backend

    def _package_savedmodel(self, model: Any, version: str, workdir: Path) -> tuple[Path, str, str]:
        """SavedModel in TF Serving's layout, validated (both loaders, parity); ``compiler``:
        ``auto``/``savedmodel`` (the reference), ``xla``, or ``tf-trt`` (TensorRT builds only)."""
        from servegate.packaging.savedmodel import export_savedmodel

        compiler = {"auto": "savedmodel", "eager": "savedmodel"}.get(self.config.compiler,
                                                                     self.config.compiler)
        if compiler not in ("savedmodel", "xla", "tf-trt"):
            raise ConfigError(f"compiler {compiler!r} does not apply to TensorFlow models; "
                              "use auto, savedmodel, xla or tf-trt")
        with mlflow.start_run(run_name="package", nested=True):
            self.say(f"package: SavedModel ({compiler})")
            if compiler == "tf-trt":
                from servegate.compilers.tf_trt import trt_unavailable_reason

                if reason := trt_unavailable_reason():
                    raise BackendUnavailable(f"tf-trt: {reason}")
            report = export_savedmodel(model, workdir / "savedmodel", self.config.name,
                                       int(version), jit_compile=compiler == "xla")
            if compiler == "tf-trt":  # only where TensorFlow is built with TensorRT
                from servegate.compilers.tf_trt import convert_trt

                converted = workdir / "tf-trt" / self.config.name / version
                convert_trt(report.path, converted, precision="FP16")
                report = replace(report, path=converted)
            mlflow.log_params({"compiler": self.config.compiler, "compiler.chosen": compiler,
                               "format": "savedmodel"})
            mlflow.log_metrics({"tf2_max_abs_diff": report.tf2_max_abs_diff,
                                "tf1_max_abs_diff": report.tf1_max_abs_diff,
                                "image_max_abs_diff": report.image_max_abs_diff,
                                "export_seconds": report.seconds})
            artifact_path = f"savedmodel/{version}"
            mlflow.log_artifacts(str(report.path), artifact_path=artifact_path)
            return report.path, f"{mlflow.get_artifact_uri(artifact_path)}", compiler

    def _log_candidates(self, candidates: list) -> None:
        from servegate.compilers.select import candidates_table, table_rows, timed_shapes

        rows = table_rows(candidates)
        self.console.print(candidates_table(candidates))
        mlflow.log_table({k: [r[k] for r in rows] for k in rows[0]}, "compiler_candidates.json")
        for r in rows:
            for shape in timed_shapes(candidates):
                value = r[f"p50_ms_{shape.label}"]
                if isinstance(value, float) and value == value:
                    mlflow.log_metric(f"p50_ms_{shape.label}.{r['backend']}", value)

    def deploy(self, registry: Registry, archive: Path, archive_uri: str, version: str) -> str | None:
        """Serve the challenger beside the champion; return the champion's version (or None)."""
        name = self.config.name
        with mlflow.start_run(run_name="deploy", nested=True):
            champion = registry.version_for_alias(CHAMPION)
            if champion == version:
                raise PipelineError(f"{name} v{version} is already the champion")
            served = {v.version for v in self.backend.versions(name)}
            if champion is not None and champion not in served:
                self.say(f"deploy: restoring champion v{champion} on the server")
                self._restore(registry, champion)
            if champion is not None:
                default = next((v.version for v in self.backend.versions(name) if v.is_default), None)
                if default not in (None, champion):
                    self.say(f"[yellow]deploy: the server's default was v{default}, the registry's "
                             f"champion is v{champion}: the server follows the registry[/]")
                self.backend.set_default(name, champion)
            if version in served:  # e.g. the previous champion, gated again: serve the new archive
                self.say(f"deploy: {name} v{version} is served from an earlier archive; replacing it")
                self.backend.undeploy(name, version)
            keep = {champion, registry.version_for_alias(PREVIOUS)} - {version}
            self._remove_versions(name, keep=keep)
            self.say(f"deploy: {name} v{version} (no default traffic)")
            self._deployed_challenger = True
            self.backend.deploy(archive, name, version, workers=self.config.batching.min_workers,
                                source_uri=archive_uri)
            mlflow.log_params({"champion": champion or "none", "challenger": version,
                               "server": self.backend.access().where,
                               "endpoint": self.backend.endpoint(name, version)})
            return champion

    def _restore(self, registry: Registry, version: str) -> None:
        """Serve ``version`` again from its logged archive, once its sha256 matches the one
        recorded when it was built (``servegate.archive_sha256``)."""
        tags = registry.tags(version)
        uri = tags.get(ARCHIVE_TAG)
        if not uri:
            raise PipelineError(f"{registry.name} v{version} has no archive to restore ({ARCHIVE_TAG})")
        expected = tags.get(ARCHIVE_SHA256_TAG)
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=tmp))
            if expected:
                verify_artifact(local, expected, f"{registry.name} v{version} ({uri})")
            else:
                self.say(f"[yellow]restore: {registry.name} v{version} has no {ARCHIVE_SHA256_TAG} "
                         "(built before hashes were recorded): restored unchecked[/]")
            self.backend.deploy(local, self.config.name, version,
                                workers=self.config.batching.min_workers, source_uri=uri)

    def _remove_versions(self, name: str, keep: set[str | None]) -> None:
        """Unregister served versions that are neither kept nor the default (orphans)."""
        for info in self.backend.versions(name):
            if info.version not in keep and not info.is_default:
                self.say(f"deploy: removing orphaned version v{info.version}")
                self.backend.undeploy(name, info.version)

    def gate_parity(self, model: TorchModel, version: str, champion: str | None,
                    backend: str) -> tuple[ParityResult, list[Check]]:
        from servegate.compilers.select import precision_of

        precision = precision_of(backend)
        with mlflow.start_run(run_name="gate-parity", nested=True):
            self.say(f"gate: parity on the held-out set ({backend}, {precision})")
            result = run_parity(self.backend, self.config.name, version, model, champion)
            checks = parity_checks(result, self.config.parity, precision)
            for note in result.notes():
                self.say(f"[yellow]{note}[/]")
            mlflow.log_params({"compiler": backend, "precision": precision, "task": result.task})
            mlflow.log_params(self.config.parity.model_dump())
            mlflow.log_metrics(result.metrics())
            mlflow.log_dict([c.as_dict() for c in checks], "checks.json")
            return result, checks

    def gate_load(self, model: TorchModel, version: str,
                  champion: str | None) -> tuple[list[LoadResult], list[Check]]:
        common = self._load_target(model)
        with mlflow.start_run(run_name="gate-load", nested=True):
            self.network = probe(self.backend.ping, common["host"])
            self.say(f"gate: {self.network.describe()}")
            if note := self.network.note(self.config.slos.p95_ms):
                self.load_notes.append(note)
                self.say(f"[yellow]{note}[/]")
            mlflow.log_params({"load.origin": self.network.origin,
                               "load.target": self.network.target})
            mlflow.log_metrics(self.network.metrics())
            targets = [(f"challenger v{version}", version)]
            if champion is not None:
                targets.insert(0, (f"champion v{champion}", champion))
            self.say(f"gate: load on {' and '.join(t for t, _ in targets)} "
                     f"({self.config.load.seconds:g}s each"
                     + (f", alternating in {self.config.load.rounds} rounds)" if champion else ")"))
            measured = run_ab(targets, settings=self.config.load, **common)
            challenger = measured[targets[-1][0]]
            champion_result = measured[targets[0][0]] if champion is not None else None
            results = [measured[label] for label, _ in targets]
            if champion_result is not None:
                mlflow.log_metrics(champion_result.metrics("champion"))
            checks = load_checks(challenger, champion_result, self.config.slos)
            mlflow.log_params(self.config.slos.model_dump() | self.config.load.model_dump())
            mlflow.log_metrics(challenger.metrics("challenger"))
            for point in challenger.timeline:
                mlflow.log_metric("challenger_rps_timeline", point["rps"], step=int(point["t"]))
            mlflow.log_dict([c.as_dict() for c in checks], "checks.json")
            return results, checks

    def _withdraw(self, version: str) -> None:
        """A step failed after deploy: take the challenger off the server unless it is the
        default; a first deployment's challenger (the default only because it is the sole
        version, not the registry's champion) goes too."""
        name = self.config.name
        try:
            served = self.backend.versions(name)
            for info in served:
                if info.version != version:
                    continue
                if not info.is_default or (
                        len(served) == 1
                        and Registry.for_model(name).version_for_alias(CHAMPION) != version):
                    self.backend.undeploy(name, version)
        except (ServerError, PipelineError) as exc:  # PipelineError: the registry failing
            self.say(f"[red]could not withdraw v{version}: {exc}[/]")

    def _load_target(self, model: Any) -> dict[str, Any]:
        """How Locust reaches a version on this target (host, token, locustfile, samples)."""
        rows = model.example_batch(32)
        access = self.backend.access()
        common = dict(host=access.inference_url, model=self.config.name,
                      inference_key=access.inference_key)
        if self.is_tf:
            from servegate._resources import loadtests_dir

            return common | dict(samples=rows.tolist(), locustfile=loadtests_dir() / "tfserving.py",
                                 user_class="TFServingPredictUser")
        return common | dict(samples=[{"instances": [row]} for row in model.request_rows(rows)])

    @staticmethod
    def _example_row(model: Any) -> Any:
        rows = getattr(model, "request_rows", None)
        return rows(model.example_batch(1))[0] if rows else model.example_batch(1)[0].tolist()

    def promote(self, registry: Registry, version: str) -> None:
        """Registry first, then the server default, crash-safe (``servegate.promotion``)."""
        name = self.config.name
        previous = move_champion(registry, self.backend, name, version, kind="promotion").source
        previous = None if previous == version else previous
        self._remove_versions(name, keep={version, previous})
        self.say(f"promote: {name} v{version} is the champion"
                 + (f" (v{previous} kept for rollback)" if previous else ""))

    def reject(self, registry: Registry, version: str, checks: list[Check]) -> None:
        name = self.config.name
        if any(v.version == version for v in self.backend.versions(name)):
            self.backend.undeploy(name, version)
        registry.delete_alias(CHALLENGER)
        registry.tag(version, {
            "servegate.gate": "failed",
            "servegate.failed_checks": "; ".join(c.describe() for c in failed(checks)),
        })
        self.say(f"reject: {name} v{version} removed from the server; the champion is untouched")

    # ---- the chain --------------------------------------------------------------------------
    def run(self) -> PipelineResult:
        """The whole chain, holding the model name's lock; SIGTERM/SIGINT run the cleanup of a
        failed gate (challenger withdrawn, MLflow run ended KILLED, temp files removed) and
        raise ``Interrupted``."""
        cfg = self.config
        with model_lock(cfg.name), signals_as_errors(), \
                mlflow.start_run(run_name=f"deploy-{cfg.name}") as parent, \
                tempfile.TemporaryDirectory(prefix="servegate-run-") as tmp:
            try:
                return self._run(parent, Path(tmp))
            except Interrupted as exc:
                self._interrupted(exc)
                raise

    def _interrupted(self, exc: Interrupted) -> None:
        """Cleanup after a signal: the challenger leaves the server, its registry alias goes,
        the MLflow run ends KILLED. Best effort: what cannot be done now the next run does."""
        self.say(f"[red]{exc}: cleaning up[/]")
        version = getattr(self, "_challenger", None)
        try:
            if version is not None:
                if self._deployed_challenger and self.backend is not None:
                    self._withdraw(version)
                registry = Registry.for_model(self.config.name)
                if registry.version_for_alias(CHALLENGER) == version:
                    registry.delete_alias(CHALLENGER)
                if registry.version_for_alias(CHAMPION) != version:
                    registry.tag(version, {"servegate.gate": f"interrupted ({exc})"})
        except Exception as cleanup:  # noqa: BLE001 (report, then end the run anyway)
            self.say(f"[red]cleanup after {exc} incomplete: {cleanup}[/]")
        mlflow.set_tag("servegate.decision", "interrupted")
        mlflow.end_run("KILLED")

    def _repair(self) -> None:
        """Finish or revert a promotion (or rollback) that a hard kill interrupted."""
        if self.backend is None:
            return
        registry = Registry.for_model(self.config.name)
        repair(registry, self.backend, self.config.name, self.say, prefer="finish")

    def _run(self, parent: Any, tmp: Path) -> PipelineResult:
        cfg = self.config
        mlflow.log_params(flat_params(cfg))
        self._repair()
        model, registry, version = self.source()
        self._challenger = version
        archive, archive_uri, compiled_with = self.package(model, version, tmp)
        registry.tag(version, {ARCHIVE_TAG: archive_uri,
                               ARCHIVE_SHA256_TAG: artifact_sha256(archive)})
        if self.backend is None:
            registry.delete_alias(CHALLENGER)
            registry.tag(version, {"servegate.gate": "not run: no server"})
            self.say(f"[red]no {cfg.target} server: artifacts built, validated and logged; "
                     "nothing was deployed[/]")
            mlflow.set_tag("servegate.decision", "not deployed")
            raise self.unreachable or ServerError(f"no {cfg.target} server")
        try:  # any failure (or signal) from here on takes a non-default challenger off again
            champion = self.deploy(registry, archive, archive_uri, version)
            parity, checks = self.gate_parity(model, version, champion, compiled_with)
            load, load_gate_checks = self.gate_load(model, version, champion)
            checks += load_gate_checks
            registry.tag(version, {f"servegate.{c.gate}.{c.name}": f"{c.value:.6g}" for c in checks})
            if failed(checks):
                self.reject(registry, version, checks)
                decision, serving = "rejected", champion
            elif cfg.promote:
                self.promote(registry, version)
                decision, serving = "promoted", version
            else:
                decision, serving = "passed, not promoted", champion
        except Exception:
            if self._deployed_challenger:
                self._withdraw(version)
            raise
        if decision != "rejected":
            registry.tag(version, {"servegate.gate": "passed"})
        endpoint = self.backend.endpoint(cfg.name) if serving else ""
        curl = (curl_command(endpoint, self.backend.access().key_shell, self._example_row(model))
                if serving else "")
        result = PipelineResult(cfg.name, version, decision, champion, checks, endpoint, curl,
                                parent.info.run_id)
        report = GateReport(cfg.name, version, champion, decision, checks, parity, load, endpoint, curl,
                            getattr(model, "eval_note", ""), server=self.backend.access().where,
                            network=self.network, load_notes=tuple(self.load_notes))
        report_dir = tmp / "report"
        write_report(report, report_dir)
        mlflow.log_artifacts(str(report_dir), artifact_path="report")
        if cfg.report_dir is not None:
            shutil.copytree(report_dir, cfg.report_dir, dirs_exist_ok=True)
        mlflow.log_metric("promoted", 1.0 if decision == "promoted" else 0.0)
        mlflow.set_tag("servegate.decision", decision)
        if decision == "rejected":
            raise GateFailed(
                f"{cfg.name} v{version} rejected: "
                + "; ".join(c.describe() for c in failed(checks)), checks)
        return result


def rollback(config: PipelineConfig, backend: Any,
             console: Console | None = None) -> tuple[str, str]:
    """Restore the previous champion of ``config.name``: registry alias and server default
    together (restored onto the server from its logged artifact, hash-checked, if the server
    lost it), under the model name's lock. An interrupted promotion is reverted instead (that
    IS the rollback); an interrupted rollback is finished."""
    from servegate.promotion import pending_move

    name = config.name
    pipeline = DeployPipeline(config, backend, console)
    with model_lock(name), signals_as_errors():
        registry = Registry.for_model(name)
        pending = pending_move(registry)
        if pending is not None:
            prefer: Literal["finish", "revert"] = ("finish" if pending.kind == "rollback"
                                                    else "revert")
            repair(registry, backend, name, pipeline.say, prefer=prefer)
            champion = registry.version_for_alias(CHAMPION)
            if champion is None:
                raise PipelineError(f"{name} has no champion after the repair")
            return champion, pending.target if prefer == "revert" else (pending.source or "none")
        restored = registry.version_for_alias(PREVIOUS)
        demoted = registry.version_for_alias(CHAMPION)
        if restored is None or demoted is None:
            raise PipelineError(f"{name} has no previous champion to roll back to")
        if not any(v.version == restored for v in backend.versions(name)):
            pipeline._restore(registry, restored)
        move_champion(registry, backend, name, restored, kind="rollback")
        return restored, demoted
