"""Validate a promotion request (``workflow_dispatch`` inputs or a ``repository_dispatch``
payload) before anything is installed or run.

Standard library only (the workflow runs it with the runner's bare Python): a payload comes from
whoever holds a token for the repository, and its values reach a shell command line and MLflow,
so each one must have the form its parameter takes, and nothing else::

    PYTHONPATH=src python3 -m servegate.dispatch     # reads MODEL, NAME, EVAL_DATA, ... ; exit 2

Gate parameters are checked against the gate policy (``servegate.policy``): a payload may
tighten the repository's limits, never loosen them. A valid request's registered model name
(``models:/foo/3`` -> ``foo``) is written to ``$GITHUB_OUTPUT`` as ``model-name``: the workflow's
concurrency group, so that one model is promoted by one runner at a time.

With ``SERVEGATE_SERVER=attach`` it also checks that the run promotes where production is: a
remote tracking server and the target server's address and keys (never their values).

Errors are printed as GitHub annotations (``::error title=...::``).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping

from servegate.choices import TARGETS, TASK_ALIASES, TASKS
from servegate.errors import ConfigError
from servegate.naming import NAME_PATTERN, VERSION_PATTERN, validate_name
from servegate.policy import load_policy, policy_path

_NAME = NAME_PATTERN.strip("^$")
_VERSION = VERSION_PATTERN.strip("^$")
_ALIAS = r"[A-Za-z][A-Za-z0-9_-]{0,255}"
#: Where a workflow may take a model from: the registry, a run, or a built-in example.
MODEL_FORMS = {
    "builtin:NAME": re.compile(rf"builtin:(?P<name>{_NAME})"),
    "models:/NAME/VERSION": re.compile(rf"models:/(?P<name>{_NAME})/{_VERSION}"),
    "models:/NAME@ALIAS": re.compile(rf"models:/(?P<name>{_NAME})@{_ALIAS}"),
    "runs:/RUN_ID/PATH": re.compile(r"runs:/[0-9a-f]{32}/(?P<path>[A-Za-z0-9_./-]{1,256})"),
}
#: Evaluation data: an artifact URI or a path inside the checkout (no shell characters, no
#: percent-encoding, no backslash; ``_segments_problem`` refuses ``.``, ``..`` and empty segments).
_EVAL_DATA = re.compile(
    r"(?P<scheme>(runs|models|mlflow-artifacts|s3|gs|https):/{1,2})?"
    r"(?P<path>[A-Za-z0-9_][A-Za-z0-9_./@+=-]{0,1023})")
_COMPILER = re.compile(r"[a-z0-9][a-z0-9_,-]{0,255}")
#: The workflow's numeric inputs (environment variable names) and the gate parameters they set.
NUMBERS = {"P95_MS": "p95_ms", "P99_MS": "p99_ms", "MIN_RPS": "min_rps",
           "MAX_REGRESSION_PCT": "max_regression_pct", "MAX_ACCURACY_DROP": "max_accuracy_drop",
           "LOAD_SECONDS": "load_seconds"}


def _segments_problem(path: str) -> str | None:
    """Why a path of ``/``-separated segments could leave where it points (None: it cannot)."""
    segments = path.split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        return "has an empty, '.' or '..' segment"
    return None


def promoted_name(env: Mapping[str, str]) -> str | None:
    """The registered (and served) model name of a valid request: ``NAME``, else the name in
    ``models:/NAME/...`` or ``builtin:NAME`` (``PipelineConfig``'s rule); None if it has none."""
    model, name = env.get("MODEL", ""), env.get("NAME", "")
    if name:
        return name
    for pattern in MODEL_FORMS.values():
        if (matched := pattern.fullmatch(model)) and "name" in matched.groupdict():
            return matched["name"]
    return None


def validate_request(env: Mapping[str, str]) -> list[str]:
    """Every problem of the request in ``env`` (empty: valid)."""
    problems: list[str] = []
    model = env.get("MODEL", "")
    matched = next(((form, m) for form, pattern in MODEL_FORMS.items()
                    if (m := pattern.fullmatch(model))), None)
    if matched is None:
        problems.append(f"model {model!r} is not one of {', '.join(MODEL_FORMS)}")
    elif (path := matched[1].groupdict().get("path")) and (why := _segments_problem(path)):
        problems.append(f"model {model!r}: its path {why}")
    name = env.get("NAME", "")
    if name:
        try:
            validate_name(name)
        except ConfigError as exc:
            problems.append(str(exc))
        registered = matched[1].groupdict().get("name") if matched else None
        if registered and matched and matched[0].startswith("models:") and registered != name:
            problems.append(f"model {model} is registered as {registered!r} but name is {name!r}")
    elif matched is not None and promoted_name(env) is None:
        problems.append(f"name is required for model {model!r} (the served and registered model "
                        "name; models:/NAME and builtin:NAME give it)")
    eval_data = env.get("EVAL_DATA", "")
    if eval_data:
        form = _EVAL_DATA.fullmatch(eval_data)
        why = _segments_problem(form["path"]) if form else None
        if form is None or why:
            problems.append(f"eval_data {eval_data!r} is neither an artifact URI nor a relative path "
                            "of letters, digits and ._-/@+=" + (f": it {why}" if why else ""))
    task = env.get("TASK", "auto") or "auto"
    if task != "auto" and task not in TASKS and task not in TASK_ALIASES:
        problems.append(f"task {task!r} is not auto or one of {', '.join(TASKS)}")
    target = env.get("TARGET", "torchserve") or "torchserve"
    if target not in TARGETS:
        problems.append(f"target {target!r} is not one of {', '.join(TARGETS)}")
    compiler = env.get("COMPILER", "auto") or "auto"
    if not _COMPILER.fullmatch(compiler):
        problems.append(f"compiler {compiler!r} is not a backend name or a comma list of them")
    numbers: dict[str, float] = {}
    for key, parameter in NUMBERS.items():
        value = env.get(key, "")
        if value and not re.fullmatch(r"[0-9]{1,9}(\.[0-9]{1,9})?", value):
            problems.append(f"{parameter} {value!r} is not a non-negative number")
        elif value:
            numbers[parameter] = float(value)
    return problems + _policy_problems(env, numbers)


def _policy_problems(env: Mapping[str, str], numbers: Mapping[str, float]) -> list[str]:
    """The gate parameters of the request that loosen the gate policy (or why it cannot be read)."""
    try:
        policy = load_policy(policy_path(env))
    except ConfigError as exc:
        return [str(exc)]
    return [problem for parameter, value in numbers.items()
            if (problem := policy.problem(parameter, value))]


#: What an attached run needs, per target (environment variables; ``|`` separates alternatives).
ATTACH_NEEDS = {
    "torchserve": ("SERVEGATE_TORCHSERVE_MANAGEMENT_URL", "SERVEGATE_TORCHSERVE_INFERENCE_URL",
                   "SERVEGATE_TORCHSERVE_KEYS|SERVEGATE_TORCHSERVE_KEY_FILE"),
    "tfserving": ("SERVEGATE_TFSERVING_URL", "SERVEGATE_TFSERVING_MODEL_ROOT"),
}


def validate_environment(env: Mapping[str, str]) -> list[str]:
    """Where a ``SERVEGATE_SERVER=attach`` run promotes: a remote registry and a configured
    server (the workflow's secrets); nothing to check for other runs."""
    if env.get("SERVEGATE_SERVER") != "attach":
        return []
    problems = []
    tracking = env.get("MLFLOW_TRACKING_URI", "")
    if not re.match(r"(https?://|databricks)", tracking):
        problems.append("MLFLOW_TRACKING_URI (secret) must name the remote tracking server "
                        f"(http(s)://...): {'unset' if not tracking else 'it is a local store'}; "
                        "a registry on this runner would vanish with it")
    target = env.get("TARGET", "torchserve") or "torchserve"
    for needed in ATTACH_NEEDS.get(target, ()):
        if not any(env.get(name) for name in needed.split("|")):
            problems.append(f"{needed.replace('|', ' or ')} (secret) is unset: the {target} server "
                            "to promote onto; this workflow never starts one of its own")
    return problems


def main(env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    problems = validate_request(env) + validate_environment(env)
    for problem in problems:
        print(f"::error title=invalid promotion request::{_command_data(problem)}", file=sys.stderr)
    if problems:
        return 2
    name = promoted_name(env)
    print(f"promotion request is valid: model name {name}")
    if output := env.get("GITHUB_OUTPUT"):
        with open(output, "a", encoding="utf-8") as outputs:
            outputs.write(f"model-name={name}\n")
    return 0


def _command_data(text: str) -> str:
    """``text`` escaped as a workflow command's data (one line, whatever a payload holds)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


if __name__ == "__main__":
    sys.exit(main())
