"""Locust user for the bench's robustness row: good request bodies with a bad one every Nth.

Good requests are named ``good`` (a failure unless 200); bad ones ``bad`` (a success when answered
with a 4xx, the isolation the handler promises; a failure otherwise). The bench reads the figures
of the good ones only.

Environment: as ``loadtests/torchserve.py`` (``SERVEGATE_MODEL``, ``SERVEGATE_KEY_FILE``,
``SERVEGATE_SAMPLES``), plus ``SERVEGATE_BAD_SAMPLES`` (a JSON list of base64 bodies) and
``SERVEGATE_BAD_EVERY`` (8: one request in 8 is bad).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
from pathlib import Path

from locust import FastHttpUser, constant, task


def _bodies(variable: str, raw: bool) -> list[bytes]:
    items = json.loads(Path(os.environ[variable]).read_text(encoding="utf-8"))
    return [base64.b64decode(b) if raw else json.dumps(b).encode() for b in items]


class MixedPredictUser(FastHttpUser):
    """Posts good bodies round-robin, and a bad body every ``SERVEGATE_BAD_EVERY``-th request."""

    wait_time = constant(0)

    def on_start(self) -> None:
        self.path = f"/predictions/{os.environ['SERVEGATE_MODEL']}"
        self.headers = {"Content-Type": "application/json"}
        key_file = os.environ.get("SERVEGATE_KEY_FILE")
        if key_file:
            key = json.loads(Path(key_file).read_text(encoding="utf-8"))["inference"]["key"]
            self.headers["Authorization"] = f"Bearer {key}"
        self.good = itertools.cycle(_bodies("SERVEGATE_SAMPLES", raw=False))
        self.bad = itertools.cycle(_bodies("SERVEGATE_BAD_SAMPLES", raw=True))
        self.every = int(os.environ.get("SERVEGATE_BAD_EVERY", "8"))
        self.sent = 0

    @task
    def predict(self) -> None:
        self.sent += 1
        if self.sent % self.every:
            self.client.post(self.path, data=next(self.good), headers=self.headers, name="good")
            return
        with self.client.post(self.path, data=next(self.bad), headers=self.headers, name="bad",
                              catch_response=True) as response:
            if 400 <= response.status_code < 500:
                response.success()
            else:
                response.failure(f"a bad body got {response.status_code}, not its own 4xx")
