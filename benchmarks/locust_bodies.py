"""Locust user for bodies that are not all JSON: each sample is posted with its own Content-Type
(the image rows: raw PNG bytes as ``image/png`` and ``{"instances": [{"b64": ...}]}`` JSON).

Environment: as ``loadtests/torchserve.py`` (``SERVEGATE_MODEL``, ``SERVEGATE_KEY_FILE``,
``SERVEGATE_USER_RPS``), with ``SERVEGATE_SAMPLES`` a JSON list of ``[content_type, base64 body]``
pairs, posted round-robin.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
from pathlib import Path

from locust import FastHttpUser, constant, constant_throughput, task


def _wait_time():  # -> a Locust wait_time function
    rate = float(os.environ.get("SERVEGATE_USER_RPS") or 0)
    return constant_throughput(rate) if rate > 0 else constant(0)


class RawBodiesUser(FastHttpUser):
    """Posts each sample with its Content-Type to /predictions/{name}, as fast as it can or at a set
    rate."""

    wait_time = _wait_time()

    def on_start(self) -> None:
        self.path = f"/predictions/{os.environ['SERVEGATE_MODEL']}"
        headers = {}
        key_file = os.environ.get("SERVEGATE_KEY_FILE")
        if key_file:
            key = json.loads(Path(key_file).read_text(encoding="utf-8"))["inference"]["key"]
            headers["Authorization"] = f"Bearer {key}"
        pairs = json.loads(Path(os.environ["SERVEGATE_SAMPLES"]).read_text(encoding="utf-8"))
        self.samples = itertools.cycle(
            [(headers | {"Content-Type": kind}, base64.b64decode(body)) for kind, body in pairs])

    @task
    def predict(self) -> None:
        headers, body = next(self.samples)
        self.client.post(self.path, data=body, headers=headers, name=self.path)
