"""One settings schema (issue 20): each run parameter is declared once (``RUN_PARAMETERS``),
its default written once (``PipelineConfig``); the CLI's ``run`` options take their defaults from
there, and the MLproject's literal defaults and types are checked against it both ways. The
source settings and the image preprocessing are declared by one class each."""

from __future__ import annotations

import ast
import inspect
import re
import typing
from pathlib import Path

import pytest
import yaml

from servegate import cli
from servegate.config import (
    RUN_PARAMETERS,
    BatchingConfig,
    ImagePreprocessing,
    PipelineConfig,
    SourceSettings,
    config_from_parameters,
    run_parameter_default,
)

ROOT = Path(__file__).resolve().parents[2]
#: ``servegate run`` options that are how a run prints or where its server lives, not settings.
NOT_PARAMETERS = {"report_dir", "verbose", "workdir"}
MLPROJECT_TYPES = {str: "string", int: "float", float: "float"}  # MLproject has no int type


@pytest.fixture
def no_environment_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SERVEGATE_SERVER", raising=False)
    monkeypatch.delenv("SERVEGATE_REPORT_DIR", raising=False)


def _mlproject_parameters() -> dict[str, dict[str, object]]:
    project = yaml.safe_load((ROOT / "pipelines" / "deploy" / "MLproject").read_text())
    return project["entry_points"]["main"]["parameters"]


@pytest.mark.parametrize("name", sorted(RUN_PARAMETERS))
def test_each_parameters_default_makes_the_config_models_default(name: str, no_environment_defaults) -> None:
    default = run_parameter_default(name)
    assert isinstance(default, RUN_PARAMETERS[name].kind), (name, default)
    assert config_from_parameters({name: default}) == PipelineConfig(), name


def test_a_changed_config_default_changes_the_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    """The defaults are read from the model, not kept beside it."""
    monkeypatch.setattr(BatchingConfig.model_fields["batch_size"], "default", 3)
    monkeypatch.setattr(ImagePreprocessing.model_fields["size"], "default", (5, 7))
    assert (run_parameter_default("batch_size"), run_parameter_default("image_size")) == (3, "5,7")


def _run_options() -> dict[str, inspect.Parameter]:
    return {n: p for n, p in inspect.signature(cli.run).parameters.items() if n not in NOT_PARAMETERS}


def test_the_cli_run_options_are_the_run_parameters_with_their_types_and_defaults() -> None:
    options = _run_options()
    assert set(options) == set(RUN_PARAMETERS)
    hints = typing.get_type_hints(cli.run, include_extras=True)
    for name, option in options.items():
        kind = RUN_PARAMETERS[name].kind
        assert typing.get_args(hints[name])[0] is kind, (name, hints[name])
        assert option.default == run_parameter_default(name), name
        assert type(option.default) is kind, (name, option.default)


def _literal_defaults(function_name: str) -> list[str]:
    tree = ast.parse((ROOT / "src" / "servegate" / "cli.py").read_text(encoding="utf-8"))
    function = next(node for node in ast.walk(tree)
                    if isinstance(node, ast.FunctionDef) and node.name == function_name)
    arguments = function.args.args[-len(function.args.defaults):]
    return [a.arg for a, d in zip(arguments, function.args.defaults, strict=True)
            if a.arg in RUN_PARAMETERS and not (isinstance(d, ast.Subscript)
                                                and ast.unparse(d.value) == "RUN_DEFAULTS")]


def test_cli_defaults_are_not_written_again() -> None:
    """``run`` and ``package`` take their settings' defaults from the config, never a literal
    (``package`` names the archive itself and compiles eagerly unless told: its own choices)."""
    assert _literal_defaults("run") == []
    assert set(_literal_defaults("package")) == {"name", "compiler"}
    package = inspect.signature(cli.package).parameters
    batching = BatchingConfig()
    assert (package["batch_size"].default, package["max_batch_delay_ms"].default,
            package["workers"].default) == (batching.batch_size, batching.max_batch_delay_ms,
                                            batching.min_workers)


def test_the_mlproject_parameters_are_the_run_parameters_with_their_types_and_defaults(
        no_environment_defaults) -> None:
    parameters = _mlproject_parameters()
    # verbose is how a run prints, not a setting of the run: the CLI's flag, off by default
    assert set(parameters) == set(RUN_PARAMETERS) | {"verbose"}
    assert parameters["verbose"] == {"type": "string", "default": "false"}
    assert inspect.signature(cli.run).parameters["verbose"].default is False
    for name, parameter in RUN_PARAMETERS.items():
        declared = parameters[name]
        assert declared["type"] == MLPROJECT_TYPES[parameter.kind], name
        written = parameter.kind(declared["default"])  # as MLflow hands it to the CLI
        assert written == run_parameter_default(name), (name, declared["default"])
        assert config_from_parameters({name: str(declared["default"])}) == PipelineConfig(), name


def test_the_mlproject_command_passes_each_parameter_to_its_option() -> None:
    project = yaml.safe_load((ROOT / "pipelines" / "deploy" / "MLproject").read_text())
    command = project["entry_points"]["main"]["command"]
    passed = dict(re.findall(r"--([a-z0-9-]+) \{(\w+)\}", command))
    assert passed == {n.replace("_", "-"): n for n in _mlproject_parameters()}


def _declared_fields() -> dict[str, set[str]]:
    """Every class in src/servegate, by ``module:Class``: the names it declares with annotations."""
    declared: dict[str, set[str]] = {}
    for path in (ROOT / "src" / "servegate").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                declared[f"{path.relative_to(ROOT)}:{node.name}"] = {
                    s.target.id for s in node.body
                    if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}
    return declared


@pytest.mark.parametrize("settings", [SourceSettings, ImagePreprocessing])
def test_one_class_declares_each_settings_fields(settings: type) -> None:
    """No copy of the source settings (``SourceOptions`` was one) or of the image preprocessing
    (``ImageSpec`` was one): a class declaring three quarters of their fields is a second
    definition. (``TorchModel`` shares six of the ten source names: what was resolved, e.g. the
    inferred task and the model's own class names, not settings.)"""
    own = set(settings.model_fields)
    copies = [name for name, fields in _declared_fields().items()
              if not name.endswith(f":{settings.__name__}") and 4 * len(own & fields) >= 3 * len(own)]
    assert copies == [], f"{settings.__name__}'s fields declared again in {copies}"
    assert issubclass(PipelineConfig, SourceSettings)


def test_the_run_batching_reaches_a_local_tf_serving(tmp_path: Path) -> None:
    """--batch-size / --max-batch-delay-ms configure TF Serving's batching too (they once
    stopped at TorchServe: TF Serving's settings lived inside its backend)."""
    from servegate.backends.tfserving import LocalTFServing
    from servegate.config import BatchingConfig, TFServingSettings

    config = PipelineConfig(model="builtin:digits-keras", target="tfserving",
                            batching=BatchingConfig(batch_size=16, max_batch_delay_ms=7),
                            tfserving=TFServingSettings(workdir=tmp_path))
    settings = config.tfserving_settings()
    assert (settings.max_batch_size, settings.batch_timeout_ms, settings.workdir) == (16, 7.0, tmp_path)
    LocalTFServing(settings).flags(8500, 8501, "/models")  # writes the server's config files
    batching = " ".join((tmp_path / "models" / "batching.config").read_text().split())
    assert "max_batch_size { value: 16 }" in batching and "batch_timeout_micros { value: 7000 }" in batching
