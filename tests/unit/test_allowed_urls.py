"""TorchServe's ``allowed_urls`` as servegate writes it, checked under Java's own regex engine, and
credentials in ``MLFLOW_TRACKING_URI`` kept out of every URL and file derived from it.

TorchServe 0.12 matches the whole URL against each pattern with
``Pattern.compile(p, CASE_INSENSITIVE).matcher(url).matches()`` and then refuses only a literal
``..``; Java's ``file:`` handler decodes ``%2e%2e%2f``. ``tests/java/AllowedUrls.java`` reads the
rendered ``config.properties`` the way TorchServe does and answers for every URL in one JVM start.
"""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from servegate.artifact_urls import allowed_url_pattern, artifacts_prefix, fetch_url
from servegate.backends.torchserve.local import allowed_urls, render_config
from servegate.config import TorchServeSettings
from servegate.errors import ConfigError

JAVA_CHECK = Path(__file__).resolve().parents[1] / "java" / "AllowedUrls.java"
PORTS = {"inference": 1, "management": 2, "metrics": 3, "grpc_inference": 4, "grpc_management": 5}
ARTIFACTS = "http://mlflow.internal:5000/api/2.0/mlflow-artifacts/artifacts/"
SHARED = "file:///shared/models/"
ODD = "https://[::1]:8443/a+b$(c)/"  # escaping: IPv6 brackets, +, $, parentheses
PASSWORD = "s3cr3t-pw"


