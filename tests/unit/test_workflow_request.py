"""The promotion workflow and what it runs (issue 19): request validation (paths, names, the gate
policy), the per-model concurrency group, secrets only where used, pinned actions, the MLproject
entry's argument handling, and URLs without their secrets."""

from __future__ import annotations

import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

from servegate.dispatch import main, promoted_name, validate_request
from servegate.redact import HIDDEN_HOST, redact_url, redact_urls_in

ROOT = Path(__file__).resolve().parents[2]
RUN = "runs:/0123456789abcdef0123456789abcdef"
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


@pytest.fixture(autouse=True)
def repository_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SERVEGATE_GATE_POLICY", raising=False)


# ---- paths in model URIs and eval_data --------------------------------------------------------
@pytest.mark.parametrize("model", [
    f"{RUN}/a/../../etc", f"{RUN}/../model", f"{RUN}/a/..", f"{RUN}/./model", f"{RUN}/a//b",
    f"{RUN}/model/", f"{RUN}//model", f"{RUN}/a%2e%2e/b", f"{RUN}/%2e%2e/x", f"{RUN}/a\\..\\b",
    f"{RUN}/model\n", "models:/fraud/3/..", "models:/fraud%2f..",
])
def test_a_model_uri_that_could_leave_its_run_is_refused(model: str) -> None:
    problems = validate_request({"MODEL": model, "NAME": "churn"})
    assert any("model" in p for p in problems), problems


@pytest.mark.parametrize("eval_data", [
    "data/../secrets.csv", "data/./x.csv", "data//x.csv", "data/", "data/%2e%2e/x.csv",
    "data%2fx.csv", "data\\x.csv", f"{RUN}/eval/../../x.npz", "https://host/a/../b.npz",
    "mlflow-artifacts://host//x.npz", "s3://bucket/a/%2E%2E/b",
])
def test_eval_data_that_could_leave_where_it_points_is_refused(eval_data: str) -> None:
    problems = validate_request({"MODEL": "models:/fraud/3", "EVAL_DATA": eval_data})
    assert any("eval_data" in p for p in problems), problems


@pytest.mark.parametrize("eval_data", [
    "data/holdout.csv", f"{RUN}/eval/x.parquet", "models:/fraud@champion/eval.npz",
    "mlflow-artifacts:/3/abc/artifacts/eval.npz", "s3://bucket/eval/holdout.v2.npz",
])
def test_plain_eval_data_passes(eval_data: str) -> None:
    assert validate_request({"MODEL": "models:/fraud/3", "EVAL_DATA": eval_data}) == []


def test_a_run_model_needs_a_name_as_the_pipeline_does() -> None:
    """``PipelineConfig`` requires a name for anything but models:/ and builtin: (README issue
    26: the workflow accepted it and failed late, after installing)."""
    from servegate.config import PipelineConfig

    problems = validate_request({"MODEL": f"{RUN}/model"})
    assert any("name is required" in p for p in problems), problems
    with pytest.raises(ValueError, match="name is required"):
        PipelineConfig(model=f"{RUN}/model")
    assert validate_request({"MODEL": f"{RUN}/model", "NAME": "churn"}) == []


# ---- the gate policy, before anything is installed ---------------------------------------------
@pytest.mark.parametrize(("variable", "value", "parameter"), [
    ("P95_MS", "999999999", "p95_ms"), ("P99_MS", "501", "p99_ms"), ("MIN_RPS", "0", "min_rps"),
    ("MAX_REGRESSION_PCT", "100000", "max_regression_pct"), ("MAX_ACCURACY_DROP", "1", "max_accuracy_drop"),
    ("LOAD_SECONDS", "3600", "load_seconds"), ("LOAD_SECONDS", "1", "load_seconds"),
])
def test_a_payload_cannot_loosen_the_gate_policy(variable: str, value: str, parameter: str) -> None:
    problems = validate_request({"MODEL": "models:/fraud/3", variable: value})
    refusal = f"{parameter}={float(value):.12g}"
    assert any(refusal in p and "gate-policy.toml" in p for p in problems), problems


