"""How a user's model is imported: task, evaluation data, labels, trust, preprocessing."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from servegate.errors import ConfigError

if TYPE_CHECKING:  # the GPU check imports sources on a bare host without pydantic
    from servegate.config import PipelineConfig


@dataclass(frozen=True)
class SourceOptions:
    """What a model source needs besides its URI (MLproject / CLI parameters map here).

    ``task``: None infers it (see ``tasks.infer_task``). ``eval_data``: a path or MLflow artifact
    URI of held-out data (see ``eval_data``). ``trust_pickle``: allow pickled artifacts (they run
    code when loaded). ``model_class``: ``file.py:Class`` for a state_dict file, built with
    ``model_kwargs``. ``labels``: class names, a file (JSON list or index->name mapping, or one
    name per line) or a comma list. ``image``: an image model's preprocessing (size, mode, scale,
    mean, std), recorded in the archive.
    """

    task: str | None = None
    max_length: int | None = None
    eval_data: str | None = None
    label_column: str = "label"
    text_column: str = "text"
    trust_pickle: bool = False
    model_class: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    labels: str | None = None
    image: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: PipelineConfig) -> SourceOptions:
        """The source options of a run's settings (the image preprocessing only for an
        ``image-classification`` run)."""
        return cls(task=config.task, max_length=config.max_length, eval_data=config.eval_data,
                   label_column=config.label_column, text_column=config.text_column,
                   trust_pickle=config.trust_pickle, model_class=config.model_class,
                   model_kwargs=dict(config.model_kwargs), labels=config.labels,
                   image=(config.image.model_dump(mode="json")
                          if config.task == "image-classification" else {}))


def read_labels(value: str | None) -> list[str] | None:
    """Class names from a file (JSON list, JSON ``{"0": name}`` mapping, or one per line) or a
    comma-separated list; None when not given."""
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        if "," not in value and (path.suffix or "/" in value):
            raise ConfigError(f"labels file not found: {path}")
        return [v.strip() for v in value.split(",") if v.strip()]
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"labels file {path} is not JSON: {exc}") from exc
        if isinstance(data, dict):
            try:
                return [str(data[k]) for k in sorted(data, key=int)]
            except ValueError as exc:
                raise ConfigError(f"labels file {path}: keys must be class indices") from exc
        if isinstance(data, list):
            return [str(v) for v in data]
        raise ConfigError(f"labels file {path} must hold a list or an index->name mapping")
    return [line.strip() for line in text.splitlines() if line.strip()]
