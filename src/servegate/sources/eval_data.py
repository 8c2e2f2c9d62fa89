"""The user's evaluation data: held-out inputs (and labels) the gates run on.

Where it comes from (``eval_data``): a local path or an MLflow artifact URI (``runs:/``,
``models:/``, ``mlflow-artifacts:/``, the tracking server's ``http(s)://`` artifacts, a cloud
store; each checked by ``servegate.artifact_access`` before any request, so the tracking
credentials reach the tracking server only) of

- ``.npz``: ``x`` (one input), or ``x0``, ``x1``, ... in the model's input order, or the input
  names of the model's signature; optionally ``y``. Read without pickle.
- ``.csv`` / ``.parquet`` / ``.jsonl``: one column per feature (or, for a model with several
  inputs, one column per input holding arrays) and a label column (``label_column``, default
  ``label``); text models read a ``text`` column. Read with pandas/pyarrow.
- a dataset logged to the model's run with ``mlflow.log_input`` whose source MLflow can load
  (``dataset_from_run``);
- image models (``servegate.sources.images``): an ImageFolder directory (class subfolders of
  image files), or a table whose ``image`` column holds encoded images or paths beside it.

Every reader ends in ``conform``: the arrays are checked against the model's ``ModelSchema``
(count, shape and dtype per input) before anything is compiled, with an error that names the
mismatch.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from servegate.errors import ConfigError, SourceError
from servegate.sources.images import IMAGE_COLUMN
from servegate.sources.schema import Batch, ModelSchema, Rows

SUFFIXES = (".npz", ".csv", ".parquet", ".pq", ".jsonl", ".json")
#: Dataset contexts taken as held-out data, in order of preference.
EVAL_CONTEXTS = ("eval", "evaluation", "validation", "test", "holdout", "held-out")


@dataclass(frozen=True)
class EvalData:
    """Held-out rows (``x``: an array for one input or text, ``Rows`` for several inputs), labels
    (``y``, or None when the data has none) and where they came from."""

    x: Batch
    y: np.ndarray | None
    source: str
    #: An image model's rows as the gate sends them (encoded images), when it has them.
    images: tuple[bytes, ...] | None = None

    def __len__(self) -> int:
        return len(self.x)


@dataclass(frozen=True)
class RawTable:
    """What a file held before it is matched to a model: named columns/arrays and the label."""

    arrays: dict[str, np.ndarray]
    labels: np.ndarray | None
    tabular: bool  # columns of a table (one per feature) rather than arrays of an npz
    source: str
    #: Encoded images (an ImageFolder, or a table's ``image`` column), in row order.
    images: list[bytes] | None = None


# ---- locating ---------------------------------------------------------------------------------
def _is_remote(uri: str) -> bool:
    return "://" in uri or uri.startswith(("runs:/", "models:/", "mlflow-artifacts:/"))


def local_copy(uri: str, workdir: Path | None = None, *, what: str = "eval_data") -> Path:
    """A local path for ``uri`` (downloaded through MLflow for artifact URIs whose every hop
    ``servegate.artifact_access`` admits; ``SourceError`` naming the accepted forms otherwise)."""
    if not _is_remote(uri) or uri.startswith("file://"):
        path = Path(uri.removeprefix("file://")).expanduser()
        if not path.exists():
            raise ConfigError(f"{what} not found: {path}")
        return path
    from servegate.artifact_access import download

    target = workdir or Path(tempfile.mkdtemp(prefix="servegate-eval-"))
    return download(uri, target, what=what)


def _single_file(path: Path) -> Path:
    if path.is_file():
        return path
    files = [p for p in sorted(path.rglob("*")) if p.suffix.lower() in SUFFIXES]
    if len(files) != 1:
        raise ConfigError(f"eval_data {path} is a directory with {len(files)} data files "
                          f"({', '.join(SUFFIXES)}); point at one file")
    return files[0]


# ---- reading ------------------------------------------------------------------------------------
def read_table(uri: str, *, label_column: str = "label", what: str = "eval_data") -> RawTable:
    """Read ``uri`` by its suffix into named arrays and labels (not yet matched to a model); an
    ImageFolder directory into its images and class names."""
    from servegate.sources.images import is_image_folder, read_image_folder

    located = local_copy(uri, what=what)
    if is_image_folder(located):
        images, labels = read_image_folder(located, uri)
        return RawTable({}, labels, tabular=False, source=uri, images=images)
    path = _single_file(located)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _read_npz(path, uri)
    if suffix in (".csv", ".parquet", ".pq", ".jsonl", ".json"):
        return _read_frame(path, uri, label_column)
    raise ConfigError(f"eval_data {uri}: unsupported file type {suffix!r}; use one of {', '.join(SUFFIXES)}")


def _read_npz(path: Path, uri: str) -> RawTable:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: np.asarray(data[key]) for key in data.files}
    except (OSError, ValueError) as exc:  # ValueError: object arrays need pickle
        raise ConfigError(f"cannot read eval_data {uri} as .npz (without pickle): {exc}") from exc
    labels = arrays.pop("y", None)
    if not arrays:
        raise ConfigError(f"eval_data {uri} holds no inputs (expected 'x', or 'x0', 'x1', ...)")
    return RawTable(arrays, labels, tabular=False, source=uri)


def _read_frame(path: Path, uri: str, label_column: str) -> RawTable:
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path)
        elif suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_json(path, lines=suffix == ".jsonl")
    except (OSError, ValueError, ImportError) as exc:
        raise ConfigError(f"cannot read eval_data {uri}: {exc}") from exc
    if frame.empty:
        raise ConfigError(f"eval_data {uri} has no rows")
    labels = None
    if label_column in frame.columns:
        labels = frame.pop(label_column).to_numpy()
    images = None
    if IMAGE_COLUMN in frame.columns:
        from servegate.sources.images import column_images

        images = column_images(frame.pop(IMAGE_COLUMN).to_numpy(), path.parent, uri)
    arrays = {str(c): _column_array(frame[c]) for c in frame.columns}
    return RawTable(arrays, labels, tabular=images is None, source=uri, images=images)


def _column_array(column: Any) -> np.ndarray:
    values = column.to_numpy()
    if values.dtype == object and len(values) and isinstance(values[0], (list, tuple, np.ndarray)):
        try:
            return np.stack([np.asarray(v) for v in values])
        except ValueError as exc:
            raise ConfigError(f"column {column.name!r} holds arrays of different shapes") from exc
    return values


# ---- matching to a model ----------------------------------------------------------------------
def conform(table: RawTable, schema: ModelSchema, *, feature_columns: list[str] | None = None) -> EvalData:
    """Match ``table`` to the model's inputs: select and order the arrays, reshape tabular
    features to the input's shape, check shapes and dtypes; a ``ConfigError`` names the mismatch."""
    arrays = _select_inputs(table, schema, feature_columns)
    checked = tuple(_conform_input(a, spec, table.source)
                    for a, spec in zip(arrays, schema.inputs, strict=True))
    rows = {len(a) for a in checked}
    if len(rows) > 1:
        raise ConfigError(f"eval_data {table.source}: inputs have different row counts {sorted(rows)}")
    labels = table.labels
    if labels is not None and len(labels) != len(checked[0]):
        raise ConfigError(f"eval_data {table.source}: {len(labels)} labels for {len(checked[0])} rows")
    x: Batch = checked[0] if len(checked) == 1 else Rows(checked, tuple(schema.input_names))
    return EvalData(x, labels, table.source)


