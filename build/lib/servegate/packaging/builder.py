"""Model source -> compiled artifact -> .mar (used by the CLI and the tests)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from servegate.compilers.driver import artifact_max_batch, compile_model
from servegate.config import BatchingConfig, RequestLimits
from servegate.packaging.mar import build_mar, contents_for
from servegate.sources import TorchModel, load_torch_model


def package_model(model: TorchModel, *, name: str, version: str, compiler: str,
                  batching: BatchingConfig, output_dir: Path,
                  limits: RequestLimits | None = None) -> Path:
    """Compile ``model`` and build its archive into ``output_dir``."""
    from servegate.naming import validate_name, validate_version

    validate_name(name)
    validate_version(version)
    with tempfile.TemporaryDirectory(prefix="servegate-compile-") as tmp:
        artifact, _ = compile_model(model, compiler, Path(tmp), batching, limits)
        contents = contents_for(model, artifact, name=name, version=version, batching=batching,
                                limits=limits, max_batch=artifact_max_batch(model, batching, limits))
        return build_mar(contents, output_dir)


def package_torch_model(uri: str, *, name: str, version: str, compiler: str,
                        batching: BatchingConfig, output_dir: Path) -> Path:
    from servegate.naming import validate_name, validate_version

    validate_name(name)  # before the model is loaded or trained
    validate_version(version)
    return package_model(load_torch_model(uri), name=name, version=version, compiler=compiler,
                         batching=batching, output_dir=output_dir)
