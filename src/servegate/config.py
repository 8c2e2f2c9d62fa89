"""Typed settings. Environment variables (``SERVEGATE_*``), CLI options and MLproject parameters
all map onto these models; nothing is read at import time."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, PositiveInt


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchingConfig(_Settings):
    """TorchServe's per-model batching and worker settings (written to model-config.yaml)."""

    batch_size: PositiveInt = 8
    max_batch_delay_ms: int = Field(5, ge=0)
    min_workers: PositiveInt = 1
    max_workers: PositiveInt = 1
    response_timeout_s: PositiveInt = 120
    startup_timeout_s: PositiveInt = 120

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
