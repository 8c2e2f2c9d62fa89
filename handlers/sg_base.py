"""The batching handler every servegate task handler builds on.

``preprocess -> inference -> postprocess`` over a TorchServe batch, with per-request isolation:
each request is parsed and validated on its own inside a guard that turns ANY exception into that
request's own answer (``sg_errors.as_request_error``: 4xx for what a client can send, 500 only for
a fault of ours), the good ones run through the model together, and if the batched call fails
the culprits are found by bisection (``_isolate``: halves, recursively; O(log n) model calls for
one poison input, which then fails only itself). ``handle`` answers every
request of the batch exactly once, in order, whatever happens. Batches are split into chunks of at
most the archive's ``max_batch`` rows (the export-time bound of compiled artifacts). Each stage is
timed; the means over the batches of the last ``METRICS_INTERVAL_S`` go out as TorchServe custom
metrics (gauges), at most once per interval: every metric is a log line the frontend parses,
which cost ~10% of the worker's time per batch.

An archive routed by shape (``servegate.json`` ``routes``) carries several artifacts, each owning
some measured shapes (batch x tokens): every one is loaded, and each chunk goes to the owner of
its shape (``Router``) and is padded to that artifact's own buckets.

Subclasses implement ``features`` (one request's envelope -> model input rows) and ``outputs``
(every model output's rows -> JSON rows and Open Inference Protocol tensors). Nothing here keeps
per-request state on the instance.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import sg_codecs
import sg_loaders
import sg_tensors
import sg_worker_io
from sg_errors import ModelLoadError, RequestError, as_request_error

SPEC_FILE = "servegate.json"
#: torch.compile modes that capture CUDA graphs (``servegate.compilers.variants`` keeps the same).
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
#: Calls of each bucket at warm-up when CUDA graphs are captured: cudagraph trees run a new shape
#: eagerly first (warm-up), record its graph on a later call, and replay it from then on.
CUDA_GRAPH_WARM_UP_CALLS = 3
#: Calls in a row that must fit at the learned chunk size before it is doubled again; twice as
#: many after each out-of-memory error that follows (a shortage that lasts), up to the maximum.
CHUNK_GROWTH_AFTER = 32
CHUNK_GROWTH_AFTER_MAX = 4096
METRICS_INTERVAL_S = 1.0
DEFAULT_LIMITS = {"max_body_bytes": 1 << 20, "max_instances": 64,
                  "max_instance_elements": (1 << 20) // sg_tensors.BODY_BYTES_PER_INSTANCE_ELEMENT}


@dataclass(frozen=True)
class Reply:
    """One request's answer: HTTP status, reason phrase and JSON body."""

    status: int
    phrase: str
    body: str

    @classmethod
    def error(cls, exc: RequestError, request_id: Any = None) -> Reply:
        return cls(exc.status, exc.phrase, exc.body(request_id or exc.request_id))


@dataclass(frozen=True)
class Features:
    """One request's model inputs: ``arrays`` share a first (row) dimension of ``rows``."""

    arrays: tuple[np.ndarray, ...]
    rows: int
    single: bool


@dataclass
class Timings:
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    postprocess_ms: float = 0.0


@dataclass
class StageMeans:
    """Stage times and batch sizes summed since the last emission (one per worker)."""

    batches: int = 0
    requests: int = 0
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    postprocess_ms: float = 0.0
    emitted_at: float = float("-inf")

    def add(self, timings: Timings, requests: int) -> None:
        self.batches += 1
        self.requests += requests
        self.preprocess_ms += timings.preprocess_ms
        self.inference_ms += timings.inference_ms
        self.postprocess_ms += timings.postprocess_ms

    def due(self, now: float, interval_s: float) -> bool:
        return self.batches > 0 and now - self.emitted_at >= interval_s


