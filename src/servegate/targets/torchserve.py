"""TorchServe: PyTorch models (tensor and text), compiled by any compiler backend and packaged
as ``.mar`` archives with servegate's handlers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from servegate.backends._local import LocalServer
from servegate.backends.base import ServingBackend
from servegate.config import PipelineConfig
from servegate.errors import ConfigError, ServerError, ServerNotRunning
from servegate.sources.base import TorchModel
from servegate.targets.base import Built, LoadProfile, MeasuredTarget, curl_cacert


class TorchServeTarget(MeasuredTarget[TorchModel]):
    name = "torchserve"
    attach_needs: tuple[str, ...] = (
        "SERVEGATE_TORCHSERVE_MANAGEMENT_URL", "SERVEGATE_TORCHSERVE_INFERENCE_URL",
        "SERVEGATE_TORCHSERVE_KEYS|SERVEGATE_TORCHSERVE_KEY_FILE")

    def check_compiler(self, compiler: str) -> None:
        from servegate.compilers import compiler_names

        if compiler == "auto":
            return
        known = compiler_names()
        for name in (n.strip() for n in compiler.split(",")):
            if name not in known:
                raise ConfigError(f"unknown compiler {name!r} for TorchServe; known: "
                                  f"auto, {', '.join(known)}, or a comma list of them")

    def open_backend(self, config: PipelineConfig) -> tuple[ServingBackend | None, ServerError | None]:
        from servegate.backends.factory import open_torchserve

        return open_torchserve(config.torchserve, config.server), None

    def running_backend(self, config: PipelineConfig) -> ServingBackend:
        from servegate.backends.factory import open_torchserve
        from servegate.backends.torchserve import TorchServeBackend
        from servegate.config import TorchServeAttach

        if config.server == "attach" or (config.server == "auto" and TorchServeAttach.from_env()):
            return open_torchserve(config.torchserve, "attach")
        server = self.local_server(config)
        state = server.state()
        if state is None:
            raise ServerNotRunning(f"no TorchServe running in {server.workdir}; start one with "
                                   "`servegate serve start` (or attach one: SERVEGATE_TORCHSERVE_*)")
        return TorchServeBackend.from_state(state)

    def local_server(self, config: PipelineConfig) -> LocalServer[Any]:
        from servegate.backends.torchserve import LocalTorchServe

        return LocalTorchServe(config.torchserve)

    def load_model(self, config: PipelineConfig) -> TorchModel:
        from servegate.sources import load_torch_model

        return load_torch_model(config.model, config)

    def register(self, model: TorchModel, name: str) -> str:
        from servegate import tracking

        if getattr(model, "is_text", False):  # strings in: a pyfunc that tokenises as the worker
            return tracking.log_text_model(model, name)
        return tracking.log_torch_model(model, name)

    def build(self, model: TorchModel, config: PipelineConfig, version: str, workdir: Path,
              console: Console) -> Built:
        """Compile (measuring candidates for ``auto``) and build the archive."""
        from servegate import tracking
        from servegate.compilers.routing import probes
        from servegate.packaging.builder import build_archive
        from servegate.parity_limits import precision_of
        from servegate.targets.compiled import report_compiled

        cache = tracking.compile_cache(config.compile_cache)
        before = cache.fingerprint() if cache else None
        built = build_archive(model, name=config.model_name, version=version,
                              compiler=config.compiler, batching=config.batching,
                              limits=config.limits, handler_file=config.handler, cache=cache,
                              compile_dir=workdir / "compile", output_dir=workdir,
                              max_artifacts=config.max_artifacts)
        if cache is not None and cache.fingerprint() != before:
            tracking.save_compile_cache(cache)  # new compiled code: the next runner reuses it
        archive, artifact = built.archive, built.artifact
        # a routed archive: every artifact named; reduced precision when any of them is
        backends = [c.backend for c in built.routed] or [artifact.backend]
        compiled_with = "+".join(backends)
        report_compiled(console, config.compiler, compiled_with, built.candidates,
                        {"archive": archive.name} | built.model_config,
                        {"archive_bytes": archive.stat().st_size})
        uri = tracking.log_artifact_file(archive, "archive")
        precision = "reduced" if "reduced" in {precision_of(b) for b in backends} else "fp32"
        reaching = probes({c.backend: c.owns for c in built.routed}, config.limits.max_instances)
        return Built(archive, uri, compiled_with, precision,
                     tuple((b, tuple(reaching.get(b, ()))) for b in backends if built.routed))

    def package(self, model: TorchModel, config: PipelineConfig, version: str, output_dir: Path) -> Path:
        """The ``.mar`` (handlers, model-config.yaml, labels, warm-up sample) in ``output_dir``."""
        from servegate.packaging.builder import build_archive

        return build_archive(model, name=config.model_name, version=version,
                             compiler=config.compiler, batching=config.batching,
                             limits=config.limits, handler_file=config.handler,
                             output_dir=output_dir, max_artifacts=config.max_artifacts).archive

    def load_profile(self, model: TorchModel) -> LoadProfile:
        from servegate._resources import loadtests_dir

        return LoadProfile([{"instances": [row]} for row in model.request_rows(model.example_batch(32))],
                           loadtests_dir() / "torchserve.py", "TorchServePredictUser")

    def example_row(self, model: TorchModel) -> Any:
        return model.request_rows(model.example_batch(1))[0]

    def curl(self, url: str, key_shell: str | None, model: TorchModel, ca_bundle: str | None = None) -> str:
        """A JSON request of one held-out row; an image model's curl posts an image file as is
        (``image.png`` stands for yours: PNG, JPEG, GIF, BMP, TIFF, WEBP)."""
        if not getattr(model, "sends_images", False):
            return super().curl(url, key_shell, model, ca_bundle)
        auth = f'-H "Authorization: Bearer {key_shell}" ' if key_shell else ""
        return (f"curl -s {curl_cacert(url, ca_bundle)}{auth}-H 'Content-Type: application/octet-stream' "
                f"--data-binary @image.png {url}")
