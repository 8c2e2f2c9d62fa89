"""TF Serving: Keras models exported as SavedModels in TF Serving's layout (pre- and
post-processing inside the signatures), optionally XLA or TF-TRT compiled."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from servegate.backends._local import LocalServer
from servegate.backends.base import ServingBackend
from servegate.config import PipelineConfig
from servegate.errors import BackendUnavailable, ConfigError, ServerError, ServerNotRunning
from servegate.targets.base import Built, LoadProfile, MeasuredTarget

#: ``compiler`` values that apply to TensorFlow models (``auto``/``eager``: the SavedModel itself).
TF_COMPILERS = ("savedmodel", "xla", "tf-trt")


class TFServingTarget(MeasuredTarget):
    name = "tfserving"
    attach_needs = ("SERVEGATE_TFSERVING_URL", "SERVEGATE_TFSERVING_MODEL_ROOT")

    def check_compiler(self, compiler: str) -> None:
        if compiler not in ("auto", "eager", *TF_COMPILERS):
            raise ConfigError(f"compiler {compiler!r} does not apply to TensorFlow models; "
                              "use auto, savedmodel, xla or tf-trt")

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

    def load_model(self, config: PipelineConfig) -> Any:
        from servegate.sources.keras_import import load_keras_model
        from servegate.sources.options import read_labels

        return load_keras_model(config.model, eval_data=config.eval_data,
                                label_column=config.label_column, task=config.task,
                                class_names=read_labels(config.labels),
                                trust_pickle=config.trust_pickle)

    def register(self, model: Any, name: str) -> str:
        from servegate import tracking

        return tracking.log_keras_model(model, name)

    def build(self, model: Any, config: PipelineConfig, version: str, workdir: Path,
              console: Console) -> Built:
        """SavedModel in TF Serving's layout, validated (both loaders, parity); ``compiler``:
        ``auto``/``savedmodel`` (the reference), ``xla``, or ``tf-trt`` (TensorRT builds only)."""
        from servegate import tracking
        from servegate.packaging.savedmodel import export_savedmodel
        from servegate.parity_limits import precision_of

        compiler = {"auto": "savedmodel", "eager": "savedmodel"}.get(config.compiler, config.compiler)
        if compiler == "tf-trt":
            from servegate.compilers.tf_trt import trt_unavailable_reason

            if reason := trt_unavailable_reason():
                raise BackendUnavailable(f"tf-trt: {reason}")
        report = export_savedmodel(model, workdir / "savedmodel", config.model_name,
                                   int(version), jit_compile=compiler == "xla")
        if compiler == "tf-trt":  # only where TensorFlow is built with TensorRT
            from servegate.compilers.tf_trt import convert_trt

            converted = workdir / "tf-trt" / config.model_name / version
            convert_trt(report.path, converted, precision="FP16")
            report = replace(report, path=converted)
        tracking.log_build({"compiler": config.compiler, "compiler.chosen": compiler,
                            "format": "savedmodel"},
                           {"tf2_max_abs_diff": report.tf2_max_abs_diff,
                            "tf1_max_abs_diff": report.tf1_max_abs_diff,
                            "image_max_abs_diff": report.image_max_abs_diff,
                            "export_seconds": report.seconds})
        uri = tracking.log_artifact_dir(report.path, f"savedmodel/{version}")
        return Built(report.path, uri, compiler, precision_of(compiler))

    def load_profile(self, model: Any) -> LoadProfile:
        from servegate._resources import loadtests_dir

        return LoadProfile(model.example_batch(32).tolist(), loadtests_dir() / "tfserving.py",
                           "TFServingPredictUser")

    def example_row(self, model: Any) -> Any:
        return model.example_batch(1)[0].tolist()
