"""``servegate image build``: the build context (Dockerfile, wheelhouse, configuration, baked
archives) assembled in a temporary directory and built by the engine through the Docker API."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servegate._resources import serving_configs_dir
from servegate.errors import PackagingError
from servegate.image.recipe import ImageRecipe, config_properties, dockerfile

#: The configuration files copied next to ``config.properties`` (what it names).
CONFIG_FILES = ("log4j2.xml", "metrics.yaml")


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    id: str
    size_bytes: int
    seconds: float


def write_context(recipe: ImageRecipe, wheelhouse: Path, directory: Path) -> Path:
    """The build context in ``directory``: ``Dockerfile``, ``wheelhouse/`` (hard links where
    possible), ``config/`` and ``model-store/``."""
    (directory / "Dockerfile").write_text(dockerfile(recipe), encoding="utf-8")
    wheels = directory / "wheelhouse"
    wheels.mkdir()
    for item in sorted(wheelhouse.iterdir()):
        _link_or_copy(item, wheels / item.name)
    config = directory / "config"
    config.mkdir()
    (config / "config.properties").write_text(config_properties(recipe), encoding="utf-8")
    for name in CONFIG_FILES:
        shutil.copyfile(serving_configs_dir() / "torchserve" / name, config / name)
    store = directory / "model-store"
    store.mkdir()
    for archive in recipe.archives:
        shutil.copyfile(archive, store / archive.name)
    return directory


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def build_image(recipe: ImageRecipe, wheelhouse: Path, client: Any, *,
                progress: Callable[[str], None] = lambda _: None) -> BuiltImage:
    """Build ``recipe`` with the engine ``client`` (a ``docker.DockerClient``), each line of the
    build's output given to ``progress``; ``PackagingError`` with the build's last lines when it
    fails."""
    import docker

    started = time.monotonic()
    tail: list[str] = []
    with tempfile.TemporaryDirectory(prefix="servegate-image-") as tmp:
        context = write_context(recipe, wheelhouse, Path(tmp))
        try:
            for chunk in client.api.build(path=str(context), tag=recipe.tag, rm=True,
                                          forcerm=True, pull=False, decode=True):
                if "error" in chunk:
                    tail.append(str(chunk["error"]))
                    raise PackagingError(f"building {recipe.tag} failed:\n" + "".join(tail[-30:]))
                line = str(chunk.get("stream", "")).rstrip()
                if line:
                    tail = [*tail[-60:], line + "\n"]
                    progress(line)
            image = client.images.get(recipe.tag)
        except docker.errors.DockerException as exc:
            raise PackagingError(f"building {recipe.tag} failed: {exc}\n" + "".join(tail[-30:])) \
                from exc
    return BuiltImage(recipe.tag, image.id, int(image.attrs.get("Size") or 0),
                      time.monotonic() - started)
