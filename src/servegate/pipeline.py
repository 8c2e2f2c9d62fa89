"""The deployment pipeline: the order of the steps and the decisions between them.

source -> build -> deploy -> gate (parity, load) -> promote | reject -> report. Each step is a
nested MLflow run (``servegate.steps``); what depends on the server is the ``Target``'s, the
champion's moves are ``servegate.promotion``'s. The champion keeps the default endpoint for the
whole run; a challenger that fails a check leaves the server, its registry version is tagged with
the failed checks, and ``GateFailed`` is raised.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from servegate import promotion, steps, tracking
from servegate.backends.base import ServingBackend
from servegate.config import PipelineConfig, gate_policy_path
from servegate.errors import GateFailed, Interrupted, ServerError
from servegate.gates.checks import Check, failed
from servegate.gates.report import GateReport, image_samples
from servegate.interrupts import signals_as_errors
from servegate.lease import model_lease
from servegate.locks import model_lock
from servegate.policy import load_policy
from servegate.registry import CHALLENGER, Registry
from servegate.targets import Target, get_target


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
        target = target or get_target(config.target)
        target.check_compiler(config.compiler)
        self.run_state = steps.Run(config, target, backend, console or Console(stderr=True))
        self.unreachable = unreachable

    def run(self) -> PipelineResult:
        """The whole chain, holding the model name's lock on this host and its lease in the
        registry (one run per model across runners); SIGTERM/SIGINT withdraw the challenger, end
        the MLflow run KILLED, remove temp files, and raise ``Interrupted``."""
        run = self.run_state
        name = run.config.model_name
        with model_lock(name), signals_as_errors(), model_lease(name), \
                tracking.step(f"deploy-{name}", nested=False) as run_id, \
                tempfile.TemporaryDirectory(prefix="servegate-run-") as tmp:
            try:
                return self._run(run_id, Path(tmp))
            except Interrupted as exc:
                run.say(f"[red]{exc}: cleaning up[/]")
                if run.challenger is not None:
                    promotion.abandon(Registry.for_model(name), run.backend, name, run.challenger,
                                      run.deployed, str(exc), run.say)
                tracking.end_run("interrupted", "KILLED")
                raise

    def _run(self, run_id: str, tmp: Path) -> PipelineResult:
        run = self.run_state
        cfg, name = run.config, run.config.model_name
        load_policy(gate_policy_path()).enforce(cfg)  # again: model_copy(update=...) skips validators
        tracking.log_config(cfg)
        if run.backend is not None:  # finish or revert a move a hard kill interrupted
            promotion.repair(Registry.for_model(name), run.backend, name, run.say, prefer="finish")
        model, registry, version = steps.source(run)
        built, sha256 = steps.build(run, model, registry, version, tmp)
        if run.backend is None:
            registry.delete_alias(CHALLENGER)
            registry.tag(version, {"servegate.gate": "not run: no server"})
            run.say(f"[red]no {cfg.target} server: artifacts built, validated and logged; "
                    "nothing was deployed[/]")
            tracking.end_run("not deployed")
            raise self.unreachable or ServerError(f"no {cfg.target} server")
        server = run.backend
        try:  # any failure (or signal) from here on takes a non-default challenger off again
            if cfg.tune:
                built, sha256 = steps.tune(run, registry, built, sha256, version, tmp)
            champion = steps.deploy(run, registry, built, sha256, version)
            parity, checks = steps.gate_parity(run, model, version, champion, built)
            load, load_gate_checks = steps.gate_load(run, model, version, champion)
            checks += load_gate_checks
            registry.tag(version, {f"servegate.{c.gate}.{c.name}": f"{c.value:.6g}" for c in checks})
            decision = promotion.decide(registry, server, name, version,
                                        [c.describe() for c in failed(checks)], cfg.promote, run.say)
        except Exception:
            if run.deployed:
                promotion.withdraw(registry, server, name, version, run.say)
            raise
        serving = version if decision == "promoted" else champion
        endpoint = server.endpoint(name) if serving else ""
        access = server.access()
        curl = run.target.curl(endpoint, access.key_shell, model, access.ca_bundle) if serving else ""
        tracking.log_report(GateReport(
            name, version, champion, decision, checks, parity, load, endpoint, curl,
            getattr(model, "eval_note", ""), server=access.where, network=run.network,
            load_notes=tuple(run.load_notes), samples=image_samples(model, parity)),
            tmp / "report", cfg.report_dir)
        tracking.end_run(decision)
        if decision == "rejected":
            raise GateFailed(f"{name} v{version} rejected: "
                             + "; ".join(c.describe() for c in failed(checks)), checks)
        return PipelineResult(name, version, decision, champion, checks, endpoint, curl, run_id)


def rollback(config: PipelineConfig, backend: ServingBackend,
             console: Console | None = None) -> tuple[str, str]:
    """Restore the previous champion of ``config.name`` (``servegate.promotion.rollback``),
    under the model name's lock and registry lease; return (restored, demoted)."""
    name, say = config.model_name, steps.speaker(console or Console(stderr=True))
    with model_lock(name), signals_as_errors(), model_lease(name):
        return promotion.rollback(Registry.for_model(name), backend, name,
                                  config.batching.min_workers, say)
