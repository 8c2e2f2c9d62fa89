"""One validator for model names and versions, used by every entry point.

A name reaches file paths (``<store>/<name>.v<version>.mar``, ``<root>/<name>/<version>``), URL
paths (``/models/<name>/<version>``) and registry calls, so it is checked once, the same way
everywhere: a letter, then letters, digits, ``_``, ``.`` or ``-`` (at most 128 characters, no
``..``). Versions are digits. URL segments are still quoted (``segment``) as a second line.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from servegate.errors import ConfigError

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_.-]{0,127}$"
VERSION_PATTERN = r"^[0-9]{1,18}$"
_NAME = re.compile(NAME_PATTERN)
_VERSION = re.compile(VERSION_PATTERN)


def validate_name(name: object, what: str = "model name") -> str:
    """``name`` if it is a valid model name, else ``ConfigError`` saying what is allowed."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise ConfigError(f"invalid {what} {name!r}: a letter, then up to 127 letters, digits, "
                          "'_', '.' or '-' (no '..')")
    return name


def validate_version(version: object, what: str = "version") -> str:
    """``version`` as a string of digits, else ``ConfigError``."""
    text = str(version) if isinstance(version, int) and not isinstance(version, bool) else version
    if not isinstance(text, str) or not _VERSION.fullmatch(text):
        raise ConfigError(f"invalid {what} {version!r}: digits only")
    return text


def segment(value: str) -> str:
    """``value`` quoted as one URL path segment (``/`` and ``..`` cannot escape it)."""
    return quote(value, safe="")


def archive_file_name(name: str, version: str) -> str:
    """The model-store file name of one version (several versions live side by side); the name
    and version are validated, so the file stays inside the store."""
    return f"{validate_name(name)}.v{validate_version(version)}.mar"
