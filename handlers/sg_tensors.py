"""Numeric model inputs and outputs as ``servegate.json`` describes them, and the requests that
carry them.

Schema 2 lists the model's positional ``inputs`` (``name``, per-instance ``shape`` where ``-1``
is any size, ``dtype``, ``allow_non_finite``) and ``outputs`` (``name``, ``shape``); schema 1
has one ``input`` (named ``"input"`` here) and no outputs (one, named ``"output"``).

A request reaches the inputs in one of these forms (``decode``):

- plain values (one input only): one instance or a list of instances, in any family;
- row objects ``[{"a": row_a, "b": row_b}, ...]`` (``instances``, a bare list or ``inputs``);
- columns ``{"inputs": {"a": rows_a, "b": rows_b}}`` (one instance when every value has exactly
  its input's per-instance shape);
- v2 tensors, one per input, matched by name, else by position.

Every mismatch is a 422 whose detail names the input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sg_codecs import Envelope, V2Tensor, cast, json_array
from sg_errors import InvalidInput, ModelLoadError

Decoded = tuple[tuple[np.ndarray, ...], int, bool]  # (arrays, rows, single)


@dataclass(frozen=True)
class TensorSpec:
    """One model input: its name, per-instance shape (``-1``: any size) and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    allow_non_finite: bool = False

    @classmethod
    def from_json(cls, value: dict[str, Any], default_name: str) -> TensorSpec:
        try:
            return cls(str(value.get("name") or default_name),
                       tuple(int(d) for d in value.get("shape", [])),
                       np.dtype(str(value.get("dtype", "float32"))),
                       bool(value.get("allow_non_finite", False)))
        except (TypeError, ValueError, AttributeError) as exc:
            raise ModelLoadError(f"invalid input spec {value!r}: {exc}") from exc

    def matches(self, shape: Sequence[int]) -> bool:
        """Whether ``shape`` is one instance's shape."""
        return len(shape) == len(self.shape) and all(
            e == -1 or a == e for a, e in zip(shape, self.shape, strict=True))

    def describe(self) -> str:
        return f"{self.name!r} ({list(self.shape)}, {self.dtype})"


def input_specs(spec: dict[str, Any]) -> tuple[TensorSpec, ...]:
    """The model's inputs in order (schema 2 ``inputs``; schema 1 ``input``, named "input")."""
    inputs = spec.get("inputs")
    if inputs:
        specs = tuple(TensorSpec.from_json(v, f"input_{i}") for i, v in enumerate(inputs))
    elif spec.get("input"):
        specs = (TensorSpec.from_json(spec["input"] | {"name": "input"}, "input"),)
    else:
        raise ModelLoadError("servegate.json describes no model input ('inputs' or 'input')")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ModelLoadError(f"servegate.json: input names repeat: {names}")
    return specs


def output_names(spec: dict[str, Any], count: int) -> list[str]:
    """Names of the model's ``count`` outputs: from ``outputs``, else "output" / "output_<i>"."""
    named = [str(o.get("name") or f"output_{i}") for i, o in enumerate(spec.get("outputs") or [])]
    if count == 1 and not named:
        return ["output"]
    return named[:count] + [f"output_{i}" for i in range(len(named), count)]


def decode(envelope: Envelope, inputs: Sequence[TensorSpec]) -> Decoded:
    """The model's input arrays (batch first) from one request, or a 422 naming the input."""
    if envelope.family == "raw":
        raise InvalidInput("wrong dtype", "this model takes numeric tensors, not raw bytes")
    if envelope.family == "v2":
        return _from_v2(envelope.tensors, inputs)
    items = list(envelope.instances)
    if envelope.family == "inputs" and envelope.single and isinstance(items[0], dict):
        return _from_columns(items[0], inputs)
    dicts = sum(isinstance(item, dict) for item in items)
    if dicts == len(items):
        return _from_rows(items, inputs)
    if dicts:
        raise InvalidInput("wrong shape", "instances mix row objects and plain values")
    if len(inputs) != 1:
        raise InvalidInput(
            "wrong shape",
            f"this model takes {len(inputs)} inputs ({_names(inputs)}): send row objects "
            '{"instances": [{"<name>": row, ...}]}, columns {"inputs": {"<name>": rows}} '
            "or one v2 tensor per input")
    return _from_values(envelope, inputs[0])


def _names(inputs: Sequence[TensorSpec]) -> str:
    return ", ".join(repr(s.name) for s in inputs)


