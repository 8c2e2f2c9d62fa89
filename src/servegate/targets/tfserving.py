"""TF Serving: Keras models exported as SavedModels in TF Serving's layout (pre- and
post-processing inside the signatures), compiled by the TF compilers (``compilers/tf.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from servegate.backends._local import LocalServer
from servegate.backends.base import ServingBackend
from servegate.config import PipelineConfig
from servegate.errors import ConfigError, ServerError, ServerNotRunning
from servegate.sources.keras_model import KerasModel
from servegate.targets.base import Built, LoadProfile, MeasuredTarget


class TFServingTarget(MeasuredTarget[KerasModel]):
    name = "tfserving"
    attach_needs: tuple[str, ...] = ("SERVEGATE_TFSERVING_URL", "SERVEGATE_TFSERVING_MODEL_ROOT")

    def check_compiler(self, compiler: str) -> None:
        """``ConfigError`` unless ``compiler`` is ``auto``, a TF compiler (``compilers.tf``) or a
        comma list of them."""
        from servegate.compilers.tf import parse_tf_compiler_option

        parse_tf_compiler_option(compiler)

    def open_backend(self, config: PipelineConfig) -> tuple[ServingBackend | None, ServerError | None]:
        """The server, or None and why when none is reachable (the run still builds and
        validates its SavedModel); ``server=attach`` never falls back."""
        from servegate.backends.tfserving import open_tfserving

        try:
            return open_tfserving(config.tfserving_settings(), mode=config.server), None
        except ServerNotRunning as exc:
            if config.server == "attach":
                raise
            return None, exc

    def running_backend(self, config: PipelineConfig) -> ServingBackend:
        from servegate.backends.factory import open_tfserving
        from servegate.backends.tfserving.deployer import TFServingBackend
        from servegate.config import TFServingAttach

        if config.server == "attach" or (config.server == "auto" and TFServingAttach.from_env()):
            return open_tfserving(config.tfserving_settings(), "attach")
        server = self.local_server(config)
        state = server.state()
        if state is None:
            raise ServerNotRunning(f"no TF Serving running in {server.workdir}; start one with "
                                   "`servegate serve start --target tfserving` (or attach one: "
                                   "SERVEGATE_TFSERVING_*)")
        return TFServingBackend.from_state(state)

    def local_server(self, config: PipelineConfig) -> LocalServer[Any]:
        from servegate.backends.tfserving.local import LocalTFServing

        return LocalTFServing(config.tfserving_settings())

    def load_model(self, config: PipelineConfig) -> KerasModel:
        from servegate.sources.keras_import import load_keras_model
        from servegate.sources.options import read_labels

        return load_keras_model(config.model, eval_data=config.eval_data,
                                label_column=config.label_column, task=config.task,
                                class_names=read_labels(config.labels),
                                trust_pickle=config.trust_pickle)

    def register(self, model: KerasModel, name: str) -> str:
        from servegate import tracking

        return tracking.log_keras_model(model, name)

    def build(self, model: KerasModel, config: PipelineConfig, version: str, workdir: Path,
              console: Console) -> Built:
        """A SavedModel in TF Serving's layout, validated (both loaders, parity), compiled by the
        TF compiler ``compiler`` names (``auto`` / a comma list: measured here, the fastest that
        passes parity), carrying the run's batching in ``batching_params.pbtxt``."""
        from servegate import tracking
        from servegate.backends.tfserving.config import batching_parameters, write_version_batching
        from servegate.backends.tfserving.reach import batching_reach, xla_refusal
        from servegate.compilers.tf import XlaCompiler, compile_keras
        from servegate.packaging.savedmodel import KerasExporter
        from servegate.parity_limits import precision_of
        from servegate.targets.compiled import report_compiled

        settings = config.tfserving_settings()
        refusal = xla_refusal(settings, config.server)
        exporter = KerasExporter(model, config.model_name, int(version))
        artifact, candidates = compile_keras(model, config.compiler, workdir / "compile", exporter,
                                             batch_size=config.batching.batch_size,
                                             auto_refused={XlaCompiler.name: refusal} if refusal else None)
        write_version_batching(artifact.path, batching_parameters(
            max_batch_size=settings.max_batch_size, batch_timeout_ms=settings.batch_timeout_ms))
        reach = batching_reach(settings, config.server, config.batching.batch_size,
                               config.model_name, version)
        if reach.notice:
            console.print(f"[yellow]notice: {reach.notice}[/]")
        tracking.tag_active_run("servegate.tfserving.batching", reach.detail)
        report = exporter.reports[artifact.exported]
        report_compiled(console, config.compiler, artifact.backend, candidates,
                        {"format": "SavedModel", "tfserving.batching": reach.status},
                        {"tf2_max_abs_diff": report.tf2_max_abs_diff,
                         "tf1_max_abs_diff": report.tf1_max_abs_diff,
                         "image_max_abs_diff": report.image_max_abs_diff,
                         "export_seconds": report.seconds,
                         "compile_seconds": artifact.compile_seconds})
        uri = tracking.log_artifact_dir(artifact.path, f"savedmodel/{version}")
        return Built(artifact.path, uri, artifact.backend, precision_of(artifact.backend))

    def package(self, model: KerasModel, config: PipelineConfig, version: str, output_dir: Path) -> Path:
        """The SavedModel version directory ``output_dir/NAME/VERSION`` (TF Serving's layout),
        compiled as ``build`` compiles it, with its ``batching_params.pbtxt``."""
        import shutil
        import tempfile

        from servegate.backends.tfserving.config import batching_parameters, write_version_batching
        from servegate.compilers.tf import compile_keras
        from servegate.packaging.savedmodel import KerasExporter

        placed = output_dir / config.model_name / version
        if placed.exists():
            raise ConfigError(f"{placed} exists: versions are immutable, give another --version")
        settings = config.tfserving_settings()
        with tempfile.TemporaryDirectory(prefix="servegate-package-") as tmp:
            exporter = KerasExporter(model, config.model_name, int(version))
            artifact, _ = compile_keras(model, config.compiler, Path(tmp), exporter,
                                        batch_size=config.batching.batch_size)
            write_version_batching(artifact.path, batching_parameters(
                max_batch_size=settings.max_batch_size, batch_timeout_ms=settings.batch_timeout_ms))
            placed.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(artifact.path, placed)
        return placed

    def load_profile(self, model: KerasModel) -> LoadProfile:
        from servegate._resources import loadtests_dir

        return LoadProfile(model.example_batch(32).tolist(), loadtests_dir() / "tfserving.py",
                           "TFServingPredictUser")

    def example_row(self, model: KerasModel) -> Any:
        return model.example_batch(1)[0].tolist()
