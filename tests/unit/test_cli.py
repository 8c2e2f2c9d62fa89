"""The CLI: help everywhere, and exit codes scripts can rely on."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from servegate.cli import app

runner = CliRunner()


@pytest.mark.parametrize(
    "command",
    [[], ["serve"], ["serve", "start"], ["serve", "stop"], ["serve", "status"], ["package"],
     ["predict"], ["models"], ["models", "register"], ["models", "default"]],
)
def test_every_command_has_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_status_and_predict_without_a_server_exit_3(tmp_path: Path) -> None:
    status = runner.invoke(app, ["serve", "status", "--workdir", str(tmp_path)])
    assert status.exit_code == 3
    predict = runner.invoke(app, ["predict", "digits", "--data", "[1]", "--workdir", str(tmp_path)])
    assert predict.exit_code == 3


def test_bad_input_exits_5(tmp_path: Path) -> None:
    result = runner.invoke(app, ["predict", "digits", "--data", "{nope", "--workdir", str(tmp_path)])
    assert result.exit_code == 5
    result = runner.invoke(app, ["package", "builtin:nothing", "--output-dir", str(tmp_path)])
    assert result.exit_code == 5


def test_stop_without_a_server_is_a_no_op(tmp_path: Path) -> None:
    result = runner.invoke(app, ["serve", "stop", "--workdir", str(tmp_path)])
    assert result.exit_code == 0
    assert "no torchserve was running" in result.output


def test_package_builds_an_archive(tmp_path: Path) -> None:
    result = runner.invoke(app, ["package", "builtin:digits", "--name", "d", "--version", "2",
                                 "--output-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "d.v2.mar").is_file()


def test_an_unexpected_failure_is_one_line_naming_the_run_log(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """No raw traceback reaches the user: one line with the log's path, the traceback in the log."""
    from servegate import pipeline

    def broken(self):
        raise RuntimeError("something deep\nwith a second line")

    monkeypatch.setenv("SERVEGATE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setattr(pipeline.DeployPipeline, "run", broken)
    monkeypatch.setattr("servegate.api.open_backend", lambda config: (None, None))
    result = runner.invoke(app, ["run", "--model", "builtin:digits"])
    assert result.exit_code == 7, result.output
    assert "RuntimeError: something deep" in result.output and "Traceback" not in result.output
    logs = list((tmp_path / "home" / "logs").glob("run-*.log"))
    assert len(logs) == 1 and str(logs[0]) in result.output.replace("\n", "")
    assert "Traceback" in logs[0].read_text() and "with a second line" in logs[0].read_text()


def test_run_refuses_a_name_other_than_the_registered_one() -> None:
    result = runner.invoke(app, ["run", "--model", "models:/tabular/2", "--name", "other"])
    assert result.exit_code == 5
    assert "registered as 'tabular' but name is 'other'" in result.output


def test_a_reused_server_says_which_options_it_did_not_apply(tmp_path: Path, monkeypatch) -> None:
    """`serve start` on a directory whose server runs returns that server: the options it was not
    started with are named, not silently dropped (issue 26)."""
    from servegate.backends.torchserve import local
    from servegate.config import TorchServeSettings

    state = local.ServerState(pid=1, workdir=str(tmp_path), model_store=str(tmp_path),
                              inference="http://127.0.0.1:8080", management="http://127.0.0.1:8081",
                              metrics="http://127.0.0.1:8082", key_file=None,
                              allowed_url_prefixes=[], token_expiration_min=None)
    same = TorchServeSettings(workdir=tmp_path, inference_port=8080)
    assert local.unapplied_options(same, state) == []
    other = TorchServeSettings(workdir=tmp_path, inference_port=9090, token_expiration_min=1440,
                               allowed_url_prefixes=("https://mlflow.example/api/2.0/mlflow-artifacts/artifacts/",))
    named = local.unapplied_options(other, state)
    assert named == ["--inference-port 9090 (it uses 8080)", "--allow-url/--allow-mlflow-artifacts",
                     "--token-expiration-min 1440"]
    monkeypatch.setattr(local.LocalTorchServe, "state", lambda self: state)
    monkeypatch.setattr(local.LocalTorchServe, "start", lambda self: state)
    monkeypatch.setattr("servegate.cli._print_state", lambda target, state: None)
    result = runner.invoke(app, ["serve", "start", "--workdir", str(tmp_path),
                                 "--token-expiration-min", "1440"])
    assert result.exit_code == 0, result.output
    assert "already runs" in result.output and "--token-expiration-min 1440" in result.output