def test_a_payload_may_tighten_the_gate_policy() -> None:
    request = {"MODEL": "models:/fraud/3", "P95_MS": "100", "P99_MS": "200", "MIN_RPS": "50",
               "MAX_REGRESSION_PCT": "10", "MAX_ACCURACY_DROP": "0", "LOAD_SECONDS": "30"}
    assert validate_request(request) == []


def test_the_validator_reads_the_operators_policy_not_the_payloads(tmp_path: Path) -> None:
    loose = (ROOT / "serving_configs" / "gate-policy.toml").read_text().replace(
        "p95_ms = { max = 250 }", "p95_ms = { max = 5000 }")
    (tmp_path / "policy.toml").write_text(loose)
    request = {"MODEL": "models:/fraud/3", "P95_MS": "4000"}
    assert validate_request(request)
    assert validate_request(request | {"SERVEGATE_GATE_POLICY": str(tmp_path / "policy.toml")}) == []
    missing = validate_request(request | {"SERVEGATE_GATE_POLICY": str(tmp_path / "none.toml")})
    assert any("none.toml cannot be read" in p for p in missing), missing


# ---- one promotion per registered model ---------------------------------------------------------
@pytest.mark.parametrize(("request_env", "name"), [
    ({"MODEL": "models:/foo/2"}, "foo"), ({"MODEL": "models:/foo/3"}, "foo"),
    ({"MODEL": "models:/foo@champion"}, "foo"), ({"MODEL": "models:/foo/3", "NAME": "foo"}, "foo"),
    ({"MODEL": "builtin:digits"}, "digits"), ({"MODEL": f"{RUN}/model", "NAME": "churn"}, "churn"),
])
def test_the_concurrency_group_is_the_registered_model_name(request_env: dict[str, str], name: str,
                                                            tmp_path: Path) -> None:
    output = tmp_path / "github_output"
    output.write_text("earlier=1\n")
    assert main(request_env | {"GITHUB_OUTPUT": str(output)}) == 0
    assert promoted_name(request_env) == name
    assert output.read_text() == f"earlier=1\nmodel-name={name}\n"


def test_an_invalid_request_names_no_group_and_cannot_inject_workflow_commands(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "github_output"
    output.write_text("")
    hostile = "models:/foo/3\n::add-mask::x\r\n::set-output name=model-name::bar%0A::x"
    assert main({"MODEL": hostile, "GITHUB_OUTPUT": str(output)}) == 2
    assert output.read_text() == ""
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(line.startswith("::error title=invalid promotion request::") for line in lines)


def _workflow(name: str = "promote.yml") -> dict[str, Any]:
    return yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())


def test_the_deploy_job_is_serialised_per_registered_model() -> None:
    workflow = _workflow()
    assert "concurrency" not in workflow  # `name || model` let models:/foo/2 and /foo/3 run at once
    validate, deploy = workflow["jobs"]["validate"], workflow["jobs"]["gate-and-promote"]
    step = next(s for s in validate["steps"] if s.get("id") == "request")
    assert "python -m servegate.dispatch" in step["run"]
    assert validate["outputs"]["model-name"] == "${{ steps.request.outputs.model-name }}"
    assert deploy["needs"] == "validate"
    assert deploy["concurrency"] == {"group": "promote-${{ needs.validate.outputs.model-name }}",
                                     "cancel-in-progress": False}


def _secret_users(job: dict[str, Any]) -> list[str]:
    return [s.get("name") or s.get("uses") or s["run"] for s in job["steps"]
            if "secrets." in yaml.safe_dump({k: s.get(k) for k in ("env", "with", "run")})]