def _java_matches(config: Path, urls: list[str]) -> list[bool]:
    """Whether TorchServe's check (under this machine's JDK) admits each URL, in one JVM start."""
    java = shutil.which("java")
    if java is None:
        pytest.skip("no `java` on PATH: the allowed_urls patterns are checked under Java's regex engine")
    modules = subprocess.run([java, "--list-modules"], capture_output=True, text=True, timeout=60)
    if "jdk.compiler" not in modules.stdout:
        pytest.skip(f"{java} is a JRE (no jdk.compiler module): running {JAVA_CHECK.name} from source "
                    "needs a JDK (openjdk-17-jdk-headless)")
    assert all("\0" not in url for url in urls)
    done = subprocess.run([java, str(JAVA_CHECK), str(config)], input="\0".join(urls).encode(),
                          capture_output=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    lines = done.stdout.decode().splitlines()
    assert len(lines) == len(urls) + 1, lines
    return [line == "match" for line in lines[1:]]


def _attacks(prefix: str) -> list[str]:
    """Ways out of ``prefix`` (or to another host) that a careless pattern lets through."""
    host = prefix.split("/")[2]
    scheme = prefix.split(":")[0]
    return [
        # dot segments in every encoding and case TorchServe's literal ".." check misses
        prefix + "%2e%2e%2fsecret.mar", prefix + "%2E%2e/secret.mar", prefix + "%2e%2E%2Fsecret.mar",
        prefix + "..%2fsecret.mar", prefix + "a/..%5csecret.mar", prefix + "..\\secret.mar",
        prefix + "a/../secret.mar", prefix + ".%2e/secret.mar", prefix + "%252e%252e%252fsecret.mar",
        # line terminators that Java's "." does not cross (a lookahead written with ".*" stops there)
        prefix + "a\r/../secret.mar", prefix + "a\n/../secret.mar", prefix + "a\u2028/../secret.mar",
        prefix + "a\u0085/../secret.mar", prefix + "a\r%2e%2e/secret.mar",
        # queries, fragments, parameters, other characters
        prefix + "a.mar?x=.mar", prefix + "a?.mar", prefix + "a#.mar", prefix + "a.mar#x.mar",
        prefix + "a;b.mar", prefix + "a\\b.mar", prefix + "a b.mar", prefix + "a\tb.mar",
        prefix + "\u00e9.mar",
        prefix + "\uff0e\uff0e\uff0fsecret.mar",
        # other hosts, ports, userinfo and schemes; case variants of the fixed part
        f"{scheme}://{host}@evil.example/{prefix.split('/', 3)[3]}x.mar",
        f"{scheme}://{host}.evil.example/{prefix.split('/', 3)[3]}x.mar",
        f"{scheme}://user@{host}/{prefix.split('/', 3)[3]}x.mar",
        f"{scheme}://evil.example/{prefix.split('/', 3)[3]}x.mar",
        prefix.replace(host, host + "1", 1) + "x.mar" if host else "file://evil/shared/models/x.mar",
        ("https" if scheme == "http" else "http") + prefix[len(scheme):] + "x.mar",
        prefix.upper() + "x.mar", prefix + "x.MAR", prefix[:-1] + "x.mar", prefix + "x.mar.txt",
        "jar:" + prefix + "x.mar!/", "file:///etc/passwd", "http://169.254.169.254/latest/x.mar",
    ]


def _legit(prefix: str) -> list[str]:
    return [prefix + "3/0123abcd/artifacts/archive/digits.v2.mar", prefix + "m.v1.mar",
            prefix + "a/b_c-d~e/f.g.v10.mar"]


def test_java_admits_archives_under_each_prefix_and_nothing_else(tmp_path: Path) -> None:
    store = tmp_path / "store"
    settings = TorchServeSettings(workdir=tmp_path, allowed_url_prefixes=(ARTIFACTS, SHARED, ODD))
    config = tmp_path / "config.properties"
    config.write_text(render_config(settings, PORTS, store), encoding="utf-8")
    legit = [url for prefix in (ARTIFACTS, SHARED, ODD) for url in _legit(prefix)]
    store_url = f"file://{store.resolve()}/"
    attacks = [url for prefix in (ARTIFACTS, SHARED, ODD, store_url) for url in _attacks(prefix)]
    answers = _java_matches(config, legit + attacks)
    assert answers[:len(legit)] == [True] * len(legit), list(zip(legit, answers, strict=False))
    admitted = [url for url, ok in zip(attacks, answers[len(legit):], strict=True) if ok]
    assert admitted == []


def test_java_admits_no_url_at_all_without_prefixes(tmp_path: Path) -> None:
    """Archives of the model store are registered by file name, which TorchServe never matches
    against allowed_urls; a ``file://`` URL of a file already in the store answers 500 ("already
    exists"), so a store pattern could only ever admit a way out of the store."""
    store = tmp_path / "store"
    config = tmp_path / "config.properties"
    config.write_text(render_config(TorchServeSettings(workdir=tmp_path), PORTS, store), encoding="utf-8")
    urls = [f"file://{store.resolve()}/digits.v1.mar", f"file://{store.resolve()}/%2e%2e%2fsecret.mar",
            "file:///etc/passwd", "http://example.com/a.mar", "digits.v1.mar", ""]
    assert _java_matches(config, urls) == [False] * len(urls)


@pytest.mark.parametrize("prefix", [
    "http://host/a,b/",                      # "," splits TorchServe's list
    "http://host/a%2e/",                     # percent-escapes are decoded by the fetcher
    "file:///shared\\models/",               # backslash
    "http://host/a b/", "http://host/a\tb/", "http://host/a\n/", "http://host/a\u2028/",
    "http://host/caf\u00e9/",                # non-ASCII (config.properties is read as ISO-8859-1)
    f"https://user:{PASSWORD}@host/",        # userinfo
    "http://host/a?b/", "http://host/a#b/",  # query, fragment
    "http://host/a/../b/",                   # TorchServe refuses every URL with ".." anyway
    "file://remote/shared/",                 # Java fetches file://HOST/ over FTP
    "ftp://host/", "http:///path/", "HTTP://host/", "http://host:99999/",
])
def test_prefixes_that_cannot_be_expressed_are_refused_by_name(prefix: str) -> None:
    with pytest.raises(ConfigError, match="allowed URL prefix") as raised:
        allowed_url_pattern(prefix)
    assert PASSWORD not in str(raised.value)
    if PASSWORD not in prefix:
        assert repr(prefix) in str(raised.value)


def test_patterns_are_ascii_without_commas_and_properties_safe(tmp_path: Path) -> None:
    value = allowed_urls(TorchServeSettings(workdir=tmp_path, allowed_url_prefixes=(ARTIFACTS, ODD)))
    patterns = value.replace("\\\\", "\\").split(",")
    assert len(patterns) == 2
    assert value.isascii() and value.isprintable() and not value[:1].isspace()


# ---- credentials in MLFLOW_TRACKING_URI ----------------------------------------------------------
TRACKING_WITH_USERINFO = f"https://ci-bot:{PASSWORD}@mlflow.example:8443/base"


@pytest.mark.parametrize(("uri", "tracking", "expected"), [
    ("mlflow-artifacts:/3/r/artifacts/a.mar", TRACKING_WITH_USERINFO,
     "https://mlflow.example:8443/base/api/2.0/mlflow-artifacts/artifacts/3/r/artifacts/a.mar"),
    (f"mlflow-artifacts://bot:{PASSWORD}@other:7000/3/a.mar", TRACKING_WITH_USERINFO,
     "https://other:7000/api/2.0/mlflow-artifacts/artifacts/3/a.mar"),
    (f"https://bot:{PASSWORD}@store.example/x/a.mar", "http://mlflow.internal:5000",
     "https://store.example/x/a.mar"),
])
def test_registration_urls_never_carry_userinfo(uri: str, tracking: str, expected: str) -> None:
    assert fetch_url(uri, tracking) == expected


def test_tracking_userinfo_stays_out_of_the_prefix_the_errors_and_config_properties(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from servegate.backends.torchserve.local import LocalTorchServe

    prefix = artifacts_prefix(TRACKING_WITH_USERINFO)
    assert prefix == "https://mlflow.example:8443/base/api/2.0/mlflow-artifacts/artifacts/"
    with pytest.raises(ConfigError) as raised:
        artifacts_prefix(f"ftp://bot:{PASSWORD}@mlflow.example/")
    assert PASSWORD not in str(raised.value)

    class Launched(Exception):
        pass

    def spawn(*args: object, **kwargs: object) -> None:
        raise Launched

    server = LocalTorchServe(TorchServeSettings(workdir=tmp_path, allowed_url_prefixes=(prefix,)))
    monkeypatch.setattr(server, "_spawn", spawn)
    with pytest.raises(Launched):
        server._launch()  # renders and writes config.properties, then would start Java
    config = tmp_path / "config.properties"
    assert PASSWORD not in config.read_text(encoding="utf-8")
    assert stat.S_IMODE(config.stat().st_mode) == 0o600


def test_the_client_refuses_to_send_a_registration_url_with_userinfo(tmp_path: Path) -> None:
    from servegate.backends.torchserve.client import Endpoints, TorchServeClient

    # Nothing listens on port 9: the refusal comes before any request (or its INFO log line).
    with TorchServeClient(Endpoints("http://127.0.0.1:9", "http://127.0.0.1:9", "http://127.0.0.1:9"),
                          tmp_path / "no-key.json", timeout=1) as client:
        with pytest.raises(ConfigError, match="user name or password") as raised:
            client.register(f"https://bot:{PASSWORD}@store.example/a.mar")
    assert PASSWORD not in str(raised.value)
