"""servegate's one exception tree.

Every error servegate raises on purpose is a ``ServegateError``; errors from libraries and servers
are translated at the boundary with ``raise ... from exc`` so that the cause is never lost::

    ServegateError
    ├── ConfigError                 invalid settings, parameters or inputs given to servegate
    ├── SourceError                 a model could not be trained, found or imported
    ├── CompileError                a compiler backend failed
    │   └── BackendUnavailable      the backend cannot run on this machine (no CUDA, no TensorRT)
    ├── PackagingError              an archive or SavedModel could not be built or validated
    ├── ServerError                 a model server could not be started, reached or driven
    │   ├── ServerStartError        a local server did not start or never became ready
    │   ├── ServerNotRunning        no server at the address, or its state file is missing
    │   └── ServerRequestError      the server answered with an error (status + its message)
    │       ├── AuthError           rejected credentials (missing/expired token)
    │       └── ModelNotFound       no such model or version
    ├── GateFailed                  a gate ran and the challenger failed it (carries the checks)
    └── PipelineError               a pipeline step failed for another reason
"""

from __future__ import annotations

from typing import Any


class ServegateError(Exception):
    """Base of every error servegate raises on purpose."""


class ConfigError(ServegateError):
    """Invalid settings, parameters or inputs."""


class SourceError(ServegateError):
    """A model could not be trained, found or imported."""


class CompileError(ServegateError):
    """A compiler backend failed."""


class BackendUnavailable(CompileError):
    """The backend cannot run on this machine; the message says why and where it can."""


class PackagingError(ServegateError):
    """An archive or SavedModel could not be built or validated."""


class ServerError(ServegateError):
    """A model server could not be started, reached or driven."""


class ServerStartError(ServerError):
    """A local server did not start or never became ready."""


class ServerNotRunning(ServerError):
    """No server answers at the address, or its state file is missing."""


class ServerRequestError(ServerError):
    """The server answered a request with an error status.

    ``status`` is the HTTP status and ``server_message`` the server's own explanation.
    """

    def __init__(self, message: str, *, status: int, server_message: str = "") -> None:
        super().__init__(f"{message}: HTTP {status}: {server_message}" if server_message else
                         f"{message}: HTTP {status}")
        self.status = status
        self.server_message = server_message


class AuthError(ServerRequestError):
    """The server rejected our credentials."""


class ModelNotFound(ServerRequestError):
    """The server has no such model or version."""


class GateFailed(ServegateError):
    """The challenger failed one or more gate checks; ``checks`` holds them all."""

    def __init__(self, message: str, checks: list[Any] | None = None) -> None:
        super().__init__(message)
        self.checks = checks or []


class PipelineError(ServegateError):
    """A pipeline step failed for a reason other than a gate."""
