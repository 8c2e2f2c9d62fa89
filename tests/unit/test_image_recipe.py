"""What servegate's serving image holds (issue 21, item 1): its Dockerfile, its TorchServe
configuration, its wheelhouse's pins, and the build's context and errors, without an engine
(the real build and run: tests/integration/test_serving_image.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from servegate.artifact_urls import MATCH_NOTHING
from servegate.backends.torchserve.local import allowed_urls
from servegate.config import TorchServeSettings
from servegate.errors import ConfigError, PackagingError
from servegate.image import wheelhouse
from servegate.image.build import build_image, write_context
from servegate.image.recipe import ImageRecipe, config_properties, dockerfile


def properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines()
                if line and not line.startswith("#"))


def test_the_image_keeps_token_auth_and_admits_its_store_only() -> None:
    config = properties(config_properties(ImageRecipe(tag="sg:1")))
    assert "disable_token_authorization" not in config
    assert config["allowed_urls"] == MATCH_NOTHING
    assert config["enable_envvars_config"] == "false"  # no setting from the environment
    assert config["model_store"] == "/home/model-server/model-store"
    assert "load_models" not in config  # nothing baked: a store is mounted at run
    assert "file:///home/model-server/log4j2.xml" in config["vmargs"]  # the quiet logging


def test_baked_archives_load_at_start_and_allowed_prefixes_are_patterns(tmp_path: Path) -> None:
    archives = (tmp_path / "b.v2.mar", tmp_path / "a.v1.mar")
    recipe = ImageRecipe(tag="sg:1", archives=archives,
                         allowed_url_prefixes=("https://mlflow.example.com/api/2.0/",))
    config = properties(config_properties(recipe))
    assert config["load_models"] == "a.v1.mar,b.v2.mar"
    assert config["allowed_urls"] == allowed_urls(
        TorchServeSettings(allowed_url_prefixes=recipe.allowed_url_prefixes))  # as a local server's
    assert config["allowed_urls"] != MATCH_NOTHING
    assert 'io.servegate.baked="a.v1.mar,b.v2.mar"' in dockerfile(recipe)


def test_the_dockerfile_runs_as_a_numeric_non_root_user_from_the_wheelhouse() -> None:
    text = dockerfile(ImageRecipe(tag="sg:1", base="localhost/debian:bookworm"))
    assert "\nUSER 1000:1000\n" in text
    assert "--no-index" in text and "-c /wheelhouse/constraints.txt" in text  # only its wheels
    # the wheels stay in the first stage: the final image copies the venv, not them
    final = text.split("\nFROM localhost/debian:bookworm\n", 1)[1]
    assert "wheelhouse" not in final
    assert '"--foreground"' in text and "--ts-config=/home/model-server/config.properties" in text


@pytest.mark.parametrize("bad", ["", "sg 1", "sg:1\nRUN curl evil", 'sg"', "sg:$(id)"])
def test_a_tag_or_base_that_could_inject_dockerfile_lines_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="image reference"):
        ImageRecipe(tag=bad)
    with pytest.raises(ConfigError, match="image reference"):
        ImageRecipe(tag="sg:1", base=bad)


def test_two_baked_archives_with_one_file_name_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="share a file name"):
        ImageRecipe(tag="sg:1", archives=(tmp_path / "a" / "m.v1.mar", tmp_path / "m.v1.mar"))


def test_the_wheelhouse_pins_what_is_installed_here() -> None:
    from importlib import metadata

    pins = dict(r.split("==") for r in wheelhouse.runtime_requirements())
    assert pins["torch"] == metadata.version("torch")
    assert pins["torchserve"] == metadata.version("torchserve")
    constraints = wheelhouse.environment_constraints()
    assert f"numpy=={metadata.version('numpy')}" in constraints
    assert not any(c.lower().startswith("servegate==") for c in constraints)  # editable: not pinned


def test_the_wheelhouse_is_downloaded_by_pip_with_its_pins_and_fails_with_pips_words(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def pip(command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution")

    monkeypatch.setattr(wheelhouse.subprocess, "run", pip)
    with pytest.raises(PackagingError, match="No matching distribution"):
        wheelhouse.make_wheelhouse(tmp_path, index_url="https://download.pytorch.org/whl/cpu")
    command = calls[0]
    assert command[1:4] == ["-m", "pip", "download"] and "--only-binary=:all:" in command
    directory = Path(command[command.index("--dest") + 1])
    assert directory.parent == tmp_path  # one directory per set of pins
    assert command[command.index("-c") + 1] == str(directory / "constraints.txt")
    assert command[command.index("--index-url") + 1] == "https://download.pytorch.org/whl/cpu"


def test_the_context_holds_the_dockerfile_wheels_config_and_baked_archives(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "torch-2.13.0-cp311.whl").write_bytes(b"wheel")
    archive = tmp_path / "digits.v3.mar"
    archive.write_bytes(b"PK")
    context = tmp_path / "context"
    context.mkdir()
    write_context(ImageRecipe(tag="sg:1", archives=(archive,)), wheels, context)
    assert (context / "wheelhouse" / "torch-2.13.0-cp311.whl").read_bytes() == b"wheel"
    assert {p.name for p in (context / "config").iterdir()} == \
        {"config.properties", "log4j2.xml", "metrics.yaml"}
    assert (context / "model-store" / "digits.v3.mar").read_bytes() == b"PK"
    assert (context / "Dockerfile").read_text().startswith("# servegate's TorchServe image")


class _FailingApi:
    def build(self, **kwargs: Any):
        yield {"stream": "Step 1/12 : FROM python:3.11-slim\n"}
        yield {"error": "servegate needs a Python 3.11 base image, got 3.13.1"}


class _FailingEngine:
    api = _FailingApi()


def test_a_failed_build_says_why_with_the_builds_own_lines(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    lines: list[str] = []
    with pytest.raises(PackagingError, match="needs a Python 3.11 base image") as failed:
        build_image(ImageRecipe(tag="sg:1"), wheels, _FailingEngine(), progress=lines.append)
    assert "Step 1/12" in str(failed.value) and lines == ["Step 1/12 : FROM python:3.11-slim"]
