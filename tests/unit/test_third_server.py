"""A new server is one registered Target (issue 20): a toy target defined here, an in-memory
server behind it, registered through the public ``register_target`` and run through the whole
pipeline by name, with no other module touched; a registration that is not a Target is refused
naming what it lacks; the server lists the workflow and the CLI know agree with the registry."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from servegate import api
from servegate.config import PipelineConfig
from servegate.errors import ConfigError
from servegate.registry import CHAMPION, Registry
from servegate.targets import get_target, register_target
from servegate.testing import MemoryBackend, ScriptedModel, ScriptedTarget


class ToyTarget(ScriptedTarget):
    """A third server: whatever answers in memory (what a KServe or Triton module would be)."""

    name = "toy"


def test_a_registered_target_runs_the_whole_pipeline_by_name(mlflow_store: Path) -> None:
    backend = MemoryBackend()
    toy = ToyTarget(backend, [ScriptedModel(0.95, 10), ScriptedModel(0.97, 9)])
    register_target("toy", lambda: toy)
    first = api.deploy(PipelineConfig(model="builtin:toy", target="toy"), Console(quiet=True))
    second = api.deploy(PipelineConfig(model="builtin:toy", target="toy"), Console(quiet=True))
    assert (first.decision, second.decision) == ("promoted", "promoted")
    assert Registry.for_model("toy").version_for_alias(CHAMPION) == "2"
    assert backend.default_version("toy") == "2"
    assert [v.version for v in backend.versions("toy")] == ["1", "2"]


def test_a_registration_that_is_not_a_target_is_refused_naming_what_it_lacks() -> None:
    class Half:
        name = "half"

        def load_model(self, config):  # noqa: ANN001
            return None

    register_target("half", Half)
    with pytest.raises(ConfigError, match="half.*not a servegate Target.*build"):
        get_target("half")
    with pytest.raises(ConfigError, match="unknown target 'nope'"):
        get_target("nope")


def test_the_server_lists_outside_the_registry_agree_with_it() -> None:
    """The workflow's validator runs on a bare Python and cannot import the targets: its list
    (choices.TARGETS) and the variables each attach needs (dispatch.ATTACH_NEEDS) are checked
    against the registered targets here."""
    from servegate.choices import TARGETS
    from servegate.dispatch import ATTACH_NEEDS

    builtin = {name: get_target(name) for name in TARGETS}
    assert set(ATTACH_NEEDS) == set(TARGETS)
    for name, target in builtin.items():
        assert target.name == name
        assert tuple(ATTACH_NEEDS[name]) == tuple(target.attach_needs), name
