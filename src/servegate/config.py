"""Typed settings. Environment variables (``SERVEGATE_*``), CLI options and MLproject parameters
all map onto these models; nothing is read at import time."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchingConfig(_Settings):
    """TorchServe's per-model batching and worker settings (written to model-config.yaml)."""

    batch_size: PositiveInt = 8
    max_batch_delay_ms: int = Field(2, ge=0)
    min_workers: PositiveInt = 1
    max_workers: PositiveInt = 1
    response_timeout_s: PositiveInt = 120
    startup_timeout_s: PositiveInt = 120

    @model_validator(mode="after")
    def _delay_fills_batches(self) -> BatchingConfig:
        # Measured on TorchServe 0.12: maxBatchDelay 0 is taken as its 100 ms default, so a
        # lone request waits 100 ms for a batch that never fills.
        if self.batch_size > 1 and self.max_batch_delay_ms == 0:
            raise ValueError("max_batch_delay_ms must be at least 1 when batch_size > 1: "
                             "TorchServe treats 0 as its 100 ms default")
        return self

    def model_config_yaml(self) -> dict[str, int]:
        return {
            "batchSize": self.batch_size,
            "maxBatchDelay": self.max_batch_delay_ms,
            "minWorkers": self.min_workers,
            "maxWorkers": self.max_workers,
            "responseTimeout": self.response_timeout_s,
            "startupTimeout": self.startup_timeout_s,
        }


class RequestLimits(_Settings):
    """What one request may carry before the handler answers 413."""

    max_body_bytes: PositiveInt = 1 << 20
    max_instances: PositiveInt = 64


def home_dir() -> Path:
    """Where servegate keeps local servers and archives (``SERVEGATE_HOME``, default ``.servegate``)."""
    return Path(os.environ.get("SERVEGATE_HOME", ".servegate")).resolve()


class TorchServeSettings(_Settings):
    """A local TorchServe: its directory and addresses. Port 0 picks a free port."""

    workdir: Path = Field(default_factory=lambda: home_dir() / "torchserve")
    host: str = "127.0.0.1"
    inference_port: int = Field(0, ge=0, le=65535)
    management_port: int = Field(0, ge=0, le=65535)
    metrics_port: int = Field(0, ge=0, le=65535)
    token_auth: bool = True
    ready_timeout_s: float = 180.0
    # TorchServe's default request size limit is 6.5 MB; ours is set explicitly.
    max_request_size: PositiveInt = 8 << 20


class SLOs(_Settings):
    """Load-gate thresholds: absolute, and relative to the champion measured in the same run."""

    p95_ms: float = Field(250.0, gt=0)
    p99_ms: float = Field(500.0, gt=0)
    min_rps: float = Field(20.0, ge=0)
    max_error_rate: float = Field(0.0, ge=0, le=1)
    max_regression_pct: float = Field(50.0, ge=0)
    #: Latency differences below this are noise on a shared box, whatever the percentage says.
    regression_floor_ms: float = Field(10.0, ge=0)


class ParityThresholds(_Settings):
    """Accuracy-gate thresholds: served vs reference, challenger vs champion."""

    parity_atol: float = Field(1e-4, ge=0)
    min_top1_agreement: float = Field(0.999, ge=0, le=1)
    max_accuracy_drop: float = Field(0.01, ge=0, le=1)


class LoadSettings(_Settings):
    """Locust settings of the load gate. With a champion, its phases and the challenger's
    alternate ``rounds`` times (``seconds`` split between them), so drift on a shared machine
    hits both alike."""

    users: PositiveInt = 8
    seconds: float = Field(8.0, gt=0)
    rounds: PositiveInt = 2


class PipelineConfig(_Settings):
    """Everything one ``mlflow run pipelines/deploy`` needs (MLproject parameters map here)."""

    model: str = "builtin:digits"
    #: hf: models: ``embedding`` (default) or ``text-classification``; None for the others.
    task: str | None = None
    #: hf: models: truncation in tokens (None: the model's default).
    max_length: int | None = Field(None, ge=8)
    #: The user's held-out data (path or MLflow artifact URI) the gates run on.
    eval_data: str | None = None
    #: The label column of tabular eval_data.
    label_column: str = "label"
    name: str = Field("digits", pattern=r"^[A-Za-z][A-Za-z0-9_\-]*$")
    target: str = "torchserve"
    compiler: str = "auto"
    slos: SLOs = Field(default_factory=SLOs)
    parity: ParityThresholds = Field(default_factory=ParityThresholds)
    load: LoadSettings = Field(default_factory=LoadSettings)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    promote: bool = True
    report_dir: Path | None = None
    torchserve: TorchServeSettings = Field(default_factory=TorchServeSettings)
