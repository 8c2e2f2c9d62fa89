"""Model source -> compiled artifact -> .mar, in one call (used by the CLI and the pipeline)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from servegate.compilers import get_compiler
from servegate.config import BatchingConfig, RequestLimits
from servegate.packaging.mar import build_mar, contents_for
from servegate.sources import TorchModel, load_torch_model


def package_model(model: TorchModel, *, name: str, version: str, compiler: str,
                  batching: BatchingConfig, output_dir: Path,
                  limits: RequestLimits | None = None) -> Path:
    """Compile ``model`` with one backend and build its archive into ``output_dir``."""
    with tempfile.TemporaryDirectory(prefix="servegate-compile-") as tmp:
        artifact = get_compiler(compiler).compile(model, Path(tmp), max_batch=batching.batch_size * 8)
        contents = contents_for(model, artifact, name=name, version=version, batching=batching,
                                limits=limits)
        return build_mar(contents, output_dir)


def package_torch_model(uri: str, *, name: str, version: str, compiler: str,
                        batching: BatchingConfig, output_dir: Path) -> Path:
    return package_model(load_torch_model(uri), name=name, version=version, compiler=compiler,
                         batching=batching, output_dir=output_dir)
