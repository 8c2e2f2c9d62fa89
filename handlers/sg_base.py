"""The batching handler every servegate task handler builds on.

``preprocess -> inference -> postprocess`` over a TorchServe batch, with per-request isolation:
each request is parsed and validated on its own (a bad one gets its own 4xx), the good ones run
through the model together, and if the batched call fails each request is retried alone so a
poison input fails only itself. Each stage is timed; the means over the batches of the last
``METRICS_INTERVAL_S`` go out as TorchServe custom metrics (gauges), at most once per interval:
every metric is a log line the frontend parses, which cost ~10% of the worker's time per batch.

Subclasses implement ``features`` (one request's envelope -> model input rows) and ``outputs``
(model output rows -> JSON rows and Open Inference Protocol tensors). Nothing here keeps
per-request state on the instance.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import sg_codecs
import sg_loaders
from sg_errors import InvalidInput, ModelLoadError, RequestError

SPEC_FILE = "servegate.json"
METRICS_INTERVAL_S = 1.0
DEFAULT_LIMITS = {"max_body_bytes": 1 << 20, "max_instances": 64}


@dataclass(frozen=True)
class Reply:
    """One request's answer: HTTP status, reason phrase and JSON body."""

    status: int
    phrase: str
    body: str

    @classmethod
    def error(cls, exc: RequestError) -> Reply:
        return cls(exc.status, exc.phrase, exc.body())


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
        self.limits = dict(DEFAULT_LIMITS)
        self._predict: sg_loaders.Predictor | None = None
        self._stage_means = StageMeans()

    # ---- lifecycle -------------------------------------------------------------------------
    def initialize(self, context: Any) -> None:
        """TorchServe entry: load the model the archive records, then warm it up."""
        properties = context.system_properties
        yaml_config = getattr(context, "model_yaml_config", None) or {}
        self.setup(
            properties.get("model_dir") or os.getcwd(),
            model_name=context.model_name,
            max_workers=int(yaml_config.get("maxWorkers", yaml_config.get("minWorkers", 1))),
        )

    def setup(self, model_dir: str, *, model_name: str = "model", max_workers: int = 1) -> None:
        """Load and warm up from an unpacked archive directory (also usable without TorchServe)."""
        spec_path = os.path.join(model_dir, SPEC_FILE)
        try:
            with open(spec_path, encoding="utf-8") as fh:
                self.spec = json.load(fh)
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"cannot read {SPEC_FILE} in {model_dir}: {exc}") from exc
        if model_dir not in sys.path:
            sys.path.insert(0, model_dir)
        self.model_name = model_name
        self.limits = DEFAULT_LIMITS | self.spec.get("limits", {})
        threads = sg_loaders.intra_op_threads(self.spec, max_workers)
        self._predict = sg_loaders.load(self.spec, model_dir, threads)
        self.configure(model_dir)
        self._warm_up(model_dir)
        self.initialized = True

    def configure(self, model_dir: str) -> None:
        """Task-specific setup (labels, image geometry...)."""

    def _warm_up(self, model_dir: str) -> None:
        name = self.spec.get("warmup_file")
        if not name:
            return
        with open(os.path.join(model_dir, name), "rb") as fh:
            sample = fh.read()
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

    def outputs(self, output: np.ndarray) -> tuple[list[Any], list[dict[str, Any]]]:
        """Model output rows -> (JSON rows, Open Inference Protocol output tensors)."""
        raise NotImplementedError

    # ---- the pipeline ----------------------------------------------------------------------
    def process(self, payloads: list[Any]) -> tuple[list[Reply], Timings]:
        """Serve a batch of raw payloads; never raises for a bad request."""
        timings = Timings()
        replies: list[Reply | None] = [None] * len(payloads)
        start = time.perf_counter()
        parsed: list[tuple[int, sg_codecs.Envelope, Features]] = []
        for i, payload in enumerate(payloads):
            try:
                envelope = sg_codecs.parse(payload, max_bytes=int(self.limits["max_body_bytes"]),
                                           max_instances=int(self.limits["max_instances"]))
                parsed.append((i, envelope, self.features(envelope)))
            except RequestError as exc:
                replies[i] = Reply.error(exc)
        timings.preprocess_ms = (time.perf_counter() - start) * 1e3

        start = time.perf_counter()
        results = self._infer([f for _, _, f in parsed])
        timings.inference_ms = (time.perf_counter() - start) * 1e3

        start = time.perf_counter()
        for (i, envelope, feats), result in zip(parsed, results, strict=True):
            if isinstance(result, RequestError):
                replies[i] = Reply.error(result)
                continue
            try:
                rows, v2 = self.outputs(result)
                body = sg_codecs.encode(envelope, rows, v2, self.model_name, feats.single)
                replies[i] = Reply(200, "OK", body)
            except RequestError as exc:
                replies[i] = Reply.error(exc)
            except Exception as exc:  # a postprocess bug must not fail the other requests
                replies[i] = Reply.error(RequestError(500, "postprocess failed", repr(exc)))
        timings.postprocess_ms = (time.perf_counter() - start) * 1e3
        return [r for r in replies if r is not None], timings

    def _infer(self, batch: list[Features]) -> list[np.ndarray | RequestError]:
        """Run the batch; on failure run each request alone so only the culprit fails."""
        if not batch:
            return []
        try:
            return self._split(self._run(self.collate(batch)), batch)
        except Exception as exc:
            if len(batch) == 1:  # nothing to isolate: this request is the culprit
                return [RequestError(500, "inference failed", f"{type(exc).__name__}: {exc}")]
            return [self._infer_one(f) for f in batch]

    def _infer_one(self, feats: Features) -> np.ndarray | RequestError:
        try:
            return self._split(self._run(self.collate([feats])), [feats])[0]
        except Exception as exc:
            return RequestError(500, "inference failed", f"{type(exc).__name__}: {exc}")

    def _run(self, inputs: tuple[np.ndarray, ...]) -> np.ndarray:
        assert self._predict is not None, "handler used before setup()"
        return np.asarray(self._predict(*inputs))

    @staticmethod
    def _split(output: np.ndarray, batch: list[Features]) -> list[np.ndarray]:
        total = sum(f.rows for f in batch)
        if output.shape[0] != total:
            raise RuntimeError(f"model returned {output.shape[0]} rows for {total} inputs")
        bounds = np.cumsum([f.rows for f in batch])[:-1]
        return list(np.split(output, bounds))

    # ---- TorchServe entry --------------------------------------------------------------------
    def handle(self, data: list[dict[str, Any]], context: Any) -> list[str]:
        """TorchServe entry: exactly one response per request, in order."""
        payloads: list[Any] = []
        empty: dict[int, Reply] = {}
        for i, request in enumerate(data):
            try:
                payloads.append(sg_codecs.request_body(request or {}))
            except RequestError as exc:
                empty[i] = Reply.error(exc)
                payloads.append(None)
        kept = [i for i in range(len(data)) if i not in empty]
        replies, timings = self.process([payloads[i] for i in kept])
        by_index = dict(zip(kept, replies, strict=True)) | empty
        out: list[str] = []
        for i in range(len(data)):
            reply = by_index[i]
            if reply.status != 200:
                context.set_response_status(reply.status, reply.phrase, idx=i)
            context.set_response_content_type(i, "application/json")
            out.append(reply.body)
        self._emit_metrics(context, timings, len(data))
        return out

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


def numeric_array(value: Any, dtype: str, *, allow_non_finite: bool = False) -> np.ndarray:
    """A numeric array from JSON-ish data, or a 422 saying what is wrong."""
    if isinstance(value, np.ndarray):
        array = value
    else:
        try:
            array = np.asarray(value)
        except ValueError as exc:  # ragged nesting
            raise InvalidInput("wrong shape", f"ragged or irregular input: {exc}") from exc
    if array.dtype.kind not in "biuf":
        raise InvalidInput("wrong dtype", f"expected numbers ({dtype}), got {array.dtype.kind!r} data")
    try:
        array = array.astype(dtype, copy=False)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInput("wrong dtype", f"cannot convert to {dtype}: {exc}") from exc
    if not allow_non_finite and array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInput("non-finite input", "NaN or Inf values are not allowed")
    return array
