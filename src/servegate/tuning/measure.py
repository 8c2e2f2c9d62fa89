"""The measuring side of ``servegate tune`` on a live TorchServe.

Each point of the search becomes a **scratch version** of the model: the served version's
archive with another version number (``SCRATCH_FIRST`` and up, never one the server holds) and
the point's ``batchSize``, ``maxBatchDelay`` and workers in its ``model-config.yaml`` (TorchServe
takes an archive's own model-config over the register call's parameters). It is registered
beside the champion (never the default: the champion's traffic is untouched), loaded with Locust
exactly as the load gate loads a challenger (``gates.load.run_load``), then unregistered and its
archive removed from the model store.

Before the search, ``measure_costs`` times the archive's handler in a process of its own
(``tuning.costs``: the harness, no credentials in its environment) on one request and on
the largest batch, and the round trip of single requests to the served version
(less its handler time and the batch delay a lone request waits) as the frontend's cost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from servegate.config import LoadSettings
from servegate.errors import ConfigError, ModelNotFound, PackagingError, ServerError
from servegate.naming import archive_file_name, validate_name, validate_version
from servegate.tuning.costs import median_ms
from servegate.tuning.search import (
    SLO,
    Costs,
    Measurement,
    Point,
    Space,
    TuneResult,
    confirm_winner,
    search,
)

#: Scratch versions are numbered from here (registry versions stay far below).
SCRATCH_FIRST = 900_001
MANIFEST = "MAR-INF/MANIFEST.json"
MODEL_CONFIG = "model-config.yaml"
WARMUP = "warmup.json"
#: The handler's spec in a servegate archive (``packaging.spec.SPEC_FILE``, not imported: gates
#: and packaging sit side by side).
SPEC_FILE = "servegate.json"


def archive_batching(archive: Path) -> dict[str, Any]:
    """The archive's ``model-config.yaml`` (empty when it has none)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            if MODEL_CONFIG not in zf.namelist():
                return {}
            loaded = yaml.safe_load(zf.read(MODEL_CONFIG)) or {}
    except (OSError, zipfile.BadZipFile, yaml.YAMLError) as exc:
        raise PackagingError(f"cannot read {archive.name}'s {MODEL_CONFIG}: {exc}") from exc
    if not isinstance(loaded, dict):
        raise PackagingError(f"{archive.name}'s {MODEL_CONFIG} is not a mapping")
    return loaded


