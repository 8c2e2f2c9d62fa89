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
    assert "no TorchServe was running" in result.output


def test_package_builds_an_archive(tmp_path: Path) -> None:
    result = runner.invoke(app, ["package", "builtin:digits", "--name", "d", "--version", "2",
                                 "--output-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "d.v2.mar").is_file()
