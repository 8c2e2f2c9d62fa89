"""Issue 21.4: load-bound is judged per Locust process, phase by phase, in the gate's report and
in the bench; ``load_processes`` is bounded by the users it spreads."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from benchmarks.load import LoadResult as BenchLoad
from servegate.config import LoadSettings
from servegate.gates.checks import Check
from servegate.gates.load import LoadResult, merge
from servegate.gates.report import GateReport, write_report


def phase(cpu_s: float, processes: int, seconds: float = 4.0) -> LoadResult:
    result = LoadResult(label="challenger v2", requests=400, failures=0, seconds=seconds,
                        rps=100.0, p50_ms=5, p95_ms=9, p99_ms=12, load_cpu_seconds=cpu_s,
                        histogram_ms={"5": 400}, processes=processes)
    return result


def test_load_bound_means_more_than_0_8_of_a_core_per_process() -> None:
    assert phase(3.4, 1).load_bound  # 0.85 of a core
    assert not phase(3.4, 2).load_bound  # 0.425 each: two processes were not the bottleneck
    assert phase(6.8, 2).load_bound and phase(6.8, 2).cores_per_process == pytest.approx(0.85)


def test_one_load_bound_phase_flags_the_merged_result_and_the_report(tmp_path: Path) -> None:
    quiet, busy = phase(1.0, 2), phase(7.0, 2)  # 0.125 and 0.875 cores per process
    merged = merge([quiet, busy], {"p50_ms": 5, "p95_ms": 9, "p99_ms": 12})
    # the merged CPU averages to 0.5 of a core per process: the phase count still says so
    assert merged.cores_per_process == pytest.approx(0.5)
    assert merged.load_bound and merged.load_bound_phases == 1 and merged.phases == 2
    assert not merge([quiet, quiet], {"p50_ms": 5, "p95_ms": 9, "p99_ms": 12}).load_bound
    report = GateReport("digits", "2", None, "promoted", [Check("load", "p95_ms", 9, "<=", 50)],
                        None, [merged], "http://127.0.0.1:1/predictions/digits", "curl ...")
    write_report(report, tmp_path, hide_hosts=False, named={})
    md = (tmp_path / "gate_report.md").read_text()
    assert "| yes (1 of 2 phases; 0.50 cores/process x 2) |" in md


def test_the_bench_flags_load_bound_per_process_too() -> None:
    def bench(cpu_s: float, processes: int) -> BenchLoad:
        return BenchLoad(requests=1000, failures=0, rps=100.0, p50_ms=1, p95_ms=2, p99_ms=3,
                         load_cpu_s=cpu_s, load_window_s=10.0, processes=processes)

    assert bench(9.0, 1).load_bound and not bench(9.0, 2).load_bound and bench(17.0, 2).load_bound


def test_more_processes_than_users_is_refused() -> None:
    with pytest.raises(ValidationError, match="cannot exceed load_users"):
        LoadSettings(users=2, processes=3)
    assert LoadSettings(users=2, processes=2).processes == 2


def test_a_worker_servegate_did_not_start_voids_the_phase(tmp_path: Path) -> None:
    """The master listens on loopback: a local process that joins it as a worker (here a real
    Locust worker without the run's token) makes the phase fail instead of counting its figures."""
    import subprocess
    import sys
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import psutil

    class Ok(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    locustfile = tmp_path / "users.py"
    locustfile.write_text("from locust import FastHttpUser, task\n"
                          "class U(FastHttpUser):\n"
                          "    @task\n"
                          "    def get(self):\n"
                          "        self.client.get('/')\n")
    host = f"http://127.0.0.1:{server.server_port}"
    common = ["--locustfile", str(locustfile), "--user-class", "U", "--host", host]
    runner = [sys.executable, "-m", "servegate.gates.locust_runner"]
    master = subprocess.Popen([*runner, *common, "--users", "4", "--seconds", "3", "--processes",
                               "2", "--out", str(tmp_path / "figures.json")],
                              stderr=subprocess.PIPE, text=True)
    rogue = None
    try:
        deadline = time.monotonic() + 60
        while rogue is None and time.monotonic() < deadline and master.poll() is None:
            ports = [c.laddr.port for c in psutil.Process(master.pid).net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN]
            if ports:
                rogue = subprocess.Popen([*runner, "--worker", "--master-port", str(ports[0]),
                                          *common], stdin=subprocess.PIPE, text=True,
                                         stderr=subprocess.DEVNULL)
                assert rogue.stdin is not None
                rogue.stdin.write("not-the-token\n")
                rogue.stdin.close()
            time.sleep(0.05)
        _, err = master.communicate(timeout=120)
    finally:
        server.shutdown()
        for process in (master, rogue):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    assert rogue is not None
    assert master.returncode != 0 and "did not start" in err, err[-2000:]
    assert not (tmp_path / "figures.json").exists()