def _select_inputs(table: RawTable, schema: ModelSchema,
                   feature_columns: list[str] | None) -> list[np.ndarray]:
    names = schema.input_names
    arrays = table.arrays
    if len(names) > 1 or not table.tabular:
        if all(n in arrays for n in names):
            return [arrays[n] for n in names]
        positional = [f"x{i}" for i in range(len(names))]
        if all(k in arrays for k in positional):
            return [arrays[k] for k in positional]
        if len(names) == 1 and "x" in arrays:
            return [arrays["x"]]
        if len(names) == 1 and len(arrays) == 1:
            return list(arrays.values())
        raise ConfigError(
            f"eval_data {table.source} has {sorted(arrays)}; the model takes {len(names)} input(s) "
            f"{schema.describe()}: name them {names}"
            + (f" or {positional}" if len(names) > 1 else " or 'x'"))
    # one input from a table: its feature columns, in the signature's order when it names them
    if feature_columns:
        missing = [c for c in feature_columns if c not in arrays]
        if missing:
            raise ConfigError(f"eval_data {table.source} lacks the signature's columns {missing}")
        columns = feature_columns
    elif names[0] in arrays and arrays[names[0]].ndim > 1:
        return [arrays[names[0]]]
    else:
        columns = list(arrays)
    try:
        return [np.stack([np.asarray(arrays[c], dtype=np.float64) for c in columns], axis=1)]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"eval_data {table.source}: feature columns must be numeric ({exc}); "
                          "name the label column with label_column") from exc


def _conform_input(array: np.ndarray, spec: Any, source: str) -> np.ndarray:
    if array.ndim == 0 or not len(array):
        raise ConfigError(f"eval_data {source}: input {spec.name} has no rows")
    per_row = tuple(array.shape[1:])
    if not spec.accepts(per_row):
        size = int(np.prod(per_row))
        if -1 not in spec.shape and size == int(np.prod(spec.shape)):
            array = array.reshape((len(array), *spec.shape))  # e.g. flattened image columns
        else:
            raise ConfigError(f"eval_data {source}: input {spec.name} has rows of shape {list(per_row)}, "
                              f"the model takes {spec.describe()}")
    kind, want = array.dtype.kind, np.dtype(spec.dtype)
    if kind not in "biuf":
        raise ConfigError(f"eval_data {source}: input {spec.name} holds {array.dtype} data, "
                          f"the model takes {spec.dtype}")
    if want.kind in "iub" and kind == "f" and not np.array_equal(array, np.round(array)):
        raise ConfigError(f"eval_data {source}: input {spec.name} holds fractional values, "
                          f"the model takes {spec.dtype}")
    return np.ascontiguousarray(array.astype(want))


