"""Each default is written once: the CLI's `run` options and the MLproject's parameters equal
the config model's defaults (read through the same conversions the CLI applies)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import yaml

from servegate import cli
from servegate.config import PipelineConfig

ROOT = Path(__file__).resolve().parents[2]


def _text_list(value: str) -> list[float]:
    return [float(v) for v in value.split(",")]


#: CLI option / MLproject parameter -> (config path, the CLI's conversion of its text).
PARAMETERS: dict[str, tuple[str, Any]] = {
    "model": ("model", str),
    "name": ("name", lambda v: v or None),
    "task": ("task", lambda v: None if v == "auto" else v),
    "eval_data": ("eval_data", lambda v: v or None),
    "label_column": ("label_column", str),
    "text_column": ("text_column", str),
    "labels": ("labels", lambda v: v or None),
    "trust_pickle": ("trust_pickle", lambda v: str(v).lower() == "true"),
    "model_class": ("model_class", lambda v: v or None),
    "model_kwargs": ("model_kwargs", lambda v: yaml.safe_load(v)),
    "handler": ("handler", lambda v: v or None),
    "image_size": ("image.size", lambda v: [int(x) for x in v.split(",")]),
    "image_mode": ("image.mode", str),
    "image_mean": ("image.mean", _text_list),
    "image_std": ("image.std", _text_list),
    "max_length": ("max_length", lambda v: int(float(v)) or None),
    "target": ("target", str),
    "compiler": ("compiler", str),
    "compile_cache": ("compile_cache", str),
    "p95_ms": ("slos.p95_ms", float),
    "p99_ms": ("slos.p99_ms", float),
    "min_rps": ("slos.min_rps", float),
    "max_error_rate": ("slos.max_error_rate", float),
    "max_regression_pct": ("slos.max_regression_pct", float),
    "parity_atol": ("parity.parity_atol", float),
    "parity_rtol": ("parity.parity_rtol", float),
    "max_metric_regression": ("parity.max_metric_regression", float),
    "min_top1_agreement": ("parity.min_top1_agreement", float),
    "max_accuracy_drop": ("parity.max_accuracy_drop", float),
    "load_users": ("load.users", lambda v: int(float(v))),
    "load_seconds": ("load.seconds", float),
    "load_rounds": ("load.rounds", lambda v: int(float(v))),
    "load_processes": ("load.processes", lambda v: int(float(v))),
    "batch_size": ("batching.batch_size", lambda v: int(float(v))),
    "max_batch_delay_ms": ("batching.max_batch_delay_ms", lambda v: int(float(v))),
    "workers": ("batching.min_workers", lambda v: int(float(v))),
    "workers_per_gpu": ("batching.workers_per_gpu", lambda v: int(float(v))),
    "promote": ("promote", lambda v: str(v).lower() == "true"),
    "tune": ("tune", lambda v: str(v).lower() == "true"),
    "tune_points": ("tune_points", lambda v: int(float(v))),
    "server": ("server", lambda v: v or "auto"),
}


@pytest.fixture
def config_defaults(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.delenv("SERVEGATE_SERVER", raising=False)
    monkeypatch.delenv("SERVEGATE_REPORT_DIR", raising=False)
    dumped = PipelineConfig().model_dump(mode="json")
    values = {}
    for parameter, (path, _) in PARAMETERS.items():
        value: Any = dumped
        for key in path.split("."):
            value = value[key]
        values[parameter] = value
    values["name"] = None  # derived from the model after validation
    return values


def test_the_cli_run_options_default_to_the_config_model(config_defaults) -> None:
    options = {name: p.default for name, p in inspect.signature(cli.run).parameters.items()}
    checked = set()
    for parameter, (_, convert) in PARAMETERS.items():
        assert convert(options[parameter]) == config_defaults[parameter], parameter
        checked.add(parameter)
    unchecked = set(options) - checked - {"report_dir", "verbose", "workdir"}
    assert not unchecked, f"run options without a config default check: {unchecked}"


def test_the_mlproject_parameters_default_to_the_config_model(config_defaults) -> None:
    project = yaml.safe_load((ROOT / "pipelines" / "deploy" / "MLproject").read_text())
    parameters = project["entry_points"]["main"]["parameters"]
    # verbose is how a run prints, not a setting of the run: the CLI's flag, off by default
    assert set(parameters) == set(PARAMETERS) | {"verbose"}
    assert parameters["verbose"]["default"] == "false"
    assert inspect.signature(cli.run).parameters["verbose"].default is False
    for parameter, (_, convert) in PARAMETERS.items():
        default = parameters[parameter]["default"]
        assert convert(str(default)) == config_defaults[parameter], parameter


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
