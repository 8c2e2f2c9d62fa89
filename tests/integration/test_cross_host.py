"""Production across hosts, as the README's "Production" section writes it, over a real network.

A "serving host" is a network namespace of this test's own, joined to the root namespace (the
"runner") by a veth pair on a private /24 (10.231.N.0/24, N unused here). On the serving host:
`mlflow server` over TLS, and `servegate serve start --host <its address> --tls-cert ...
--tls-key ... --trust-ca ...` (archives fetched by URL from the tracking server over https). On
the runner: `make deploy` with the attach variables, the CA bundle and an https:// tracking URI:
a first promotion (whose report's round trip and curl are checked), a run whose load gate loses
the link for 8 s, the run after it, and `servegate rollback`. A throwaway
CA signs both servers' certificates (SAN: the namespace's IP address).

Skipped, saying why, only where namespaces cannot be made (not root, no `ip`, no netns support).
"""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from mlflow import MlflowClient
from tls_certs import TestCA

from servegate.backends.torchserve import LocalTorchServe, TorchServeBackend
from servegate.backends.torchserve.keys import StaticKeys
from servegate.config import TorchServeSettings
from servegate.tls import client_context

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

#: The README's ports: the serving host is a namespace of its own, where they are free.
MLFLOW_PORT = 5000
README_PORTS = ("--inference-port", "8080", "--management-port", "8081", "--metrics-port", "8082")
#: Short load phases; the cut run's are longer, so that the link goes down inside one.
FAST = ["-P", "compiler=eager", "-P", "load_users=4", "-P", "load_rounds=1"]
#: How long the link stays down, and when it goes down after the load gate starts.
CUT_AFTER_S, CUT_FOR_S = 9.0, 8.0


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=60)
    if check and done.returncode != 0:
        raise RuntimeError(f"{shlex.join(args)}: {done.stderr.strip()}")
    return done


