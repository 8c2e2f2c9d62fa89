"""Locust users for TF Serving's REST predict endpoint (no gate logic here).

Run by hand::

    SERVEGATE_MODEL=digits SERVEGATE_LABEL=canary SERVEGATE_SAMPLES=samples.json \\
    locust -f loadtests/tfserving.py --headless -u 8 -r 8 -t 20s --host http://127.0.0.1:8501

Environment:
  SERVEGATE_MODEL      model name (required)
  SERVEGATE_VERSION    a version number, or
  SERVEGATE_LABEL      a version label (stable, canary); neither: the unversioned route
  SERVEGATE_SAMPLES    a JSON file holding a list of rows (lists of 64 floats) or of request
                       bodies ({"instances": ...} / {"inputs": ...}); rows are posted in both forms
                       (default: one digits-shaped row)
  SERVEGATE_FORM       instances, inputs, or both (default: both, alternating)
  SERVEGATE_CA_BUNDLE  a PEM file an https:// host is verified against (else the system's CAs)
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

from locust import FastHttpUser, task


def _path() -> str:
    name = os.environ["SERVEGATE_MODEL"]
    version = os.environ.get("SERVEGATE_VERSION", "")
    label = os.environ.get("SERVEGATE_LABEL", "")
    suffix = f"/versions/{version}" if version else f"/labels/{label}" if label else ""
    return f"/v1/models/{name}{suffix}:predict"


def _bodies() -> list[bytes]:
    path = os.environ.get("SERVEGATE_SAMPLES")
    samples: list[Any] = (json.loads(Path(path).read_text(encoding="utf-8")) if path
                          else [[0.5] * 64])
    forms = os.environ.get("SERVEGATE_FORM", "both")
    keys = ["instances", "inputs"] if forms == "both" else [forms]
    bodies = []
    for sample in samples:
        if isinstance(sample, dict):
            bodies.append(sample)
        else:
            bodies += [{key: [sample]} for key in keys]
    return [json.dumps(b).encode() for b in bodies]


def _ssl_context(cafile: str | None = None):  # -> gevent.ssl.SSLContext
    """Verify https servers (Locust's FastHttpUser verifies nothing by default): against
    SERVEGATE_CA_BUNDLE when set (its CAs, or the server's own certificate), else ``cafile``."""
    import gevent.ssl

    bundle = os.environ.get("SERVEGATE_CA_BUNDLE") or None
    context = gevent.ssl.create_default_context(cafile=bundle or cafile)
    if bundle:
        context.verify_flags |= gevent.ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


class TFServingPredictUser(FastHttpUser):
    """Posts samples to /v1/models/{name}[/versions/{v}|/labels/{l}]:predict as fast as it can."""

    insecure = False
    ssl_context_factory = staticmethod(_ssl_context)

    def on_start(self) -> None:
        self.path = _path()
        self.headers = {"Content-Type": "application/json"}
        self.bodies = itertools.cycle(_bodies())

    @task
    def predict(self) -> None:
        self.client.post(self.path, data=next(self.bodies), headers=self.headers, name=self.path)
