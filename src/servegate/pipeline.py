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
from typing import Any

import mlflow
from rich.console import Console

from servegate.config import PipelineConfig
from servegate.errors import BackendUnavailable, ConfigError, GateFailed, PipelineError, ServerError
from servegate.gates.checks import Check, failed
from servegate.gates.load import LoadResult, load_checks, run_ab
from servegate.gates.parity import ParityResult, parity_checks, run_parity
from servegate.gates.report import GateReport, write_report
from servegate.registry import ARCHIVE_TAG, CHALLENGER, CHAMPION, PREVIOUS, Registry
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


def curl_command(url: str, key_file: str | None, example: list[float] | str) -> str:
    """A curl that works as pasted; the token is read from the key file, never printed."""
    row: object = example if isinstance(example, str) else [round(v, 4) for v in example]
    body = shlex.quote(json.dumps({"instances": [row]}))
    auth = ""
    if key_file:
        read_key = f"python3 -c 'import json;print(json.load(open(\"{key_file}\"))[\"inference\"][\"key\"])'"
        auth = f'-H "Authorization: Bearer $({read_key})" '
    return f"curl -s {auth}-H 'Content-Type: application/json' -d {body} {url}"


TARGETS = ("torchserve", "tfserving")


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
            mlflow.log_params({f"model.{k}": v for k, v in model.params.items()} |
                              {"source": self.config.model})
            if model.metrics:
                mlflow.log_metrics(model.metrics)
            if registered is not None:
                name, version = registered
            else:
                name, version = self.config.name, self._log_and_register(model)
            registry = Registry.for_model(name)
            registry.set_alias(CHALLENGER, version)
            mlflow.set_tags({"registered_model": name, "registered_version": version})
            self.say(f"challenger: {name} v{version}")
            return model, registry, version

    def _load_model(self) -> Any:
        if self.is_tf:
            from servegate.sources.keras_import import load_keras_model

            return load_keras_model(self.config.model, eval_data=self.config.eval_data,
                                    label_column=self.config.label_column, task=self.config.task)
        return load_torch_model(self.config.model, task=self.config.task,
                                max_length=self.config.max_length)

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
        signature = infer_signature(example, model.reference(example))
        if self.is_tf:
            import mlflow.keras

            # mlflow.keras 3.17 fails writing an input example (its directory is not made yet):
            # the signature carries the input schema.
            info = mlflow.keras.log_model(model.model, name="model", signature=signature,
                                          registered_model_name=self.config.name)
            return str(info.registered_model_version)
        import mlflow.pytorch

        info = mlflow.pytorch.log_model(
            model.module, name="model", input_example=example, signature=signature,
            registered_model_name=self.config.name, serialization_format="pickle",
        )
        return str(info.registered_model_version)

    def package(self, model: TorchModel, version: str, workdir: Path) -> tuple[Path, str, str]:
        """Compile (measuring candidates for ``auto``) and build the archive; return it, its
        MLflow artifact URI and the compiler backend used."""
        from servegate.packaging.builder import compile_model
        from servegate.packaging.mar import build_mar, contents_for

        if self.is_tf:
            return self._package_savedmodel(model, version, workdir)
        with mlflow.start_run(run_name="package", nested=True):
            self.say(f"package: compiler={self.config.compiler}")
            artifact, candidates = compile_model(model, self.config.compiler, workdir / "compile",
                                                 self.config.batching)
            if candidates:
                self._log_candidates(candidates)
            contents = contents_for(model, artifact, name=self.config.name, version=version,
                                    batching=self.config.batching)
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

    def deploy(self, registry: Registry, archive: Path, version: str) -> str | None:
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
                self.backend.set_default(name, champion)
            if version in served:  # e.g. the previous champion, gated again: serve the new archive
                self.say(f"deploy: {name} v{version} is served from an earlier archive; replacing it")
                self.backend.undeploy(name, version)
            keep = {champion, registry.version_for_alias(PREVIOUS)} - {version}
            self._remove_versions(name, keep=keep)
            self.say(f"deploy: {name} v{version} (no default traffic)")
            self.backend.deploy(archive, name, version, workers=self.config.batching.min_workers)
            mlflow.log_params({"champion": champion or "none", "challenger": version,
                               "endpoint": self.backend.endpoint(name, version)})
            return champion

    def _restore(self, registry: Registry, version: str) -> None:
        uri = registry.tags(version).get(ARCHIVE_TAG)
        if not uri:
            raise PipelineError(f"{registry.name} v{version} has no archive to restore ({ARCHIVE_TAG})")
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=tmp))
            self.backend.deploy(local, self.config.name, version,
                                workers=self.config.batching.min_workers)

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
            mlflow.log_params({"compiler": backend, "precision": precision})
            mlflow.log_params(self.config.parity.model_dump())
            mlflow.log_metrics(result.metrics())
            mlflow.log_dict([c.as_dict() for c in checks], "checks.json")
            return result, checks

    def gate_load(self, model: TorchModel, version: str,
                  champion: str | None) -> tuple[list[LoadResult], list[Check]]:
        common = self._load_target(model)
        with mlflow.start_run(run_name="gate-load", nested=True):
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
        """A step failed after deploy: take the challenger off the server unless it is the default."""
        name = self.config.name
        try:
            for info in self.backend.versions(name):
                if info.version == version and not info.is_default:
                    self.backend.undeploy(name, version)
        except ServerError as exc:
            self.say(f"[red]could not withdraw v{version}: {exc}[/]")

    def _load_target(self, model: Any) -> dict[str, Any]:
        """How Locust reaches a version on this target (host, token, locustfile, samples)."""
        rows = model.example_batch(32)
        if self.is_tf:
            from servegate._resources import loadtests_dir

            return dict(host=self.backend.client.rest_url, model=self.config.name, key_file=None,
                        samples=rows.tolist(), locustfile=loadtests_dir() / "tfserving.py",
                        user_class="TFServingPredictUser")
        return dict(host=self.backend.client.endpoints.inference, model=self.config.name,
                    key_file=self._key_file(), samples=[{"inputs": row.tolist()} for row in rows])

    def _key_file(self) -> str | None:
        if self.is_tf:
            return None
        key_file = self.backend.client.keys.path
        return str(key_file) if key_file else None

    def promote(self, registry: Registry, version: str) -> None:
        name = self.config.name
        self.backend.set_default(name, version)
        previous = registry.promote(version)
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
        cfg = self.config
        with mlflow.start_run(run_name=f"deploy-{cfg.name}") as parent, \
                tempfile.TemporaryDirectory(prefix="servegate-run-") as tmp:
            mlflow.log_params(flat_params(cfg))
            model, registry, version = self.source()
            archive, archive_uri, compiled_with = self.package(model, version, Path(tmp))
            registry.tag(version, {ARCHIVE_TAG: archive_uri})
            if self.backend is None:
                registry.delete_alias(CHALLENGER)
                registry.tag(version, {"servegate.gate": "not run: no server"})
                self.say(f"[red]no {cfg.target} server: artifacts built, validated and logged; "
                         "nothing was deployed[/]")
                mlflow.set_tag("servegate.decision", "not deployed")
                raise self.unreachable or ServerError(f"no {cfg.target} server")
            champion = self.deploy(registry, archive, version)
            try:
                parity, checks = self.gate_parity(model, version, champion, compiled_with)
                load, load_gate_checks = self.gate_load(model, version, champion)
            except Exception:
                self._withdraw(version)
                raise
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
            if decision != "rejected":
                registry.tag(version, {"servegate.gate": "passed"})
            endpoint = self.backend.endpoint(cfg.name) if serving else ""
            curl = curl_command(endpoint, self._key_file(),
                                model.example_batch(1)[0].tolist()) if serving else ""
            result = PipelineResult(cfg.name, version, decision, champion, checks, endpoint, curl,
                                    parent.info.run_id)
            report = GateReport(cfg.name, version, champion, decision, checks, parity, load, endpoint, curl)
            report_dir = Path(tmp) / "report"
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


def rollback(config: PipelineConfig, backend: Any) -> tuple[str, str]:
    """Restore the previous champion of ``config.name``: registry alias and server default
    together (restored onto the server from its logged artifact if the server lost it)."""
    name = config.name
    registry = Registry.for_model(name)
    restored, demoted = registry.rollback()
    try:
        if not any(v.version == restored for v in backend.versions(name)):
            DeployPipeline(config, backend)._restore(registry, restored)
        backend.set_default(name, restored)
    except ServerError:
        registry.set_alias(CHAMPION, demoted)  # keep registry and server in agreement
        registry.set_alias(PREVIOUS, restored)
        raise
    return restored, demoted
