"""Issue 21.4 against a real TorchServe: the load gate's Locust with one process and with a
master and two workers accounts for requests the same way. Every request the server counted
(its own ``ts_inference_requests_total``) is in Locust's figures once, as measured or as
warm-up, except at most the ones in flight when the users stopped (one per user)."""

from __future__ import annotations

import re

import pytest

from servegate._resources import loadtests_dir
from servegate.config import LoadSettings
from servegate.gates.load import run_load

pytestmark = pytest.mark.integration
USERS = 4


def requests_served(backend, name: str) -> int:
    text = backend.client.metrics_text()
    return int(sum(float(m.group(1)) for m in re.finditer(
        rf'ts_inference_requests_total{{[^}}]*model_name="{name}"[^}}]*}} ([0-9.e+]+)', text)))


@pytest.mark.parametrize("processes", [1, 2])
def test_one_and_two_load_processes_account_for_every_request(torchserve, build_archive, digits,
                                                              processes: int) -> None:
    _, state, backend = torchserve
    name = f"loadcount{processes}"
    backend.deploy(build_archive("1", name=name), name, "1")
    before = requests_served(backend, name)
    result = run_load(label=name, host=state.inference, model=name, version=None,
                      inference_key=backend.access().inference_key,
                      samples=[{"inputs": row.tolist()} for row in digits.eval_x[:16]],
                      settings=LoadSettings(users=USERS, seconds=3, rounds=1, processes=processes),
                      locustfile=loadtests_dir() / "torchserve.py", user_class="TorchServePredictUser")
    served = requests_served(backend, name) - before
    assert result.processes == processes and result.failures == 0
    assert result.requests > 100 and result.warmup_requests > 0
    assert sum(result.histogram_ms.values()) == result.requests  # the merged histogram is whole
    unaccounted = served - (result.requests + result.warmup_requests)
    assert 0 <= unaccounted <= USERS, (served, result.requests, result.warmup_requests)
    print(f"{processes} process(es): served {served}, measured {result.requests}, warm-up "
          f"{result.warmup_requests}, {result.rps:.0f} req/s, {result.cores_per_process:.2f} "
          "cores per load process")
