"""Open the serving backend a pipeline run targets: attach to a given server, or start a local one."""

from __future__ import annotations

import os
from pathlib import Path

from servegate.backends.torchserve import LocalTorchServe, TorchServeBackend
from servegate.config import TorchServeSettings
from servegate.errors import ConfigError


def open_torchserve(settings: TorchServeSettings) -> TorchServeBackend:
    """Attach when ``SERVEGATE_TORCHSERVE_MANAGEMENT_URL`` is set (with ``..._INFERENCE_URL``,
    ``..._KEY_FILE`` and ``..._MODEL_STORE``); otherwise start (or reuse) the local server."""
    management = os.environ.get("SERVEGATE_TORCHSERVE_MANAGEMENT_URL")
    if management:
        try:
            inference = os.environ["SERVEGATE_TORCHSERVE_INFERENCE_URL"]
            store = Path(os.environ["SERVEGATE_TORCHSERVE_MODEL_STORE"])
        except KeyError as exc:
            raise ConfigError(f"attaching to TorchServe needs {exc.args[0]}") from exc
        key_file = os.environ.get("SERVEGATE_TORCHSERVE_KEY_FILE")
        return TorchServeBackend.attach(inference, management, key_file=Path(key_file) if key_file else None,
                                        model_store=store)
    state = LocalTorchServe(settings).start()
    return TorchServeBackend.from_state(state)
