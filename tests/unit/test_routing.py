"""Routing by shape (issue 23): which artifacts an archive carries and which shapes each serves,
the spec that records it, the handler that follows it, and the parity of each routed artifact
at its own shapes."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from servegate._resources import handler_module
from servegate.compilers.routing import MIN_GAIN, Option, choose_routing, owning_shape
from servegate.compilers.select import Candidate, choose, choose_routes, routing_rows
from servegate.compilers.shapes import Shape
from servegate.errors import CompileError, ConfigError
from servegate.probes import Probe

B1_T32, B1_T128, B8_T32, B8_T128 = Shape(1, 32), Shape(1, 128), Shape(8, 32), Shape(8, 128)


def _cpu_table() -> list[Option]:
    """The CPU measurement of issue 23: ONNX int8 best at batch 1, AOTI bf16 at batch 8."""
    return [
        Option("eager", {B1_T32: 13.0, B1_T128: 40.0, B8_T32: 60.0, B8_T128: 178.0}),
        Option("onnx-int8", {B1_T32: 3.75, B1_T128: 12.0, B8_T32: 30.0, B8_T128: 123.0}),
        Option("aoti-bf16", {B1_T32: 4.35, B1_T128: 11.0, B8_T32: 14.0, B8_T128: 47.0}),
    ]


def test_two_artifacts_are_kept_when_each_is_best_at_its_own_end() -> None:
    routing = choose_routing(_cpu_table(), max_artifacts=2, serving_batch=8)
    assert set(routing.members) == {"onnx-int8", "aoti-bf16"}
    assert routing.owners == {B1_T32: "onnx-int8", B1_T128: "aoti-bf16", B8_T32: "aoti-bf16",
                              B8_T128: "aoti-bf16"}
    assert routing.members[0] == "aoti-bf16"  # the primary owns the most shapes
    assert routing.worst == pytest.approx(1.0)
    assert routing.owned("onnx-int8") == [B1_T32]
    # alone, the best one would be aoti-bf16, 4.35 / 3.75 = 1.16x slower at 1x32
    single = choose_routing(_cpu_table(), max_artifacts=1, serving_batch=8)
    assert single.members == ("aoti-bf16",) and single.worst == pytest.approx(4.35 / 3.75)


def test_one_artifact_when_it_is_best_everywhere() -> None:
    table = [Option("fast", {Shape(1): 1.0, Shape(8): 5.0}),
             Option("slow", {Shape(1): 2.0, Shape(8): 9.0})]
    routing = choose_routing(table, max_artifacts=3, serving_batch=8)
    assert routing.members == ("fast",) and routing.worst == 1.0
    assert routing.owners == {Shape(1): "fast", Shape(8): "fast"}


def test_a_second_artifact_must_lower_the_worst_slowdown_by_the_margin() -> None:
    """4% better at batch 1 is not worth a second artifact; 6% is."""
    def table(small: float) -> list[Option]:
        return [Option("a", {Shape(1): 1.0, Shape(8): 8.0}),
                Option("b", {Shape(1): 1.0 / small, Shape(8): 9.0})]

    assert choose_routing(table(1.04), max_artifacts=2).members == ("a",)
    assert set(choose_routing(table(1.06), max_artifacts=2).members) == {"a", "b"}
    assert MIN_GAIN == 0.05


def test_three_artifacts_when_three_shapes_have_three_winners() -> None:
    """The H200 measurement: CUDA graphs at 1x32, AOTI at 64x128, dynamic Inductor at 256x128."""
    s1, s64, s256 = Shape(1, 32), Shape(64, 128), Shape(256, 128)
    shapes = [s1, Shape(1, 128), Shape(64, 32), s64, Shape(256, 32), s256]
    base = {s: 10.0 for s in shapes}
    table = [Option("graphs", base | {s1: 0.72, s64: 1.6, s256: 4.5}),
             Option("aoti", base | {s1: 0.91, s64: 1.19, s256: 3.9}),
             Option("dynamic", base | {s1: 0.95, s64: 1.4, s256: 3.23})]
    three = choose_routing(table, max_artifacts=3)
    assert {three.owners[s] for s in (s1, s64, s256)} == {"graphs", "aoti", "dynamic"}
    assert three.worst == pytest.approx(1.0)
    two = choose_routing(table, max_artifacts=2)
    assert len(two.members) == 2 and two.worst > 1.0
    # the best pair: the one whose worst slowdown is smallest among all pairs
    pairs = {p: max(min(table[i].p50_ms[s] for i in p) / min(o.p50_ms[s] for o in table)
                    for s in shapes) for p in itertools.combinations(range(3), 2)}
    assert two.worst == pytest.approx(min(pairs.values()))


def test_the_worst_slowdown_decides_not_the_mean() -> None:
    """Three specialists (each fastest at one shape, 1.8x slower elsewhere) and a generalist
    (1.45x everywhere): by the worst slowdown, the generalist alone (no pair is 5% better); by
    the mean, two specialists (1.27 on average, but 1.8x at the third shape)."""
    shapes = [Shape(1), Shape(8), Shape(64)]
    table = [Option("x", dict(zip(shapes, (1.0, 1.8, 1.8), strict=True))),
             Option("y", dict(zip(shapes, (1.8, 1.0, 1.8), strict=True))),
             Option("z", dict(zip(shapes, (1.8, 1.8, 1.0), strict=True))),
             Option("general", dict(zip(shapes, (1.45, 1.45, 1.45), strict=True)))]
    routing = choose_routing(table, max_artifacts=2)
    assert routing.members == ("general",) and routing.worst == pytest.approx(1.45)
    # a singleton by the worst slowdown too: 1.45 beats the specialists' 1.8
    assert choose_routing(table, max_artifacts=1).members == ("general",)


def test_ties_go_to_fewer_artifacts_then_the_smaller_archive() -> None:
    same = {Shape(1): 1.0, Shape(8): 8.0}
    twins = [Option("big", same, bytes=900), Option("small", same, bytes=100)]
    assert choose_routing(twins, max_artifacts=2, min_gain=0.0).members == ("small",)
    # two pairs that reach the same worst slowdown: the smaller pair in bytes
    table = [Option("b1", {Shape(1): 1.0, Shape(8): 9.0}, bytes=500),
             Option("b1-lite", {Shape(1): 1.0, Shape(8): 9.0}, bytes=100),
             Option("b8", {Shape(1): 2.0, Shape(8): 8.0}, bytes=300)]
    assert set(choose_routing(table, max_artifacts=2).members) == {"b1-lite", "b8"}
    # identical in every way: the earlier one
    assert choose_routing([Option("x", same), Option("y", same)]).members == ("x",)


def test_artifacts_of_different_devices_are_not_combined() -> None:
    table = [Option("cpu-small", {Shape(1): 1.0, Shape(8): 20.0}, group="cpu"),
             Option("gpu-large", {Shape(1): 3.0, Shape(8): 2.0}, group="cuda")]
    routing = choose_routing(table, max_artifacts=2)
    assert len(routing.members) == 1


def test_the_search_is_bounded_and_checked() -> None:
    many = [Option(f"c{i}", {Shape(1): 1.0 + i}) for i in range(40)]
    with pytest.raises(ConfigError, match="lower max_artifacts"):
        choose_routing(many, max_artifacts=4)
    with pytest.raises(ConfigError):
        choose_routing(many[:2], max_artifacts=0)
    with pytest.raises(ConfigError):
        choose_routing([], max_artifacts=2)


def _old_choose(candidates: list[Candidate], batch_size: int) -> str:
    """``select.choose`` as it was before routing (issue 23), the oracle of one artifact."""
    usable = [c for c in candidates if c.usable and c.p50_ms]
    shapes = set.intersection(*(set(c.p50_ms) for c in usable))
    fastest = {s: min(c.p50_ms[s] for c in usable) for s in shapes}
    regret = {c.backend: max(c.p50_ms[s] / fastest[s] for s in shapes) for c in usable}
    return min(usable, key=lambda c: (regret[c.backend],
                                      sum(c.p50_ms[s] for s in shapes if s.batch == 8))).backend


def test_one_artifact_reproduces_the_single_choice_of_before() -> None:
    rng = np.random.default_rng(23)
    shapes = [Shape(1), Shape(8), Shape(64)]
    for _ in range(200):
        candidates = [Candidate(f"c{i}", status="passed",
                                p50_ms={s: float(rng.choice([1.0, 1.5, 2.0, 3.0])) * s.batch
                                        for s in shapes}) for i in range(5)]
        candidates[int(rng.integers(5))].status = "rejected"
        expected = _old_choose(candidates, 8)
        assert choose(candidates, 8).backend == expected
        routing = choose_routes(candidates, 8, max_artifacts=1)
        assert routing.members == (expected,)
        assert [c.backend for c in candidates if c.status == "chosen"] == [expected]
        assert all(not c.owns for c in candidates)


def test_choose_routes_marks_the_kept_candidates_and_their_shapes() -> None:
    candidates = [Candidate(o.name, status="passed", p50_ms=dict(o.p50_ms)) for o in _cpu_table()]
    candidates.append(Candidate("broken", status="failed", reason="boom"))
    routing = choose_routes(candidates, 8, max_artifacts=2)
    by_name = {c.backend: c for c in candidates}
    assert by_name["onnx-int8"].owns == [B1_T32] and by_name["onnx-int8"].status == "chosen"
    assert by_name["aoti-bf16"].owns == [B1_T128, B8_T32, B8_T128]
    assert by_name["eager"].status == "passed" and not by_name["eager"].owns
    assert by_name["aoti-bf16"].regret == pytest.approx(4.35 / 3.75)  # alone, as before
    rows = routing_rows(candidates)
    assert [(r["shape"], r["artifact"], r["fastest"]) for r in rows] == [
        ("b1_t32", "onnx-int8", "onnx-int8"), ("b1_t128", "aoti-bf16", "aoti-bf16"),
        ("b8_t32", "aoti-bf16", "aoti-bf16"), ("b8_t128", "aoti-bf16", "aoti-bf16")]
    assert all(r["slowdown"] == pytest.approx(1.0) for r in rows)
    assert routing.members[0] == "aoti-bf16"
    with pytest.raises(CompileError, match="no compiler backend passed"):
        choose_routes([Candidate("x", status="failed")], 8, max_artifacts=2)


def test_every_shape_has_one_definite_owner_in_servegate_and_in_the_handler() -> None:
    routing = choose_routing(_cpu_table(), max_artifacts=2)
    measured = list(routing.owners)
    assert owning_shape(Shape(3, 20), measured) == B8_T32
    assert owning_shape(Shape(500, 500), measured) == B8_T128  # past the largest: the largest
    assert owning_shape(Shape(1, 33), measured) == B1_T128
    assert owning_shape(Shape(5), [Shape(1), Shape(8)]) == Shape(8)
    sg_base = handler_module("sg_base")
    routes = [{"owns": [{"batch": s.batch, "tokens": s.tokens} for s in routing.owned(name)]}
              for name in routing.members]
    router = sg_base.Router.from_spec(routes)
    for rows, tokens in itertools.product(range(1, 20), (1, 16, 32, 33, 100, 128, 300)):
        owner = routing.members[router.owner(rows, tokens)]
        assert owner == routing.owner(Shape(rows, tokens)), (rows, tokens)


def test_a_routed_artifact_warms_up_only_the_buckets_its_chunks_reach() -> None:
    """A CUDA-graph artifact owning batch 1 records one graph, not one per bucket up to 512."""
    sg_base = handler_module("sg_base")
    router = sg_base.Router.from_spec([{"owns": [{"batch": 1}]},
                                       {"owns": [{"batch": 8}, {"batch": 64}]}])
    buckets = sg_base.Buckets((1, 2, 4, 8, 16, 32, 64, 128), (16, 32))
    assert router.reachable(0, buckets, 128) == sg_base.Buckets((1,), (16, 32))
    assert router.reachable(1, buckets, 128).batch == (2, 4, 8, 16, 32, 64, 128)
    assert router.reachable(1, buckets, 16).batch == (2, 4, 8, 16)  # chunks of at most 16 rows


def test_the_handler_refuses_routes_that_leave_a_shape_without_owner() -> None:
    sg_base = handler_module("sg_base")
    errors = handler_module("sg_errors")
    with pytest.raises(errors.ModelLoadError, match="every batch x tokens"):
        sg_base.Router.from_spec([{"owns": [{"batch": 1, "tokens": 32}]},
                                  {"owns": [{"batch": 8, "tokens": 128}]}])
    with pytest.raises(errors.ModelLoadError, match="routed twice"):
        sg_base.Router.from_spec([{"owns": [{"batch": 1}]}, {"owns": [{"batch": 1}]}])
    with pytest.raises(errors.ModelLoadError, match="invalid routes"):
        sg_base.Router.from_spec([{"owns": [{"rows": 1}]}])


# ---- the spec --------------------------------------------------------------------------------
def _spec_dict(**routes: object) -> dict:
    return {"task": "classification", "format": "state_dict", "artifact": "model.pt",
            "model_class": "m.Net", "inputs": [{"name": "input", "shape": [64]}], **routes}


def test_the_spec_round_trips_its_routes_and_old_specs_still_load() -> None:
    from servegate.packaging.spec import ArtifactSpec

    old = ArtifactSpec.model_validate(_spec_dict())  # no routes: one artifact, as before
    assert old.routes == []
    routes = [{"compiler": "eager", "format": "state_dict", "artifact": "model.pt",
               "model_class": "m.Net", "owns": [{"batch": 8}]},
              {"compiler": "onnx", "format": "onnx", "artifact": "onnx.model.onnx",
               "owns": [{"batch": 1}]}]
    spec = ArtifactSpec.model_validate(_spec_dict(routes=routes))
    again = ArtifactSpec.model_validate_json(spec.model_dump_json())
    assert again == spec and [r.owns[0].batch for r in again.routes] == [8, 1]
    bad = {
        r"routes\[0\] must be": [routes[1], routes[0]],
        "share a file name": [routes[0], routes[1] | {"artifact": "model.pt"}],
        "every batch x tokens": [routes[0], routes[1] | {"owns": [{"batch": 1, "tokens": 32}]}],
        "device": [routes[0], routes[1] | {"device": "cuda"}],
    }
    for message, value in bad.items():
        with pytest.raises(ValueError, match=message):
            ArtifactSpec.model_validate(_spec_dict(routes=value))


# ---- parity of each routed artifact at its own shapes ----------------------------------------
def test_a_routed_artifact_wrong_at_its_own_shape_is_rejected_by_name(digits) -> None:
    from servegate.compilers.select import check_owned_shapes

    def exact():
        return lambda x: digits.forward_all(x)

    def wrong_at_one_row():
        def predict(x):
            out = digits.forward_all(x)
            return tuple(o + 1.0 for o in out) if len(x) == 1 else out
        return predict

    good = Candidate("export", status="chosen", owns=[Shape(1), Shape(8)])
    assert check_owned_shapes(good, exact, digits) and good.status == "chosen"
    bad = Candidate("onnx", status="chosen", owns=[Shape(1)])
    assert not check_owned_shapes(bad, wrong_at_one_row, digits)
    assert bad.status == "rejected" and not bad.owns
    assert bad.reason.startswith("routed artifact onnx at b1: parity: max abs")
    # the same artifact owning batch 8 only is not wrong there
    fine = Candidate("onnx", status="chosen", owns=[Shape(8)])
    assert check_owned_shapes(fine, wrong_at_one_row, digits)

    def cannot_load():
        raise RuntimeError("no such file")

    lost = Candidate("aoti", status="chosen", owns=[Shape(8)])
    assert not check_owned_shapes(lost, cannot_load, digits)
    assert lost.status == "failed" and "routed artifact aoti" in lost.reason


def test_auto_routes_again_without_an_artifact_that_fails_at_its_shapes(digits, tmp_path,
                                                                       monkeypatch) -> None:
    """The compile driver keeps the routed set only when every member passes at its own shapes:
    a member that fails is rejected (named) and the shapes are routed among the rest."""
    from servegate.artifacts import CompiledArtifact
    from servegate.compilers import driver
    from servegate.config import BatchingConfig

    def made(name: str, p50: dict[Shape, float]) -> Candidate:
        artifact = CompiledArtifact(name, "state_dict", tmp_path / f"{name}.pt")
        return Candidate(name, status="passed", artifact=artifact, p50_ms=p50)

    candidates = [made("small", {Shape(1): 1.0, Shape(8): 20.0}),
                  made("large", {Shape(1): 3.0, Shape(8): 8.0}),
                  made("middle", {Shape(1): 1.1, Shape(8): 12.0})]
    monkeypatch.setattr(driver, "parse_compiler_option", lambda option: ["small", "large", "middle"])
    monkeypatch.setattr(driver, "evaluate", lambda *a, **k: candidates)

    def load(artifact, threads):
        if artifact.backend == "small":  # wrong answers at the one shape it would own
            return lambda x: tuple(o * 0 for o in digits.forward_all(x))
        return lambda x: digits.forward_all(x)

    monkeypatch.setattr(driver, "load_predictor", load)
    artifact, measured = driver.compile_model(digits, "auto", tmp_path, BatchingConfig(),
                                              max_batch=8, max_artifacts=2)
    by_name = {c.backend: c for c in measured}
    assert by_name["small"].status == "rejected" and "routed artifact small at b1" in by_name["small"].reason
    assert {n for n, c in by_name.items() if c.owns} == {"middle", "large"}
    assert by_name["middle"].owns == [Shape(1)] and by_name["large"].owns == [Shape(8)]
    assert artifact.backend in ("middle", "large")


def test_each_routed_artifact_gets_requests_that_reach_it() -> None:
    from servegate.compilers.routing import probes

    owns = {"small": [Shape(1)], "large": [Shape(8), Shape(64), Shape(256)]}
    assert probes(owns, 64) == {"small": [Probe(1)], "large": [Probe(2), Probe(9)]}  # 65: too many
    sg_base = handler_module("sg_base")
    router = sg_base.Router.from_spec([{"owns": [{"batch": s.batch} for s in shapes]}
                                       for shapes in owns.values()])
    for index, reaching in enumerate(probes(owns, 64).values()):
        assert {router.owner(p.rows) for p in reaching} == {index}
    # a text model: the token counts routed to each artifact too, checked at both ends of each
    # range through the handler's Router (the largest count reaches the largest class)
    text = {"a": [B1_T32], "b": [B1_T128, B8_T32, B8_T128]}
    assert probes(text, 64) == {"a": [Probe(1, 1, 32)],
                                "b": [Probe(1, 33, None), Probe(2, 1, 32), Probe(2, 33, None)]}
    router = sg_base.Router.from_spec([{"owns": [{"batch": s.batch, "tokens": s.tokens} for s in shapes]}
                                       for shapes in text.values()])
    for index, reaching in enumerate(probes(text, 64).values()):
        for p in reaching:
            for tokens in (p.min_tokens, p.max_tokens or 512):
                assert router.owner(p.rows, tokens) == index, (p, tokens)
    assert str(Probe(2, 33, None)) == "2 rows of 33+ tokens" and str(Probe(1)) == "1 row"


def test_the_parity_gate_names_the_routed_artifact_that_failed(digits) -> None:
    """Each routed artifact is checked on held-out rows in requests of the sizes it serves, with
    its own precision's limits: the failing checks carry its name."""
    from servegate.config import ParityThresholds
    from servegate.gates.parity import ParityResult, routed_parity_checks

    seen: list[tuple[int, int]] = []

    def parity(held_out, rows: int) -> ParityResult:
        seen.append((len(held_out.eval_x), rows))
        np.testing.assert_array_equal(held_out.eval_x, digits.eval_x[:len(held_out.eval_x)])
        return ParityResult(rows=len(held_out.eval_x), max_abs_diff=0.5 if rows == 9 else 0.0,
                            top1_agreement=0.5 if rows == 1 else 1.0, accuracy=0.9,
                            reference_accuracy=0.9, champion_accuracy=None, abs_diffs=np.zeros(1))

    checks = routed_parity_checks(parity, digits, [("aoti", (Probe(2), Probe(9))),
                                                   ("onnx-int8", (Probe(1),))], ParityThresholds())
    assert seen == [(64, 2), (64, 9), (64, 1)]
    failed = sorted(c.name for c in checks if not c.passed)
    assert failed == ["aoti at 9 rows: max_abs_diff", "onnx-int8 at 1 row: top1_agreement"]
    # int8 is held to reduced-precision limits: its max abs difference is not checked
    assert not any(c.name.startswith("onnx-int8") and "max_abs" in c.name for c in checks)