def texts_from(table: RawTable, *, text_column: str = "text") -> EvalData:
    """Held-out texts of a text model: the ``text_column`` column (or ``x`` of an .npz)."""
    key = text_column if text_column in table.arrays else ("x" if "x" in table.arrays else None)
    if key is None:
        raise ConfigError(f"eval_data {table.source} has no {text_column!r} column "
                          f"(columns: {sorted(table.arrays)})")
    texts = np.asarray(table.arrays[key])
    if texts.ndim != 1 or not all(isinstance(t, str) and t.strip() for t in texts.tolist()):
        raise ConfigError(f"eval_data {table.source}: {key!r} must hold one non-empty string per row")
    return EvalData(texts.astype(str), table.labels, table.source)


def labels_as_indices(labels: np.ndarray, names: list[str], source: str) -> np.ndarray:
    """Class labels as indices into ``names``: integers as they are, strings looked up by name."""
    if labels.dtype.kind in "iuf":
        if labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)):
            raise ConfigError(f"eval_data {source}: class labels must be integers or class names")
        indices = labels.astype(np.int64)
        outside = sorted({int(i) for i in indices if not 0 <= i < len(names)}) if names else []
        if outside:
            raise ConfigError(f"eval_data {source}: class indices {outside[:5]} are outside the "
                              f"model's {len(names)} classes")
        return indices
    values = [str(v) for v in labels.tolist()]
    unknown = sorted(set(values) - set(names))
    if not names or unknown:
        raise ConfigError(f"eval_data {source}: labels {unknown[:5] or values[:5]} are not the model's "
                          f"class names {names[:10]} (give integer class indices or the model's labels)")
    index = {n: i for i, n in enumerate(names)}
    return np.asarray([index[v] for v in values], dtype=np.int64)


# ---- datasets logged to a run --------------------------------------------------------------------
def dataset_from_run(run_id: str, *, label_column: str = "label") -> RawTable | None:
    """The held-out dataset logged to ``run_id`` with ``mlflow.log_input`` (context eval, validation,
    test..., or the only one logged), read from its source; None when the run logged none."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from servegate.sources.artifact_source import register_artifact_source

    register_artifact_source()
    try:
        run_inputs = mlflow.MlflowClient().get_run(run_id).inputs
        inputs = run_inputs.dataset_inputs if run_inputs is not None else []
    except MlflowException as exc:
        raise SourceError(f"cannot read the datasets of run {run_id}: {exc}") from exc
    if not inputs:
        return None
    by_context = {tag.value: di for di in inputs for tag in di.tags if tag.key == "mlflow.data.context"}
    chosen = next((by_context[c] for c in EVAL_CONTEXTS if c in by_context), None)
    if chosen is None:
        if len(inputs) > 1:
            raise ConfigError(f"run {run_id} logged {len(inputs)} datasets and none with an evaluation "
                              f"context ({', '.join(EVAL_CONTEXTS)}); pass eval_data")
        chosen = inputs[0]
    what = f"dataset {chosen.dataset.name!r} of run {run_id}"
    source_uri = _dataset_source_uri(chosen.dataset.source_type, chosen.dataset.source, what)
    table = read_table(source_uri, label_column=label_column, what=what)
    return RawTable(table.arrays, table.labels, table.tabular,
                    source=f"dataset {chosen.dataset.name!r} of run {run_id}")


#: Dataset source types followed (their URI checked first): files in MLflow's artifact stores,
#: local files, and plain HTTP(S) files (on a trusted host only).
DATASET_SOURCE_TYPES = ("mlflow_artifact", "local", "http")


def _dataset_source_uri(source_type: str, source: str, what: str) -> str:
    """The URI a logged dataset's source names; refused (``SourceError``) for other source types
    or an unreadable record. The run's author wrote it: it is checked like a payload."""
    import json

    if source_type not in DATASET_SOURCE_TYPES:
        raise SourceError(f"{what} comes from a {source_type!r} source; servegate reads datasets "
                          f"logged from {', '.join(DATASET_SOURCE_TYPES)} sources: pass eval_data")
    try:
        record = json.loads(source)
        uri = record.get("uri") or record.get("url")
    except (ValueError, AttributeError) as exc:
        raise SourceError(f"{what}: unreadable source record") from exc
    if not isinstance(uri, str) or not uri:
        raise SourceError(f"{what}: its source names no URI")
    return uri


def from_input_example(arrays: tuple[np.ndarray, ...], schema: ModelSchema, source: str) -> EvalData:
    """The model's logged input example as (unlabelled) evaluation rows, for parity alone."""
    table = RawTable({n: a for n, a in zip(schema.input_names, arrays, strict=True)}, None,
                     tabular=False, source=source)
    return conform(table, schema)
