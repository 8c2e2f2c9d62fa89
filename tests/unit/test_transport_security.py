"""Transport security: which addresses are a network, TorchServe's own TLS settings, clients
that verify https against a CA bundle (httpx, Locust, gRPC) and never send a key over plain
HTTP to another host without the operator's opt-in."""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from tls_certs import TestCA

from servegate._resources import loadtests_dir
from servegate.backends.torchserve.client import Endpoints, TorchServeClient
from servegate.backends.torchserve.exposure import build_truststore, check_exposure, exposure
from servegate.backends.torchserve.keys import StaticKeys
from servegate.backends.torchserve.local import LocalTorchServe, render_config
from servegate.config import LoadSettings, TFServingAttach, TorchServeAttach, TorchServeSettings
from servegate.errors import ConfigError, ServerError
from servegate.tls import check_server_pair, client_context, is_loopback, require_private_channel

KEYS = json.dumps({"management": {"key": "m-key"}, "inference": {"key": "i-key"}})
PORTS = {"inference": 1, "management": 2, "metrics": 3, "grpc_inference": 4, "grpc_management": 5}


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.3.4.5", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("LOCALHOST", True), ("0.0.0.0", False), ("::", False), ("10.231.7.2", False),
    ("ts.internal", False), ("127.0.0.1.evil.example", False), ("", False)])
def test_only_addresses_that_stay_on_this_host_are_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("url", ["http://10.0.0.5:8081", "http://ts.internal:8080",
                                 "http://0.0.0.0:8080", "HTTP://10.0.0.5"])
def test_a_key_is_not_sent_over_plain_http_to_another_host(url: str) -> None:
    with pytest.raises(ConfigError, match="refusing to send .* plain HTTP") as refused:
        require_private_channel(url, "TorchServe's management key", allow_insecure=False)
    assert "SERVEGATE_ALLOW_INSECURE_HTTP=1" in str(refused.value)
    assert "--tls-cert" in str(refused.value)
    require_private_channel(url, "a key", allow_insecure=True)  # the operator opted in


@pytest.mark.parametrize("url", ["https://10.0.0.5:8443", "http://127.0.0.1:8080",
                                 "http://localhost:8081", "http://[::1]:8080"])
def test_https_and_loopback_carry_keys(url: str) -> None:
    require_private_channel(url, "a key", allow_insecure=False)


def test_the_client_refuses_before_anything_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args, **kwargs):
        raise AssertionError("a request was sent")

    monkeypatch.setattr(httpx.Client, "request", no_network)
    keys = StaticKeys(KEYS, "K")
    for endpoints in (Endpoints("http://10.0.0.5:8080", "https://10.0.0.5:8081", ""),
                      Endpoints("https://10.0.0.5:8080", "http://10.0.0.5:8081", "")):
        with pytest.raises(ConfigError, match="plain HTTP"):
            TorchServeClient(endpoints, keys)
    TorchServeClient(Endpoints("http://10.0.0.5:8080", "http://10.0.0.5:8081", ""), keys,
                     allow_insecure_http=True).close()