@pytest.fixture(scope="module")
def minilm_tokens():
    """The packaged MiniLM's tokenisation, as its worker does it (256 tokens at most)."""
    from servegate.sources.hf import packaged_minilm_dir

    return handler_module("sg_text").TextEncoder(
        str(packaged_minilm_dir() / "tokenizer.json"), max_length=256)


class _Texts:
    """A text model as the parity gate sees it: held-out texts, labels, the worker's tokens."""

    task = "text-classification"

    def __init__(self, texts: list[str], encoder) -> None:
        self.eval_x = np.asarray(texts, dtype=str)
        self.eval_y = np.arange(len(texts)) % 3
        self._encoder = encoder

    def text_encoder(self):
        return self._encoder


def test_a_text_artifact_is_checked_on_texts_of_the_token_counts_it_serves(minilm_tokens) -> None:
    """Texts are routed by their token counts too: each probe's requests hold held-out texts of
    the counts its artifact owns (their labels kept), else texts made of the held-out words (no
    labels); every request of them reaches that artifact through the handler's Router."""
    from servegate.compilers.routing import probes
    from servegate.config import ParityThresholds
    from servegate.gates.parity import ParityResult, routed_parity_checks

    rng = np.random.default_rng(0)
    words = ["model", "serving", "latency", "gate", "champion", "tokens", "batch", "parity"]
    short = [" ".join(rng.choice(words, size=int(n))) for n in rng.integers(2, 6, size=20)]
    model = _Texts(short, minilm_tokens)  # every held-out text is under 16 tokens
    owns = {"graphs": [Shape(1, 16), Shape(8, 16)], "dynamic": [Shape(1, 64), Shape(8, 64)],
            "long": [Shape(1, 256), Shape(8, 256)]}
    router = handler_module("sg_base").Router.from_spec(
        [{"owns": [{"batch": s.batch, "tokens": s.tokens} for s in shapes]} for shapes in owns.values()])
    seen: dict[str, list] = {}

    def parity(held_out, rows: int) -> ParityResult:
        texts = [str(t) for t in held_out.eval_x]
        owners = {router.owner(len(chunk), max(minilm_tokens.token_counts(chunk)))
                  for chunk in (texts[i:i + rows] for i in range(0, len(texts), rows))}
        seen.setdefault(list(owns)[owners.pop()], []).append(
            (rows, held_out.eval_y is not None, owners))
        return ParityResult(rows=len(texts), max_abs_diff=0.0, top1_agreement=1.0, accuracy=None,
                            reference_accuracy=None, champion_accuracy=None, abs_diffs=np.zeros(1))

    routes = [(name, tuple(reaching)) for name, reaching in probes(owns, 64).items()]
    checks = routed_parity_checks(parity, model, routes, ParityThresholds())
    assert all(c.passed for c in checks)
    # every probe reached its own artifact and nothing else; labels only where held-out texts fit
    assert seen == {"graphs": [(1, True, set()), (2, True, set())],
                    "dynamic": [(1, False, set()), (2, False, set())],
                    "long": [(1, False, set()), (2, False, set())]}


