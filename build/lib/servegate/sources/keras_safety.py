"""What a Keras archive or a SavedModel may hold before it is loaded without ``trust_pickle``.

Keras' ``safe_mode`` refuses lambda bytecode, but a ``.keras`` config names the modules its
objects come from, and Keras imports them: a config is code by reference. A SavedModel's graph
cannot run Python, yet its ops can read and write files or call Python (``PyFunc``) when a
signature runs. Both are read statically here, before Keras or TensorFlow load anything:

- ``.keras``: every serialized object comes from ``keras`` itself (no other module, no
  package-registered custom object, no ``Lambda``), and the archive holds only Keras' own files;
- SavedModel: no op reachable from a serving signature touches files, Python or the network.

A model that needs more loads with ``trust_pickle`` (its author is then trusted, as for pickle).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from servegate.errors import SourceError

TRUST_HINT = ("pass trust_pickle=true (-P trust_pickle=true, --trust-pickle) only if you trust its "
              "author")
#: Files Keras writes into a ``.keras`` archive.
KERAS_ARCHIVE_FILES = ("config.json", "metadata.json", "model.weights.h5", "model.weights.npz")
#: Layers that carry a Python function of their own.
CODE_LAYERS = ("Lambda", "__lambda__", "TFOpLambda")
#: Ops that read or write files, run Python, or reach other processes when a signature runs.
UNSAFE_OPS = frozenset({
    "ReadFile", "WriteFile", "MatchingFiles", "ImmutableConst", "LoadAndRemapMatrix",
    "Save", "SaveV2", "SaveSlices", "Restore", "RestoreV2", "RestoreSlice", "MergeV2Checkpoints",
    "PyFunc", "PyFuncStateless", "EagerPyFunc", "PrintV2",
    "WholeFileReader", "WholeFileReaderV2", "TFRecordReader", "TFRecordReaderV2",
    "TextLineReader", "TextLineReaderV2", "FixedLengthRecordReader", "FixedLengthRecordReaderV2",
    "TFRecordDataset", "TFRecordDatasetV2", "TextLineDataset", "FixedLengthRecordDataset",
    "FixedLengthRecordDatasetV2", "DatasetToTFRecord", "ExperimentalDatasetToTFRecord",
    "SaveDataset", "SaveDatasetV2", "ExperimentalSaveDataset", "LoadDataset",
    "ExperimentalLoadDataset", "SnapshotDataset", "SnapshotDatasetV2", "SnapshotDatasetReader",
    "CreateSummaryFileWriter", "WriteSummary", "WriteScalarSummary", "WriteHistogramSummary",
    "WriteImageSummary", "WriteAudioSummary", "WriteGraphSummary", "WriteRawProtoSummary",
    "ImportEvent", "DebugIdentity", "DebugIdentityV2", "DebugIdentityV3", "DebugNanCount",
    "DebugNumericSummary", "DebugNumericSummaryV2", "Rpc", "TryRpc", "RpcCall", "RemoteCall",
})


def _objects(node: Any) -> Iterator[dict[str, Any]]:
    """Every serialized object (a dict with ``class_name``) in a Keras config."""
    if isinstance(node, dict):
        if "class_name" in node:
            yield node
        for value in node.values():
            yield from _objects(value)
    elif isinstance(node, list):
        for value in node:
            yield from _objects(value)


def _keras_module(module: Any) -> bool:
    return module is None or module == "keras" or (isinstance(module, str)
                                                   and module.startswith("keras."))


def vet_keras_archive(path: Path, *, what: str) -> None:
    """``SourceError`` unless the ``.keras`` archive at ``path`` serializes Keras' own objects
    only (see the module docstring)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if not n.endswith("/")]
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise SourceError(f"{what} is not a readable .keras archive: {exc}") from exc
    extra = [n for n in names if n not in KERAS_ARCHIVE_FILES and not n.startswith("assets/")]
    if extra:
        raise SourceError(f"{what} holds files Keras does not write ({', '.join(extra[:5])}); "
                          + TRUST_HINT)
    for obj in _objects(config):
        name, module = obj.get("class_name"), obj.get("module")
        registered = obj.get("registered_name")
        if name in CODE_LAYERS:
            raise SourceError(f"{what} holds a {name} layer, whose Python function runs when it "
                              f"loads; {TRUST_HINT}")
        custom = isinstance(registered, str) and ">" in registered
        if custom or not _keras_module(module):
            origin = registered if custom else f"{module}.{name}"
            raise SourceError(f"{what} names {origin}, code outside Keras that Keras would "
                              f"import; {TRUST_HINT}")


def _function_calls(attrs: Any) -> Iterator[str]:
    """Function names an op's attributes call (``f``, ``then_branch``, lists of functions)."""
    for value in attrs.values():
        if value.HasField("func"):
            yield value.func.name
        if value.HasField("list"):
            yield from (f.name for f in value.list.func)


def unsafe_signature_ops(path: Path) -> dict[str, set[str]]:
    """Per serving signature of the SavedModel at ``path``: the ``UNSAFE_OPS`` it can reach."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((path / "saved_model.pb").read_bytes())
    found: dict[str, set[str]] = {}
    for meta in saved.meta_graphs:
        graph = meta.graph_def
        nodes = {n.name: n for n in graph.node}
        functions = {f.signature.name: f for f in graph.library.function}
        for key, signature in meta.signature_def.items():
            pending = [t.name.split(":")[0].lstrip("^") for t in signature.outputs.values()]
            seen_nodes: set[str] = set()
            seen_functions: set[str] = set()
            ops: set[str] = set()
            calls: list[str] = []
            while pending:
                name = pending.pop()
                if name in seen_nodes or name not in nodes:
                    continue
                seen_nodes.add(name)
                node = nodes[name]
                ops.add(node.op)
                calls += [node.op, *_function_calls(node.attr)]
                pending += [i.split(":")[0].lstrip("^") for i in node.input]
            while calls:
                fname = calls.pop()
                if fname in seen_functions or fname not in functions:
                    continue
                seen_functions.add(fname)
                for node_def in functions[fname].node_def:
                    ops.add(node_def.op)
                    calls += [node_def.op, *_function_calls(node_def.attr)]
            if bad := ops & UNSAFE_OPS:
                found[key] = bad
    return found


def vet_savedmodel(path: Path, *, what: str) -> None:
    """``SourceError`` when a signature of the SavedModel at ``path`` reaches an op that touches
    files, Python or the network."""
    try:
        found = unsafe_signature_ops(path)
    except Exception as exc:  # a corrupt or foreign protobuf
        raise SourceError(f"{what}: cannot read its saved_model.pb: {exc}") from exc
    if found:
        detail = "; ".join(f"{key}: {', '.join(sorted(ops))}" for key, ops in sorted(found.items()))
        raise SourceError(f"{what} runs ops that touch files, Python or the network when it serves "
                          f"({detail}); {TRUST_HINT}")