def test_attaching_over_plain_http_to_another_host_needs_the_opt_in(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from servegate.backends.factory import open_torchserve

    monkeypatch.setenv("SERVEGATE_TORCHSERVE_MANAGEMENT_URL", "http://10.0.0.5:8081")
    monkeypatch.setenv("SERVEGATE_TORCHSERVE_INFERENCE_URL", "http://10.0.0.5:8080")
    monkeypatch.setenv("SERVEGATE_TORCHSERVE_KEYS", KEYS)
    monkeypatch.delenv("SERVEGATE_ALLOW_INSECURE_HTTP", raising=False)
    with pytest.raises(ConfigError, match="refusing to send TorchServe's inference key"):
        open_torchserve(TorchServeSettings(), "attach")
    attach = TorchServeAttach.from_env()
    assert attach is not None and attach.ca_bundle is None
    monkeypatch.setenv("SERVEGATE_TORCHSERVE_CA_BUNDLE", "/etc/ca.pem")
    assert TorchServeAttach.from_env().ca_bundle == Path("/etc/ca.pem")  # type: ignore[union-attr]


def test_predict_reaches_the_attached_server_and_refuses_plain_http_to_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from servegate.cli import app

    monkeypatch.setenv("SERVEGATE_TORCHSERVE_MANAGEMENT_URL", "http://10.0.0.5:8081")
    monkeypatch.setenv("SERVEGATE_TORCHSERVE_INFERENCE_URL", "http://10.0.0.5:8080")
    monkeypatch.setenv("SERVEGATE_TORCHSERVE_KEYS", KEYS)
    monkeypatch.delenv("SERVEGATE_ALLOW_INSECURE_HTTP", raising=False)
    result = CliRunner().invoke(app, ["predict", "digits", "--data", "{}", "--workdir",
                                      str(tmp_path)])
    assert result.exit_code == 5, result.output
    assert "refusing to send TorchServe's" in result.output and "plain HTTP" in result.output
    # --server local ignores the attach variables: no local server here
    local = CliRunner().invoke(app, ["predict", "digits", "--data", "{}", "--server", "local",
                                     "--workdir", str(tmp_path)])
    assert local.exit_code == 3 and "no TorchServe running" in local.output


# ---- serving on a network address ----------------------------------------------------------
def test_plain_http_on_a_network_address_is_refused_and_says_what_is_exposed(tmp_path: Path) -> None:
    settings = TorchServeSettings(workdir=tmp_path, host="10.231.7.2")
    with pytest.raises(ConfigError, match="refusing to serve plain HTTP on 10.231.7.2") as refused:
        check_exposure(settings)
    message = str(refused.value)
    assert "--insecure-http" in message and "--tls-cert" in message
    assert "management" in message and "metrics API (no key" in message
    with pytest.raises(ConfigError, match="refusing"):  # the server itself refuses too
        LocalTorchServe(settings)._launch()
    assert not (tmp_path / "config.properties").exists()

    opted_in = settings.model_copy(update={"insecure_http": True})
    check_exposure(opted_in)
    assert "PLAIN HTTP" in exposure(opted_in) and exposure(TorchServeSettings()) == ""
    assert "every interface" in exposure(TorchServeSettings(host="0.0.0.0", insecure_http=True))


def test_token_auth_cannot_be_turned_off_by_exposing_the_server(tmp_path: Path) -> None:
    settings = TorchServeSettings(workdir=tmp_path, host="10.231.7.2", insecure_http=True,
                                  token_auth=False)
    with pytest.raises(ServerError, match="token auth"):
        LocalTorchServe(settings)._launch()


def test_the_cli_refuses_plain_http_on_a_network_address(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from servegate.cli import app

    result = CliRunner().invoke(app, ["serve", "start", "--workdir", str(tmp_path / "ts"),
                                      "--host", "10.231.7.2"])
    assert result.exit_code == 5, result.output
    assert "refusing to serve plain HTTP" in result.output
    assert not (tmp_path / "ts" / "server.json").exists()
    half = CliRunner().invoke(app, ["serve", "start", "--workdir", str(tmp_path / "ts"),
                                    "--tls-cert", str(tmp_path / "c.pem")])
    assert half.exit_code == 5 and "tls_cert and tls_key together" in half.output


def test_tls_settings_render_https_addresses_grpc_tls_and_the_key_pair(ca: TestCA,
                                                                       tmp_path: Path) -> None:
    pair = ca.server("ts", "10.231.7.2")
    settings = TorchServeSettings(workdir=tmp_path, host="10.231.7.2", tls_cert=pair.cert,
                                  tls_key=pair.key, trust_ca=ca.bundle)
    check_exposure(settings)
    config = render_config(settings, PORTS, tmp_path / "model-store")
    lines = dict(line.split("=", 1) for line in config.splitlines() if "=" in line and
                 not line.startswith("#"))
    assert lines["inference_address"] == "https://10.231.7.2:1"
    assert lines["management_address"] == "https://10.231.7.2:2"
    assert lines["metrics_address"] == "https://10.231.7.2:3"
    assert lines["grpc_inference_address"] == lines["grpc_management_address"] == "10.231.7.2"
    assert lines["certificate_file"] == str(pair.cert) and lines["private_key_file"] == str(pair.key)
    assert lines["enable_grpc_ssl"] == "true"
    assert f"-Djavax.net.ssl.trustStore={tmp_path / 'truststore.p12'}" in lines["vmargs"]

    plain = dict(line.split("=", 1) for line in render_config(
        TorchServeSettings(workdir=tmp_path), PORTS, tmp_path / "model-store").splitlines()
        if "=" in line and not line.startswith("#"))
    assert plain["inference_address"] == "http://127.0.0.1:1"
    assert not {"certificate_file", "private_key_file", "enable_grpc_ssl"} & plain.keys()
    assert "trustStore" not in plain["vmargs"]


def test_only_a_key_torchserve_can_load_is_accepted(ca: TestCA, tmp_path: Path) -> None:
    good = ca.server("good", "127.0.0.1")
    check_server_pair(good.cert, good.key)
    pkcs1 = ca.server("pkcs1", "127.0.0.1", pkcs8=False)
    with pytest.raises(ConfigError, match="RSA PRIVATE KEY: convert it with `openssl pkcs8"):
        check_server_pair(pkcs1.cert, pkcs1.key)
    ec = ca.server("ec", "127.0.0.1", key_kind="ec")
    with pytest.raises(ConfigError, match="not an RSA key"):
        check_server_pair(ec.cert, ec.key)
    with pytest.raises(ConfigError, match="no PEM CERTIFICATE"):
        check_server_pair(good.key, good.key)
    with pytest.raises(ConfigError, match="does not exist"):
        check_server_pair(tmp_path / "missing.pem", good.key)


def test_the_trust_store_holds_every_certificate_of_the_bundle(ca: TestCA, tmp_path: Path) -> None:
    other = TestCA(tmp_path / "other", "another CA")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(ca.bundle.read_bytes() + other.bundle.read_bytes())
    store = tmp_path / "truststore.p12"
    assert build_truststore(bundle, store) == 2
    listed = subprocess.run(["keytool", "-list", "-keystore", str(store), "-storetype", "PKCS12",
                             "-storepass", "servegate-trust"], capture_output=True, text=True)
    assert listed.stdout.count("trustedCertEntry") == 2, listed.stdout + listed.stderr
    empty = tmp_path / "empty.pem"
    empty.write_text("nothing here\n")
    with pytest.raises(ConfigError, match="no PEM certificate"):
        build_truststore(empty, store)


# ---- clients verify the server ------------------------------------------------------------
class _Answer(BaseHTTPRequestHandler):
    def _reply(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = b'{"predictions": [1]}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _reply

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def tls_server(ca: TestCA) -> Iterator[str]:
    """An https server on 127.0.0.1 whose certificate the test CA signed."""
    pair = ca.server("local", "127.0.0.1")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pair.cert, pair.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_https_is_verified_against_the_ca_bundle_or_the_servers_own_certificate(
        ca: TestCA, tls_server: str, tmp_path: Path) -> None:
    assert httpx.get(f"{tls_server}/ping", verify=client_context(ca.bundle)).status_code == 200
    pinned = ca.directory / "local.crt.pem"  # a local server's own certificate, no CA
    assert httpx.get(f"{tls_server}/ping", verify=client_context(pinned)).status_code == 200
    stranger = TestCA(tmp_path / "stranger", "a stranger's CA")
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{tls_server}/ping", verify=client_context(stranger.bundle))
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{tls_server}/ping", verify=client_context(None))  # the system's CAs
    # the certificate names 127.0.0.1 only: the same server under another name is refused
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{tls_server}/ping".replace("127.0.0.1", "localhost"),
                  verify=client_context(ca.bundle))
    with pytest.raises(ConfigError, match="does not exist"):
        client_context(tmp_path / "missing.pem")


def test_locust_verifies_https_against_the_bundle_and_refuses_a_stranger(
        ca: TestCA, tls_server: str, tmp_path: Path) -> None:
    """Locust's FastHttpUser verifies nothing by default: the load gate must not send the
    inference key to a server that could not prove who it is."""
    from servegate.gates.load import run_load

    common = {"label": "v1", "host": tls_server, "model": "digits", "version": None,
              "inference_key": "i-key", "samples": [{"instances": [[0.0] * 64]}],
              "settings": LoadSettings(users=1, seconds=1, rounds=1),
              "locustfile": loadtests_dir() / "torchserve.py", "user_class": "TorchServePredictUser"}
    trusted = run_load(**common, ca_bundle=str(ca.bundle))
    assert trusted.requests > 0 and trusted.failures == 0, trusted.errors
    stranger = TestCA(tmp_path / "stranger", "a stranger's CA")
    refused = run_load(**common, ca_bundle=str(stranger.bundle))
    assert refused.requests == refused.failures > 0
    assert any("CERTIFICATE_VERIFY_FAILED" in e["error"] for e in refused.errors), refused.errors
    # the right CA, but the certificate names 127.0.0.1, not localhost: the host is checked too
    misnamed = run_load(**common | {"host": tls_server.replace("127.0.0.1", "localhost")},
                        ca_bundle=str(ca.bundle))
    assert misnamed.requests == misnamed.failures > 0, misnamed


def test_the_curl_shown_verifies_https_with_the_bundle() -> None:
    from servegate.targets.base import curl_command

    https = curl_command("https://10.0.0.5:8443/predictions/m", "$(key)", [1.0], "/etc/my ca.pem")
    assert https.startswith("curl -s --cacert '/etc/my ca.pem' ")
    assert "--cacert" not in curl_command("http://127.0.0.1:8080/predictions/m", None, [1.0],
                                          "/etc/ca.pem")
    assert "--cacert" not in curl_command("https://ts.example/predictions/m", None, [1.0])

    from types import SimpleNamespace

    from servegate.targets.torchserve import TorchServeTarget

    image_model = SimpleNamespace(sends_images=True)
    image = TorchServeTarget().curl("https://10.0.0.5:8443/predictions/m", None, image_model,
                                    "/etc/ca.pem")
    assert image.startswith("curl -s --cacert /etc/ca.pem ") and "@image.png" in image


# ---- TF Serving: gRPC over TLS where configured ---------------------------------------------
def test_tf_serving_grpc_goes_over_tls_verified_against_the_bundle(
        ca: TestCA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The client's channel completes a TLS handshake with a gRPC server whose certificate the
    bundle's CA signed (TF Serving's ``--ssl_config_file``), and with nothing else."""
    from concurrent import futures

    import grpc

    from servegate.backends.tfserving.client import TFServingClient, grpc_credentials

    pair = ca.server("tfs", "127.0.0.1")
    monkeypatch.setenv("SERVEGATE_TFSERVING_URL", "https://tfs.internal")
    monkeypatch.setenv("SERVEGATE_TFSERVING_CA_BUNDLE", str(ca.bundle))
    assert TFServingAttach.from_env().ca_bundle == ca.bundle  # type: ignore[union-attr]
    assert grpc_credentials(None) is None
    with pytest.raises(ConfigError, match="holds no PEM certificate"):
        grpc_credentials(pair.key)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    credentials = grpc.ssl_server_credentials([(pair.key.read_bytes(), pair.cert.read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    stranger = TestCA(tmp_path / "stranger", "a stranger's CA")
    try:
        def ready(bundle: Path | None) -> bool:
            with TFServingClient("http://127.0.0.1:9", f"127.0.0.1:{port}", ca_bundle=bundle) as c:
                try:
                    grpc.channel_ready_future(c.channel()).result(timeout=3)
                    return True
                except grpc.FutureTimeoutError:
                    return False

        assert ready(ca.bundle)
        assert not ready(None)  # plaintext against a TLS port
        assert not ready(stranger.bundle)
    finally:
        server.stop(grace=None)


def test_a_local_server_whose_certificate_does_not_name_its_host_fails_at_once(
        ca: TestCA, tls_server: str, tmp_path: Path) -> None:
    """Readiness over https pins the server's own certificate and checks the host against it:
    a certificate for another name fails the start at once instead of after the ready timeout."""
    from servegate.backends.torchserve.local import ServerState, _management_answers
    from servegate.errors import ServerStartError

    key_file = tmp_path / "key_file.json"
    key_file.write_text(KEYS)
    own = str(ca.directory / "local.crt.pem")

    def state(url: str) -> ServerState:
        return ServerState(pid=1, workdir=str(tmp_path), model_store=str(tmp_path), inference=url,
                           management=url, metrics=url, key_file=str(key_file), tls_cert=own)

    assert _management_answers(state(tls_server))
    with pytest.raises(ServerStartError, match="does not verify"):
        _management_answers(state(tls_server.replace("127.0.0.1", "localhost")))
    pair = ca.server("any", "0.0.0.0")
    with pytest.raises(ConfigError, match="not the wildcard 0.0.0.0"):
        check_exposure(TorchServeSettings(host="0.0.0.0", tls_cert=pair.cert, tls_key=pair.key))
