"""The measuring side of ``servegate tune`` on a live TF Serving.

TF Serving reads a version's batching from its ``batching_params.pbtxt`` when it loads it (a
server started with per-model batching, as servegate starts and expects one), so each point of
the search is a **scratch version**: a copy of the tuned SavedModel with the point's
``BatchingParameters`` (``point_batching``), numbered from ``SCRATCH_FIRST``, served without
a label (the ``stable`` and ``canary`` routes are untouched), loaded with Locust as the load gate
loads a challenger, then unloaded and its files removed from the model root.

A point's axes in TF Serving's terms: ``batch_size`` is ``max_batch_size``,
``max_batch_delay_ms`` is ``batch_timeout_micros`` / 1000 (TF Serving's batcher also waits it
out for a batch that does not fill), ``workers`` is ``num_batch_threads`` (how many batches run
at once). Threads per operation are server-wide in TF Serving
(``--tensorflow_intra_op_parallelism``), so the threads axis is refused. Batch 1 keeps the
batcher (``max_batch_size`` 1, no wait): its threads still bound how many requests run at once.

Before the search, ``measure_costs`` times the SavedModel's default signature in a process of
its own (``tuning.tf_costs``, one thread, no credentials in its environment) on the version's
warm-up rows, and the round trip of single requests to the served version as the frontend's.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from servegate.errors import ConfigError, ModelNotFound, PackagingError, ServerError
from servegate.naming import validate_name
from servegate.tuning.costs import median_ms
from servegate.tuning.measure import SCRATCH_FIRST, ScratchVersionBench
from servegate.tuning.search import (
    SLO,
    Costs,
    Point,
    Space,
    TuneResult,
    confirm_winner,
    search,
)

#: Batches queued before a full queue answers at once (the build's value).
MAX_ENQUEUED_BATCHES = 100


def point_batching(point: Point) -> Any:
    """``point`` as TF Serving's ``BatchingParameters``."""
    from servegate.backends.tfserving.config import batching_parameters

    if point.threads:
        raise ConfigError("TF Serving's threads per operation are server-wide "
                          "(--tensorflow_intra_op_parallelism): tune cannot set them per version")
    delay = point.max_batch_delay_ms if point.batch_size > 1 else 0
    return batching_parameters(max_batch_size=point.batch_size, batch_timeout_ms=delay,
                               num_batch_threads=point.workers,
                               max_enqueued_batches=MAX_ENQUEUED_BATCHES)


def write_point(version_dir: Path, point: Point) -> Path:
    """``point``'s batching as ``version_dir``'s ``batching_params.pbtxt``."""
    from servegate.backends.tfserving.config import write_version_batching

    return write_version_batching(version_dir, point_batching(point))


def savedmodel_point(version_dir: Path, cores: int) -> Point:
    """The configuration a SavedModel version already has (its ``batching_params.pbtxt``); a
    version without one is taken as batch 1 on ``cores`` threads."""
    from servegate.backends.tfserving.config import PER_MODEL_BATCHING_FILE, read_text_proto
    from servegate.tfserving_protos.batching_pb2 import BatchingParameters

    path = Path(version_dir) / PER_MODEL_BATCHING_FILE
    if not path.is_file():
        return Point(1, 1, max(1, cores))
    params = read_text_proto(path, BatchingParameters)
    batch = params.max_batch_size.value if params.HasField("max_batch_size") else 1
    delay_ms = round(params.batch_timeout_micros.value / 1000) if params.HasField(
        "batch_timeout_micros") else 1
    threads = params.num_batch_threads.value if params.HasField("num_batch_threads") else cores
    return Point(max(1, batch), max(1, delay_ms), max(1, threads))


def _rest_value(value: np.ndarray) -> Any:
    """One row of a tensor as TF Serving's REST form (bytes as ``{"b64": ...}``)."""
    if value.dtype == object or value.dtype.kind == "S":
        flat = [{"b64": base64.b64encode(v).decode()} if isinstance(v, bytes) else v
                for v in value.reshape(-1).tolist()]
        return np.asarray(flat, dtype=object).reshape(value.shape).tolist()
    return value.tolist()


