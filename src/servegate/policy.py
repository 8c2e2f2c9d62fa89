"""The gate policy: the loosest gates any run may ask for, kept in the repository.

A run's gate parameters (workflow inputs, MLproject ``-P`` parameters, CLI options, the library's
``PipelineConfig``) may TIGHTEN the policy's limits, never loosen them: a payload cannot switch a
gate off with ``p95_ms=999999999`` or hold the production server under load for an hour. Every
``PipelineConfig`` is checked when it is built; the workflow's validator checks the same file
before anything is installed.

The file is TOML (``tomllib``: the validator runs on a bare Python), one table per parameter,
named as the CLI and MLproject name it, with ``min`` and/or ``max``::

    [limits]
    p95_ms = { max = 250 }          # a run may ask for 100, not for 300
    load_seconds = { min = 4, max = 60 }

Each parameter must be bounded on the side that loosens its gate (``PARAMETERS``); an unknown
name, a missing parameter or a bound that is not a finite number is an error, so a typo never
leaves a gate unbounded. The file is ``serving_configs/gate-policy.toml`` of the checkout (or of
the installed package); an operator points to another with ``SERVEGATE_GATE_POLICY`` (an
absolute path), which no run parameter can set.

Standard library only.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from servegate.errors import ConfigError

#: The environment variable naming an operator's policy file.
POLICY_ENV = "SERVEGATE_GATE_POLICY"
POLICY_FILE = "gate-policy.toml"

Side = Literal["min", "max"]


@dataclass(frozen=True)
class Parameter:
    """A gate parameter: where ``PipelineConfig`` keeps it and which bounds loosen it."""

    section: str
    field: str
    #: The bounds the policy must set: ``max`` where a larger value loosens the gate, ``min``
    #: where a smaller one does; both for load, where too little is a weak gate and too much
    #: loads the production server.
    required: tuple[Side, ...]


#: Every gate parameter, by the name runs give it (CLI option, MLproject parameter, workflow input).
PARAMETERS: dict[str, Parameter] = {
    "p95_ms": Parameter("slos", "p95_ms", ("max",)),
    "p99_ms": Parameter("slos", "p99_ms", ("max",)),
    "min_rps": Parameter("slos", "min_rps", ("min",)),
    "max_error_rate": Parameter("slos", "max_error_rate", ("max",)),
    "max_regression_pct": Parameter("slos", "max_regression_pct", ("max",)),
    "regression_floor_ms": Parameter("slos", "regression_floor_ms", ("max",)),
    "parity_atol": Parameter("parity", "parity_atol", ("max",)),
    "parity_rtol": Parameter("parity", "parity_rtol", ("max",)),
    "min_top1_agreement": Parameter("parity", "min_top1_agreement", ("min",)),
    "max_accuracy_drop": Parameter("parity", "max_accuracy_drop", ("max",)),
    "max_metric_regression": Parameter("parity", "max_metric_regression", ("max",)),
    "min_champion_agreement": Parameter("parity", "min_champion_agreement", ("min",)),
    "load_users": Parameter("load", "users", ("min", "max")),
    "load_seconds": Parameter("load", "seconds", ("min", "max")),
    "load_rounds": Parameter("load", "rounds", ("min", "max")),
    "load_processes": Parameter("load", "processes", ("min", "max")),
}


@dataclass(frozen=True)
class Bounds:
    minimum: float | None = None
    maximum: float | None = None


@dataclass(frozen=True)
class GatePolicy:
    """The limits of one policy file, by parameter name."""

    path: Path
    limits: Mapping[str, Bounds]

    def problem(self, parameter: str, value: float) -> str | None:
        """Why ``value`` of ``parameter`` is refused (None: within the policy)."""
        bounds = self.limits[parameter]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return f"{parameter}={value!r} is not a finite number (gate policy {self.path})"
        if bounds.maximum is not None and value > bounds.maximum:
            limit = f"at most {bounds.maximum:.12g}"
        elif bounds.minimum is not None and value < bounds.minimum:
            limit = f"at least {bounds.minimum:.12g}"
        else:
            return None
        return (f"{parameter}={value:.12g} is outside the gate policy ({limit}, {self.path}): "
                "a run may tighten the policy's limits, never loosen them")

    def check(self, values: Mapping[str, float]) -> None:
        """Raise ``ConfigError`` naming every value of ``values`` outside the policy."""
        problems = [p for name, value in values.items() if (p := self.problem(name, value))]
        if problems:
            raise ConfigError("; ".join(problems))

    def enforce(self, config: Any) -> None:
        """Check every gate parameter of a ``PipelineConfig``."""
        self.check({name: getattr(getattr(config, p.section), p.field)
                    for name, p in PARAMETERS.items()})


def policy_max_rounds(asked: int, path: Path) -> int:
    """How many load rounds a gate may run while its comparison with the champion is
    inconclusive: the ``load_rounds`` maximum of the policy in ``path`` (never fewer than
    ``asked``)."""
    policy = load_policy(path)
    maximum = policy.limits["load_rounds"].maximum
    return max(asked, int(maximum)) if maximum is not None else asked


def default_policy_path() -> Path:
    """The repository's policy file (``serving_configs/gate-policy.toml``)."""
    from servegate._resources import serving_configs_dir

    try:
        return serving_configs_dir() / POLICY_FILE
    except FileNotFoundError as exc:
        raise ConfigError(f"no gate policy: the serving_configs directory is missing ({exc}); "
                          f"set {POLICY_ENV} to a policy file") from exc


