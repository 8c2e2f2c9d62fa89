"""The gate policy (issue 19): a run's parameters may tighten the repository's limits, never loosen
them, whichever way they arrive (library, CLI, MLproject, workflow validator)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from servegate.config import PipelineConfig, gate_policy_path
from servegate.errors import ConfigError
from servegate.policy import PARAMETERS, POLICY_ENV, default_policy_path, load_policy

ROOT = Path(__file__).resolve().parents[2]
REPO_POLICY = ROOT / "serving_configs" / "gate-policy.toml"

#: A policy of this test's own, each limit away from the defaults so that a bound that is not
#: enforced shows: (bounds, a value at the limit, values beyond it).
LIMITS: dict[str, tuple[dict[str, float], float, list[float]]] = {
    "p95_ms": ({"max": 100}, 100, [100.5, 999999999]),
    "p99_ms": ({"max": 200}, 200, [201]),
    "min_rps": ({"min": 30}, 30, [29.9, 0]),
    "max_error_rate": ({"max": 0.02}, 0.02, [0.021, 1]),
    "max_regression_pct": ({"max": 20}, 20, [21, 1e9]),
    "regression_floor_ms": ({"max": 5}, 5, [6]),
    "parity_atol": ({"max": 1e-3}, 1e-3, [2e-3]),
    "parity_rtol": ({"max": 1e-3}, 1e-3, [2e-3]),
    "min_top1_agreement": ({"min": 0.99}, 0.99, [0.98, 0]),
    "max_accuracy_drop": ({"max": 0.005}, 0.005, [0.006, 1]),
    "max_metric_regression": ({"max": 0.02}, 0.02, [0.03]),
    "min_champion_agreement": ({"min": 0.9}, 0.9, [0.89]),
    "load_users": ({"min": 2, "max": 6}, 6, [1, 7, 100]),
    "load_seconds": ({"min": 2, "max": 20}, 20, [1, 21, 3600]),
    "load_rounds": ({"min": 1, "max": 4}, 4, [5]),
    "load_processes": ({"min": 1, "max": 2}, 2, [3]),
}


def _toml(limits: dict[str, dict[str, float]]) -> str:
    rows = [f"{name} = {{ {', '.join(f'{k} = {v!r}' for k, v in bounds.items())} }}"
            for name, bounds in limits.items()]
    return "[limits]\n" + "\n".join(rows) + "\n"


@pytest.fixture
def policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's policy, set as an operator sets one (``SERVEGATE_GATE_POLICY``)."""
    path = tmp_path / "policy.toml"
    path.write_text(_toml({name: bounds for name, (bounds, _, _) in LIMITS.items()}))
    monkeypatch.setenv(POLICY_ENV, str(path))
    return path


def _config(parameter: str, value: float) -> PipelineConfig:
    """A config with only ``parameter`` changed, and the rest tight enough for ``LIMITS``."""
    tight = {"slos": {"p95_ms": 100, "p99_ms": 200, "min_rps": 30, "regression_floor_ms": 5,
                      "max_regression_pct": 20},
             "parity": {"max_accuracy_drop": 0.005, "max_metric_regression": 0.02},
             "load": {"users": 6, "seconds": 20, "rounds": 2}}
    target = PARAMETERS[parameter]
    tight.setdefault(target.section, {})[target.field] = value
    return PipelineConfig(**tight)


def test_the_test_covers_every_parameter_the_policy_bounds() -> None:
    assert set(LIMITS) == set(PARAMETERS)


@pytest.mark.parametrize("parameter", sorted(LIMITS))
def test_each_bound_refuses_a_looser_value_and_accepts_the_limit(policy: Path, parameter: str) -> None:
    bounds, at_limit, beyond = LIMITS[parameter]
    assert getattr(getattr(_config(parameter, at_limit), PARAMETERS[parameter].section),
                   PARAMETERS[parameter].field) == at_limit
    for value in beyond:
        with pytest.raises(ConfigError) as refused:
            _config(parameter, value)
        message = str(refused.value)
        limit = (f"at most {bounds['max']:.12g}" if "max" in bounds and value > bounds["max"]
                 else f"at least {bounds['min']:.12g}")
        assert f"{parameter}={value:.12g}" in message and limit in message and str(policy) in message