def request_samples(version_dir: Path) -> list[dict[str, Any]]:
    """Request bodies for Locust: one ``{"instances": [row]}`` per row of the version's warm-up
    request on its default signature (held-out rows, recorded when it was built)."""
    import tensorflow as tf

    from servegate.packaging.savedmodel import SERVING_DEFAULT, WARMUP_FILE, read_warmup

    warmup = Path(version_dir) / "assets.extra" / WARMUP_FILE
    if not warmup.is_file():
        raise ConfigError(f"{version_dir} has no assets.extra/{WARMUP_FILE}: tune needs the request "
                          "sample servegate's SavedModels carry (rebuild it with servegate)")
    try:
        logs = read_warmup(Path(version_dir))
    except (tf.errors.OpError, ValueError) as exc:
        raise PackagingError(f"cannot read {warmup}: {exc}") from exc
    for log in logs:
        request = log.predict_log.request
        if request.model_spec.signature_name in ("", SERVING_DEFAULT):
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            rows = min(len(v) for v in inputs.values())
            if len(inputs) == 1:
                (value,) = inputs.values()
                return [{"instances": [_rest_value(value[i])]} for i in range(rows)]
            return [{"instances": [{k: _rest_value(v[i]) for k, v in inputs.items()}]}
                    for i in range(rows)]
    raise ConfigError(f"{warmup} holds no request on the {SERVING_DEFAULT} signature")


def signature_costs(version_dir: Path, largest_batch: int, repeats: int) -> tuple[float, float]:
    """The default signature on 1 and ``largest_batch`` rows, one thread, in milliseconds,
    timed in a subprocess (``tuning.tf_costs``) whose environment holds no credentials."""
    from servegate.config import child_environment

    command = [sys.executable, "-m", "servegate.tuning.tf_costs", str(version_dir),
               str(largest_batch), str(repeats)]
    try:
        done = subprocess.run(command, capture_output=True, timeout=600, env=child_environment())
    except subprocess.TimeoutExpired as exc:
        raise PackagingError(f"timing {version_dir}'s signature did not finish") from exc
    if done.returncode != 0:
        raise PackagingError(f"timing {version_dir}'s signature failed: "
                             f"{done.stderr.decode(errors='replace')[-1500:]}")
    figures = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return float(figures["batch1_ms"]), float(figures["largest_ms"])


def measure_costs(version_dir: Path, backend: Any, name: str, version: str, sample: Any, *,
                  largest_batch: int, cores: int, waited_ms: float, repeats: int = 15) -> Costs:
    """What a request costs: the signature in process on 1 and ``largest_batch`` rows, and the
    served round trip of ``sample`` to ``version`` less that and the batch delay it waits."""
    one, largest = signature_costs(version_dir, largest_batch, repeats)

    def served() -> object:
        return backend.client.predict(name, sample, version=version)

    served()
    round_trip = median_ms(served, repeats * 2)
    frontend = max(0.05, round_trip - one - waited_ms)
    return Costs(handler_ms_batch1=one, handler_ms_largest=largest, largest_batch=largest_batch,
                 frontend_ms=frontend, cores=cores)


def _scratch_numbers(backend: Any, name: str) -> set[int]:
    entry = backend.entry(name)
    on_disk = {int(n) for n in backend.root.list_dir(name) if n.isdigit()}
    configured = set(entry.versions) if entry else set()
    return {v for v in on_disk | configured if v >= SCRATCH_FIRST}


def remove_leftovers(backend: Any, name: str) -> list[str]:
    """Unload the scratch versions of ``name`` an interrupted tune left (numbered from
    ``SCRATCH_FIRST``; never a labelled one) and delete their files; return their versions."""
    labelled = set(backend.labels(name).values())
    left = sorted(v for v in _scratch_numbers(backend, name) if v not in labelled)
    for number in left:
        backend.undeploy(name, str(number))
        backend.root.remove_tree(f"{name}/{number}")
    return [str(v) for v in left]


