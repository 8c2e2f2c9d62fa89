"""Model -> compiled artifact -> ``.mar``: the one build path (``TorchServeTarget.build`` adds
MLflow logging around it; the CLI's ``package``, ``api.package``, tests and benchmarks call it)."""

from __future__ import annotations

import tempfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from servegate.compilers.driver import artifact_max_batch, compile_model
from servegate.config import DEFAULT_MAX_ARTIFACTS, BatchingConfig, RequestLimits
from servegate.packaging.mar import MarContents, build_mar, contents_for
from servegate.packaging.worker_cache import SHIPPED_CACHE_FILE, compiles_in_worker, prime_worker_cache
from servegate.sources import TorchModel, load_torch_model

if TYPE_CHECKING:
    from servegate.artifacts import CompiledArtifact
    from servegate.compilers.cache import CompileCache
    from servegate.compilers.select import Candidate


@dataclass(frozen=True)
class BuiltArchive:
    """An archive and what it was built from: the chosen artifact (a routed archive's primary
    one), ``auto``'s measured candidates (empty for one named compiler; a routed archive's
    artifacts are those that ``own`` shapes) and the ``model-config.yaml`` it carries."""

    archive: Path
    artifact: CompiledArtifact
    candidates: list[Candidate]
    model_config: dict[str, Any]

    @property
    def routed(self) -> list[Candidate]:
        """The candidates a routed archive carries, its primary first (empty: one artifact)."""
        return routed_candidates(self.artifact, self.candidates)


def routed_candidates(primary: CompiledArtifact, candidates: list[Candidate]) -> list[Candidate]:
    """The candidates that own shapes (routing by shape), the one of ``primary`` first."""
    return sorted((c for c in candidates if c.owns), key=lambda c: c.artifact is not primary)


def first_call_compile_s(primary: CompiledArtifact, candidates: list[Candidate]) -> float | None:
    """What the first call of a shipped Inductor artifact took at build (its compile: ``auto``
    times it beyond the artifact's own compile_seconds), the largest over the shipped artifacts;
    None where none was measured (one named compiler)."""
    shipped = [c for c in candidates if c.artifact is primary or c.owns]
    measured = [c.compile_seconds - c.artifact.compile_seconds for c in shipped
                if c.artifact is not None and c.artifact.format == "inductor"]
    return max(measured) if measured else None


def build_archive(model: TorchModel, *, name: str, version: str, compiler: str,
                  batching: BatchingConfig, output_dir: Path, limits: RequestLimits | None = None,
                  handler_file: Path | None = None, cache: CompileCache | None = None,
                  compile_dir: Path | None = None,
                  max_artifacts: int = DEFAULT_MAX_ARTIFACTS,
                  ship_compile_cache: bool = True) -> BuiltArchive:
    """Compile ``model`` (in ``compile_dir``, else a temporary directory; inside ``cache`` when
    given) and build its archive into ``output_dir``, with the user's ``handler_file`` if any;
    ``auto`` may route shapes to up to ``max_artifacts`` artifacts. An archive whose worker
    compiles (Inductor) carries, with ``ship_compile_cache``, what its handler's load and
    warm-up compiled here (``packaging.worker_cache``): its workers start from those caches."""
    from servegate.naming import validate_name, validate_version

    validate_name(name)
    validate_version(version)
    with (tempfile.TemporaryDirectory(prefix="servegate-compile-") if compile_dir is None
          else nullcontext(str(compile_dir))) as work:
        max_batch = artifact_max_batch(model, batching, limits)
        artifact, candidates = compile_model(model, compiler, Path(work), batching, limits,
                                             cache=cache, max_batch=max_batch,
                                             max_artifacts=max_artifacts)
        routed = routed_candidates(artifact, candidates)
        contents = contents_for(model, artifact, name=name, version=version, batching=batching,
                                limits=limits, max_batch=max_batch, handler_file=handler_file,
                                routes=[(c.artifact, c.owns) for c in routed],
                                compile_s_per_shape=first_call_compile_s(artifact, candidates))
        archive = build_mar(contents, output_dir)
        if ship_compile_cache and compiles_in_worker(contents.spec.model_dump()):
            contents = with_shipped_cache(contents, archive, Path(work))
            archive = build_mar(contents, output_dir)
    return BuiltArchive(archive, artifact, candidates, contents.model_config)


def with_shipped_cache(contents: MarContents, archive: Path, work: Path) -> MarContents:
    """``contents`` with the compile caches of ``archive``'s handler load and warm-up (run here,
    on GPU 0 for a CUDA archive) as an extra file recorded in its spec."""
    from dataclasses import replace

    from servegate.integrity import artifact_sha256
    from servegate.packaging.spec import ShippedCompileCache

    packed, unpacked = prime_worker_cache(
        archive, work / "shipped" / SHIPPED_CACHE_FILE,
        gpu_id=0 if contents.spec.device == "cuda" else None)
    shipped = ShippedCompileCache(file=SHIPPED_CACHE_FILE, sha256=artifact_sha256(packed),
                                  unpacked_bytes=unpacked)
    return replace(contents, spec=contents.spec.model_copy(update={"compile_cache": shipped}),
                   extra_files=(*contents.extra_files, packed))


def package_model(model: TorchModel, *, name: str, version: str, compiler: str,
                  batching: BatchingConfig, output_dir: Path,
                  limits: RequestLimits | None = None) -> Path:
    """Compile ``model`` and build its archive into ``output_dir`` (``build_archive``'s path)."""
    return build_archive(model, name=name, version=version, compiler=compiler, batching=batching,
                         output_dir=output_dir, limits=limits).archive


def package_torch_model(uri: str, *, name: str, version: str, compiler: str,
                        batching: BatchingConfig, output_dir: Path) -> Path:
    """``package_model`` of the model source ``uri`` (default source settings)."""
    from servegate.naming import validate_name, validate_version

    validate_name(name)  # before the model is loaded or trained
    validate_version(version)
    return package_model(load_torch_model(uri), name=name, version=version, compiler=compiler,
                         batching=batching, output_dir=output_dir)