def test_a_run_may_tighten_every_limit(policy: Path) -> None:
    config = PipelineConfig(slos={"p95_ms": 50, "p99_ms": 80, "min_rps": 500, "max_error_rate": 0,
                                  "max_regression_pct": 5, "regression_floor_ms": 1},
                            parity={"parity_atol": 1e-6, "parity_rtol": 1e-6, "min_top1_agreement": 1,
                                    "max_accuracy_drop": 0, "max_metric_regression": 0,
                                    "min_champion_agreement": 1},
                            load={"users": 3, "seconds": 10, "rounds": 3})
    assert config.slos.p95_ms == 50 and config.load.users == 3


def test_not_a_number_is_refused_not_passed(policy: Path) -> None:
    """NaN compares false with every limit: it must be refused, not slip through."""
    with pytest.raises((ConfigError, ValueError)):
        _config("max_regression_pct", math.nan)
    assert load_policy(policy).problem("p95_ms", math.nan) is not None
    assert load_policy(policy).problem("p95_ms", math.inf) is not None


def test_the_repository_policy_bounds_every_parameter_and_the_defaults_satisfy_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(POLICY_ENV, raising=False)
    assert gate_policy_path() == default_policy_path() == REPO_POLICY
    policy = load_policy(REPO_POLICY)
    assert set(policy.limits) == set(PARAMETERS)
    PipelineConfig()  # the library's defaults
    # and it is not a policy that lets the payload through
    for parameter, value in (("p95_ms", 999999999), ("max_regression_pct", 1e6),
                             ("max_accuracy_drop", 1), ("load_seconds", 3600), ("load_users", 1000)):
        assert policy.problem(parameter, value), parameter


def test_the_cli_mlproject_and_workflow_defaults_satisfy_the_repository_policy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import inspect

    from servegate.cli import run
    from servegate.dispatch import NUMBERS

    monkeypatch.delenv(POLICY_ENV, raising=False)
    policy = load_policy(REPO_POLICY)
    cli = {name: p.default for name, p in inspect.signature(run).parameters.items()}
    mlproject = yaml.safe_load((ROOT / "pipelines" / "deploy" / "MLproject").read_text())
    declared = mlproject["entry_points"]["main"]["parameters"]
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "promote.yml").read_text())
    inputs = (workflow.get("on") or workflow[True])["workflow_dispatch"]["inputs"]
    for parameter in PARAMETERS:
        if parameter in cli:
            assert policy.problem(parameter, float(cli[parameter])) is None, ("cli", parameter)
        if parameter in declared:
            assert policy.problem(parameter, float(declared[parameter]["default"])) is None, parameter
    for variable, parameter in NUMBERS.items():
        assert policy.problem(parameter, float(inputs[parameter]["default"])) is None, parameter
        fallback = workflow["jobs"]["gate-and-promote"]["env"][variable]  # repository_dispatch
        assert policy.problem(parameter, float(fallback.split("'")[-2])) is None, variable


