"""The pipeline's steps, each a nested MLflow run: source, package, deploy, the parity gate and the
load gate. ``servegate.pipeline`` calls them in order and decides between them; what depends on
the server is the ``Target``'s, the champion's moves are ``servegate.promotion``'s, and what is
written to MLflow is ``servegate.tracking``'s."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from servegate import promotion, tracking
from servegate.backends.base import ServingBackend
from servegate.config import PipelineConfig, gate_policy_path
from servegate.errors import PipelineError
from servegate.gates.checks import Check
from servegate.gates.load import Adaptive, LoadResult, load_checks
from servegate.gates.network import NetworkProbe, probe
from servegate.gates.parity import ParityResult, parity_checks, routed_parity_checks
from servegate.integrity import artifact_sha256
from servegate.policy import policy_max_rounds
from servegate.registry import ARCHIVE_SHA256_TAG, ARCHIVE_TAG, CHALLENGER, CHAMPION, Registry
from servegate.targets import Built, Target


def speaker(console: Console) -> promotion.Say:
    """How a run talks to the person watching it."""
    return lambda message: console.print(f"[bold cyan]servegate[/] {message}")


@dataclass
class Run:
    """What the steps of one run share: its settings, target, server (None: unreachable),
    console, and what earlier steps left for later ones."""

    config: PipelineConfig
    target: Target
    backend: ServingBackend | None
    console: Console
    challenger: str | None = None
    deployed: bool = False  # the challenger is on the server: a failure withdraws it
    network: NetworkProbe | None = None
    load_notes: list[str] = field(default_factory=list)

    def say(self, message: str) -> None:
        speaker(self.console)(message)

    @property
    def server(self) -> ServingBackend:
        assert self.backend is not None, "no server"
        return self.backend


def source(run: Run) -> tuple[Any, Registry, str]:
    """The model and its held-out data; a new registry version (or the given one), alias
    ``challenger``."""
    cfg = run.config
    with tracking.step("source"):
        run.say(f"source: {cfg.model}")
        registered = tracking.registered_version(cfg.model) if cfg.model.startswith("models:/") else None
        if registered and Registry.for_model(registered[0]).version_for_alias(CHAMPION) == registered[1]:
            raise PipelineError(f"{registered[0]} v{registered[1]} is already the champion: "
                                "nothing to gate (`servegate rollback` moves back)")
        model = run.target.load_model(cfg)
        if note := getattr(model, "eval_note", ""):
            run.say(f"[bold yellow]{note}[/]" if note.startswith("NO EVALUATION DATA")
                    else f"source: {note}")
        tracking.log_source(model, cfg.model)
        name, version = registered or (cfg.model_name, run.target.register(model, cfg.model_name))
        registry = Registry.for_model(name)
        registry.set_alias(CHALLENGER, version)
        tracking.log_registered(name, version)
        run.say(f"challenger: {name} v{version}")
        run.challenger = version
        return model, registry, version


def build(run: Run, model: Any, registry: Registry, version: str, workdir: Path) -> tuple[Built, str]:
    """The compiled, packaged artifact, logged; its sha256 recorded on the registry version."""
    with tracking.step("package"):
        run.say(f"package: {run.target.name}, compiler={run.config.compiler}")
        built = run.target.build(model, run.config, version, workdir, run.console)
    sha256 = artifact_sha256(built.path)
    registry.tag(version, {ARCHIVE_TAG: built.uri, ARCHIVE_SHA256_TAG: sha256})
    return built, sha256


def tune(run: Run, registry: Registry, built: Built, sha256: str, version: str,
         workdir: Path) -> tuple[Built, str]:
    """``tune=true``: the built artifact's batching searched on the server within the run's SLO
    (scratch versions, never the challenger itself: ``tuning.search``): TorchServe's batch size,
    delay and workers in the archive's model-config, TF Serving's in the SavedModel's
    ``batching_params.pbtxt``. The artifact takes the winner's, is logged again with its
    sha256, and the run's batching becomes the winner's. No winner (none within the SLO, or
    none better than the built one when confirmed): the artifact stays as built."""
    import os
    from dataclasses import replace

    from servegate.tuning.measure import tune_archive
    from servegate.tuning.report import mlflow_figures, write_files
    from servegate.tuning.search import SLO, Space, TuneResult
    from servegate.tuning.tfserving import tune_savedmodel

    cfg, name = run.config, run.config.model_name
    cores = os.cpu_count() or 1
    users = cfg.load.users
    space = Space(workers=tuple(range(1, min(cores, 4) + 1)),
                  users=tuple(sorted({max(1, users // 2), users, 2 * users})))
    on_tfserving = cfg.target == "tfserving"
    with tracking.step("tune"):
        run.say(f"tune: {name} v{version}'s batching, at most {cfg.tune_points} configurations")
        tune_on: Callable[..., TuneResult] = tune_savedmodel if on_tfserving else tune_archive
        result = tune_on(run.server, name, built.path, None, space=space,
                         slo=SLO(cfg.slos.p95_ms, cfg.slos.p99_ms, cfg.slos.max_error_rate),
                         max_points=cfg.tune_points, seconds=max(1.5, cfg.load.seconds / 4),
                         cores=cores, processes=cfg.load.processes, say=run.say)
        params, metrics = mlflow_figures(result)
        folder = workdir / "tune"
        write_files(result, folder)
        tracking.log_tuning(params, metrics, folder)
        if result.winner is None or result.winner.best is None:
            from rich.markup import escape

            why = "; ".join(result.notes) or "no configuration met the SLO"
            run.say(f"[yellow]tune: {escape(why)}; the artifact keeps its batching[/]")
            return built, sha256
        point, best = result.winner.point, result.winner.best
        run.say(f"tune: batch_size={point.batch_size} max_batch_delay_ms={point.max_batch_delay_ms} "
                f"workers={point.workers}: {best.rps:.1f} req/s, p95 {best.p95_ms:.1f} ms "
                f"({result.measurements} of {result.grid_measurements} grid measurements)")
        (workdir / "tuned").mkdir(exist_ok=True)
        tuned = workdir / "tuned" / built.path.name
        if on_tfserving:
            import shutil

            from servegate.tuning.tfserving import write_point

            shutil.copytree(built.path, tuned)
            write_point(tuned, point)
            uri = tracking.log_artifact_dir(tuned, f"savedmodel/{version}")
        else:
            from servegate.tuning.measure import scratch_archive

            scratch_archive(built.path, tuned, version, point)
            uri = tracking.log_artifact_file(tuned, "archive")
    tuned_sha256 = artifact_sha256(tuned)
    registry.tag(version, {ARCHIVE_TAG: uri, ARCHIVE_SHA256_TAG: tuned_sha256})
    run.config = cfg.model_copy(update={"batching": cfg.batching.model_copy(update={
        "batch_size": point.batch_size, "max_batch_delay_ms": point.max_batch_delay_ms,
        "min_workers": point.workers, "max_workers": point.workers,
        "threads_per_worker": point.threads})})
    return replace(built, path=tuned, uri=uri), tuned_sha256


def deploy(run: Run, registry: Registry, built: Built, sha256: str, version: str) -> str | None:
    """Serve the challenger beside the champion (no default traffic); return the champion."""
    name, server, workers = run.config.model_name, run.server, run.config.batching.min_workers
    with tracking.step("deploy"):
        champion = promotion.make_room(registry, server, name, version, workers, run.say)
        run.say(f"deploy: {name} v{version} (no default traffic)")
        run.deployed = True
        server.deploy(built.path, name, version, workers=workers, source_uri=built.uri, sha256=sha256)
        tracking.log_deployed(champion, version, server.access().where, server.endpoint(name, version))
        return champion


def gate_parity(run: Run, model: Any, version: str, champion: str | None,
                built: Built) -> tuple[ParityResult, list[Check]]:
    """The held-out set through the challenger (and champion), against the in-process model."""
    cfg = run.config
    with tracking.step("gate-parity"):
        run.say(f"gate: parity on the held-out set ({built.compiled_with}, {built.precision})")
        result = run.target.check_parity(run.server, cfg.model_name, version, model, champion,
                                         cfg.limits)
        checks = parity_checks(result, cfg.parity, built.precision)
        if built.routes:  # routed by shape: each artifact on the requests it serves
            reached = [f"{artifact}: {', '.join(map(str, reaching))}"
                       for artifact, reaching in built.routes if reaching]
            if reached:
                run.say(f"gate: parity of each routed artifact ({'; '.join(reached)})")
            for artifact, reaching in built.routes:
                if not reaching:
                    run.say(f"[yellow]{artifact} serves only chunks of more rows than one request "
                            f"may carry ({cfg.limits.max_instances}): checked in process at build, "
                            "not through the server[/]")
            checks += routed_parity_checks(
                lambda held_out, rows: run.target.check_parity(
                    run.server, cfg.model_name, version, held_out, None, cfg.limits, rows=rows),
                model, built.routes, cfg.parity)
        for note in result.notes():
            run.say(f"[yellow]{note}[/]")
        tracking.log_parity(result, checks, {"compiler": built.compiled_with, "task": result.task,
                                             "precision": built.precision} | cfg.parity.model_dump())
        return result, checks


def gate_load(run: Run, model: Any, version: str,
              champion: str | None) -> tuple[list[LoadResult], list[Check]]:
    """Locust on the champion and the challenger, alternating; the SLO and champion checks."""
    cfg, server = run.config, run.server
    with tracking.step("gate-load"):
        run.network = probe(server.ping, server.access().inference_url)
        run.say(f"gate: {run.network.describe()}")
        if note := run.network.note(cfg.slos.p95_ms):
            run.load_notes.append(note)
            run.say(f"[yellow]{note}[/]")
        versions = [(f"champion v{champion}", champion)] if champion is not None else []
        versions.append((f"challenger v{version}", version))
        run.say(f"gate: load on {' and '.join(t for t, _ in versions)} ({cfg.load.seconds:g}s each"
                + (f", alternating in {cfg.load.rounds} rounds)" if champion else ")"))
        adaptive = Adaptive(cfg.slos, policy_max_rounds(cfg.load.rounds, gate_policy_path()))
        measured = run.target.measure_load(server, cfg.model_name, versions, cfg.load,
                                           run.target.load_profile(model), adaptive)
        results = [measured[label] for label, _ in versions]
        champion_result = results[0] if champion is not None else None
        checks = load_checks(results[-1], champion_result, cfg.slos)
        tracking.log_load(results[-1], champion_result, checks, run.network,
                          cfg.slos.model_dump() | cfg.load.model_dump())
        return results, checks