def test_secrets_reach_only_the_steps_that_use_them() -> None:
    workflow = _workflow()
    for job in workflow["jobs"].values():
        assert "secrets." not in yaml.safe_dump(job.get("env", {})), "secrets in a job's env"
    assert _secret_users(workflow["jobs"]["validate"]) == []
    users = _secret_users(workflow["jobs"]["gate-and-promote"])
    assert len(users) == 2 and users[0].startswith("Validate") and users[1].startswith("Gate and promote")
    steps = workflow["jobs"]["gate-and-promote"]["steps"]
    setup = next(i for i, s in enumerate(steps) if s.get("run") == "make setup")
    deploy = next(i for i, s in enumerate(steps) if "make deploy" in s.get("run", ""))
    assert setup < deploy  # installed in a step of its own, so `make deploy`'s setup is a no-op


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_actions_are_pinned_and_checkouts_keep_no_credentials(workflow: Path) -> None:
    jobs = yaml.safe_load(workflow.read_text())["jobs"]
    for job in jobs.values():
        for step in job["steps"]:
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", step["uses"]), step["uses"]
            if str(step.get("uses", "")).startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False


# ---- the MLproject entry: ".0" stripped only where an integer option takes it -------------------
def _deploy_entry() -> Any:
    path = ROOT / "pipelines" / "deploy" / "deploy.py"
    spec = importlib.util.spec_from_file_location("_deploy_entry", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_only_integer_options_lose_their_point_zero() -> None:
    entry = _deploy_entry()
    argv = ["--load-users", "8.0", "--batch-size", "16.00", "--eval-data", "12.0", "--name", "3.0",
            "--labels", "1.0", "--p95-ms", "250.0", "--model-class", "7.0", "--max-length", "-1.0"]
    assert entry.cli_arguments(argv) == [
        "--load-users", "8", "--batch-size", "16", "--eval-data", "12.0", "--name", "3.0",
        "--labels", "1.0", "--p95-ms", "250.0", "--model-class", "7.0", "--max-length", "-1"]


def test_the_integer_options_are_those_mlproject_declares_float_and_the_cli_takes_as_int() -> None:
    from servegate.cli import run

    declared = yaml.safe_load((ROOT / "pipelines" / "deploy" / "MLproject").read_text())
    floats = {name for name, p in declared["entry_points"]["main"]["parameters"].items()
              if p["type"] == "float"}
    hints = inspect.get_annotations(run, eval_str=True)
    integers = {name for name, hint in hints.items() if get_args(hint) and get_args(hint)[0] is int}
    assert _deploy_entry().INTEGER_OPTIONS == {f"--{n.replace('_', '-')}" for n in floats & integers}


def test_the_entry_passes_a_numeric_looking_path_through(tmp_path: Path) -> None:
    """End to end through deploy.py: eval_data ``12.0`` reaches ``servegate run`` as ``12.0``."""
    code = ("import sys, runpy; import servegate.cli as cli\n"
            "cli.main = lambda argv: print('ARGV', argv)\n"
            "sys.argv = ['deploy.py', *sys.argv[1:]]\n"
            "runpy.run_path('deploy.py', run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-c", code, "--eval-data", "12.0", "--load-users", "4.0"],
                          cwd=ROOT / "pipelines" / "deploy", capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert "ARGV ['run', '--eval-data', '12.0', '--load-users', '4']" in done.stdout, done.stderr


# ---- URLs without their secrets -----------------------------------------------------------------
@pytest.mark.parametrize(("url", "shown"), [
    ("https://user:pw@mlflow.example:5000/api?token=abc#x", "https://mlflow.example:5000/api"),
    ("http://a@b@host/p", "http://host/p"),
    ("mlflow-artifacts://u:p@host/x?sig=1", "mlflow-artifacts://host/x"),
    ("s3://bucket/key?X-Amz-Signature=s", "s3://bucket/key"),
    ("sqlite:///tmp/mlflow.db", "sqlite:///tmp/mlflow.db"),
    ("runs:/abc/model", "runs:/abc/model"),
    ("databricks", "databricks"),
    ("http://host:8080", "http://host:8080"),
])
def test_redact_url_drops_userinfo_query_and_fragment(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_urls_inside_text_are_redacted_and_hosts_hidden_on_request() -> None:
    text = "attached to http://u:p@ts:8081 (archives from https://store/x?sig=1), store /srv/models"
    assert redact_urls_in(text) == (
        "attached to http://ts:8081 (archives from https://store/x), store /srv/models")
    named = {"SERVEGATE_TORCHSERVE_MANAGEMENT_URL": "http://u:p@ts:8081/",
             "SERVEGATE_TORCHSERVE_MODEL_STORE": "/srv/models"}
    assert redact_urls_in(text, hide_hosts=True, named=named) == (
        f"attached to $SERVEGATE_TORCHSERVE_MANAGEMENT_URL (archives from {HIDDEN_HOST}/x), "
        "store $SERVEGATE_TORCHSERVE_MODEL_STORE")
    # a longer port is another server, not the named one
    assert redact_urls_in("http://ts:80810/x", hide_hosts=True, named=named) == f"{HIDDEN_HOST}/x"


# ---- the MLproject entry from anywhere: the caller's paths, the checkout's server (issue 26) ---
def test_relative_paths_resolve_against_the_caller(tmp_path: Path) -> None:
    entry = _deploy_entry()
    for name in ("eval.npz", "net.py", "labels.txt", "handler.py", "model.pt2"):
        (tmp_path / name).write_text("x")
    (tmp_path / "my-bert").mkdir()
    argv = ["--model", "model.pt2", "--eval-data", "eval.npz", "--labels", "labels.txt",
            "--model-class", "net.py:Net", "--handler", "handler.py", "--name", "eval.npz"]
    assert entry.resolve_paths(argv, tmp_path) == [
        "--model", str(tmp_path / "model.pt2"), "--eval-data", str(tmp_path / "eval.npz"),
        "--labels", str(tmp_path / "labels.txt"), "--model-class", f"{tmp_path / 'net.py'}:Net",
        "--handler", str(tmp_path / "handler.py"), "--name", "eval.npz"]
    untouched = ["--model", "models:/fraud/3", "--eval-data", "runs:/abc/e.npz", "--labels", "a,b",
                 "--model", "builtin:digits", "--eval-data", "https://h/x.npz", "--model", "hf:minilm",
                 "--eval-data", "missing.npz", "--handler", "/abs/h.py"]
    assert entry.resolve_paths(untouched, tmp_path) == untouched
    # a bare name after hf: is a packaged model (hf:minilm), not a directory here
    assert entry.resolve_paths(["--model", "hf:my-bert"], tmp_path) == ["--model", "hf:my-bert"]
    assert entry.resolve_paths(["--model", "hf:./my-bert"], tmp_path) == [
        "--model", f"hf:{tmp_path / 'my-bert'}"]


def test_the_caller_is_found_through_the_mlflow_process(tmp_path: Path) -> None:
    """As under `mlflow run`: the entry runs in pipelines/deploy, started by a shell started by a
    process working in the caller's directory; make's SERVEGATE_CALLER_DIR wins when set."""
    deploy_dir = ROOT / "pipelines" / "deploy"
    probe = tmp_path / "probe.py"
    probe.write_text(f"import runpy\nentry = runpy.run_path({str(deploy_dir / 'deploy.py')!r})\n"
                     "print('CALLER', entry['caller_dir']())\n")
    shell = f"bash -c 'cd {deploy_dir} && {sys.executable} {probe}'; true"
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    found = subprocess.run(["sh", "-c", shell], cwd=tmp_path, capture_output=True, text=True,
                           timeout=120, env=env)
    assert f"CALLER {tmp_path}" in found.stdout, found.stderr
    given = subprocess.run(["sh", "-c", shell], cwd=tmp_path, capture_output=True, text=True,
                           timeout=120, env=env | {"SERVEGATE_CALLER_DIR": "/srv/x"})
    assert "CALLER /srv/x" in given.stdout, given.stderr


def test_verbose_reaches_the_cli_as_a_flag() -> None:
    entry = _deploy_entry()
    assert entry.flag_values(["--server", "", "--verbose", "true"]) == ["--server", "", "--verbose"]
    assert entry.flag_values(["--verbose", "false", "--name", "x"]) == ["--name", "x"]
