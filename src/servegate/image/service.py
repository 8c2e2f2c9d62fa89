"""The image commands' work, from names to results: which archives to bake (registry versions,
verified), the wheelhouse, the build; the run; the base."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from servegate.config import home_dir
from servegate.image.build import BuiltImage, build_image
from servegate.image.container import RunningImage, RunOptions, run_image, stop_image
from servegate.image.engine import connect
from servegate.image.recipe import DEFAULT_BASE, ImageRecipe
from servegate.image.wheelhouse import make_wheelhouse


def wheelhouse_root() -> Path:
    """Where wheelhouses are kept between builds (one per set of versions)."""
    return home_dir() / "image" / "wheelhouse"


def build(tag: str, *, base: str = DEFAULT_BASE, models: Sequence[str] = (),
          allowed_url_prefixes: Sequence[str] = (), token_expiration_min: float | None = None,
          gpus: int = 0, index_url: str | None = None, extra_index_urls: Sequence[str] = (),
          progress: Callable[[str], None] = lambda _: None) -> BuiltImage:
    """Build the serving image ``tag``, baking in each of ``models`` (``NAME`` or
    ``NAME@ALIAS``; default alias ``champion``): its registered archive, checked against the
    sha256 recorded when it was built."""
    client = connect()
    progress("wheelhouse: pip download at this environment's versions")
    wheelhouse = make_wheelhouse(wheelhouse_root(), index_url=index_url,
                                 extra_index_urls=extra_index_urls)
    with tempfile.TemporaryDirectory(prefix="servegate-bake-") as tmp:
        archives = tuple(_baked_archive(model, Path(tmp), progress) for model in models)
        recipe = ImageRecipe(tag=tag, base=base, archives=archives,
                             allowed_url_prefixes=tuple(allowed_url_prefixes),
                             token_expiration_min=token_expiration_min, gpus=gpus)
        return build_image(recipe, wheelhouse, client, progress=progress)


def _baked_archive(model: str, directory: Path, progress: Callable[[str], None]) -> Path:
    from servegate.archive_fetch import fetch_verified_archive
    from servegate.errors import PipelineError
    from servegate.naming import archive_file_name, validate_name
    from servegate.registry import CHAMPION, Registry

    name, _, alias = model.partition("@")
    validate_name(name)
    registry = Registry.for_model(name)
    version = registry.version_for_alias(alias or CHAMPION)
    if version is None:
        raise PipelineError(f"{name} has no version with the alias {alias or CHAMPION!r}")
    target = directory / archive_file_name(name, version)
    progress(f"baking {name} v{version} ({target.name}), its sha256 checked")
    fetch_verified_archive(registry, name, version, target, what="bake")
    return target


def run(options: RunOptions) -> RunningImage:
    return run_image(options, connect())


def stop(name: str) -> bool:
    return stop_image(name, connect())


def make_base(tag: str) -> str:
    from servegate.image.debian_base import make_debian_base

    return make_debian_base(connect(), tag)
