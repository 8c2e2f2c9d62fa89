"""Locust users for TorchServe's standard inference endpoint (no gate logic here).

Run by hand::

    SERVEGATE_MODEL=digits SERVEGATE_KEY_FILE=.servegate/torchserve/key_file.json \\
    SERVEGATE_SAMPLES=samples.json \\
    locust -f loadtests/torchserve.py --headless -u 8 -r 8 -t 20s --host http://127.0.0.1:8080

Environment:
  SERVEGATE_MODEL     model name (required)
  SERVEGATE_VERSION   a version, or empty for the default version
  SERVEGATE_KEY_FILE  TorchServe's key_file.json (the inference key is sent as a Bearer token)
  SERVEGATE_SAMPLES   a JSON file holding a list of request bodies, posted round-robin
                      (default: one digits-shaped instance)
  SERVEGATE_USER_RPS  requests per second per user (Locust's constant_throughput; the total
                      rate is this times the user count); unset: as fast as each user can
  SERVEGATE_CA_BUNDLE a PEM file an https:// host is verified against (else the system's CAs)
  SERVEGATE_REPLICAS_FILE  a fleet's replicas, a JSON list of {"url": inference URL, "key":
                      its inference key or null}: each user sends its requests round-robin
                      over them (one TorchServe's keys never open another's); unset: --host
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

from locust import FastHttpUser, constant, constant_throughput, task


def _inference_key() -> str | None:
    key_file = os.environ.get("SERVEGATE_KEY_FILE")
    if not key_file:
        return None
    return json.loads(Path(key_file).read_text(encoding="utf-8"))["inference"]["key"]


def _samples() -> list[bytes]:
    path = os.environ.get("SERVEGATE_SAMPLES")
    if not path:
        return [json.dumps({"inputs": [0.5] * 64}).encode()]
    bodies = json.loads(Path(path).read_text(encoding="utf-8"))
    return [json.dumps(b).encode() for b in bodies]


def _replicas(key: str | None) -> list[tuple[str, dict[str, str]]]:
    """(URL prefix, headers) per replica: the fleet's from SERVEGATE_REPLICAS_FILE, else the
    host's own ("" prefix: Locust's --host) with ``key``."""
    path = os.environ.get("SERVEGATE_REPLICAS_FILE")
    listed = json.loads(Path(path).read_text(encoding="utf-8")) if path else [{"url": "", "key": key}]
    return [(str(r["url"]).rstrip("/"), {"Content-Type": "application/json"}
             | ({"Authorization": f"Bearer {r['key']}"} if r.get("key") else {})) for r in listed]


def _wait_time():  # -> a Locust wait_time function
    rate = float(os.environ.get("SERVEGATE_USER_RPS") or 0)
    return constant_throughput(rate) if rate > 0 else constant(0)


def _ssl_context(cafile: str | None = None):  # -> gevent.ssl.SSLContext
    """Verify https servers (Locust's FastHttpUser verifies nothing by default): against
    SERVEGATE_CA_BUNDLE when set (its CAs, or the server's own certificate), else ``cafile``."""
    import gevent.ssl

    bundle = os.environ.get("SERVEGATE_CA_BUNDLE") or None
    context = gevent.ssl.create_default_context(cafile=bundle or cafile)
    if bundle:
        context.verify_flags |= gevent.ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


_USER_NUMBERS = itertools.count()


class TorchServePredictUser(FastHttpUser):
    """Posts samples to /predictions/{name}[/{version}], as fast as it can or at a set rate."""

    insecure = False
    ssl_context_factory = staticmethod(_ssl_context)

    wait_time = _wait_time()

    def on_start(self) -> None:
        name = os.environ["SERVEGATE_MODEL"]
        version = os.environ.get("SERVEGATE_VERSION", "")
        self.path = f"/predictions/{name}" + (f"/{version}" if version else "")
        replicas = _replicas(_inference_key())
        # each user starts at another replica, so that few users still spread over all of them
        start = next(_USER_NUMBERS) % len(replicas)
        self.targets = itertools.cycle(replicas[start:] + replicas[:start])
        self.bodies = itertools.cycle(_samples())

    @task
    def predict(self) -> None:
        prefix, headers = next(self.targets)
        self.client.post(prefix + self.path, data=next(self.bodies), headers=headers, name=self.path)
