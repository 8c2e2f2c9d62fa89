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

Every mismatch is a 422 whose detail names the input. An input with a ``-1`` dimension takes at
most ``max_instance_elements`` values per instance (``servegate.json`` ``limits``; by default
``max_body_bytes // 16``, 65,536 for a 1 MiB body); a larger instance is a 413 naming the limit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from sg_codecs import Envelope, V2Tensor, cast, json_array
from sg_errors import InvalidInput, ModelLoadError, PayloadTooLarge

Decoded = tuple[tuple[np.ndarray, ...], int, bool]  # (arrays, rows, single)

#: The default per-instance element limit of a ``-1`` input is the body limit over this: a JSON
#: number takes at least 2 bytes, so one instance may hold 1/8 of what a full body can carry.
BODY_BYTES_PER_INSTANCE_ELEMENT = 16


def instance_element_limit(limits: dict[str, Any] | None) -> int:
    """``limits.max_instance_elements``, else ``max_body_bytes // 16`` (65,536 for 1 MiB)."""
    limits = limits or {}
    recorded = limits.get("max_instance_elements")
    if recorded:
        return int(recorded)
    return max(1, int(limits.get("max_body_bytes", 1 << 20)) // BODY_BYTES_PER_INSTANCE_ELEMENT)


@dataclass(frozen=True)
class TensorSpec:
    """One model input: its name, per-instance shape (``-1``: any size) and dtype; a ``-1`` input
    takes at most ``max_elements`` values per instance (None: no limit)."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    allow_non_finite: bool = False
    max_elements: int | None = None

    @classmethod
    def from_json(cls, value: dict[str, Any], default_name: str,
                  max_elements: int | None = None) -> TensorSpec:
        try:
            return cls(str(value.get("name") or default_name),
                       tuple(int(d) for d in value.get("shape", [])),
                       np.dtype(str(value.get("dtype", "float32"))),
                       bool(value.get("allow_non_finite", False)), max_elements)
        except (TypeError, ValueError, AttributeError) as exc:
            raise ModelLoadError(f"invalid input spec {value!r}: {exc}") from exc

    @cached_property
    def fixed(self) -> bool:
        """No ``-1`` dimension: shapes are compared as tuples."""
        return -1 not in self.shape

    @cached_property
    def what(self) -> str:
        """How error details name this input (built once, not per request)."""
        return f"input {self.name!r}"

    def matches(self, shape: tuple[int, ...]) -> bool:
        """Whether ``shape`` is one instance's shape."""
        if self.fixed:
            return shape == self.shape
        return len(shape) == len(self.shape) and all(
            e == -1 or a == e for a, e in zip(shape, self.shape, strict=True))

    def check_elements(self, shape: tuple[int, ...]) -> None:
        """413 when one instance of a ``-1`` input holds more than ``max_elements`` values."""
        if self.fixed or self.max_elements is None:
            return
        count = math.prod(shape)
        if count > self.max_elements:
            raise PayloadTooLarge("instance too large",
                                  f"{self.what}: {count} values per instance of shape {list(shape)} "
                                  f"> limit of {self.max_elements} (limits.max_instance_elements)")

    def describe(self) -> str:
        return f"{self.name!r} ({list(self.shape)}, {self.dtype})"


def input_specs(spec: dict[str, Any], limits: dict[str, Any] | None = None) -> tuple[TensorSpec, ...]:
    """The model's inputs in order (schema 2 ``inputs``; schema 1 ``input``, named "input"), with
    the per-instance element limit of ``limits`` (default: the spec's own ``limits``)."""
    max_elements = instance_element_limit(spec.get("limits") if limits is None else limits)
    inputs = spec.get("inputs")
    if inputs:
        specs = tuple(TensorSpec.from_json(v, f"input_{i}", max_elements)
                      for i, v in enumerate(inputs))
    elif spec.get("input"):
        specs = (TensorSpec.from_json(spec["input"] | {"name": "input"}, "input", max_elements),)
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
    items = envelope.instances
    if isinstance(items[0], dict):  # row objects (every item is checked), or columns
        if envelope.family == "inputs" and envelope.single:
            return _from_columns(items[0], inputs, envelope.booleans)
        return _from_rows(items, inputs, envelope.booleans)
    # plain values: an object among them is refused by json_array (not numbers)
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
    """``array`` (batch first, instances of the spec's shape) checked and made contiguous."""
    spec.check_elements(array.shape[1:])
    if not spec.allow_non_finite and array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInput("non-finite input", f"{spec.what}: NaN or Inf values are not allowed")
    return np.ascontiguousarray(array)


def _batched(spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    if array.ndim == 0 or not spec.matches(array.shape[1:]):
        got = list(array.shape[1:]) if array.ndim else "a scalar"
        raise InvalidInput("wrong shape", f"{spec.what}: expected instances of shape "
                                          f"{list(spec.shape)}, got {got}")
    return _finished(spec, array)


def _from_values(envelope: Envelope, spec: TensorSpec) -> Decoded:
    array = json_array(envelope.instances, spec.dtype, what=spec.what, booleans=envelope.booleans)
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


def _from_rows(items: list[Any], inputs: Sequence[TensorSpec], booleans: bool = True) -> Decoded:
    expected = {s.name for s in inputs}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidInput("wrong shape", "instances mix row objects and plain values")
        if item.keys() != expected:
            _check_names(list(item), inputs, f"instance {i}: ")
    arrays = tuple(
        _batched(spec, json_array([item[spec.name] for item in items], spec.dtype,
                                  what=spec.what, booleans=booleans))
        for spec in inputs)
    return arrays, len(items), False


def _from_columns(columns: dict[str, Any], inputs: Sequence[TensorSpec],
                  booleans: bool = True) -> Decoded:
    _check_names(list(columns), inputs, "")
    arrays = [json_array(columns[s.name], s.dtype, what=s.what, booleans=booleans) for s in inputs]
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
            raise InvalidInput("wrong dtype", f"{spec.what} takes numbers, not {tensor.datatype}")
        array = cast(tensor.data, spec.dtype, what=spec.what)
        arrays.append(_batched(spec, array))
    _same_rows(inputs, arrays)
    return tuple(arrays), arrays[0].shape[0], False
