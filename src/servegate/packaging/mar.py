"""Build TorchServe ``.mar`` archives with torch-model-archiver's Python API.

The archive carries the model artifact, our handler modules (``handlers/``), ``servegate.json``,
``model-config.yaml`` (batching and workers), ``index_to_name.json`` and a warm-up sample. The
archive appears in the model store atomically (built aside, then renamed into place).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from servegate._resources import handlers_dir
from servegate.artifacts import CompiledArtifact
from servegate.choices import CLASS_TASKS
from servegate.config import BatchingConfig, ImagePreprocessing, RequestLimits
from servegate.errors import PackagingError
from servegate.naming import archive_file_name
from servegate.packaging.spec import (
    SPEC_FILE,
    TASK_HANDLERS,
    ArtifactSpec,
    InputSpec,
    OutputSpec,
    OwnedShape,
    RouteSpec,
    TextSpec,
)
from servegate.sources.base import TorchModel

if TYPE_CHECKING:
    from servegate.compilers.shapes import Shape

_ARCHIVER_LOCK = threading.Lock()
LABELS_FILE = "index_to_name.json"
WARMUP_FILE = "warmup.json"
MODEL_CONFIG_FILE = "model-config.yaml"


@dataclass(frozen=True)
class MarContents:
    """Everything one archive is built from."""

    name: str
    version: str
    artifact: Path
    spec: ArtifactSpec
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    model_file: Path | None = None
    labels: Sequence[str] | None = None
    warmup: Any | None = None
    extra_files: Sequence[Path] = ()
    #: A user's own handler module: the archive's entry point, with ours shipped beside it.
    handler_file: Path | None = None
    #: Files shipped under another name (archive name -> file): a routed archive's other
    #: artifacts, whose own names may repeat (``model.aoti.pt2`` of aoti and aoti-bf16).
    renamed_files: Mapping[str, Path] = field(default_factory=dict)
    #: Seconds one shape took to compile at build, where the artifact compiles in the worker
    #: (``startup.worker_startup_timeout``); None: not measured.
    compile_s_per_shape: float | None = None

    @cached_property
    def model_config(self) -> dict[str, Any]:
        """The archive's ``model-config.yaml`` (batching and workers for the artifact's device;
        a start-up timeout that leaves a compiling worker time to compile)."""
        from servegate.packaging.startup import worker_startup_timeout

        return self.batching.model_config_yaml(device=self.spec.device) | {
            "startupTimeout": worker_startup_timeout(self.spec, self.batching.startup_timeout_s,
                                                     self.compile_s_per_shape)}


@contextmanager
def _private_tempdir(path: Path) -> Iterator[None]:
    """torch-model-archiver stages files in ``gettempdir()/<model name>``: give it our own."""
    with _ARCHIVER_LOCK:
        saved = tempfile.tempdir
        tempfile.tempdir = str(path)
        try:
            yield
        finally:
            tempfile.tempdir = saved


def build_mar(contents: MarContents, model_store: Path) -> Path:
    """Build the archive and move it into ``model_store``; return its path there."""
    from model_archiver.model_archiver_config import ModelArchiverConfig
    from model_archiver.model_packaging import package_model
    from model_archiver.model_packaging_utils import ModelExportUtils

    if not contents.artifact.exists():
        raise PackagingError(f"model artifact not found: {contents.artifact}")
    if contents.spec.format == "state_dict" and contents.model_file is None:
        raise PackagingError("a state_dict archive needs the model file that defines its class")
    model_store.mkdir(parents=True, exist_ok=True)
    target = model_store / archive_file_name(contents.name, contents.version)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=model_store) as tmp:
        staging = Path(tmp)
        files_dir = staging / "files"
        files_dir.mkdir()
        handler = _stage_files(contents, files_dir)
        config = ModelArchiverConfig(
            model_name=contents.name,
            handler=str(handler),
            version=contents.version,
            serialized_file=str(contents.artifact),
            model_file=str(contents.model_file) if contents.model_file else None,
            extra_files=",".join(str(p) for p in sorted(files_dir.iterdir()) if p != handler),
            export_path=str(staging),
            config_file=str(files_dir / MODEL_CONFIG_FILE),
            force=True,
        )
        try:
            with _private_tempdir(staging):
                package_model(config, ModelExportUtils.generate_manifest_json(config))
        except Exception as exc:
            raise PackagingError(f"torch-model-archiver failed for {contents.name}: {exc}") from exc
        built = staging / f"{contents.name}.mar"
        if not built.exists():
            raise PackagingError(f"torch-model-archiver wrote no archive for {contents.name}")
        os.replace(built, target)
    return target


def _stage_files(contents: MarContents, files_dir: Path) -> Path:
    spec = contents.spec.model_copy(update={"artifact": contents.artifact.name})
    if contents.labels is not None:
        _write_json(files_dir / LABELS_FILE, {str(i): str(v) for i, v in enumerate(contents.labels)})
        spec = spec.model_copy(update={"labels_file": LABELS_FILE})
    if contents.warmup is not None:
        _write_json(files_dir / WARMUP_FILE, contents.warmup)
        spec = spec.model_copy(update={"warmup_file": WARMUP_FILE})
    _write_json(files_dir / SPEC_FILE, spec.model_dump(mode="json"))
    (files_dir / MODEL_CONFIG_FILE).write_text(
        yaml.safe_dump(contents.model_config, sort_keys=False),
        encoding="utf-8"
    )
    source = handlers_dir()
    for module in sorted(source.glob("sg_*.py")):
        shutil.copy2(module, files_dir / module.name)
    ours = source / f"{TASK_HANDLERS[spec.task]}.py"
    shutil.copy2(ours, files_dir / ours.name)
    handler = contents.handler_file or ours
    if contents.handler_file is not None:
        if not handler.is_file() or handler.suffix != ".py":
            raise PackagingError(f"handler must be a Python file, got {handler}")
        if (files_dir / handler.name).exists() and handler.name != ours.name:
            raise PackagingError(f"handler {handler.name} has the name of one of ours; rename it")
        shutil.copy2(handler, files_dir / handler.name)
    for extra in contents.extra_files:
        shutil.copy2(extra, files_dir / extra.name)
    for archived, source in contents.renamed_files.items():
        if (files_dir / archived).exists():
            raise PackagingError(f"two files of the archive are named {archived}")
        shutil.copy2(source, files_dir / archived)
    return files_dir / handler.name


def _write_json(path: Path, value: Mapping[str, Any] | Any) -> None:
    path.write_text(json.dumps(value, indent=1), encoding="utf-8")


def read_archive_member(archive: Path, member: str) -> bytes:
    """One file of a built archive (for checks and tests)."""
    import zipfile

    with zipfile.ZipFile(archive) as zf:
        return zf.read(member)


def contents_for(model: TorchModel, artifact: CompiledArtifact, *, name: str, version: str,
                 batching: BatchingConfig, limits: RequestLimits | None = None,
                 warmup_rows: int = 2, max_batch: int | None = None,
                 handler_file: Path | None = None,
                 routes: Sequence[tuple[CompiledArtifact, Sequence[Shape]]] = (),
                 compile_s_per_shape: float | None = None) -> MarContents:
    """The archive contents of a compiled ``TorchModel``: spec (inputs, outputs, task, the batch
    the artifact accepts), labels and a real warm-up sample (held-out rows; sentences for a text
    model, whose tokenizer file ships as an extra file). ``handler_file``: a user's own handler,
    shipped as the entry point with ours beside it. ``routes``: routing by shape, each artifact
    with the shapes it owns, ``artifact`` first (its files keep their names; the others' are
    prefixed with their backend)."""
    text = None
    extra_files: tuple[Path, ...] = ()
    if model.is_text:
        assert model.tokenizer_file is not None
        text = TextSpec(tokenizer_file=model.tokenizer_file.name,
                        max_length=int(model.max_length or TextSpec().max_length))
        extra_files = (model.tokenizer_file,)
    if artifact.fallback is not None:
        extra_files += (artifact.fallback,)
    spec = ArtifactSpec(
        task=model.task,  # type: ignore[arg-type]
        format=artifact.format,
        artifact=artifact.path.name,
        model_class=artifact.model_class,
        model_kwargs=artifact.model_kwargs,
        inputs=[] if model.is_text else [InputSpec(name=s.name, shape=list(s.shape), dtype=s.dtype)
                                         for s in model.inputs],
        outputs=[OutputSpec(name=s.name, shape=list(s.shape)) for s in model.outputs],
        max_batch=max_batch,
        image=ImagePreprocessing(**model.image) if model.task == "image-classification" else None,
        text=text,
        limits=limits or RequestLimits(),
        intra_op_threads=batching.threads_per_worker or None,
        compiler=artifact.backend,
        device=artifact.device,
        dtype=artifact.dtype,
        compile_mode=artifact.compile_mode,
        built_for=artifact.built_for,
        buckets=artifact.buckets,
        fallback_artifact=artifact.fallback.name if artifact.fallback is not None else None,
    )
    renamed: dict[str, Path] = {}
    route_specs = []
    for routed, owns in routes:
        files = {"artifact": routed.path, "fallback_artifact": routed.fallback}
        if routed is not artifact:  # the primary's files are staged under their own names
            names = {k: f"{routed.backend}.{p.name}" for k, p in files.items() if p is not None}
            renamed |= {names[k]: p for k, p in files.items() if p is not None}
        else:
            names = {k: p.name for k, p in files.items() if p is not None}
        route_specs.append(RouteSpec(
            compiler=routed.backend, format=routed.format, artifact=names["artifact"],
            model_class=routed.model_class, model_kwargs=routed.model_kwargs, device=routed.device,
            dtype=routed.dtype, compile_mode=routed.compile_mode, built_for=routed.built_for,
            buckets=routed.buckets, fallback_artifact=names.get("fallback_artifact"),
            owns=[OwnedShape(batch=s.batch, tokens=s.tokens) for s in owns]))
    if route_specs:
        spec = ArtifactSpec.model_validate(spec.model_dump() | {"routes": route_specs})
    model_file = artifact.model_file or next(
        (r.model_file for r, _ in routes if r.model_file is not None), None)
    return MarContents(
        name=name, version=version, artifact=artifact.path, spec=spec, batching=batching,
        model_file=model_file,
        labels=model.labels if model.task in CLASS_TASKS else None,
        warmup={"instances": model.request_rows(model.example_batch(warmup_rows))},
        extra_files=extra_files, handler_file=handler_file, renamed_files=renamed,
        compile_s_per_shape=compile_s_per_shape,
    )
