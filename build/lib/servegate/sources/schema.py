"""What a model takes and gives: named tensor inputs and outputs, and batches of rows over them.

``TensorSpec`` describes one input or output per instance (no batch dimension; ``-1`` is a
dimension of any size). ``ModelSchema`` comes from an MLflow signature, an ExportedProgram or
evaluation data, never from a model's layers. ``Rows`` is a batch of a model with several
inputs: one array per input, sliced and listed together, so code that handles rows of a
single-input model (a plain ``np.ndarray``) handles it the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from servegate.errors import ConfigError

#: dtypes a served tensor input may have (the handlers decode JSON into these).
INPUT_DTYPES = ("float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8", "bool")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model, per instance: ``name``, ``shape`` (``-1``: any size) and
    numpy ``dtype`` name."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    def accepts(self, shape: Sequence[int]) -> bool:
        """Whether one instance of ``shape`` fits this spec."""
        return len(shape) == len(self.shape) and all(
            want in (-1, got) for want, got in zip(self.shape, shape, strict=True))

    def describe(self) -> str:
        dims = ", ".join("?" if d == -1 else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class ModelSchema:
    """A model's inputs (positional order) and outputs."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...] = ()

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    def describe(self) -> str:
        return "(" + "; ".join(s.describe() for s in self.inputs) + ")"


def _dtype_name(dtype: Any) -> str:
    name = np.dtype(dtype).name
    return {"float": "float64", "int": "int64"}.get(name, name)


def _input_dtype(dtype: Any, where: str) -> str:
    name = _dtype_name(dtype)
    if name not in INPUT_DTYPES:
        raise ConfigError(f"{where}: dtype {name} cannot be served; supported: {', '.join(INPUT_DTYPES)}")
    return name


def schema_from_signature(signature: Any) -> ModelSchema | None:
    """A ``ModelSchema`` from an MLflow ``ModelSignature`` (tensor specs, or columns, which become
    one float32 vector input whose elements are the named columns); None without inputs."""
    if signature is None or signature.inputs is None:
        return None
    if signature.inputs.is_tensor_spec():
        specs = list(signature.inputs.inputs)
        names = [s.name or (f"input_{i}" if len(specs) > 1 else "input") for i, s in enumerate(specs)]
        inputs = tuple(TensorSpec(n, tuple(int(d) for d in s.shape[1:]),
                                  _input_dtype(s.type, f"signature input {n}"))
                       for n, s in zip(names, specs, strict=True))
    else:
        columns = [c.name for c in signature.inputs.inputs]
        inputs = (TensorSpec("input", (len(columns),), "float32"),)
    outputs: tuple[TensorSpec, ...] = ()
    if signature.outputs is not None and signature.outputs.is_tensor_spec():
        specs = list(signature.outputs.inputs)
        outputs = tuple(TensorSpec(s.name or (f"output_{i}" if len(specs) > 1 else "output"),
                                   tuple(int(d) for d in s.shape[1:]), _dtype_name(s.type))
                        for i, s in enumerate(specs))
    return ModelSchema(inputs, outputs)


def signature_columns(signature: Any) -> list[str] | None:
    """The column names of a column-based MLflow signature (the feature order of tabular data)."""
    if signature is None or signature.inputs is None or signature.inputs.is_tensor_spec():
        return None
    return [str(c.name) for c in signature.inputs.inputs]


def schema_from_program(program: Any) -> ModelSchema:
    """A ``ModelSchema`` from a ``torch.export.ExportedProgram``'s user inputs and outputs."""
    nodes = {n.name: n for n in program.graph.nodes}
    inputs = []
    for name in program.graph_signature.user_inputs:
        value = nodes[name].meta.get("val")
        if value is None or not hasattr(value, "shape"):
            raise ConfigError(f"ExportedProgram input {name} is not a tensor")
        shape = tuple(int(d) if isinstance(d, int) else -1 for d in value.shape[1:])
        inputs.append(TensorSpec(name, shape, _input_dtype(str(value.dtype).removeprefix("torch."),
                                                           f"ExportedProgram input {name}")))
    output_node = next(n for n in program.graph.nodes if n.op == "output")
    outputs = []
    for i, value in enumerate(output_node.args[0]):
        val = getattr(value, "meta", {}).get("val")
        if val is not None and hasattr(val, "shape"):
            shape = tuple(int(d) if isinstance(d, int) else -1 for d in val.shape[1:])
            outputs.append(TensorSpec(f"output_{i}" if len(output_node.args[0]) > 1 else "output",
                                      shape, str(val.dtype).removeprefix("torch.")))
    return ModelSchema(tuple(inputs), tuple(outputs))


def program_batch_is_dynamic(program: Any) -> bool:
    """Whether every user input's first dimension of an ExportedProgram is symbolic."""
    nodes = {n.name: n for n in program.graph.nodes}
    for name in program.graph_signature.user_inputs:
        value = nodes[name].meta.get("val")
        if value is None or not value.shape or isinstance(value.shape[0], int):
            return False
    return True


@dataclass(frozen=True)
class Rows:
    """A batch for a model with several inputs: one array per input, the same number of rows."""

    arrays: tuple[np.ndarray, ...]
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        counts = {len(a) for a in self.arrays}
        if len(counts) > 1:
            raise ConfigError(f"inputs {list(self.names)} have different row counts: {sorted(counts)}")

    def __len__(self) -> int:
        return len(self.arrays[0])

    def __getitem__(self, index: slice | np.ndarray | list[int]) -> Rows:
        return Rows(tuple(np.ascontiguousarray(a[index]) for a in self.arrays), self.names)

    def resize(self, rows: int) -> Rows:
        """``rows`` rows, repeating from the start as needed."""
        index = np.resize(np.arange(len(self)), rows)
        return self[index]

    def tolist(self) -> list[dict[str, Any]]:
        """Request instances in TF Serving's row format: one ``{input name: value}`` per row."""
        columns = [a.tolist() for a in self.arrays]
        return [dict(zip(self.names, values, strict=True)) for values in zip(*columns, strict=True)]


Batch = np.ndarray | Rows


def batch_rows(batch: Batch, rows: int) -> Batch:
    """The first ``rows`` rows of ``batch``, repeated from the start when it has fewer."""
    if isinstance(batch, Rows):
        return batch.resize(rows)
    index = np.resize(np.arange(len(batch)), rows)
    return np.ascontiguousarray(batch[index])


def batch_arrays(batch: Batch) -> tuple[np.ndarray, ...]:
    """The model's positional inputs of ``batch``."""
    return batch.arrays if isinstance(batch, Rows) else (np.ascontiguousarray(batch),)
