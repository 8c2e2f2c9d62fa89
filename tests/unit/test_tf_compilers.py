"""TF compiling is symmetric (issue 20, item 2): SavedModel, XLA and TF-TRT are registered
compilers of the TF target; ``auto`` measures the available ones here, parity-checks each against
the Keras reference and keeps the fastest that passes; a comma list restricts; one this host
cannot run is skipped with its reason by ``auto`` and a clear error when asked for alone. Nothing
but the registry lists TF compilers. Uses a tiny Keras model built here."""

from __future__ import annotations

import ast
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_serving")

from servegate.compilers.select import Candidate  # noqa: E402
from servegate.compilers.tf import (  # noqa: E402
    compile_keras,
    get_tf_compiler,
    parse_tf_compiler_option,
    tf_compiler_names,
)
from servegate.compilers.tf_trt import trt_unavailable_reason  # noqa: E402
from servegate.errors import BackendUnavailable, CompileError, ConfigError  # noqa: E402
from servegate.packaging.savedmodel import KerasExporter  # noqa: E402
from servegate.sources.keras_model import KerasModel  # noqa: E402

SRC = Path(__file__).resolve().parents[2] / "src" / "servegate"
NO_TRT = trt_unavailable_reason()


@pytest.fixture(scope="module")
def tiny() -> KerasModel:
    """5 features -> 3 softmax classes, untrained (parity needs no accuracy)."""
    import keras

    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input(shape=(5,)), keras.layers.Dense(8, activation="relu"),
                            keras.layers.Dense(3, activation="softmax")])
    x = np.random.default_rng(1).random((40, 5)).astype(np.float32)
    model = KerasModel(model=net, labels=["a", "b", "c"], input_shape=(5,), eval_x=x)
    model.eval_y = model.reference(x).argmax(-1)
    return model


class ScriptedExporter:
    """An ``Exporter`` whose served predictor is the real Keras reference, slowed down per
    compiler: lets a test decide which candidate is faster, or which one answers wrongly."""

    def __init__(self, model: KerasModel, delay_s: dict[bool, float],
                 wrong: bool | None = None) -> None:
        self.model, self.delay_s, self.wrong = model, delay_s, wrong
        self.jit: dict[Path, bool] = {}

    def export(self, base: Path, *, jit_compile: bool) -> Path:
        path = base / "m" / "1"
        path.mkdir(parents=True)
        self.jit[path] = jit_compile
        return path

    def predictor(self, path: Path) -> Callable[[np.ndarray], np.ndarray]:
        jit = self.jit[path]

        def predict(rows: np.ndarray) -> np.ndarray:
            time.sleep(self.delay_s[jit])
            out = self.model.served(rows)
            return out[:, ::-1] if jit is self.wrong else out

        return predict


def by_name(candidates: list[Candidate]) -> dict[str, Candidate]:
    return {c.backend: c for c in candidates}


def test_auto_keeps_the_faster_tf_candidate_whichever_it_is(tiny, tmp_path: Path) -> None:
    for xla_faster in (True, False):
        slow, fast = 0.05, 0.0  # far beyond the timing noise of a busy box
        exporter = ScriptedExporter(tiny, {True: fast if xla_faster else slow,
                                           False: slow if xla_faster else fast})
        artifact, candidates = compile_keras(tiny, "auto", tmp_path / str(xla_faster), exporter,
                                             batch_size=4)
        found = by_name(candidates)
        assert list(found) == tf_compiler_names()  # every registered TF compiler was considered
        winner, loser = ("xla", "savedmodel") if xla_faster else ("savedmodel", "xla")
        assert (found[winner].status, found[loser].status) == ("chosen", "passed")
        assert artifact.backend == winner and artifact.path == found[winner].artifact.path
        assert exporter.jit[artifact.path] is (winner == "xla")
        assert found[winner].p50_ms and set(found[winner].p50_ms) == set(found[loser].p50_ms)


def test_auto_rejects_a_faster_candidate_that_fails_parity(tiny, tmp_path: Path) -> None:
    exporter = ScriptedExporter(tiny, {True: 0.0, False: 0.05}, wrong=True)  # xla: fast, wrong
    artifact, candidates = compile_keras(tiny, "auto", tmp_path, exporter, batch_size=4)
    found = by_name(candidates)
    assert found["xla"].status == "rejected" and found["xla"].reason.startswith("parity:")
    assert artifact.backend == "savedmodel" and found["savedmodel"].status == "chosen"