def scratch_archive(source: Path, target: Path, version: str, point: Point) -> Path:
    """``source`` rewritten as ``version`` with ``point``'s batching, at ``target``. Members are
    copied as bytes (nothing is extracted); only the manifest's version, the model-config's
    batching and workers and, when the point sets them, the spec's threads per worker change."""
    validate_version(version)
    config = archive_batching(source) | {
        "batchSize": point.batch_size, "maxBatchDelay": point.max_batch_delay_ms,
        "minWorkers": point.workers, "maxWorkers": point.workers}
    partial = target.with_name(target.name + ".partial")
    try:
        with zipfile.ZipFile(source) as src, zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as dst:
            names = src.namelist()
            if MANIFEST not in names:
                raise PackagingError(f"{source.name} has no {MANIFEST}: not a TorchServe archive")
            for info in src.infolist():
                if info.filename == MODEL_CONFIG:
                    continue
                data = src.read(info)
                if info.filename == MANIFEST:
                    manifest = json.loads(data)
                    manifest["model"]["modelVersion"] = version
                    data = json.dumps(manifest, indent=2).encode()
                elif info.filename == SPEC_FILE and point.threads:
                    spec = json.loads(data)
                    spec["intra_op_threads"] = point.threads
                    data = json.dumps(spec, indent=1).encode()
                dst.writestr(info, data)
            dst.writestr(MODEL_CONFIG, yaml.safe_dump(config, sort_keys=False))
        os.replace(partial, target)
    except (OSError, zipfile.BadZipFile, ValueError, KeyError, TypeError) as exc:
        partial.unlink(missing_ok=True)
        raise PackagingError(f"cannot make a scratch copy of {source.name}: {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    return target


def _manifest_version(archive: Path) -> str:
    try:
        with zipfile.ZipFile(archive) as zf:
            return str(json.loads(zf.read(MANIFEST))["model"]["modelVersion"])
    except (OSError, zipfile.BadZipFile, KeyError, ValueError, TypeError) as exc:
        raise PackagingError(f"cannot read {archive.name}'s version: {exc}") from exc


def request_samples(archive: Path) -> list[Any]:
    """Request bodies for Locust: one ``{"instances": [row]}`` per row of the archive's warm-up
    sample (held-out rows, recorded when it was built)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            warmup = json.loads(zf.read(WARMUP))
    except KeyError as exc:
        raise ConfigError(f"{archive.name} has no {WARMUP}: tune needs the request sample servegate "
                          "archives carry (rebuild it with servegate)") from exc
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise PackagingError(f"cannot read {archive.name}'s {WARMUP}: {exc}") from exc
    rows = warmup.get("instances") if isinstance(warmup, dict) else None
    if not isinstance(rows, list) or not rows:
        raise ConfigError(f"{archive.name}'s {WARMUP} holds no instances")
    return [{"instances": [row]} for row in rows]


def remove_leftovers(backend: Any, name: str) -> list[str]:
    """Unregister the scratch versions of ``name`` an interrupted tune left (numbered from
    ``SCRATCH_FIRST``; never the default version) and delete their archives from the model
    store; return their versions."""
    default = backend.default_version(name)
    left = sorted((v.version for v in backend.versions(name)
                   if v.version.isdigit() and int(v.version) >= SCRATCH_FIRST
                   and v.version != default), key=int)
    for version in left:
        backend.undeploy(name, version)
    store = getattr(backend.delivery, "model_store", None)
    if store is not None:
        for version in left:
            (Path(store) / archive_file_name(name, version)).unlink(missing_ok=True)
    return left


def handler_costs(archive: Path, body: bytes, largest_batch: int, repeats: int) -> tuple[float, float]:
    """The archive's handler on 1 and ``largest_batch`` requests, on one thread, in
    milliseconds: a copy of the archive set to one thread, timed in a subprocess
    (``tuning.costs``) whose environment holds no credentials, since the archive's own
    code runs there."""
    from servegate.config import child_environment

    config = archive_batching(archive)
    one_thread = Point(int(config.get("batchSize", 1)), int(config.get("maxBatchDelay", 1)), 1, 1)
    with tempfile.TemporaryDirectory(prefix="servegate-tune-") as tmp:
        copy = scratch_archive(archive, Path(tmp) / archive.name,
                               _manifest_version(archive), one_thread)
        command = [sys.executable, "-m", "servegate.tuning.costs", str(copy),
                   str(largest_batch), str(repeats)]
        try:
            done = subprocess.run(command, input=body, capture_output=True, timeout=600,
                                  env=child_environment())
        except subprocess.TimeoutExpired as exc:
            raise PackagingError(f"timing {archive.name}'s handler did not finish") from exc
    if done.returncode != 0:
        raise PackagingError(f"timing {archive.name}'s handler failed: "
                             f"{done.stderr.decode(errors='replace')[-1500:]}")
    figures = json.loads(done.stdout)
    return float(figures["batch1_ms"]), float(figures["largest_ms"])


def measure_costs(archive: Path, client: Any, name: str, version: str, *, largest_batch: int,
                  cores: int, waited_ms: float | None = None, repeats: int = 15) -> Costs:
    """What a request costs: the archive's handler in process on 1 and ``largest_batch``
    requests, and the served round trip of one request to ``version`` less that and the batch
    delay it waits (``waited_ms``; default: the archive's own delay when it batches)."""
    body = json.dumps(request_samples(archive)[0]).encode()
    one, largest = handler_costs(archive, body, largest_batch, repeats)

    def served() -> object:
        response = client.predict_raw(name, body, version=version)
        if response.status_code != 200:
            raise ServerError(f"{name} v{version} answered {response.status_code} to its own "
                              f"warm-up sample: {response.text[:200]}")
        return response

    served()
    round_trip = median_ms(served, repeats * 2)
    if waited_ms is None:
        config = archive_batching(archive)
        batches = int(config.get("batchSize", 1)) > 1
        waited_ms = float(config.get("maxBatchDelay", 0) or 0) if batches else 0.0
    frontend = max(0.05, round_trip - one - waited_ms)
    return Costs(handler_ms_batch1=one, handler_ms_largest=largest, largest_batch=largest_batch,
                 frontend_ms=frontend, cores=cores)


class ScratchVersionBench:
    """A ``Bench`` whose points are scratch versions (``serving(point)``, a context yielding the
    version), each loaded with Locust as the load gate loads a challenger. Subclasses set
    ``backend``, ``name``, ``samples``, ``seconds``, ``processes`` and ``say``, and name their
    server's ``locustfile`` (in ``loadtests/``) and ``user_class``."""

    backend: Any
    name: str
    samples: list[Any]
    seconds: float
    processes: int
    say: Callable[[str], None]
    locustfile: str
    user_class: str

    def serving(self, point: Point) -> AbstractContextManager[str]:
        raise NotImplementedError

    def applied(self, point: Point) -> AbstractContextManager[Callable[[int], Measurement]]:
        return self._applied(point)

    @contextmanager
    def _applied(self, point: Point) -> Iterator[Callable[[int], Measurement]]:
        with self.serving(point) as version:
            yield lambda users: self._load(version, point, users)

    def _load(self, version: str, point: Point, users: int) -> Measurement:
        from servegate._resources import loadtests_dir
        from servegate.gates.load import run_load

        access = self.backend.access()
        result = run_load(
            label=f"{self.name} {point.label} ({users} users)", host=access.inference_url,
            model=self.name, version=version, inference_key=access.inference_key,
            samples=self.samples, ca_bundle=access.ca_bundle,
            locustfile=loadtests_dir() / self.locustfile, user_class=self.user_class,
            settings=LoadSettings(users=users, seconds=self.seconds, rounds=1,
                                  processes=min(self.processes, users)))
        self.say(f"  {users:>4} users: {result.rps:8.1f} req/s  p95 {result.p95_ms:7.1f} ms  "
                 f"p99 {result.p99_ms:7.1f} ms  errors {result.error_rate:.1%}")
        return Measurement(users=users, rps=result.rps, p50_ms=result.p50_ms,
                           p95_ms=result.p95_ms, p99_ms=result.p99_ms,
                           error_rate=result.error_rate, requests=result.requests)



@dataclass
class TorchServeBench(ScratchVersionBench):
    """The ``Bench`` of the search on one TorchServe: scratch versions of ``name`` from
    ``archive`` (a file of the server's model store), loaded for ``seconds`` per level."""

    backend: Any  # TorchServeBackend (copies archives into its model store)
    name: str
    archive: Path
    samples: list[Any]
    seconds: float
    processes: int = 1
    say: Callable[[str], None] = lambda _: None
    locustfile = "torchserve.py"
    user_class = "TorchServePredictUser"

    def __post_init__(self) -> None:
        validate_name(self.name)
        store = getattr(getattr(self.backend, "delivery", None), "model_store", None)
        if store is None or not hasattr(self.backend, "client"):
            raise ConfigError("tune registers scratch versions from one TorchServe's model store "
                              "(not a fleet's, nor by URL): attach with "
                              "SERVEGATE_TORCHSERVE_MODEL_STORE (a shared store) or tune on a "
                              "local server")
        self.store = Path(store)
        self._taken: set[str] = set()

    def _scratch_version(self) -> str:
        held = {v.version for v in self.backend.versions(self.name)} | self._taken
        number = SCRATCH_FIRST
        while str(number) in held or (self.store / archive_file_name(self.name, str(number))).exists():
            number += 1
        self._taken.add(str(number))
        return str(number)

    @contextmanager
    def serving(self, point: Point) -> Iterator[str]:
        """A scratch version of ``point`` served while the context lasts; yields its version."""
        version = self._scratch_version()
        placed = self.store / archive_file_name(self.name, version)
        self.say(f"{point.label}: scratch version {version}")
        try:
            scratch_archive(self.archive, placed, version, point)
            self.backend.deploy(placed, self.name, version, workers=point.workers)
            yield version
        finally:
            self._drop(version, placed)

    def _drop(self, version: str, placed: Path) -> None:
        try:
            self.backend.undeploy(self.name, version)
        except ModelNotFound:
            pass  # never registered (the register call failed)
        except ServerError as exc:
            raise ServerError(f"scratch version {self.name} v{version} could not be removed: {exc}; "
                              f"remove it with `servegate models unregister {self.name} {version}`"
                              ) from exc
        finally:
            placed.unlink(missing_ok=True)

def tune_archive(backend: Any, name: str, archive: Path, served_version: str | None, *,
                 space: Space, slo: SLO, max_points: int, seconds: float, cores: int,
                 processes: int = 1, say: Callable[[str], None] = lambda _: None) -> TuneResult:
    """The whole search for ``archive`` of ``name`` on ``backend``: the costs (the round trip
    on ``served_version``, else on a batch-1 scratch version), then ``search`` over scratch
    versions. Scratch versions an interrupted tune left are removed first."""
    bench = TorchServeBench(backend, name, archive, request_samples(archive), seconds,
                            processes=processes, say=say)
    for left in remove_leftovers(backend, name):
        say(f"removed scratch version {name} v{left} (left by an interrupted tune)")
    largest = max(space.batch_sizes)
    if served_version is not None:
        costs = measure_costs(archive, backend.client, name, served_version, largest_batch=largest,
                              cores=cores)
    else:
        with bench.serving(Point(1, space.delays_ms[0], 1)) as version:
            costs = measure_costs(archive, backend.client, name, version, largest_batch=largest,
                                  cores=cores, waited_ms=0.0)
    say(f"costs: handler {costs.handler_ms_batch1:.2f} ms at batch 1, {costs.handler_ms_largest:.2f} "
        f"ms at batch {costs.largest_batch} (one thread); frontend {costs.frontend_ms:.2f} ms per "
        f"request; {cores} cores")
    result = search(space, costs, slo, bench, max_points=max_points, say=say)
    return confirm_winner(result, incumbent_point(archive), bench, low_users=min(space.users),
                          say=say)


def incumbent_point(archive: Path) -> Point:
    """The configuration ``archive`` already has: its model-config's batch size, delay (0 is
    TorchServe's 100 ms) and workers, and its spec's threads per worker."""
    config = archive_batching(archive)
    delay = int(config.get("maxBatchDelay", 100)) or 100
    try:
        with zipfile.ZipFile(archive) as zf:
            spec = json.loads(zf.read(SPEC_FILE)) if SPEC_FILE in zf.namelist() else {}
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise PackagingError(f"cannot read {archive.name}'s {SPEC_FILE}: {exc}") from exc
    return Point(int(config.get("batchSize", 1)), delay, int(config.get("minWorkers", 1)),
                 int(spec.get("intra_op_threads") or 0))
