"""MLflow's deployments API for servegate's servers: ``mlflow deployments -t torchserve``
(and ``-t tfserving``), the gated successor of the stale ``mlflow-torchserve`` plugin.

A deployment is a served model name. ``create_deployment`` and ``update_deployment`` run
servegate's whole gated pipeline (source, compile, package, deploy beside the champion, parity and
load gates, promote or reject) and return once the new version serves by default, with the gate's
figures in the returned dict; a rejected challenger is an ``MlflowException`` naming the failed
checks (the champion keeps serving). ``-C name=value`` takes the run parameters of
``servegate run`` / the MLproject (``servegate.config.RUN_PARAMETERS``); the gate policy bounds
them as it bounds any run. The server is the attached one (``SERVEGATE_TORCHSERVE_*``) or the local
one in ``$SERVEGATE_HOME``. Endpoints (a provider's gateway) do not exist here: those calls say so.
"""

from __future__ import annotations

from typing import Any

from mlflow.deployments import BaseDeploymentClient, PredictionsResponse
from mlflow.exceptions import MlflowException

from servegate.errors import GateFailed, ServegateError

TARGETS = ("torchserve", "tfserving")
NO_ENDPOINTS = ("servegate's {target} target has no endpoints: a deployment is a served model "
                "name (mlflow deployments create -t {target} --name NAME -m MODEL_URI)")


def _target_of(target_uri: str) -> str:
    target = target_uri.split(":", 1)[0]
    if target not in TARGETS:
        raise MlflowException(f"unknown servegate target {target_uri!r}; known: {', '.join(TARGETS)}")
    return target


def _error(exc: ServegateError) -> MlflowException:
    """A servegate error as MLflow's, its message and cause kept."""
    error = MlflowException(str(exc))
    error.__cause__ = exc
    return error


