"""URLs without their secrets, for anything a person or a tracking server will read.

``redact_url`` drops what a URL may carry as a credential: userinfo (``user:password@``), the
query (``?token=...``) and the fragment. ``redact_urls_in`` does that to every URL inside a text
and, where the hosts themselves are secret (a workflow keeps the servers' addresses as secrets),
replaces each URL's origin by the name of the setting it came from, or by ``HIDDEN-HOST``.

Standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

#: What stands for a host that is not shown.
HIDDEN_HOST = "HIDDEN-HOST"
#: A URL inside free text: a scheme, ``://``, then anything up to white space or a delimiter.
URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,31}://[^\s'\"<>`()\[\]]+")
_PARTS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*:)?(?P<slashes>//)?(?P<authority>[^/?#]*)"
                    r"(?P<path>[^?#]*)")


def redact_url(url: str) -> str:
    """``url`` without userinfo, query or fragment (``https://u:p@h:1/a?t=x`` -> ``https://h:1/a``);
    everything else as written (``sqlite:///x.db``, ``runs:/id/path`` stay as they are)."""
    parts = _PARTS.match(url)
    assert parts is not None  # every group is optional: the pattern matches any string
    authority = parts["authority"]
    if parts["slashes"]:
        authority = authority.rpartition("@")[2]
    return f"{parts['scheme'] or ''}{parts['slashes'] or ''}{authority}{parts['path']}"


def redact_urls_in(text: str, *, hide_hosts: bool = False,
                   named: Mapping[str, str] | None = None) -> str:
    """``text`` with every URL redacted (``redact_url``).

    ``hide_hosts`` also hides where each URL points: a URL under one of ``named``'s values (e.g.
    the configured server URL) is written from the name of its setting on
    (``$SERVEGATE_TORCHSERVE_INFERENCE_URL/predictions/m``), any other URL's scheme and host
    become ``HIDDEN-HOST``, and any other appearance of a ``named`` value (a path) becomes its name."""
    values = sorted(((name, value.rstrip("/")) for name, value in (named or {}).items()
                     if value.rstrip("/")), key=lambda item: -len(item[1]))  # longest first

    def one(match: re.Match[str]) -> str:
        url = redact_url(match[0])
        if not hide_hosts:
            return url
        for name, value in values:
            prefix = redact_url(value)
            if url == prefix or url.startswith(prefix + "/"):
                return f"${name}{url[len(prefix):]}"
        parts = _PARTS.match(url)
        assert parts is not None
        return HIDDEN_HOST + parts["path"]

    text = URL_IN_TEXT.sub(one, text)
    if hide_hosts:
        for name, value in values:
            text = text.replace(value, f"${name}")
    return text


def redact_host(netloc: str, *, hide_hosts: bool = False) -> str:
    """A ``host:port`` (possibly with userinfo) as it may be shown."""
    return HIDDEN_HOST if hide_hosts else netloc.rpartition("@")[2]


def redact_text(text: str) -> str:
    """``text`` as MLflow may record it: every URL redacted (``redact_urls_in``), and the servers'
    hosts hidden where they are secret (``config.redact_hosts``, as in the gate report)."""
    from servegate.config import redact_hosts, server_address_settings

    return redact_urls_in(text, hide_hosts=redact_hosts(), named=server_address_settings())