class BatchingHandler:
    """Base of the task handlers; see the module docstring."""

    def __init__(self) -> None:
        self.initialized = False
        self.spec: dict[str, Any] = {}
        self.model_name = "model"
        self.batch_size = 1
        self.limits = dict(DEFAULT_LIMITS)
        self.max_batch: int | None = None
        self._predict: sg_loaders.Predictor | None = None
        self._stage_means = StageMeans()
        self.buckets: Buckets | None = None
        #: Routing by shape: every artifact of a routed archive (the first is ``_predict``'s) and
        #: who owns which shape; empty / None for one artifact.
        self.routes: list[Route] = []
        self.router: Router | None = None
        #: Rows per model call after the device ran out of memory (None: no limit learned yet);
        #: doubled back after ``CHUNK_GROWTH_AFTER`` calls in a row of that size succeed.
        self._chunk_rows: int | None = None
        self._chunk_successes = 0
        self._chunk_growth_after = CHUNK_GROWTH_AFTER
        self._chunk_trial = False  # a doubled size that has not fitted yet

    # ---- lifecycle -------------------------------------------------------------------------
    def initialize(self, context: Any) -> None:
        """TorchServe entry: load the model the archive records on this worker's device
        (``gpu_id`` for CUDA archives), then warm it up. The worker reads each batch in one
        piece and skips its per-batch INFO line (``sg_worker_io``)."""
        sg_worker_io.install()
        properties = context.system_properties
        yaml_config = getattr(context, "model_yaml_config", None) or {}
        gpu_id = properties.get("gpu_id")
        self.setup(
            properties.get("model_dir") or os.getcwd(),
            model_name=context.model_name,
            max_workers=int(yaml_config.get("maxWorkers", yaml_config.get("minWorkers", 1))),
            gpu_id=None if gpu_id is None else int(gpu_id),
            batch_size=int(properties.get("batch_size") or yaml_config.get("batchSize") or 1),
        )

    def setup(self, model_dir: str, *, model_name: str = "model", max_workers: int = 1,
              gpu_id: int | None = None, batch_size: int = 1) -> None:
        """Load and warm up from an unpacked archive directory (also usable without TorchServe);
        ``batch_size``: the most requests TorchServe puts in one batch."""
        spec_path = os.path.join(model_dir, SPEC_FILE)
        try:
            with open(spec_path, encoding="utf-8") as fh:
                self.spec = json.load(fh)
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"cannot read {SPEC_FILE} in {model_dir}: {exc}") from exc
        if model_dir not in sys.path:
            sys.path.insert(0, model_dir)
        self.model_name = model_name
        self.batch_size = max(1, int(batch_size))
        recorded = self.spec.get("limits") or {}
        self.limits = DEFAULT_LIMITS | recorded
        # an archive that records no element limit gets the one derived from its body limit
        self.limits["max_instance_elements"] = sg_tensors.instance_element_limit(
            recorded | {"max_body_bytes": self.limits["max_body_bytes"]})
        max_batch = self.spec.get("max_batch")
        self.max_batch = int(max_batch) if max_batch else None
        threads = sg_loaders.intra_op_threads(self.spec, max_workers)
        compiles = any(s.get("format") in sg_loaders.COMPILES_IN_WORKER
                       for s in [self.spec, *(self.spec.get("routes") or [])])
        shared = sg_loaders.share_compile_cache(model_dir) if compiles else {}
        # torch.compile compiles lazily: loading and warming up are the compile, under the lock
        with sg_loaders.compile_lock(model_dir) if compiles else contextlib.nullcontext():
            if compiles:
                sg_loaders.log.info(sg_loaders.unpack_shipped_cache(self.spec, model_dir, shared))
            self._predict = sg_loaders.load_model(self.spec, model_dir, threads, gpu_id)
            self.buckets = Buckets.from_spec(self.spec.get("buckets"))
            self._load_routes(model_dir, threads, gpu_id)
            self.configure(model_dir)
            self._warm_up_buckets(model_dir)
            self._warm_up(model_dir)
        self.initialized = True

    def _load_routes(self, model_dir: str, threads: int, gpu_id: int | None) -> None:
        """A routed archive's artifacts (``routes``; the first is the one loaded already) and
        its ``Router``; nothing for an archive of one artifact."""
        routes = self.spec.get("routes") or []
        if not routes:
            return
        self.router = Router.from_spec(routes)
        if routes[0].get("artifact") != self.spec.get("artifact"):
            raise ModelLoadError("servegate.json: routes[0] is not the archive's artifact")
        assert self._predict is not None
        self.routes = [Route(str(routes[0].get("compiler")), self.spec, self._predict, self.buckets)]
        for route in routes[1:]:
            spec = {k: v for k, v in self.spec.items() if k != "routes"} | {
                k: route.get(k) for k in ROUTE_LOADER_KEYS} | {
                "model_kwargs": route.get("model_kwargs") or {}}
            self.routes.append(Route(str(route.get("compiler")), spec,
                                     sg_loaders.load_model(spec, model_dir, threads, gpu_id),
                                     Buckets.from_spec(route.get("buckets"))))

    def configure(self, model_dir: str) -> None:
        """Task-specific setup (labels, image geometry...)."""

    def _warm_up_sample(self, model_dir: str) -> bytes | None:
        name = self.spec.get("warmup_file")
        if not name:
            return None
        with open(os.path.join(model_dir, name), "rb") as fh:
            return fh.read()

    def bucket_warm_up_calls(self, spec: dict[str, Any] | None = None) -> int:
        """Calls of each bucket shape at warm-up: ``CUDA_GRAPH_WARM_UP_CALLS`` when the archive's
        (or a route's ``spec``'s) torch.compile mode captures CUDA graphs on a GPU (so that every
        graph is recorded before the first request), else 1 (kernels compiled)."""
        spec = self.spec if spec is None else spec
        cuda_graphs = (spec.get("device") == "cuda"
                       and spec.get("compile_mode") in CUDA_GRAPH_MODES)
        return CUDA_GRAPH_WARM_UP_CALLS if cuda_graphs else 1

    def _warm_up_buckets(self, model_dir: str) -> None:
        """Run the model at every bucket shape (``bucket_warm_up_calls`` times: CUDA graphs are
        recorded and kernels compiled before the first request), from the warm-up request's
        features; in a routed archive, every artifact (once on the sample if it has no buckets)."""
        sample = self._warm_up_sample(model_dir)
        if sample is None or (self.buckets is None and not self.routes):
            return
        assert self._predict is not None
        artifacts = self.routes[1:] if self.routes else []
        artifacts.insert(0, Route(self.routes[0].name if self.routes else "", self.spec,
                                  self._predict, self.buckets))
        name = ""
        try:
            _, feats = self.prepare(sample)
            for index, route in enumerate(artifacts):
                name = route.name
                if route.buckets is None:
                    route.predict(*feats.arrays)
                    continue
                calls = self.bucket_warm_up_calls(route.spec)
                # a routed artifact: only the batch buckets its chunks are padded to
                buckets = (route.buckets if self.router is None
                           else self.router.reachable(index, route.buckets, self._largest_bucket()))
                for inputs in buckets.shapes_of(feats.arrays, self.pad_values()):
                    for _ in range(calls):
                        route.predict(*inputs)
        except Exception as exc:
            which = f" of artifact {name}" if name else ""
            raise ModelLoadError(f"warm-up{which} of the shape buckets failed: {exc}") from exc

    def pad_values(self) -> tuple[float, ...]:
        """The value each model input is padded with on its token axis (text: the pad id for the
        ids, 0 for the mask)."""
        return ()

    def _warm_up(self, model_dir: str) -> None:
        sample = self._warm_up_sample(model_dir)
        if sample is None:
            return
        replies, _ = self.process([sample])
        if replies[0].status != 200:
            raise ModelLoadError(f"warm-up request failed: {replies[0].status} {replies[0].body}")

    # ---- task hooks --------------------------------------------------------------------------
    def features(self, envelope: sg_codecs.Envelope) -> Features:
        raise NotImplementedError

    def collate(self, batch: list[Features]) -> tuple[np.ndarray, ...]:
        """Join the requests' features into the model's inputs (default: concatenate rows)."""
        if len(batch) == 1:
            return batch[0].arrays
        return tuple(np.concatenate(parts) for parts in zip(*(f.arrays for f in batch), strict=True))

    def outputs(self, outputs: tuple[np.ndarray, ...], *,
                v2: bool = True) -> tuple[list[Any], list[dict[str, Any]]]:
        """One request's rows of every model output -> (JSON rows, Open Inference Protocol
        output tensors; ``v2=False``: not needed, may be left empty)."""
        raise NotImplementedError

    def outputs_many(self, outputs: list[tuple[np.ndarray, ...]],
                     v2: list[bool]) -> list[tuple[list[Any], list[dict[str, Any]]]]:
        """``outputs`` of several requests at once (default: ``outputs`` of each; a task may
        compute them for all rows together)."""
        return [self.outputs(o, v2=w) for o, w in zip(outputs, v2, strict=True)]

    def check_rows(self, rows: int) -> None:
        """413 when one request carries more rows than ``limits.max_instances``."""
        sg_codecs.check_rows(rows, int(self.limits["max_instances"]))

    # ---- the pipeline ----------------------------------------------------------------------
    def prepare(self, payload: Any) -> tuple[sg_codecs.Envelope, Features]:
        """One request's envelope and model inputs; raises for a bad request."""
        envelope = sg_codecs.parse(payload, max_bytes=int(self.limits["max_body_bytes"]),
                                   max_instances=int(self.limits["max_instances"]))
        try:
            feats = self.features(envelope)
            self.check_rows(feats.rows)
        except Exception as exc:
            with contextlib.suppress(Exception):  # echoed in the error body
                exc.request_id = envelope.request_id  # type: ignore[attr-defined]
            raise
        return envelope, feats

    def process(self, payloads: list[Any]) -> tuple[list[Reply], Timings]:
        """Serve a batch of raw payloads: one reply per payload, in order; never raises."""
        timings = Timings()
        replies: list[Reply | None] = [None] * len(payloads)
        start = time.perf_counter()
        parsed: list[tuple[int, sg_codecs.Envelope, Features]] = []
        for i, payload in enumerate(payloads):
            try:
                envelope, feats = self.prepare(payload)
                parsed.append((i, envelope, feats))
            except Exception as exc:  # the guard: whatever a request holds, it fails alone
                replies[i] = Reply.error(as_request_error(exc, "preprocess"),
                                         getattr(exc, "request_id", None))
        timings.preprocess_ms = (time.perf_counter() - start) * 1e3

        start = time.perf_counter()
        results = self._infer([f for _, _, f in parsed])
        timings.inference_ms = (time.perf_counter() - start) * 1e3

        start = time.perf_counter()
        answered = [(i, envelope, feats, result)
                    for (i, envelope, feats), result in zip(parsed, results, strict=True)
                    if not isinstance(result, RequestError)]
        for (i, envelope, _), result in zip(parsed, results, strict=True):
            if isinstance(result, RequestError):
                replies[i] = Reply.error(result, envelope.request_id)
        try:  # all at once; if that fails, one by one below so only the culprit fails
            together: list[Any] | None = self.outputs_many(
                [r for *_, r in answered], [e.family == "v2" for _, e, _, _ in answered])
        except Exception:
            together = None
        for k, (i, envelope, feats, result) in enumerate(answered):
            try:
                rows, v2 = (together[k] if together is not None
                            else self.outputs(result, v2=envelope.family == "v2"))
                body = sg_codecs.encode(envelope, rows, v2, self.model_name, feats.single)
                replies[i] = Reply(200, "OK", body)
            except Exception as exc:  # a postprocess fault must not fail the other requests
                error = exc if isinstance(exc, RequestError) else RequestError(
                    500, "postprocess failed", f"{type(exc).__name__}: {exc}"[:500])
                replies[i] = Reply.error(error, envelope.request_id)
        timings.postprocess_ms = (time.perf_counter() - start) * 1e3
        return [r if r is not None else _LOST for r in replies], timings

    def _infer(self, batch: list[Features]) -> list[tuple[np.ndarray, ...] | RequestError]:
        """Run the batch; if it fails, find the culprits by bisection so only they fail."""
        if not batch:
            return []
        try:
            return self._split(self._run(self.collate(batch)), batch)
        except Exception as exc:
            if len(batch) == 1:  # nothing to isolate: this request is the culprit
                return [_inference_error(exc)]
        # bisected outside the ``except``: the failed call's tensors went with its traceback
        return self._isolate(batch)

    def _isolate(self, batch: list[Features]) -> list[tuple[np.ndarray, ...] | RequestError]:
        """``batch`` (2+ requests) failed as a whole: run its first half (``_infer``, which
        bisects it in turn if it fails); if that half succeeds, the culprit is in the second half,
        which is split without being run whole; else the second half is run as well. A request
        is only ever failed after it failed alone. With one poison input among n requests: at
        most 2*log2(n) model calls after the failed one (running each request alone took n)."""
        half = len(batch) // 2
        first, second = batch[:half], batch[half:]
        first_results = self._infer(first)
        if len(second) > 1 and not any(isinstance(r, RequestError) for r in first_results):
            return first_results + self._isolate(second)
        return first_results + self._infer(second)

    def _run(self, inputs: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        """Every model output for ``inputs``, in chunks of at most ``max_batch`` rows (and of the
        largest bucket, and of what fitted in device memory)."""
        assert self._predict is not None, "handler used before setup()"
        rows = inputs[0].shape[0]
        largest_bucket = self._largest_bucket()
        if largest_bucket is None and self._chunk_rows is None and (
                self.max_batch is None or rows <= self.max_batch):
            return self._run_chunk(inputs)  # the common case: one call, nothing to cut or join
        parts, start = [], 0
        while start < rows:  # the step is read again after each chunk: an OOM may lower it
            limits = [n for n in (self.max_batch, self._chunk_rows, largest_bucket) if n]
            step = min([rows - start, *limits])
            parts.append(self._run_chunk(tuple(a[start:start + step] for a in inputs)))
            start += step
        return parts[0] if len(parts) == 1 else _concat(parts)

    def _run_chunk(self, inputs: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        """One model call; if the device runs out of memory, the two halves one after the other
        (recursively) and the smaller size kept for later batches (grown back after
        ``CHUNK_GROWTH_AFTER`` successes in a row at that size); one row that still does not fit
        raises (and fails only its request).

        The retry runs after the ``except`` block: inside it, the traceback keeps the failed
        attempt's frames, and so its activations, alive, and ``empty_cache`` could not free them."""
        rows = inputs[0].shape[0]
        try:
            outputs = self._call_model(inputs)
        except Exception as exc:
            if rows == 1 or not sg_loaders.is_out_of_memory(exc):
                raise
            outputs = None
        if outputs is not None:
            self._count_success(rows)
            return outputs
        sg_loaders.free_device_memory()
        half = rows // 2
        if self._chunk_rows is None:
            self._chunk_growth_after = CHUNK_GROWTH_AFTER
        else:  # out of memory again: wait longer before the next try at a larger size
            self._chunk_growth_after = min(2 * self._chunk_growth_after, CHUNK_GROWTH_AFTER_MAX)
        self._chunk_rows = min(self._chunk_rows or half, half)
        self._chunk_successes, self._chunk_trial = 0, False
        return _concat([self._run(tuple(a[:half] for a in inputs)),  # at the size now learned
                        self._run(tuple(a[half:] for a in inputs))])

    def _count_success(self, rows: int) -> None:
        """A call of ``rows`` fitted: after enough in a row at the learned size (see
        ``CHUNK_GROWTH_AFTER``), try twice that (an out-of-memory error may have been transient);
        no limit once it reaches ``max_batch``."""
        if self._chunk_rows is None or rows < self._chunk_rows:
            return
        if self._chunk_trial:  # the first call at a grown size fitted: the shortage is over
            self._chunk_growth_after, self._chunk_trial = CHUNK_GROWTH_AFTER, False
        self._chunk_successes += 1
        if self._chunk_successes < self._chunk_growth_after:
            return
        self._chunk_successes = 0
        grown = self._chunk_rows * 2
        self._chunk_trial = True
        self._chunk_rows = None if self.max_batch and grown >= self.max_batch else grown

    def _largest_bucket(self) -> int | None:
        """The most rows one call may take because of buckets: the smallest largest bucket of
        the archive's artifacts (None: no buckets)."""
        buckets = [r.buckets for r in self.routes] if self.routes else [self.buckets]
        largest = [b.batch[-1] for b in buckets if b is not None]
        return min(largest) if largest else None

    def _owner(self, inputs: tuple[np.ndarray, ...]) -> tuple[sg_loaders.Predictor, Buckets | None]:
        """The artifact that serves ``inputs`` (``Router``; the only one when not routed) and
        its buckets."""
        assert self._predict is not None, "handler used before setup()"
        if self.router is None:
            return self._predict, self.buckets
        first = inputs[0]
        tokens = int(first.shape[1]) if self.router.tokens and first.ndim == 2 else None
        route = self.routes[self.router.owner(int(first.shape[0]), tokens)]
        return route.predict, route.buckets

    def _call_model(self, inputs: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        """The model (a routed archive: the owner of the chunk's shape) on ``inputs``, padded up
        to the next bucket when the artifact has buckets (the answers are cut back to the real
        rows)."""
        predict, buckets = self._owner(inputs)
        if buckets is None:
            return predict(*inputs)  # a Predictor answers a tuple of numpy arrays
        rows = inputs[0].shape[0]
        padded = buckets.pad(inputs, self.pad_values())
        return tuple(np.asarray(o)[:rows] for o in predict(*padded))

    @staticmethod
    def _split(outputs: tuple[np.ndarray, ...], batch: list[Features]) -> list[tuple[np.ndarray, ...]]:
        """Each request's rows of every output."""
        total = sum(f.rows for f in batch)
        if not outputs:
            raise RuntimeError("the model returned no output")
        for k, output in enumerate(outputs):
            if output.ndim == 0 or output.shape[0] != total:
                got = output.shape[0] if output.ndim else "a scalar"
                raise RuntimeError(f"model output {k} has {got} rows for {total} inputs")
        if len(batch) == 1:
            return [outputs]
        split: list[tuple[np.ndarray, ...]] = []
        start = 0
        for feats in batch:
            stop = start + feats.rows
            split.append(tuple(output[start:stop] for output in outputs))
            start = stop
        return split

    # ---- TorchServe entry --------------------------------------------------------------------
    def handle(self, data: list[dict[str, Any]], context: Any) -> list[str]:
        """TorchServe entry: exactly one response per request, in order, whatever happens."""
        try:
            replies, timings = self._handle(data)
        except Exception as exc:  # a fault of ours: answer every request rather than kill the batch
            error = RequestError(500, "handler failed", f"{type(exc).__name__}: {exc}"[:500])
            replies, timings = [Reply.error(error)] * len(data), Timings()
        out: list[str] = []
        for i, reply in enumerate(replies):
            if reply.status != 200:
                context.set_response_status(reply.status, reply.phrase, idx=i)
            context.set_response_content_type(i, "application/json")
            out.append(reply.body)
        try:
            self._emit_metrics(context, timings, len(data))
        except Exception:  # metrics must never cost an answer
            pass
        return out

    def _handle(self, data: list[dict[str, Any]]) -> tuple[list[Reply], Timings]:
        payloads: list[Any] = []
        empty: dict[int, Reply] = {}
        for i, request in enumerate(data):
            try:
                payloads.append(sg_codecs.request_body(request or {}))
            except Exception as exc:
                empty[i] = Reply.error(as_request_error(exc))
                payloads.append(None)
        kept = [i for i in range(len(data)) if i not in empty]
        replies, timings = self.process([payloads[i] for i in kept])
        by_index = dict(zip(kept, replies, strict=True)) | empty
        return [by_index[i] for i in range(len(data))], timings

    def _emit_metrics(self, context: Any, timings: Timings, batch_size: int) -> None:
        """Per-batch means of the stage times and the batch size, once per interval."""
        metrics = getattr(context, "metrics", None)
        if metrics is None:
            return
        means = self._stage_means
        means.add(timings, batch_size)
        now = time.monotonic()
        if not means.due(now, METRICS_INTERVAL_S):
            return
        n = means.batches
        metrics.add_time("PreprocessTime", round(means.preprocess_ms / n, 3), None, "ms")
        metrics.add_time("InferenceTime", round(means.inference_ms / n, 3), None, "ms")
        metrics.add_time("PostprocessTime", round(means.postprocess_ms / n, 3), None, "ms")
        try:
            from ts.metrics.metric_type_enum import MetricTypes

            metrics.add_metric("BatchSize", round(means.requests / n, 2), "count", None, [],
                               MetricTypes.GAUGE)
        except ImportError:  # outside TorchServe (local harness)
            metrics.add_metric("BatchSize", round(means.requests / n, 2), "count", None, [])
        self._stage_means = StageMeans(emitted_at=now)


def _concat(parts: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """Chunks' outputs joined along the rows, output by output."""
    return tuple(np.concatenate([np.asarray(p[k]) for p in parts]) for k in range(len(parts[0])))


@dataclass(frozen=True)
class Buckets:
    """The fixed shapes an artifact runs at (``servegate.json`` ``buckets``): batch sizes, and
    token counts for text models (inputs ``[rows, tokens]``)."""

    batch: tuple[int, ...]
    tokens: tuple[int, ...] = ()

    @classmethod
    def from_spec(cls, value: Any) -> Buckets | None:
        if not value or not value.get("batch"):
            return None
        return cls(tuple(sorted(int(b) for b in value["batch"])),
                   tuple(sorted(int(t) for t in value.get("tokens") or ())))

    @staticmethod
    def _next(sizes: tuple[int, ...], n: int) -> int:
        return next((s for s in sizes if s >= n), n)

    def _token_axis(self, array: np.ndarray) -> bool:
        return bool(self.tokens) and array.ndim == 2 and array.dtype.kind in "iu"

    def pad(self, inputs: tuple[np.ndarray, ...], pad_values: tuple[float, ...]) -> tuple[np.ndarray, ...]:
        """``inputs`` with rows (copies of the last) and tokens (``pad_values``, else 0) added up
        to the next bucket."""
        rows = inputs[0].shape[0]
        extra = self._next(self.batch, rows) - rows
        padded = []
        for k, array in enumerate(inputs):
            if extra:
                array = np.concatenate([array, np.repeat(array[-1:], extra, axis=0)])
            if self._token_axis(array):
                more = self._next(self.tokens, array.shape[1]) - array.shape[1]
                if more:
                    fill = pad_values[k] if k < len(pad_values) else 0
                    array = np.pad(array, ((0, 0), (0, more)), constant_values=fill)
            padded.append(np.ascontiguousarray(array))
        return tuple(padded)

    def shapes_of(self, sample: tuple[np.ndarray, ...],
                  pad_values: tuple[float, ...]) -> list[tuple[np.ndarray, ...]]:
        """Inputs of every bucket shape (batch x tokens) made from ``sample``'s rows."""
        shapes = []
        for batch in self.batch:
            rows = tuple(np.resize(a, (batch, *a.shape[1:])) if a.ndim else a for a in sample)
            if not self.tokens or not any(self._token_axis(a) for a in rows):
                shapes.append(rows)
                continue
            for tokens in self.tokens:
                cut = tuple(a[:, :tokens] if self._token_axis(a) else a for a in rows)
                shapes.append(Buckets((batch,), (tokens,)).pad(cut, pad_values))
        return shapes


#: A route's fields that replace the archive's when its artifact is loaded (``load_model``).
ROUTE_LOADER_KEYS = ("format", "artifact", "model_class", "model_kwargs", "device", "dtype",
                     "compile_mode", "built_for", "buckets", "fallback_artifact")


@dataclass(frozen=True)
class Route:
    """One artifact of a routed archive: its backend name, the spec it was loaded from, its
    predictor and its buckets."""

    name: str
    spec: dict[str, Any]
    predict: sg_loaders.Predictor
    buckets: Buckets | None


@dataclass(frozen=True)
class Router:
    """Who serves a chunk of ``rows`` x ``tokens``: the owner of the smallest measured batch at
    or above ``rows`` (else the largest), crossed with the smallest measured token count at or
    above ``tokens`` (else the largest); ``servegate.compilers.routing.owning_shape`` decides
    the same way when the archive is built."""

    owners: dict[tuple[int, int | None], int]
    batches: tuple[int, ...]
    tokens: tuple[int, ...]

    @classmethod
    def from_spec(cls, routes: list[dict[str, Any]]) -> Router:
        """From ``servegate.json`` ``routes``: a ``ModelLoadError`` unless every batch x token
        count is owned exactly once."""
        owners: dict[tuple[int, int | None], int] = {}
        try:
            for index, route in enumerate(routes):
                for shape in route.get("owns") or []:
                    tokens = shape.get("tokens")
                    key = (int(shape["batch"]), None if tokens is None else int(tokens))
                    if key in owners:
                        raise ModelLoadError(f"servegate.json: shape {key} is routed twice")
                    owners[key] = index
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise ModelLoadError(f"servegate.json: invalid routes: {exc}") from exc
        batches = tuple(sorted({b for b, _ in owners}))
        tokens = tuple(sorted({t for _, t in owners if t is not None}))
        grid = {(b, t) for b in batches for t in (tokens or (None,))}
        if not owners or set(owners) != grid:
            raise ModelLoadError("servegate.json: routes must own every batch x tokens once, "
                                 f"got {sorted(owners, key=str)}")
        return cls(owners, batches, tokens)

    def reachable(self, index: int, buckets: Buckets, most: int | None) -> Buckets:
        """The batch buckets of artifact ``index`` that a chunk routed to it is padded to (a
        chunk has at most ``most`` rows): warming up the others would only cost start-up time
        (a CUDA graph recorded per bucket)."""
        largest = most or buckets.batch[-1]
        sizes = {Buckets._next(buckets.batch, rows) for rows in range(1, largest + 1)
                 if index in {o for (b, _), o in self.owners.items()
                              if b == next((x for x in self.batches if x >= rows), self.batches[-1])}}
        return Buckets(tuple(sorted(s for s in sizes if s in buckets.batch)), buckets.tokens)

    def owner(self, rows: int, tokens: int | None = None) -> int:
        """The index (in ``routes``) of the artifact that serves ``rows`` x ``tokens``."""
        batch = next((b for b in self.batches if b >= rows), self.batches[-1])
        if not self.tokens:
            return self.owners[(batch, None)]
        wanted = self.tokens[-1] if tokens is None else tokens
        return self.owners[(batch, next((t for t in self.tokens if t >= wanted), self.tokens[-1]))]


def _inference_error(exc: Exception) -> RequestError:
    return RequestError(500, "inference failed", f"{type(exc).__name__}: {exc}"[:500])


_LOST = Reply(500, "Internal Server Error",
              json.dumps({"error": "lost reply", "detail": "no answer was produced"}))