def test_a_token_range_no_text_can_reach_is_a_failed_check(minilm_tokens) -> None:
    from servegate.config import ParityThresholds
    from servegate.gates.parity import routed_parity_checks, texts_in_range

    texts = ["serving gate latency", "champion"]
    inside, made = texts_in_range(texts, minilm_tokens.token_counts, Probe(1, 5, 6))
    assert list(inside) == [0] and made == []  # [CLS] serving gate late ##ncy [SEP]: 6 tokens
    impossible = Probe(1, 300, None)  # past the 256-token truncation
    inside, made = texts_in_range(texts, minilm_tokens.token_counts, impossible)
    assert len(inside) == 0 and made == []

    def parity(held_out, rows):  # never called: no text reaches that artifact
        raise AssertionError("sent a request that cannot reach the artifact")

    checks = routed_parity_checks(parity, _Texts(texts, minilm_tokens), [("aoti", (impossible,))],
                                  ParityThresholds())
    assert [(c.name, c.passed) for c in checks] == [
        ("aoti at 1 row of 300+ tokens: texts of that length", False)]


# ---- the handler with two real artifacts -----------------------------------------------------
@pytest.fixture(scope="module")
def routed_archive(digits, tmp_path_factory) -> tuple[Path, Path]:
    """The digits model as a state_dict (owns batch 1) and an ExportedProgram (owns 2 to 8, and
    anything larger), in one archive; and the same model in a one-artifact archive."""
    from servegate.compilers import get_compiler
    from servegate.config import BatchingConfig
    from servegate.packaging.mar import build_mar, contents_for

    work = tmp_path_factory.mktemp("routed")
    eager = get_compiler("eager").compile(digits, work / "eager", max_batch=16)
    exported = get_compiler("export").compile(digits, work / "export", max_batch=16)
    routed = build_mar(contents_for(digits, exported, name="routed", version="1",
                                    batching=BatchingConfig(), max_batch=16,
                                    routes=[(exported, [Shape(8)]), (eager, [Shape(1)])]),
                       work / "store")
    single = build_mar(contents_for(digits, eager, name="single", version="1",
                                    batching=BatchingConfig(), max_batch=16), work / "store")
    return routed, single


