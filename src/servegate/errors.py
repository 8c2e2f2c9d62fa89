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
    │   ├── ReplicaFailed           one replica of a fleet failed a step (names it; cause kept)
    │   └── ServerRequestError      the server answered with an error (status + its message)
    │       ├── AuthError           rejected credentials (missing/expired token)
    │       └── ModelNotFound       no such model or version
    ├── GateFailed                  a gate ran and the challenger failed it (carries the checks)
    ├── PipelineError               a pipeline step failed for another reason
    │   ├── RegistryError           the MLflow registry failed (outage, permission): not "absent"
    │   └── IntegrityError          an artifact does not match the hash recorded when it was built
    ├── Busy                        another process holds the lock (names the holder)
    └── Interrupted                 SIGTERM / SIGINT arrived; cleanup ran (exit 128 + signal)
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


class ReplicaFailed(ServerError):
    """One replica of a fleet failed a step; the others were put back as far as possible.

    ``replica`` names it (its management URL); the replica's own error is the ``__cause__``.
    """

    def __init__(self, message: str, *, replica: str) -> None:
        super().__init__(message)
        self.replica = replica


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


class RegistryError(PipelineError):
    """The MLflow registry answered with an error other than "not found" (its cause attached)."""


class IntegrityError(PipelineError):
    """An artifact's hash differs from the one recorded when it was built."""


class Busy(ServegateError):
    """Another process holds the lock of a model name or a server directory.

    ``holder`` is what that process recorded (pid, host, started, command) when it took the lock.
    """

    def __init__(self, message: str, holder: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.holder = holder or {}


class Interrupted(ServegateError):
    """A signal (SIGTERM from a cancelled CI job, SIGINT from Ctrl-C) stopped the work.

    ``exit_code`` follows the shell convention: 128 + the signal number (130, 143).
    """

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
