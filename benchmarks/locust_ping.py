"""Locust user hitting TorchServe's ``/ping``: the load generator's own ceiling on this machine.

``SERVEGATE_KEY_FILE``: TorchServe's key_file.json (token auth covers /ping too).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from locust import FastHttpUser, task


class PingUser(FastHttpUser):
    """GETs /ping as fast as it can (no model work behind it)."""

    def on_start(self) -> None:
        self.headers: dict[str, str] = {}
        key_file = os.environ.get("SERVEGATE_KEY_FILE")
        if key_file:
            key = json.loads(Path(key_file).read_text(encoding="utf-8"))["inference"]["key"]
            self.headers["Authorization"] = f"Bearer {key}"

    @task
    def ping(self) -> None:
        self.client.get("/ping", headers=self.headers)
