"""Class names a user gives with a model (``labels``: a file or a comma list).

Standard library only: ``servegate.sources`` imports this on a bare host (the GPU check runs with
torch and numpy alone); a source's settings are ``servegate.config.SourceSettings``."""

from __future__ import annotations

import json
from pathlib import Path

from servegate.errors import ConfigError


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
