"""TorchServe backend: a local server's lifecycle, its REST client, and the deployer."""

from servegate.backends.torchserve.client import Endpoints, TorchServeClient
from servegate.backends.torchserve.deployer import TorchServeBackend
from servegate.backends.torchserve.local import LocalTorchServe, ServerState

__all__ = ["Endpoints", "LocalTorchServe", "ServerState", "TorchServeBackend", "TorchServeClient"]