def namespaces_unavailable() -> str | None:
    """Why this machine cannot make network namespaces, or None."""
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"sg-probe-{os.getpid()}"
    made = _run("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _run("ip", "netns", "del", probe, check=False)
    return None


@dataclass
class ServingHost:
    """A namespace joined to the root namespace by a veth pair."""

    namespace: str
    root_link: str
    address: str
    runner_address: str

    def exec(self, *command: str) -> list[str]:
        """``command`` as run on the serving host."""
        return ["ip", "netns", "exec", self.namespace, *command]

    def link(self, state: str) -> None:
        """Take the runner's side of the link ``down`` or bring it ``up``."""
        _run("ip", "link", "set", self.root_link, state)


def _free_subnet() -> int:
    used = _run("ip", "-4", "addr").stdout
    free = [n for n in range(16, 250) if f"10.231.{n}." not in used]
    return random.choice(free)


@pytest.fixture(scope="module")
def serving_host() -> Iterator[ServingHost]:
    if (reason := namespaces_unavailable()) is not None:
        pytest.skip(reason)
    tag = f"{os.getpid() % 100000}"
    subnet = _free_subnet()
    host = ServingHost(f"sg-serving-{tag}", f"sgr{tag}", f"10.231.{subnet}.2",
                       f"10.231.{subnet}.1")
    peer = f"sgs{tag}"
    try:
        _run("ip", "netns", "add", host.namespace)
        _run("ip", "link", "add", host.root_link, "type", "veth", "peer", "name", peer)
        _run("ip", "link", "set", peer, "netns", host.namespace)
        _run("ip", "addr", "add", f"{host.runner_address}/24", "dev", host.root_link)
        _run("ip", "link", "set", host.root_link, "up")
        _run(*host.exec("ip", "addr", "add", f"{host.address}/24", "dev", peer))
        _run(*host.exec("ip", "link", "set", peer, "up"))
        _run(*host.exec("ip", "link", "set", "lo", "up"))
        yield host
    finally:  # the peer goes with the namespace, the root side with its peer
        _run("ip", "netns", "del", host.namespace, check=False)
        _run("ip", "link", "del", host.root_link, check=False)
        assert host.namespace not in _run("ip", "netns", "list").stdout
        assert host.root_link not in _run("ip", "link").stdout


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def tracking_server(serving_host: ServingHost, ca: TestCA,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`mlflow server` on the serving host, over TLS (uvicorn's ssl options)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    pair = ca.server("mlflow", serving_host.address)
    url = f"https://{serving_host.address}:{MLFLOW_PORT}"
    process = subprocess.Popen(
        serving_host.exec(
            sys.executable, "-m", "mlflow", "server", "--host", serving_host.address, "--port",
            str(MLFLOW_PORT), "--backend-store-uri", f"sqlite:///{root}/db.sqlite",
            "--artifacts-destination", str(root / "artifacts"), "--workers", "1",
            "--uvicorn-opts", f"--ssl-certfile {pair.cert} --ssl-keyfile {pair.key}"),
        cwd=root, stdout=(root / "server.log").open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,  # no job runner: eight processes this test does not use
        env=os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2, verify=client_context(ca.bundle)).is_success:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, (root / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "mlflow server not up after 120 s"
            time.sleep(0.5)
        yield url, root
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:  # uvicorn waits for keep-alive connections; a throwaway server need not
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def production(serving_host: ServingHost, tracking_server, ca: TestCA,
               tmp_path_factory: pytest.TempPathFactory):
    """The README's serving-host command: TorchServe on the namespace's address over TLS,
    admitting archives from the tracking server's artifacts only, trusting the test CA."""
    url, _ = tracking_server
    pair = ca.server("torchserve", serving_host.address)
    workdir = tmp_path_factory.mktemp("serving-host") / "torchserve"
    command = serving_host.exec(
        sys.executable, "-m", "servegate.cli", "serve", "start", "--workdir", str(workdir),
        "--host", serving_host.address, *README_PORTS,
        "--tls-cert", str(pair.cert), "--tls-key", str(pair.key),
        "--trust-ca", str(ca.bundle), "--allow-mlflow-artifacts", "--token-expiration-min", "600")
    started = subprocess.run(command, capture_output=True, text=True, timeout=300,
                             env=os.environ | {"MLFLOW_TRACKING_URI": url,
                                               "SERVEGATE_HOME": str(workdir.parent)})
    server = LocalTorchServe(TorchServeSettings(workdir=workdir))
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert "over TLS" in started.stderr  # what is exposed, said at start
        state = _reached_from_the_runner(server)
        assert (state.inference, state.management) == (f"https://{serving_host.address}:8080",
                                                       f"https://{serving_host.address}:8081")
        yield state
    finally:
        server.stop()


def _reached_from_the_runner(server: LocalTorchServe, wait_s: float = 60):
    """The started server's state once its management API answers the runner (each try has a
    5 s budget: a loaded shared box may miss one)."""
    deadline = time.monotonic() + wait_s
    while (state := server.state()) is None:
        assert time.monotonic() < deadline, f"TorchServe did not answer the runner in {wait_s:g}s"
        time.sleep(1)
    return state


def runner_env(state, tracking_url: str, ca: TestCA, home: Path) -> dict[str, str]:
    """The README's runner: the attach variables, an https tracking URI, the CA bundle; nothing
    of servegate's or MLflow's from the test process but the shared box's gate policy."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SERVEGATE_", "MLFLOW_"))}
    return base | {
        "MAKEFLAGS": "", "SERVEGATE_GATE_POLICY": os.environ["SERVEGATE_GATE_POLICY"],
        "SERVEGATE_HOME": str(home), "MLFLOW_TRACKING_URI": tracking_url,
        "MLFLOW_TRACKING_SERVER_CERT_PATH": str(ca.bundle),
        "SERVEGATE_TORCHSERVE_MANAGEMENT_URL": state.management,
        "SERVEGATE_TORCHSERVE_INFERENCE_URL": state.inference,
        "SERVEGATE_TORCHSERVE_KEYS": Path(state.key_file).read_text(),
        "SERVEGATE_TORCHSERVE_CA_BUNDLE": str(ca.bundle),
    }


def deploy_command(*params: str, report_dir: Path, load_seconds: int = 2) -> list[str]:
    args = [*FAST, "-P", f"load_seconds={load_seconds}", "-P", "server=attach", *params]
    return ["make", "-s", "deploy", f"REPORT_DIR={report_dir}", f"DEPLOY_ARGS={shlex.join(args)}"]


def deploy(env: dict[str, str], *params: str, report_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(deploy_command(*params, report_dir=report_dir), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def servegate(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The ``servegate`` command on the runner."""
    return subprocess.run([sys.executable, "-m", "servegate.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def attached(state) -> TorchServeBackend:
    return TorchServeBackend.attach(state.inference, state.management,
                                    keys=StaticKeys(Path(state.key_file).read_text(), "TEST_KEYS"),
                                    ca_bundle=Path(state.tls_cert))


def served_and_registered(state, tracking: MlflowClient) -> tuple[list[tuple[str, bool]], str, str]:
    """(the server's versions and defaults, the server's default, the registry's champion)."""
    with attached(state) as prod:
        versions = sorted((v.version, v.is_default) for v in prod.versions("digits"))
        default = prod.default_version("digits") or ""
    return versions, default, tracking.get_model_version_by_alias("digits", "champion").version


def accuracy_of_default(state, digits) -> float:
    with attached(state) as prod:
        answer = prod.predict("digits", {"instances": digits.eval_x[:40].tolist()})
    served = [int(p["label"]) for p in answer["predictions"]]
    return float(np.mean(np.array(served) == digits.eval_y[:40]))


@pytest.mark.timeout(900)
def test_promote_a_cut_link_and_rollback_across_hosts(
        serving_host: ServingHost, tracking_server, production, ca: TestCA, digits,
        tmp_path: Path) -> None:
    url, mlflow_root = tracking_server
    state = production
    env = runner_env(state, url, ca, tmp_path / "runner")
    os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"] = str(ca.bundle)  # this test's own reads
    try:
        tracking = MlflowClient(url)
        _scenario(serving_host, state, env, tracking, digits, tmp_path)
    finally:
        os.environ.pop("MLFLOW_TRACKING_SERVER_CERT_PATH", None)


def _scenario(host: ServingHost, state, env: dict[str, str], tracking: MlflowClient, digits,
              tmp_path: Path) -> None:
    # 1. first promotion, over TLS from the runner; the report shows the measured round trip
    first = deploy(env, report_dir=tmp_path / "r1")
    out = first.stdout + first.stderr
    assert first.returncode == 0, out[-4000:]
    assert "promoted" in out
    assert served_and_registered(state, tracking) == ([("1", True)], "1", "1")
    report = (tmp_path / "r1" / "gate_report.md").read_text()
    assert f"to {host.address}:" in report and "network round trip p50" in report
    print("\n" + next(line for line in report.splitlines() if "network round trip" in line))
    # the archive went by URL over https: the server fetched it itself, trusting the test CA
    assert sorted(p.name for p in Path(state.model_store).glob("*.mar")) == ["digits.v1.mar"]
    # the report's curl works as pasted on the runner (its --cacert, its key from the secret)
    curl = next(line.strip().strip("`") for line in report.splitlines() if "curl -s" in line)
    assert f"--cacert {env['SERVEGATE_TORCHSERVE_CA_BUNDLE']}" in curl, curl
    answered = subprocess.run(["bash", "-c", curl], env=env, capture_output=True, text=True,
                              timeout=60)
    assert "predictions" in json.loads(answered.stdout), answered.stdout + answered.stderr
    # `servegate predict` with the same variables reaches the attached server over TLS ...
    body = json.dumps({"instances": digits.eval_x[:1].tolist()})
    predicted = servegate(env, "predict", "digits", "--data", body)
    assert predicted.returncode == 0 and "predictions" in predicted.stdout, predicted.stderr
    # ... and refuses a server that cannot prove it is that server, or plain HTTP to it
    stranger = TestCA(tmp_path / "stranger", "a stranger's CA")
    spoofed = servegate(env | {"SERVEGATE_TORCHSERVE_CA_BUNDLE": str(stranger.bundle)},
                        "predict", "digits", "--data", body)
    assert spoofed.returncode == 3 and "CERTIFICATE_VERIFY_FAILED" in spoofed.stderr, spoofed.stderr
    plain = {k: env[k].replace("https://", "http://") for k in (
        "SERVEGATE_TORCHSERVE_MANAGEMENT_URL", "SERVEGATE_TORCHSERVE_INFERENCE_URL")}
    refused = servegate(env | plain, "predict", "digits", "--data", body)
    assert refused.returncode == 5 and "refusing to send" in refused.stderr, refused.stderr

    # 2. the link goes down during the load gate, and comes back
    cut = _deploy_with_a_cut(host, env, tmp_path / "r2")
    versions, default, champion = served_and_registered(state, tracking)
    print(f"cut run: exit {cut.returncode} after {cut.seconds:.0f}s (link down "
          f"{cut.down_at}-{cut.up_at}s); decision: {cut.decision}; served {versions}, "
          f"champion v{champion}; v2 tags {tracking.get_model_version('digits', '2').tags}")
    assert cut.down_at is not None, f"the link was not cut: no load gate\n{cut.output[-4000:]}"
    assert cut.seconds < 420, "the run hung past its timeouts"
    assert default == champion, "the registry and the server disagree after the cut"
    assert accuracy_of_default(state, digits) > 0.8  # the champion still serves
    assert tracking.get_model_version("digits", "2").tags.get("servegate.gate") in (
        "passed", "failed"), f"the cut run left the challenger undecided\n{cut.output[-4000:]}"

    # 3. the next run: repairs what the cut left, or says what it found; promotes
    after = deploy(env, report_dir=tmp_path / "r3")
    out = after.stdout + after.stderr
    assert after.returncode == 0, out[-4000:]
    versions, default, champion = served_and_registered(state, tracking)
    assert (default, champion) == ("3", "3")
    previous = tracking.get_model_version_by_alias("digits", "previous-champion").version
    assert {v for v, _ in versions} == {"3", previous}, versions  # nothing else left behind

    # (a rejected challenger on an attached server, the champion serving on: the same path
    # over loopback in test_remote_production.py, kept out of here for the suite's time)

    # 4. `servegate rollback` from the runner: the previous champion serves again
    rolled = servegate(env, "rollback", "digits", "--server", "attach")
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    versions, default, champion = served_and_registered(state, tracking)
    assert (default, champion) == (previous, previous) and ("3", False) in versions
    assert accuracy_of_default(state, digits) > 0.8


@dataclass
class CutRun:
    returncode: int
    seconds: float
    down_at: float | None
    up_at: float | None
    decision: str
    output: str


def _deploy_with_a_cut(host: ServingHost, env: dict[str, str], report_dir: Path) -> CutRun:
    """`make deploy` whose load gate loses the link ``CUT_AFTER_S`` after it starts, for
    ``CUT_FOR_S``; the link is up again whatever happens."""
    command = deploy_command(report_dir=report_dir, load_seconds=6)
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    gate_started = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if "gate: load on" in line:
                gate_started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    down_at = up_at = None
    try:
        while process.poll() is None and not gate_started.wait(timeout=0.5):
            assert time.monotonic() - started < 300, "the load gate did not start in 300 s"
        if gate_started.is_set():
            time.sleep(CUT_AFTER_S)
            host.link("down")
            down_at = time.monotonic() - started
            time.sleep(CUT_FOR_S)
            host.link("up")
            up_at = time.monotonic() - started
        process.wait(timeout=420)
    finally:
        host.link("up")
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(timeout=10)
    output = "".join(lines)
    decision = ("promoted" if "promoted" in output else "rejected" if "rejected" in output
                else "failed")
    return CutRun(process.returncode, time.monotonic() - started, down_at, up_at, decision, output)