@dataclass
class TFServingBench(ScratchVersionBench):
    """The ``Bench`` of the search on one TF Serving: scratch versions of ``name`` copied from
    ``source`` (a SavedModel version directory), loaded for ``seconds`` per level."""

    backend: Any  # TFServingBackend
    name: str
    source: Path
    samples: list[Any]
    seconds: float
    processes: int = 1
    say: Callable[[str], None] = lambda _: None
    locustfile = "tfserving.py"
    user_class = "TFServingPredictUser"

    def __post_init__(self) -> None:
        validate_name(self.name)
        if not hasattr(self.backend, "serve_unlabelled") or not hasattr(self.backend, "root"):
            raise ConfigError("tune serves scratch versions on one TF Serving through its model "
                              "root (not a fleet's)")
        self._taken: set[int] = set()

    def _scratch_version(self) -> int:
        held = _scratch_numbers(self.backend, self.name) | self._taken
        held |= {int(v.version) for v in self.backend.versions(self.name)}
        number = SCRATCH_FIRST
        while number in held:
            number += 1
        self._taken.add(number)
        return number

    @contextmanager
    def serving(self, point: Point) -> Iterator[str]:
        """A scratch version of ``point`` served (unlabelled) while the context lasts."""
        import shutil

        number = self._scratch_version()
        version = str(number)
        self.say(f"{point.label}: scratch version {version}")
        try:
            with tempfile.TemporaryDirectory(prefix="servegate-tune-") as tmp:
                copy = Path(tmp) / version
                shutil.copytree(self.source, copy)
                write_point(copy, point)
                self.backend.serve_unlabelled(copy, self.name, version)
            yield version
        finally:
            self._drop(version)

    def _drop(self, version: str) -> None:
        try:
            self.backend.undeploy(self.name, version)
        except ModelNotFound:
            pass
        except ServerError as exc:
            raise ServerError(f"scratch version {self.name} v{version} could not be unloaded: "
                              f"{exc}; the next `servegate tune {self.name}` removes it") from exc
        finally:
            self.backend.root.remove_tree(f"{self.name}/{version}")


def tune_savedmodel(backend: Any, name: str, version_dir: Path, served_version: str | None, *,
                    space: Space, slo: SLO, max_points: int, seconds: float, cores: int,
                    processes: int = 1, say: Callable[[str], None] = lambda _: None) -> TuneResult:
    """The whole search for the SavedModel ``version_dir`` of ``name`` on a TF Serving
    ``backend``: the costs (the round trip on ``served_version``, else on a batch-1 scratch
    version), ``search`` over scratch versions, and the winner confirmed against the version's
    own batching. Scratch versions an interrupted tune left are removed first."""
    if space.threads != (0,):
        raise ConfigError("TF Serving's threads per operation are server-wide: tune searches "
                          "batch size, delay and batch threads (--workers) there, not --threads")
    samples = request_samples(version_dir)
    bench = TFServingBench(backend, name, Path(version_dir), samples, seconds,
                           processes=processes, say=say)
    for left in remove_leftovers(backend, name):
        say(f"removed scratch version {name} v{left} (left by an interrupted tune)")
    largest = max(space.batch_sizes)
    incumbent = savedmodel_point(version_dir, cores)
    if served_version is not None:
        waited = float(incumbent.max_batch_delay_ms) if incumbent.batch_size > 1 else 0.0
        costs = measure_costs(version_dir, backend, name, served_version, samples[0],
                              largest_batch=largest, cores=cores, waited_ms=waited)
    else:
        with bench.serving(Point(1, space.delays_ms[0], 1)) as version:
            costs = measure_costs(version_dir, backend, name, version, samples[0],
                                  largest_batch=largest, cores=cores, waited_ms=0.0)
    say(f"costs: signature {costs.handler_ms_batch1:.2f} ms at batch 1, "
        f"{costs.handler_ms_largest:.2f} ms at batch {costs.largest_batch} (one thread); frontend "
        f"{costs.frontend_ms:.2f} ms per request; {cores} cores")
    result = search(space, costs, slo, bench, max_points=max_points, say=say)
    return confirm_winner(result, incumbent, bench, low_users=min(space.users), say=say)
