"""TF Serving backend: its configuration files, error mapping, REST + gRPC client, the deployer
(version labels route the default) and a local server (binary or Docker).

``open_tfserving`` (``backends/factory.py``) attaches to ``SERVEGATE_TFSERVING_*`` or starts a
local server. grpc, TensorFlow and tensorflow-serving-api are imported lazily.
"""

from servegate.backends.factory import open_tfserving
from servegate.backends.tfserving.client import TFServingClient, build_reload_request
from servegate.backends.tfserving.config import CANARY, STABLE, ModelEntry
from servegate.backends.tfserving.deployer import TFServingBackend
from servegate.backends.tfserving.errors import translate_rpc_error
from servegate.backends.tfserving.local import (
    ENV_GRPC,
    ENV_MODEL_ROOT,
    ENV_SERVER_ROOT,
    ENV_URL,
    HOW_TO_PROVIDE,
    LocalTFServing,
    TFServingSettings,
    TFServingState,
)

__all__ = [
    "CANARY", "ENV_GRPC", "ENV_MODEL_ROOT", "ENV_SERVER_ROOT", "ENV_URL", "HOW_TO_PROVIDE",
    "STABLE", "LocalTFServing", "ModelEntry", "TFServingBackend", "TFServingClient",
    "TFServingSettings", "TFServingState", "build_reload_request", "open_tfserving",
    "translate_rpc_error",
]