def test_the_handler_sends_each_chunk_to_the_artifact_that_owns_its_shape(routed_archive,
                                                                           digits) -> None:
    from servegate.harness import LocalHandler
    from servegate.packaging.mar import read_archive_member

    routed, single = routed_archive
    spec = json.loads(read_archive_member(routed, "servegate.json"))
    assert [(r["compiler"], r["artifact"], r["owns"]) for r in spec["routes"]] == [
        ("export", "model.pt2", [{"batch": 8, "tokens": None}]),
        ("eager", "eager.model.pt", [{"batch": 1, "tokens": None}])]
    rows = digits.eval_x[:30]
    bodies = [json.dumps({"instances": rows[i:i + n].tolist()}).encode()
              for i, n in ((0, 1), (1, 3), (4, 1), (5, 20))]
    with LocalHandler(single) as one:
        expected = [one.batch([b]) for b in bodies]
    with LocalHandler(routed) as local:
        handler = local.handler
        assert [r.name for r in handler.routes] == ["export", "eager"]
        calls: list[tuple[str, int]] = []
        for route_index, route in enumerate(handler.routes):
            def recording(*arrays, _predict=route.predict, _name=route.name):
                calls.append((_name, len(arrays[0])))
                return _predict(*arrays)
            handler.routes[route_index] = type(route)(route.name, route.spec, recording,
                                                      route.buckets)
        got = [local.batch([b]) for b in bodies]
        assert calls == [("eager", 1), ("export", 3), ("eager", 1), ("export", 16),
                         ("export", 4)]  # 20 rows: chunks of max_batch 16, then 4
        calls.clear()
        together = local.batch(bodies)  # one batch of 25 rows: 16 (export), 9 (export)
        assert calls == [("export", 16), ("export", 9)]
    for [(status, answer)], [(want_status, want)] in zip(got, expected, strict=True):
        assert status == want_status == 200
        for g, w in zip(answer["predictions"], want["predictions"], strict=True):
            assert g["label"] == w["label"]
            np.testing.assert_allclose(g["probabilities"], w["probabilities"], atol=1e-5)
    assert [s for s, _ in together] == [200] * 4
    assert [p["label"] for _, a in together for p in a["predictions"]] == [
        p["label"] for [(_, a)] in expected for p in a["predictions"]]