def policy_path(env: Mapping[str, str]) -> Path:
    """``$SERVEGATE_GATE_POLICY`` of ``env`` (an absolute path), else ``default_policy_path()``."""
    value = env.get(POLICY_ENV, "")
    if not value:
        return default_policy_path()
    path = Path(value)
    if not path.is_absolute():
        raise ConfigError(f"{POLICY_ENV} must be an absolute path (runs change directory), got {value!r}")
    return path


def load_policy(path: Path) -> GatePolicy:
    """The policy in ``path``; a missing or malformed file is a ``ConfigError`` (no policy, no run)."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise ConfigError(f"gate policy {path} cannot be read: {exc.strerror or exc}") from exc
    return _load(path, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _load(path: Path, mtime_ns: int, size: int) -> GatePolicy:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"gate policy {path} is not a readable TOML file: {exc}") from exc
    table = document.get("limits")
    if not isinstance(table, dict) or set(document) != {"limits"}:
        raise ConfigError(f"gate policy {path} must hold one [limits] table and nothing else")
    unknown = sorted(set(table) - set(PARAMETERS))
    missing = sorted(set(PARAMETERS) - set(table))
    if unknown or missing:
        raise ConfigError(f"gate policy {path}: " + "; ".join(
            part for part in (f"unknown parameters {', '.join(unknown)}" if unknown else "",
                              f"parameters without limits {', '.join(missing)}" if missing else "")
            if part))
    return GatePolicy(path, {name: _bounds(path, name, spec) for name, spec in table.items()})


def _bounds(path: Path, name: str, spec: Any) -> Bounds:
    if not isinstance(spec, dict) or not spec or set(spec) - {"min", "max"}:
        raise ConfigError(f"gate policy {path}: {name} must be a table of min and/or max")
    for side, value in spec.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"gate policy {path}: {name}.{side} must be a finite number, got {value!r}")
    for side in PARAMETERS[name].required:
        if side not in spec:
            raise ConfigError(f"gate policy {path}: {name} needs a {side} (the side that loosens it)")
    bounds = Bounds(spec.get("min"), spec.get("max"))
    if bounds.minimum is not None and bounds.maximum is not None and bounds.minimum > bounds.maximum:
        raise ConfigError(f"gate policy {path}: {name} has min {bounds.minimum:g} > max {bounds.maximum:g}")
    return bounds
