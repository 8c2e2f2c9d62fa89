"""The accuracy gate: held-out data through the served challenger, against the in-process
reference and against the served champion, with the checks that fit the model's task:

- classification (tensors, images, text): probabilities against the reference (max abs diff,
  top-1 agreement); accuracy against the champion's on the same rows when there are labels, and
  top-1 agreement with the champion when there are none;
- regression: max abs and relative error against the reference; RMSE and MAE against the
  champion's on the same rows (``max_metric_regression``);
- embedding: cosine similarity to the reference;
- tensor: parity with the reference only.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from servegate.backends.base import ServingBackend
from servegate.choices import CLASS_TASKS
from servegate.config import ParityThresholds, RequestLimits
from servegate.errors import ConfigError, SourceError
from servegate.gates.checks import Check
from servegate.parity_limits import EMBEDDING_PARITY_LIMITS, PARITY_LIMITS, precision_of
from servegate.probes import Probe
from servegate.sources.base import TorchModel


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _task(model: Any) -> str:
    return str(getattr(model, "task", "classification"))


def _request_rows(model: Any, x: Any) -> list[Any]:
    rows = getattr(model, "request_rows", None)
    return rows(x) if rows is not None else np.asarray(x).tolist()


def _output_names(model: Any) -> list[str]:
    return [s.name for s in getattr(model, "outputs", ())] or ["output"]


#: A served answer row -> its output values in the model's output order (``task``, output
#: names); each target decodes its own server's answers (``MeasuredTarget.prediction_values``).
AnswerDecoder = Callable[[Any, str, list[str]], list[Any]]


#: Room left in a request body for the JSON envelope around the instances.
ENVELOPE_BYTES = 256


def request_chunks(instances: list[Any], limits: RequestLimits | None = None,
                   rows: int = 32) -> list[list[Any]]:
    """``instances`` in consecutive requests that each fit the server's body limit (measured as
    the JSON they are sent as) and hold at most ``rows`` (and ``max_instances``) instances; a
    single instance over the limit is a ``ConfigError`` saying what to raise."""
    limits = limits or RequestLimits()
    budget = limits.max_body_bytes - ENVELOPE_BYTES
    most = max(1, min(rows, limits.max_instances))
    chunks: list[list[Any]] = []
    current: list[Any] = []
    size = 0
    for index, instance in enumerate(instances):
        encoded = len(json.dumps(instance, separators=(",", ":"))) + 1
        if encoded > budget:
            raise ConfigError(f"evaluation row {index} is {encoded} bytes as a JSON request, over "
                              f"the servers' body limit of {limits.max_body_bytes} bytes: raise "
                              "limits.max_body_bytes, or send it in a smaller form (an image "
                              "model's rows go as PNG)")
        if current and (size + encoded > budget or len(current) >= most):
            chunks.append(current)
            current, size = [], 0
        current.append(instance)
        size += encoded
    if current:
        chunks.append(current)
    return chunks


def served_outputs(backend: ServingBackend, name: str, version: str | None, model: Any, x: Any,
                   decode: AnswerDecoder, limits: RequestLimits | None = None,
                   rows: int = 32) -> tuple[np.ndarray, ...]:
    """Every output of every row of ``x`` through the standard REST endpoint: class
    probabilities, embedding vectors, regression values or raw tensors, in output order; sent
    in requests of at most ``rows`` rows that fit the body limit (``request_chunks``)."""
    task, names = _task(model), _output_names(model)
    columns: list[list[Any]] | None = None
    for chunk in request_chunks(_request_rows(model, x), limits, rows):
        answer = backend.predict(name, {"instances": chunk}, version)
        for prediction in answer["predictions"]:
            values = decode(prediction, task, names)
            columns = columns or [[] for _ in values]
            for column, value in zip(columns, values, strict=True):
                column.append(value)
    return tuple(np.asarray(c, dtype=np.float64) for c in columns or [])


def served_vectors(backend: ServingBackend, name: str, version: str | None, x: np.ndarray,
                   task: str, decode: AnswerDecoder,
                   limits: RequestLimits | None = None, rows: int = 32) -> np.ndarray:
    """The first output (embedding vectors, or class probabilities) of every row of ``x``."""
    vectors = []
    for chunk in request_chunks(x.tolist(), limits, rows):
        answer = backend.predict(name, {"instances": chunk}, version)
        vectors += [decode(p, task, ["output"])[0] for p in answer["predictions"]]
    return np.asarray(vectors, dtype=np.float64)


@dataclass(frozen=True)
class ParityResult:
    rows: int
    max_abs_diff: float
    top1_agreement: float
    accuracy: float
    reference_accuracy: float
    champion_accuracy: float | None
    abs_diffs: np.ndarray
    #: Embedding models: the lowest cosine similarity of a served row to its reference.
    min_cosine: float | None = None
    task: str = "classification"
    max_rel_diff: float = float("nan")
    #: Top-1 agreement of challenger and champion (classification without labels).
    champion_agreement: float | None = None
    rmse: float | None = None
    mae: float | None = None
    reference_rmse: float | None = None
    champion_rmse: float | None = None
    champion_mae: float | None = None
    labelled: bool = True
    #: Classification: the served top-1 class of each row (for the report's sample images).
    predicted: np.ndarray | None = None

    def metrics(self) -> dict[str, float]:
        figures: dict[str, float | None] = {
            "rows": self.rows, "max_abs_diff": self.max_abs_diff, "max_rel_diff": self.max_rel_diff,
            "top1_agreement": self.top1_agreement, "accuracy": self.accuracy,
            "reference_accuracy": self.reference_accuracy, "champion_accuracy": self.champion_accuracy,
            "min_cosine": self.min_cosine, "champion_agreement": self.champion_agreement,
            "rmse": self.rmse, "mae": self.mae, "reference_rmse": self.reference_rmse,
            "champion_rmse": self.champion_rmse, "champion_mae": self.champion_mae}
        return {k: float(v) for k, v in figures.items() if v is not None and v == v}  # NaN: n/a

    def notes(self) -> list[str]:
        """What was not gated, and why (for the report)."""
        if self.labelled or self.task in ("embedding", "tensor"):
            return []
        return ["accuracy was not gated: the evaluation data has no labels (parity with the "
                "reference" + (" and agreement with the champion" if self.champion_agreement is not None
                               else "") + " only)"]


def run_parity(backend: ServingBackend, name: str, version: str, model: TorchModel | Any,
               champion_version: str | None, limits: RequestLimits | None = None, *,
               decode: AnswerDecoder, rows: int = 32) -> ParityResult:
    """The held-out rows through the challenger (and the champion), against the reference;
    requests of at most ``rows`` rows sized to fit ``limits`` (the handlers' body limit);
    answers read by the target's ``decode``."""
    if model.eval_x is None:
        raise SourceError("the model has no held-out set to gate on")
    task = _task(model)
    if task == "embedding" or (task == "text-classification" and model.eval_y is None
                               and not model.labels):
        return _embedding_parity(backend, name, version, model, decode, limits, rows)
    x, y = model.eval_x, model.eval_y
    served = served_outputs(backend, name, version, model, x, decode, limits, rows)
    reference = _reference(model, x, task)
    flat_served, flat_reference = _flat(served), _flat(reference)
    diffs = np.abs(flat_served - flat_reference)
    champion = (served_outputs(backend, name, champion_version, model, x, decode, limits, rows)
                if champion_version is not None else None)
    nan = float("nan")
    common: dict[str, Any] = dict(
        rows=len(x), max_abs_diff=float(diffs.max()), abs_diffs=diffs.max(axis=1), task=task,
        max_rel_diff=float((diffs / np.maximum(np.abs(flat_reference), 1.0)).max()), labelled=y is not None)
    if task in CLASS_TASKS:
        top1 = served[0].argmax(1)
        return ParityResult(
            **common, predicted=top1, top1_agreement=float((top1 == reference[0].argmax(1)).mean()),
            accuracy=float((top1 == y).mean()) if y is not None else nan,
            reference_accuracy=float((reference[0].argmax(1) == y).mean()) if y is not None else nan,
            champion_accuracy=(float((champion[0].argmax(1) == y).mean())
                               if champion is not None and y is not None else None),
            champion_agreement=(float((champion[0].argmax(1) == top1).mean())
                                if champion is not None and y is None else None))
    if task == "regression" and y is not None:
        target = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        rmse, mae = _errors(_flat(served), target)
        reference_rmse, _ = _errors(flat_reference, target)
        champion_rmse, champion_mae = (_errors(_flat(champion), target) if champion is not None
                                       else (None, None))
        return ParityResult(**common, top1_agreement=nan, accuracy=nan, reference_accuracy=nan,
                            champion_accuracy=None, rmse=rmse, mae=mae, reference_rmse=reference_rmse,
                            champion_rmse=champion_rmse, champion_mae=champion_mae)
    return ParityResult(**common, top1_agreement=nan, accuracy=nan, reference_accuracy=nan,
                        champion_accuracy=None)


def _reference(model: Any, x: Any, task: str) -> tuple[np.ndarray, ...]:
    outputs = getattr(model, "reference_outputs", None)
    reference = tuple(outputs(x)) if outputs is not None else (model.reference(x),)
    reference = tuple(np.asarray(r, dtype=np.float64) for r in reference)
    if task in CLASS_TASKS and not getattr(model, "outputs_are_probabilities", False):
        reference = (softmax(reference[0]),)
    return reference[:1] if task in CLASS_TASKS else reference


def _flat(outputs: tuple[np.ndarray, ...] | None) -> np.ndarray:
    assert outputs is not None
    return np.concatenate([np.asarray(o, dtype=np.float64).reshape(len(o), -1) for o in outputs], axis=1)


def _errors(predicted: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    error = predicted - target
    return float(np.sqrt(np.mean(error ** 2))), float(np.mean(np.abs(error)))


def _embedding_parity(backend: ServingBackend, name: str, version: str, model: Any,
                      decode: AnswerDecoder, limits: RequestLimits | None = None,
                      rows: int = 32) -> ParityResult:
    """Embedding models have no labels: served vectors against the reference, by cosine."""
    x = model.eval_x
    served = served_vectors(backend, name, version, x, _task(model), decode, limits, rows)
    reference = model.reference(x).astype(np.float64)
    diffs = np.abs(served - reference)
    cosine = (served * reference).sum(1) / (
        np.linalg.norm(served, axis=1) * np.linalg.norm(reference, axis=1) + 1e-12)
    nan = float("nan")
    return ParityResult(rows=len(x), max_abs_diff=float(diffs.max()),
                        top1_agreement=nan, accuracy=nan, reference_accuracy=nan,
                        champion_accuracy=None, abs_diffs=diffs.max(axis=1),
                        min_cosine=float(cosine.min()), task="embedding")


def parity_checks(result: ParityResult, thresholds: ParityThresholds,
                  precision: str = "fp32") -> list[Check]:
    """The checks of ``result``'s task (see the module docstring). FP32 classification: served
    probabilities equal the reference within ``parity_atol``; reduced precision (whose outputs
    legitimately differ from the FP32 reference): top-1 agreement and task accuracy instead.
    Embeddings: the cosine of ``servegate.parity_limits``. Regression and tensors: see
    ``_value_checks``."""
    if result.min_cosine is not None:
        checks = [Check("parity", "min_cosine", result.min_cosine, ">=",
                        EMBEDDING_PARITY_LIMITS[precision].min_cosine)]
        if precision == "fp32":
            checks.append(Check("parity", "max_abs_diff", result.max_abs_diff, "<=",
                                thresholds.parity_atol))
        return checks
    if result.task in ("regression", "tensor"):
        return _value_checks(result, thresholds, precision)
    if precision == "fp32":
        checks = [
            Check("parity", "max_abs_diff", result.max_abs_diff, "<=", thresholds.parity_atol),
            Check("parity", "top1_agreement", result.top1_agreement, ">=",
                  thresholds.min_top1_agreement),
        ]
    else:
        checks = [Check("parity", "top1_agreement", result.top1_agreement, ">=",
                        min(thresholds.min_top1_agreement, PARITY_LIMITS["reduced"].min_top1))]
        if result.labelled:
            checks.append(Check("parity", "accuracy_vs_reference", result.accuracy, ">=",
                                result.reference_accuracy - thresholds.max_accuracy_drop))
    if result.champion_accuracy is not None:
        checks.append(Check("parity", "accuracy_vs_champion", result.accuracy, ">=",
                            result.champion_accuracy - thresholds.max_accuracy_drop))
    if result.champion_agreement is not None:
        checks.append(Check("parity", "agreement_with_champion", result.champion_agreement, ">=",
                            thresholds.min_champion_agreement))
    return checks


def _value_checks(result: ParityResult, thresholds: ParityThresholds, precision: str) -> list[Check]:
    """Regression and raw tensors: the largest error relative to the reference value (absolute
    below magnitude 1) within ``parity_rtol`` (10x for reduced precision); regression errors no
    worse than the champion's on the same rows."""
    rtol = thresholds.parity_rtol * (1 if precision == "fp32" else 10)
    checks = [Check("parity", "max_rel_diff", result.max_rel_diff, "<=", rtol)]
    if result.rmse is not None and result.champion_rmse is not None and result.champion_mae is not None:
        allowed = 1 + thresholds.max_metric_regression
        checks.append(Check("parity", "rmse_vs_champion", result.rmse, "<=", result.champion_rmse * allowed))
        checks.append(Check("parity", "mae_vs_champion", result.mae or 0.0, "<=",
                            result.champion_mae * allowed))
    return checks


#: Parity of the held-out model ``model`` served in requests of ``rows`` rows (the target's
#: ``check_parity`` against the challenger, without the champion).
RowsParity = Callable[[Any, int], ParityResult]
#: Held-out rows each routed artifact is checked on (fewer when the set is smaller): one-row
#: requests of a large evaluation set would take long.
ROUTED_PARITY_ROWS = 64


def held_out_rows(model: Any, count: int) -> Any:
    """``model`` with its first ``count`` held-out rows only (repeated when it has fewer)."""
    index = np.arange(count) % len(model.eval_x)
    view = copy.copy(model)
    view.eval_x = np.asarray(model.eval_x)[index]
    if getattr(model, "eval_y", None) is not None:
        view.eval_y = np.asarray(model.eval_y)[index]
    return view


#: Texts made for a token range that no held-out text is in (from the held-out texts' words).
MADE_TEXTS = 8
#: The longest text made (words; a word is at least one token): past any model's truncation.
MOST_WORDS = 16_384


def texts_in_range(texts: Sequence[str], token_counts: Callable[[list[str]], Sequence[int]],
                   probe: Probe) -> tuple[np.ndarray, list[str]]:
    """Texts whose token counts are in ``probe``'s range: the indices of the held-out ``texts``
    that are, else (none is) up to ``MADE_TEXTS`` texts made of the held-out texts' first words,
    each the shortest such prefix that reaches the range (empty when no prefix lands in it)."""
    inside = np.flatnonzero([probe.holds(int(n)) for n in token_counts(list(texts))])
    if len(inside):
        return inside, []
    made: list[str] = []
    for start in range(min(len(texts), MADE_TEXTS)):
        words = " ".join(np.roll(np.asarray(texts, dtype=object), -start)).split()
        if not words:
            continue
        stream = (words * (1 + MOST_WORDS // len(words)))[:MOST_WORDS]  # past any truncation
        low, high = 1, len(stream)
        while low < high:  # the fewest words whose token count reaches the range's bottom
            middle = (low + high) // 2
            if int(token_counts([" ".join(stream[:middle])])[0]) >= (probe.min_tokens or 0):
                high = middle
            else:
                low = middle + 1
        text = " ".join(stream[:low])
        if probe.holds(int(token_counts([text])[0])):
            made.append(text)
    return np.arange(0), made


def held_out_probe(model: Any, count: int, probe: Probe) -> Any | None:
    """``model`` with ``count`` held-out rows whose every request of ``probe.rows`` rows reaches
    the artifact ``probe`` was made for: for a text model, rows whose token counts are in its
    range (made texts carry no labels); None when no text lands in the range."""
    if not probe.by_tokens:
        return held_out_rows(model, count)
    texts = [str(t) for t in np.asarray(model.eval_x).reshape(-1)]
    inside, made = texts_in_range(texts, model.text_encoder().token_counts, probe)
    view = copy.copy(model)
    if len(inside):
        index = inside[np.arange(count) % len(inside)]
        view.eval_x = np.asarray(model.eval_x)[index]
        if getattr(model, "eval_y", None) is not None:
            view.eval_y = np.asarray(model.eval_y)[index]
        return view
    if not made:
        return None
    view.eval_x = np.resize(np.asarray(made, dtype=str), count)
    view.eval_y = None
    return view


def routed_parity_checks(parity: RowsParity, model: Any,
                         routes: Sequence[tuple[str, Sequence[Probe]]],
                         thresholds: ParityThresholds) -> list[Check]:
    """Each artifact of an archive routed by shape on its own: held-out rows (at most
    ``ROUTED_PARITY_ROWS``, at least one request's worth) sent in the requests that reach it
    (``routes``: artifact -> probes: row counts, and for a text model texts of the token counts
    it owns), checked with the limits of its own precision; every check is named after the
    artifact and the probe, so a failure says which artifact failed. A probe no text can be
    made for is a failed check: that artifact would serve unchecked."""
    checks: list[Check] = []
    for artifact, reaching in routes:
        for probe in reaching:
            count = max(probe.rows, min(ROUTED_PARITY_ROWS, len(model.eval_x)))
            held_out = held_out_probe(model, count, probe)
            if held_out is None:
                checks.append(Check("parity", f"{artifact} at {probe}: texts of that length",
                                    0, ">=", 1))
                continue
            result = parity(held_out, probe.rows)
            checks += [dataclasses.replace(c, name=f"{artifact} at {probe}: {c.name}")
                       for c in parity_checks(result, thresholds, precision_of(artifact))]
    return checks
