"""Secrets that leaked through small doors (issue 19): the Locust process's environment, a lock
file planted as a symlink, ``ServerAccess``'s repr, URL userinfo in MLflow params."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from servegate.config import LoadSettings

ENV_DUMP = '''
import json, os
from locust import User, constant, task

class DumpEnvironment(User):
    wait_time = constant(5)

    @task
    def dump(self):
        key_file = os.environ.get("SERVEGATE_KEY_FILE", "")
        with open(os.environ["DUMP_TO"], "w") as out:
            json.dump({"env": dict(os.environ),
                       "key_mode": oct(os.stat(key_file).st_mode & 0o777) if key_file else None,
                       "key": open(key_file).read() if key_file else None}, out)
'''

SECRETS = {"MLFLOW_TRACKING_PASSWORD": "tracking-pw", "MLFLOW_TRACKING_TOKEN": "tracking-token",
           "SERVEGATE_TORCHSERVE_KEYS": '{"management": {"key": "mgmt-key"}}',
           "AWS_SECRET_ACCESS_KEY": "aws-secret", "GITHUB_TOKEN": "gh-token"}


def test_locust_gets_a_minimal_environment_and_the_key_in_a_0600_file(tmp_path: Path,
                                                                      monkeypatch) -> None:
    """The whole environment of the load process: nothing secret but the inference key, which
    arrives in a file only this user can read."""
    from servegate.gates import load

    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    dump = tmp_path / "env.json"
    locustfile = tmp_path / "dump_locustfile.py"
    locustfile.write_text(ENV_DUMP, encoding="utf-8")
    monkeypatch.setattr(load, "locust_environment",
                        lambda _inner=load.locust_environment, **s: _inner(**s) | {
                            "DUMP_TO": str(dump)})
    load.run_load(label="x", host="http://127.0.0.1:9", model="m", version="1",
                  inference_key="inference-key", samples=[[0.0]], locustfile=locustfile,
                  user_class="DumpEnvironment", settings=LoadSettings(users=1, seconds=1.0))
    seen = json.loads(dump.read_text())
    leaked = {k: v for k, v in seen["env"].items() if any(s in v for s in SECRETS.values())}
    assert leaked == {}
    assert set(seen["env"]) - set(load.INHERITED_ENV) - {"DUMP_TO"} <= {
        "PYTHONPATH", "SERVEGATE_MODEL", "SERVEGATE_VERSION", "SERVEGATE_SAMPLES",
        "SERVEGATE_KEY_FILE", "SERVEGATE_REPLICAS_FILE"} | {
            k for k in seen["env"] if k.startswith(("LC_", "GEVENT"))}
    assert seen["key_mode"] == "0o600" and json.loads(seen["key"]) == {
        "inference": {"key": "inference-key"}}
    assert "inference-key" not in json.dumps(seen["env"])


def test_a_symlink_at_the_lock_path_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    from servegate.errors import ConfigError
    from servegate.locks import hold

    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    lock = tmp_path / "locks" / "run-x.lock"
    lock.parent.mkdir()
    lock.symlink_to(victim)
    with pytest.raises(ConfigError, match="symbolic link"):
        with hold(lock, "a run of x"):
            pass
    assert victim.read_text() == "keep me"
    assert stat.S_ISLNK(os.lstat(lock).st_mode)


def test_server_access_repr_hides_the_key() -> None:
    from servegate.backends.base import ServerAccess

    access = ServerAccess("http://127.0.0.1:8080", "super-secret-key", "cat key", "local")
    assert "super-secret-key" not in repr(access) and "super-secret-key" not in str(access)
    assert access.inference_key == "super-secret-key"


def test_url_userinfo_never_reaches_mlflow_params(monkeypatch) -> None:
    from servegate.redact import redact_text, redact_url

    monkeypatch.setenv("SERVEGATE_REDACT_HOSTS", "false")
    from servegate.tracking import flat_params

    params = flat_params({"eval_data": "https://alice:pw123@mlflow.internal/x.npz",
                          "nested": {"u": "mlflow-artifacts://tok@h/x"}})
    assert "pw123" not in json.dumps(params) and "tok@" not in json.dumps(params)
    assert params["config.eval_data"] == "https://mlflow.internal/x.npz"
    assert redact_url("https://u:p@h:1/p?sig=abc#f") == "https://h:1/p"
    assert redact_text("see http://u:p@a/x and https://b/y") == "see http://a/x and https://b/y"