def _finished(spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    if not spec.allow_non_finite and array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInput("non-finite input", f"input {spec.name!r}: NaN or Inf values are not allowed")
    return np.ascontiguousarray(array)


def _batched(spec: TensorSpec, array: np.ndarray, *, where: str = "") -> np.ndarray:
    if array.ndim == 0 or not spec.matches(array.shape[1:]):
        got = list(array.shape[1:]) if array.ndim else "a scalar"
        raise InvalidInput("wrong shape", f"input {spec.name!r}{where}: expected instances of shape "
                                          f"{list(spec.shape)}, got {got}")
    return _finished(spec, array)


def _from_values(envelope: Envelope, spec: TensorSpec) -> Decoded:
    array = json_array(envelope.instances, spec.dtype, what=f"input {spec.name!r}")
    if envelope.family in ("list", "inputs") and spec.matches(array.shape):
        return (_finished(spec, array[np.newaxis]),), 1, True
    array = _batched(spec, array)
    return (array,), array.shape[0], False


def _check_names(given: Sequence[str], inputs: Sequence[TensorSpec], where: str) -> None:
    expected = [s.name for s in inputs]
    missing = [n for n in expected if n not in given]
    unknown = [n for n in given if n not in expected]
    if missing or unknown:
        parts = ([f"missing input(s) {', '.join(map(repr, missing))}"] if missing else []) + \
                ([f"unknown input(s) {', '.join(repr(str(n))[:60] for n in unknown[:5])}"]
                 if unknown else [])
        raise InvalidInput("wrong inputs", f"{where}{'; '.join(parts)}; this model takes "
                                           f"{_names(inputs)}")


def _from_rows(items: list[dict[str, Any]], inputs: Sequence[TensorSpec]) -> Decoded:
    expected = {s.name for s in inputs}
    for i, item in enumerate(items):
        if item.keys() != expected:
            _check_names(list(item), inputs, f"instance {i}: ")
    arrays = tuple(
        _batched(spec, json_array([item[spec.name] for item in items], spec.dtype,
                                  what=f"input {spec.name!r}"))
        for spec in inputs)
    return arrays, len(items), False


def _from_columns(columns: dict[str, Any], inputs: Sequence[TensorSpec]) -> Decoded:
    _check_names(list(columns), inputs, "")
    arrays = [json_array(columns[s.name], s.dtype, what=f"input {s.name!r}") for s in inputs]
    if all(s.matches(a.shape) for s, a in zip(inputs, arrays, strict=True)):
        return tuple(_finished(s, a[np.newaxis]) for s, a in zip(inputs, arrays, strict=True)), 1, True
    batched = tuple(_batched(s, a) for s, a in zip(inputs, arrays, strict=True))
    _same_rows(inputs, batched)
    return batched, batched[0].shape[0], False


def _same_rows(inputs: Sequence[TensorSpec], arrays: Sequence[np.ndarray]) -> None:
    rows = [a.shape[0] for a in arrays]
    if len(set(rows)) > 1:
        counts = ", ".join(f"{s.name!r}: {n}" for s, n in zip(inputs, rows, strict=True))
        raise InvalidInput("wrong shape", f"the inputs have different row counts ({counts})")


def _from_v2(tensors: Sequence[V2Tensor], inputs: Sequence[TensorSpec]) -> Decoded:
    names = [t.name for t in tensors]
    expected = [s.name for s in inputs]
    if len(set(names)) != len(names):
        raise InvalidInput("wrong inputs", f"v2 tensor names repeat: {names[:10]}")
    if set(names) == set(expected):
        by_name = {t.name: t for t in tensors}
        ordered = [by_name[n] for n in expected]
    elif len(tensors) == len(inputs) and not set(names) & set(expected):
        ordered = list(tensors)  # no name matches: by position
    else:
        _check_names(names, inputs, "v2 tensors: ")
        raise AssertionError("unreachable")  # pragma: no cover
    arrays = []
    for spec, tensor in zip(inputs, ordered, strict=True):
        if not isinstance(tensor.data, np.ndarray):
            raise InvalidInput("wrong dtype", f"input {spec.name!r} takes numbers, not "
                                              f"{tensor.datatype}")
        array = cast(tensor.data, spec.dtype, what=f"input {spec.name!r}")
        arrays.append(_batched(spec, array))
    _same_rows(inputs, arrays)
    return tuple(arrays), arrays[0].shape[0], False
