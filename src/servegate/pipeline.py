"""The deployment pipeline: the order of the steps and the decisions between them.

source -> build -> deploy -> gate (parity, load) -> promote | reject -> report. What depends on
the server is the ``Target``'s (``servegate.targets``); the server is a ``ServingBackend``; MLflow
logging is ``servegate.tracking``'s; promotion, rejection and restores are
``servegate.promotion``'s. Each step is a nested MLflow run. The champion keeps the default
endpoint for the whole run; a challenger that fails a check leaves the server, its registry
version is tagged with the failed checks, and ``GateFailed`` is raised.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from rich.console import Console

from servegate import promotion, tracking
from servegate.backends.base import ServingBackend
from servegate.config import PipelineConfig, gate_policy_path
from servegate.errors import GateFailed, Interrupted, PipelineError, ServerError
from servegate.gates.checks import Check, failed
from servegate.gates.load import Adaptive, LoadResult, load_checks
from servegate.gates.network import NetworkProbe, probe
from servegate.gates.parity import ParityResult, parity_checks
from servegate.gates.report import GateReport, image_samples, write_report
from servegate.integrity import artifact_sha256
from servegate.interrupts import signals_as_errors
from servegate.lease import model_lease
from servegate.locks import model_lock
from servegate.policy import load_policy, policy_max_rounds
from servegate.redact import redact_text
from servegate.registry import ARCHIVE_SHA256_TAG, ARCHIVE_TAG, CHALLENGER, CHAMPION, PREVIOUS, Registry
from servegate.targets import Built, Target, get_target


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


class DeployPipeline:
    """One run against one server. ``backend`` is None when no server could be reached: the
    run then builds, validates and logs the artifact, and fails with ``unreachable``."""

    def __init__(self, config: PipelineConfig, backend: ServingBackend | None,
                 console: Console | None = None, unreachable: ServerError | None = None,
                 target: Target | None = None) -> None:
        self.config = config
        self.target = target or get_target(config.target)
        self.backend = backend
        self.unreachable = unreachable
        self.console = console or Console(stderr=True)
        self._challenger: str | None = None
        #: Set once this run has put its challenger on the server (cleanup withdraws it).
        self._deployed_challenger = False
        #: sha256 of the built artifact (checked where the server loads it from).
        self._sha256: str | None = None
        #: The round trip to the server measured before the load phases, and load warnings.
        self.network: NetworkProbe | None = None
        self.load_notes: list[str] = []

    @property
    def server(self) -> ServingBackend:
        assert self.backend is not None, "no server"
        return self.backend

    def say(self, message: str) -> None:
        self.console.print(f"[bold cyan]servegate[/] {message}")

    # ---- steps ---------------------------------------------------------------------------
    def source(self) -> tuple[Any, Registry, str]:
        cfg = self.config
        with mlflow.start_run(run_name="source", nested=True):
            self.say(f"source: {cfg.model}")
            registered = None
            if cfg.model.startswith("models:/"):
                registered = tracking.registered_version(cfg.model)
                if Registry.for_model(registered[0]).version_for_alias(CHAMPION) == registered[1]:
                    raise PipelineError(f"{registered[0]} v{registered[1]} is already the champion: "
                                        "nothing to gate (`servegate rollback` moves back)")
            model = self.target.load_model(cfg)
            if note := getattr(model, "eval_note", ""):
                loud = note.startswith("NO EVALUATION DATA")
                self.say(f"[bold yellow]{note}[/]" if loud else f"source: {note}")
                mlflow.set_tag("servegate.eval_data", redact_text(note)[:5000])
            tracking.log_source(model, cfg.model)
            name, version = registered or (cfg.model_name, self.target.register(model, cfg.model_name))
            registry = Registry.for_model(name)
            registry.set_alias(CHALLENGER, version)
            mlflow.set_tags({"registered_model": name, "registered_version": version})
            self.say(f"challenger: {name} v{version}")
            return model, registry, version

    def build(self, model: Any, registry: Registry, version: str, workdir: Path) -> Built:
        with mlflow.start_run(run_name="package", nested=True):
            self.say(f"package: {self.target.name}, compiler={self.config.compiler}")
            built = self.target.build(model, self.config, version, workdir, self.console)
        self._sha256 = artifact_sha256(built.path)
        registry.tag(version, {ARCHIVE_TAG: built.uri, ARCHIVE_SHA256_TAG: self._sha256})
        return built

    def deploy(self, registry: Registry, built: Built, version: str) -> str | None:
        """Serve the challenger beside the champion (restored first if the server lost it);
        return the champion's version (or None)."""
        name, server = self.config.model_name, self.server
        workers = self.config.batching.min_workers
        with mlflow.start_run(run_name="deploy", nested=True):
            champion = registry.version_for_alias(CHAMPION)
            if champion == version:
                raise PipelineError(f"{name} v{version} is already the champion")
            served = {v.version for v in server.versions(name)}
            if champion is not None and champion not in served:
                self.say(f"deploy: restoring champion v{champion} on the server")
                promotion.restore(registry, server, name, champion, workers, self.say)
            if champion is not None:
                default = next((v.version for v in server.versions(name) if v.is_default), None)
                if default not in (None, champion):
                    self.say(f"[yellow]deploy: the server's default was v{default}, the registry's "
                             f"champion is v{champion}: the server follows the registry[/]")
                server.set_default(name, champion)
            if version in served:  # e.g. the previous champion, gated again: serve the new archive
                self.say(f"deploy: {name} v{version} is served from an earlier archive; replacing it")
                server.undeploy(name, version)
            keep = {champion, registry.version_for_alias(PREVIOUS)} - {version}
            promotion.remove_orphans(server, name, keep, self.say)
            self.say(f"deploy: {name} v{version} (no default traffic)")
            self._deployed_challenger = True
            server.deploy(built.path, name, version, workers=workers, source_uri=built.uri,
                          sha256=self._sha256)
            mlflow.log_params({"champion": champion or "none", "challenger": version,
                               "server": redact_text(server.access().where),
                               "endpoint": redact_text(server.endpoint(name, version))})
            return champion

    def gate_parity(self, model: Any, version: str, champion: str | None,
                    built: Built) -> tuple[ParityResult, list[Check]]:
        with mlflow.start_run(run_name="gate-parity", nested=True):
            self.say(f"gate: parity on the held-out set ({built.compiled_with}, {built.precision})")
            result = self.target.check_parity(self.server, self.config.model_name, version, model,
                                              champion, self.config.limits)
            checks = parity_checks(result, self.config.parity, built.precision)
            for note in result.notes():
                self.say(f"[yellow]{note}[/]")
            tracking.log_parity(result, checks, {"compiler": built.compiled_with,
                                                 "precision": built.precision, "task": result.task}
                                | self.config.parity.model_dump())
            return result, checks

    def gate_load(self, model: Any, version: str,
                  champion: str | None) -> tuple[list[LoadResult], list[Check]]:
        cfg, server = self.config, self.server
        with mlflow.start_run(run_name="gate-load", nested=True):
            self.network = probe(server.ping, server.access().inference_url)
            self.say(f"gate: {self.network.describe()}")
            if note := self.network.note(cfg.slos.p95_ms):
                self.load_notes.append(note)
                self.say(f"[yellow]{note}[/]")
            versions = [(f"challenger v{version}", version)]
            if champion is not None:
                versions.insert(0, (f"champion v{champion}", champion))
            self.say(f"gate: load on {' and '.join(t for t, _ in versions)} ({cfg.load.seconds:g}s each"
                     + (f", alternating in {cfg.load.rounds} rounds)" if champion else ")"))
            adaptive = Adaptive(cfg.slos, max_rounds=policy_max_rounds(cfg.load.rounds,
                                                                           gate_policy_path()))
            measured = self.target.measure_load(server, cfg.model_name, versions, cfg.load,
                                                self.target.load_profile(model), adaptive)
            results = [measured[label] for label, _ in versions]
            challenger, champion_result = results[-1], results[0] if champion is not None else None
            checks = load_checks(challenger, champion_result, cfg.slos)
            tracking.log_load(challenger, champion_result, checks, self.network,
                              cfg.slos.model_dump() | cfg.load.model_dump())
            return results, checks

    # ---- the chain --------------------------------------------------------------------------
    def run(self) -> PipelineResult:
        """The whole chain, holding the model name's lock on this host and its lease in the registry
        (``servegate.lease``: one run per model across runners); SIGTERM/SIGINT run the cleanup of a
        failed gate (challenger withdrawn, MLflow run ended KILLED, temp files removed) and
        raise ``Interrupted``."""
        name = self.config.model_name
        with model_lock(name), signals_as_errors(), model_lease(name), \
                mlflow.start_run(run_name=f"deploy-{name}") as parent, \
                tempfile.TemporaryDirectory(prefix="servegate-run-") as tmp:
            try:
                return self._run(parent.info.run_id, Path(tmp))
            except Interrupted as exc:
                self._interrupted(exc)
                raise

    def _interrupted(self, exc: Interrupted) -> None:
        """Cleanup after a signal: the challenger leaves the server, its registry alias goes,
        the MLflow run ends KILLED. Best effort: what cannot be done now the next run does."""
        self.say(f"[red]{exc}: cleaning up[/]")
        version, name = self._challenger, self.config.model_name
        try:
            if version is not None:
                registry = Registry.for_model(name)
                if self._deployed_challenger and self.backend is not None:
                    promotion.withdraw(registry, self.backend, name, version, self.say)
                if registry.version_for_alias(CHALLENGER) == version:
                    registry.delete_alias(CHALLENGER)
                if registry.version_for_alias(CHAMPION) != version:
                    registry.tag(version, {"servegate.gate": f"interrupted ({exc})"})
        except Exception as cleanup:  # noqa: BLE001 (report, then end the run anyway)
            self.say(f"[red]cleanup after {exc} incomplete: {cleanup}[/]")
        mlflow.set_tag("servegate.decision", "interrupted")
        mlflow.end_run("KILLED")

    def _run(self, run_id: str, tmp: Path) -> PipelineResult:
        cfg, name = self.config, self.config.model_name
        # Checked again here: a config made with model_copy(update=...) skipped its validators.
        load_policy(gate_policy_path()).enforce(cfg)
        servers = {"torchserve", "tfserving"}  # local server settings: not the run's parameters
        mlflow.log_params(tracking.flat_params(cfg.model_dump(mode="json", exclude=servers)))
        if self.backend is not None:  # finish or revert a move a hard kill interrupted
            promotion.repair(Registry.for_model(name), self.backend, name, self.say, prefer="finish")
        model, registry, version = self.source()
        self._challenger = version
        built = self.build(model, registry, version, tmp)
        if self.backend is None:
            registry.delete_alias(CHALLENGER)
            registry.tag(version, {"servegate.gate": "not run: no server"})
            self.say(f"[red]no {cfg.target} server: artifacts built, validated and logged; "
                     "nothing was deployed[/]")
            mlflow.set_tag("servegate.decision", "not deployed")
            raise self.unreachable or ServerError(f"no {cfg.target} server")
        server = self.backend
        try:  # any failure (or signal) from here on takes a non-default challenger off again
            champion = self.deploy(registry, built, version)
            parity, checks = self.gate_parity(model, version, champion, built)
            load, load_gate_checks = self.gate_load(model, version, champion)
            checks += load_gate_checks
            registry.tag(version, {f"servegate.{c.gate}.{c.name}": f"{c.value:.6g}" for c in checks})
            if failed(checks):
                failures = "; ".join(c.describe() for c in failed(checks))
                promotion.reject(registry, server, name, version, failures, self.say)
                decision, serving = "rejected", champion
            elif cfg.promote:
                promotion.promote(registry, server, name, version, self.say)
                decision, serving = "promoted", version
            else:
                decision, serving = "passed, not promoted", champion
        except Exception:
            if self._deployed_challenger:
                promotion.withdraw(registry, server, name, version, self.say)
            raise
        if decision != "rejected":
            registry.tag(version, {"servegate.gate": "passed"})
        endpoint = server.endpoint(name) if serving else ""
        access = server.access()
        curl = self.target.curl(endpoint, access.key_shell, model, access.ca_bundle) if serving else ""
        self._report(GateReport(name, version, champion, decision, checks, parity, load, endpoint,
                                curl, getattr(model, "eval_note", ""), server=server.access().where,
                                network=self.network, load_notes=tuple(self.load_notes),
                                samples=image_samples(model, parity)), tmp)
        mlflow.log_metric("promoted", 1.0 if decision == "promoted" else 0.0)
        mlflow.set_tag("servegate.decision", decision)
        if decision == "rejected":
            raise GateFailed(f"{name} v{version} rejected: "
                             + "; ".join(c.describe() for c in failed(checks)), checks)
        return PipelineResult(name, version, decision, champion, checks, endpoint, curl, run_id)

    def _report(self, report: GateReport, tmp: Path) -> None:
        report_dir = tmp / "report"
        write_report(report, report_dir)
        tracking.log_artifact_dir(report_dir, "report")
        if self.config.report_dir is not None:
            shutil.copytree(report_dir, self.config.report_dir, dirs_exist_ok=True)


def rollback(config: PipelineConfig, backend: ServingBackend,
             console: Console | None = None) -> tuple[str, str]:
    """Restore the previous champion of ``config.name`` (``servegate.promotion.rollback``),
    under the model name's lock and registry lease; return (restored, demoted)."""
    name = config.model_name
    say = DeployPipeline(config, backend, console).say
    with model_lock(name), signals_as_errors(), model_lease(name):
        return promotion.rollback(Registry.for_model(name), backend, name,
                                  config.batching.min_workers, say)