def test_a_comma_list_restricts_auto(tiny, tmp_path: Path) -> None:
    exporter = ScriptedExporter(tiny, {True: 0.0, False: 0.0})
    artifact, candidates = compile_keras(tiny, "savedmodel,tf-trt", tmp_path, exporter,
                                         batch_size=4)
    assert [c.backend for c in candidates] == ["savedmodel", "tf-trt"]
    assert artifact.backend == "savedmodel"
    assert parse_tf_compiler_option("xla") is None  # one name: no selection
    assert parse_tf_compiler_option(" xla , savedmodel ") == ["xla", "savedmodel"]


@pytest.mark.skipif(NO_TRT is None, reason="this TensorFlow has TensorRT: nothing is skipped")
def test_tf_trt_is_skipped_by_auto_with_its_reason_and_refused_alone(tiny, tmp_path: Path) -> None:
    exporter = ScriptedExporter(tiny, {True: 0.0, False: 0.0})
    _, candidates = compile_keras(tiny, "auto", tmp_path / "auto", exporter, batch_size=4)
    for name in ("tf-trt", "tf-trt-fp16"):
        assert (by_name(candidates)[name].status, by_name(candidates)[name].reason) == ("skipped", NO_TRT)
    assert "TensorRT" in NO_TRT
    with pytest.raises(BackendUnavailable, match=r"^tf-trt: .*TensorRT"):
        compile_keras(tiny, "tf-trt", tmp_path / "alone", exporter, batch_size=4)
    assert not (tmp_path / "alone").exists()  # refused before anything was written


def test_auto_skips_what_the_server_cannot_run_but_a_named_list_keeps_it(tiny, tmp_path: Path) -> None:
    exporter = ScriptedExporter(tiny, {True: 0.0, False: 0.05})
    refused = {"xla": "attached server: no XLA flag known"}
    artifact, candidates = compile_keras(tiny, "auto", tmp_path / "a", exporter, batch_size=4,
                                         auto_refused=refused)
    assert (by_name(candidates)["xla"].status, by_name(candidates)["xla"].reason) == (
        "skipped", refused["xla"])
    assert artifact.backend == "savedmodel"
    artifact, _ = compile_keras(tiny, "savedmodel,xla", tmp_path / "b", exporter, batch_size=4,
                                auto_refused=refused)
    assert artifact.backend == "xla"


def test_no_passing_candidate_is_a_compile_error(tiny, tmp_path: Path) -> None:
    exporter = ScriptedExporter(tiny, {True: 0.0, False: 0.0}, wrong=False)  # savedmodel wrong
    with pytest.raises(CompileError, match="savedmodel: rejected parity"):
        compile_keras(tiny, "savedmodel,tf-trt", tmp_path, exporter, batch_size=4)


def test_real_exports_are_measured_and_parity_checked(tiny, tmp_path: Path) -> None:
    """The real SavedModel export, loaded in process: savedmodel and XLA (where XLA compiles
    here) both pass parity against Keras and are timed at batch 1 and the serving batch."""
    exporter = KerasExporter(tiny, "tiny", 1)
    artifact, candidates = compile_keras(tiny, "savedmodel,xla", tmp_path, exporter, batch_size=4)
    assert (artifact.path / "saved_model.pb").is_file()
    assert exporter.reports[artifact.exported].tf1_max_abs_diff <= 1e-5
    for c in candidates:
        assert c.status in ("chosen", "passed"), c.reason
        assert c.max_abs <= 1e-5 and c.top1 == 1.0
        assert sorted(s.batch for s in c.p50_ms) == [1, 4]
    xla = by_name(candidates)["xla"]
    assert b"_XlaMustCompile" in (xla.artifact.path / "saved_model.pb").read_bytes()


def test_the_target_accepts_exactly_the_registered_tf_compilers() -> None:
    from servegate.targets import get_target

    target = get_target("tfserving")
    for option in ("auto", "eager", *tf_compiler_names(), "savedmodel,xla"):
        target.check_compiler(option)
    for option in ("onnx", "aoti", "savedmodel,onnx", ","):
        with pytest.raises(ConfigError):
            target.check_compiler(option)
    assert get_tf_compiler("eager").name == "savedmodel"


def test_only_the_registry_names_tf_compilers() -> None:
    """No module of src/ but compilers/tf.py spells a TF compiler's name as a string (the
    workflow validator, choices.py and dispatch.py included: they must not list compilers)."""
    names = set(tf_compiler_names())
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path == SRC / "compilers" / "tf.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                found.append(f"{path.relative_to(SRC)}:{node.lineno}: {node.value!r}")
    assert found == []