@pytest.mark.parametrize(("text", "problem"), [
    ("[limits]\np95_ms = { max = 250 }\n", "parameters without limits"),
    (_toml({name: b for name, (b, _, _) in LIMITS.items()} | {"p95ms": {"max": 1}}),
     "unknown parameters p95ms"),
    (_toml({name: b for name, (b, _, _) in LIMITS.items()} | {"p95_ms": {"min": 1}}), "p95_ms needs a max"),
    (_toml({name: b for name, (b, _, _) in LIMITS.items()} | {"load_seconds": {"max": 9}}),
     "load_seconds needs a min"),
    (_toml({name: b for name, (b, _, _) in LIMITS.items()} | {"load_seconds": {"min": 2}}),
     "load_seconds needs a max"),
    (_toml({name: b for name, (b, _, _) in LIMITS.items()} | {"load_users": {"min": 2}}),
     "load_users needs a max"),
    (_toml({name: b for name, (b, _, _) in LIMITS.items()} | {"min_rps": {"max": 1000}}),
     "min_rps needs a min"),
    (_toml({name: b for name, (b, _, _) in LIMITS.items()} | {"load_users": {"min": 9, "max": 2}}),
     "min 9 > max 2"),
    (_toml({name: b for name, (b, _, _) in LIMITS.items()}).replace("max = 100", 'max = "100"'),
     "finite number"),
    (_toml({name: b for name, (b, _, _) in LIMITS.items()}).replace("max = 100", "max = inf"),
     "finite number"),
    ("p95_ms = 1\n", "one [limits] table"),
    ("[limits\n", "not a readable TOML file"),
])
def test_a_policy_file_that_would_leave_a_gate_unbounded_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, problem: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    monkeypatch.setenv(POLICY_ENV, str(path))
    with pytest.raises(ConfigError, match=problem.replace("[", r"\[")):
        PipelineConfig()


def test_no_policy_no_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(POLICY_ENV, str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="missing.toml cannot be read"):
        PipelineConfig()
    monkeypatch.setenv(POLICY_ENV, "relative/policy.toml")
    with pytest.raises(ConfigError, match="absolute path"):
        PipelineConfig()


def test_a_changed_policy_file_is_read_again(policy: Path) -> None:
    PipelineConfig(slos={"p95_ms": 100, "p99_ms": 200, "min_rps": 30, "regression_floor_ms": 5,
                         "max_regression_pct": 20},
                   parity={"max_accuracy_drop": 0.005, "max_metric_regression": 0.02},
                   load={"users": 6, "seconds": 20, "rounds": 2})
    policy.write_text(policy.read_text().replace("p95_ms = { max = 100 }", "p95_ms = { max = 90 }"))
    os.utime(policy, ns=(1, 1))  # a new mtime whatever the clock's resolution
    with pytest.raises(ConfigError, match="at most 90"):
        _config("p95_ms", 100)


def test_servegate_run_refuses_a_loosening_option(monkeypatch: pytest.MonkeyPatch) -> None:
    from servegate.cli import app

    monkeypatch.delenv(POLICY_ENV, raising=False)
    result = CliRunner().invoke(app, ["run", "--model", "builtin:digits", "--p95-ms", "999999999"])
    assert result.exit_code == 5, result.output
    assert "p95_ms=999999999" in result.output and "gate-policy.toml" in result.output


def test_the_mlproject_entry_refuses_a_loosening_parameter(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command MLflow builds from MLproject (its own templating), run as ``mlflow run`` runs
    it: refused before anything starts, naming the parameter and the policy file."""
    from mlflow.projects import _project_spec

    monkeypatch.delenv(POLICY_ENV, raising=False)
    project = _project_spec.load_project(str(ROOT / "pipelines" / "deploy"))
    command = project.get_entry_point("main").compute_command(
        {"model": "builtin:digits", "load_seconds": "3600.0", "max_accuracy_drop": "1"}, "/nonexistent")
    assert command.startswith("python deploy.py ")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVEGATE_")}
    done = subprocess.run(["bash", "-c", sys.executable + command.removeprefix("python")],
                          cwd=ROOT / "pipelines" / "deploy", capture_output=True, text=True, timeout=300,
                          env=env | {"PYTHONPATH": str(ROOT / "src"), "COLUMNS": "400"})
    output = done.stdout + done.stderr
    assert done.returncode == 5, output
    assert "load_seconds=3600" in output and "max_accuracy_drop=1" in output
    assert "gate-policy.toml" in output


def test_servegate_policy_shows_the_limits_runs_are_held_to(policy: Path) -> None:
    from servegate.cli import app

    result = CliRunner().invoke(app, ["policy"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "load_seconds" in line)
    assert [cell.strip() for cell in row.strip("│ ").split("│")] == ["load_seconds", "2", "20"]
    assert "policy.toml" in "".join(result.output.split())  # rich folds a long path anywhere