class ServegateDeploymentClient(BaseDeploymentClient):
    """``create``/``update`` run the gated pipeline; ``get``/``list``/``predict``/``delete`` use
    the server (see the module docstring)."""

    def __init__(self, target_uri: str) -> None:
        super().__init__(target_uri)
        self.target = _target_of(target_uri)

    # ---- the gated pipeline -------------------------------------------------------------------
    def _run(self, name: str, model_uri: str, config: dict[str, Any] | None,
             *, server: str | None = None) -> dict[str, Any]:
        from rich.console import Console

        from servegate import api
        from servegate.config import config_from_parameters

        parameters = {**(config or {}), "model": model_uri, "name": name, "target": self.target}
        if server is not None:
            parameters["server"] = server
        try:
            result = api.deploy(config_from_parameters(parameters), Console(stderr=True))
        except GateFailed as exc:
            raise _error(exc) from exc
        except ServegateError as exc:
            raise _error(exc) from exc
        return {"name": result.name, "version": result.version, "decision": result.decision,
                "champion_before": result.champion_before, "endpoint": result.endpoint,
                "flavor": self.target, "run_id": result.run_id,
                "checks": [c.as_dict() for c in result.checks]}

    def create_deployment(self, name: str, model_uri: str, flavor: str | None = None,
                          config: dict[str, Any] | None = None,
                          endpoint: str | None = None) -> dict[str, Any]:
        """Gate ``model_uri`` and serve it as ``name``; refused when ``name`` is served already
        (``update_deployment`` gates a new version against its champion)."""
        self._no_endpoint(endpoint)
        if self._served(name):
            raise MlflowException(f"{name} is deployed already: update it "
                                  f"(mlflow deployments update -t {self.target} --name {name} -m ...)")
        return self._run(name, model_uri, config)

    def update_deployment(self, name: str, model_uri: str | None = None, flavor: str | None = None,
                          config: dict[str, Any] | None = None,
                          endpoint: str | None = None) -> dict[str, Any]:
        """Gate ``model_uri`` against the champion of ``name``; promoted only if it passes."""
        self._no_endpoint(endpoint)
        if not model_uri:
            raise MlflowException("update_deployment needs the model to gate (-m MODEL_URI)")
        if not self._served(name):
            raise MlflowException(f"{name} is not deployed: create it first")
        return self._run(name, model_uri, config)

    # ---- the server -----------------------------------------------------------------------------
    def _backend(self) -> Any:
        """The target's server that runs now (attached, else local); never started here."""
        from servegate.config import PipelineConfig
        from servegate.targets import get_target

        try:
            return get_target(self.target).running_backend(PipelineConfig(target=self.target))
        except ServegateError as exc:
            raise _error(exc) from exc

    def _served(self, name: str) -> bool:
        from servegate.errors import ServerNotRunning

        try:
            backend = self._backend()
        except MlflowException as exc:
            if isinstance(exc.__cause__, ServerNotRunning):
                return False
            raise
        with backend:
            return bool(backend.versions(name))

    def delete_deployment(self, name: str, config: dict[str, Any] | None = None,
                          endpoint: str | None = None) -> None:
        """Stop serving every version of ``name`` (the default last); the registry keeps them."""
        self._no_endpoint(endpoint)
        with self._backend() as backend:
            served = backend.versions(name)
            if not served:
                raise MlflowException(f"{name} is not deployed")
            for info in sorted(served, key=lambda v: v.is_default):
                backend.undeploy(name, info.version)

    def list_deployments(self, endpoint: str | None = None) -> list[dict[str, Any]]:
        self._no_endpoint(endpoint)
        with self._backend() as backend:
            return [self._describe(backend, name) for name in backend.names()]

    def get_deployment(self, name: str, endpoint: str | None = None) -> dict[str, Any]:
        self._no_endpoint(endpoint)
        with self._backend() as backend:
            if not backend.versions(name):
                raise MlflowException(f"{name} is not deployed")
            return self._describe(backend, name)

    def _describe(self, backend: Any, name: str) -> dict[str, Any]:
        versions = backend.versions(name)
        return {"name": name, "flavor": self.target, "default_version": backend.default_version(name),
                "versions": [{"version": v.version, "default": v.is_default,
                              "ready_workers": v.ready_workers} for v in versions],
                "endpoint": backend.endpoint(name)}

    def predict(self, deployment_name: str | None = None, inputs: Any = None,
                endpoint: str | None = None) -> PredictionsResponse:
        """``inputs`` (a DataFrame, an array, a list of instances, or a request body as a dict)
        through the default endpoint of ``deployment_name``."""
        self._no_endpoint(endpoint)
        if not deployment_name:
            raise MlflowException("predict needs a deployment name")
        with self._backend() as backend:
            try:
                answer = backend.predict(deployment_name, request_body(inputs))
            except ServegateError as exc:
                raise _error(exc) from exc
        predictions = answer.get("predictions", answer) if isinstance(answer, dict) else answer
        return PredictionsResponse({"predictions": predictions})

    def explain(self, deployment_name: str | None = None, df: Any = None,
                endpoint: str | None = None) -> Any:
        raise MlflowException(f"servegate's {self.target} target does not explain predictions: "
                              "its handlers answer probabilities, labels and values")

    # ---- endpoints: not a servegate concept -----------------------------------------------------
    def _no_endpoint(self, endpoint: str | None) -> None:
        if endpoint:
            raise MlflowException(NO_ENDPOINTS.format(target=self.target))

    def create_endpoint(self, name: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
        raise MlflowException(NO_ENDPOINTS.format(target=self.target))

    def update_endpoint(self, endpoint: str, config: dict[str, Any] | None = None) -> None:
        raise MlflowException(NO_ENDPOINTS.format(target=self.target))

    def delete_endpoint(self, endpoint: str) -> None:
        raise MlflowException(NO_ENDPOINTS.format(target=self.target))

    def list_endpoints(self) -> list[dict[str, Any]]:
        raise MlflowException(NO_ENDPOINTS.format(target=self.target))

    def get_endpoint(self, endpoint: str) -> dict[str, Any]:
        raise MlflowException(NO_ENDPOINTS.format(target=self.target))


def request_body(inputs: Any) -> dict[str, Any]:
    """What the handlers read: a dict is a request body already; a DataFrame's rows, an array's
    rows or a list are ``instances``."""
    if isinstance(inputs, dict):
        return inputs
    if hasattr(inputs, "to_numpy"):  # a pandas DataFrame (its columns in order) or Series
        return {"instances": inputs.to_numpy().tolist()}
    if hasattr(inputs, "tolist"):
        return {"instances": inputs.tolist()}
    if isinstance(inputs, (list, tuple)):
        return {"instances": list(inputs)}
    raise MlflowException(f"predict takes a DataFrame, an array, a list or a dict, got "
                          f"{type(inputs).__name__}")


def run_local(target: str, name: str, model_uri: str, flavor: str | None = None,
              config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The gated pipeline onto the local server of ``$SERVEGATE_HOME`` (started if need be)."""
    return ServegateDeploymentClient(target)._run(name, model_uri, config, server="local")


def target_help() -> str:
    from servegate.config import RUN_PARAMETERS

    return (
        "servegate targets: torchserve, tfserving.\n\n"
        "A deployment is a served model name. create/update run servegate's gated pipeline\n"
        "(compile, package, deploy beside the champion, parity and load gates, promote or reject)\n"
        "and return once the version serves, with the gate's figures; a rejected challenger is an\n"
        "error naming the failed checks, and the champion keeps serving. The server is the one\n"
        "SERVEGATE_TORCHSERVE_MANAGEMENT_URL / _INFERENCE_URL / _KEYS (or SERVEGATE_TFSERVING_*)\n"
        "name, else the local one in $SERVEGATE_HOME (run_local starts it).\n\n"
        "Config (-C name=value), the run parameters of `servegate run`:\n  "
        + ", ".join(RUN_PARAMETERS) + "\n"
        "They may tighten the gate policy (servegate policy), never loosen it.\n\n"
        "  mlflow deployments create -t torchserve --name fraud -m models:/fraud/7 -C p95_ms=100\n"
        "  mlflow deployments predict -t torchserve --name fraud --input-path rows.json\n")