def test_each_routed_artifact_warms_up_its_own_buckets(routed_archive) -> None:
    from servegate.harness import LocalHandler

    routed, _ = routed_archive
    with LocalHandler(routed) as local:
        handler = local.handler
        sg_base = sys.modules["sg_base"]  # the archive's own handler modules
        buckets = sg_base.Buckets((1, 2, 4, 8, 16))
        shapes: dict[str, list[int]] = {"export": [], "eager": []}

        def recording(route):
            def predict(*arrays):
                shapes[route.name].append(len(arrays[0]))
                return route.predict(*arrays)
            return predict

        export, eager = handler.routes
        handler._predict, handler.buckets = recording(export), buckets
        handler.routes = [sg_base.Route("export", export.spec, handler._predict, buckets),
                          sg_base.Route("eager", eager.spec, recording(eager), buckets)]
        handler._warm_up_buckets(str(local.model_dir))
    # eager owns batch 1: its chunks are padded to bucket 1 only; export takes 2 rows and up
    assert shapes == {"export": [2, 4, 8, 16], "eager": [1]}


def test_the_parity_step_checks_each_routed_artifact_through_the_target(mlflow_store,
                                                                        digits) -> None:
    """``steps.gate_parity`` adds, for an archive routed by shape, the checks of each artifact
    on the requests that reach it (``Built.routes``) to the whole set's checks."""
    import io

    import mlflow
    from rich.console import Console

    from servegate import steps
    from servegate.config import PipelineConfig
    from servegate.gates.parity import ParityResult
    from servegate.targets import Built

    asked: list[tuple[int, int]] = []

    class Target:
        def check_parity(self, backend, name, version, model, champion, limits=None, *, rows=32):
            asked.append((len(model.eval_x), rows))
            return ParityResult(rows=len(model.eval_x), max_abs_diff=0.3 if rows == 1 else 0.0,
                                top1_agreement=1.0, accuracy=0.9, reference_accuracy=0.9,
                                champion_accuracy=None, abs_diffs=np.zeros(1))

    printed = io.StringIO()
    run = steps.Run(PipelineConfig(name="digits"), Target(), object(),  # type: ignore[arg-type]
                    Console(file=printed, width=400))
    built = Built(Path("a.mar"), "uri", "aoti+eager+onnx", "fp32",
                  (("aoti", (Probe(2),)), ("eager", (Probe(1),)), ("onnx", ())))
    with mlflow.start_run():
        _, checks = steps.gate_parity(run, digits, "2", None, built)
    assert asked == [(len(digits.eval_x), 32), (64, 2), (64, 1)]
    failed = [c.name for c in checks if not c.passed]
    assert failed == ["eager at 1 row: max_abs_diff"]
    # an artifact no single request reaches is said to be checked only in process
    assert "onnx serves only chunks of more rows than one request may carry" in printed.getvalue()
    asked.clear()
    with mlflow.start_run():  # one artifact: the whole set only, as before
        steps.gate_parity(run, digits, "2", None, Built(Path("a.mar"), "uri", "onnx", "fp32"))
    assert asked == [(len(digits.eval_x), 32)]
