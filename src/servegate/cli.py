"""The ``servegate`` command line: parse, call, print.

Exit codes scripts can rely on: 0 success, 1 a gate failed (the challenger was rejected) and
nothing else, 2 usage error, 3 no server (not running / unreachable), 4 the server refused a
request, 5 invalid configuration or input, 6 packaging or compile failure, 7 any other error
(the MLflow registry failing, an internal error), 8 busy (another run or server start holds the
lock; the message names it), 130 / 143 interrupted by SIGINT / SIGTERM (after the cleanup).
"""

from __future__ import annotations

import functools
import json
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from servegate import errors
from servegate.config import RUN_PARAMETERS, BatchingConfig, TorchServeSettings, run_parameter_default

# Piped (make, CI, mlflow run): rich would fold tables at 80 columns.
console = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 160)
out = Console(width=None if sys.stdout.isatty() else 160)

EXIT_CODES: list[tuple[type[errors.ServegateError], int]] = [
    (errors.GateFailed, 1),
    (errors.ServerNotRunning, 3),
    (errors.ServerRequestError, 4),
    (errors.ServerError, 3),
    (errors.ConfigError, 5),
    (errors.SourceError, 5),
    (errors.PackagingError, 6),
    (errors.CompileError, 6),
    (errors.Busy, 8),
    (errors.ServegateError, 7),
]
#: Anything that is not a ServegateError (a bug): never 1, which means "a gate failed".
INTERNAL_ERROR = 7

class _App(typer.Typer):
    """A Typer whose commands all map servegate's errors to exit codes in one place (``fail``)."""

    def command(self, *args: Any, **kwargs: Any) -> Any:
        register = super().command(*args, **kwargs)

        def decorator(function: Any) -> Any:
            @functools.wraps(function)
            def mapped(*call_args: Any, **call_kwargs: Any) -> Any:
                try:
                    return function(*call_args, **call_kwargs)
                except errors.ServegateError as exc:
                    fail(exc)
            register(mapped)
            return function
        return decorator


app = _App(help="Take a model to a gated deployment on TorchServe or TF Serving.",
           no_args_is_help=True, pretty_exceptions_enable=False)
serve_app = _App(help="Start, stop and inspect this host's server (TorchServe; --target tfserving).",
                 no_args_is_help=True)
models_app = _App(help="Register, route and remove model versions.", no_args_is_help=True)
app.add_typer(serve_app, name="serve")
app.add_typer(models_app, name="models")
export_app = _App(help="Write deployment manifests for other platforms.", no_args_is_help=True)
app.add_typer(export_app, name="export")
image_app = _App(help="Build and run servegate's TorchServe image (through the Docker API: "
                 "DOCKER_HOST).", no_args_is_help=True)
app.add_typer(image_app, name="image")

#: ``servegate run``'s defaults, made from ``PipelineConfig``'s (written there once).
RUN_DEFAULTS: dict[str, Any] = {name: run_parameter_default(name) for name in RUN_PARAMETERS}

WorkdirOption = Annotated[
    Path | None,
    typer.Option("--workdir", help="The local server's directory.",
                 show_default="$SERVEGATE_HOME/<target>"),
]
TargetOption = Annotated[str, typer.Option(
    "--target", help="The server: torchserve, tfserving, or a target a plugin registered.")]
ServerOption = Annotated[str, typer.Option(
    help="auto: the attached server when its SERVEGATE_<TARGET>_* settings are set, else the local "
    "one; attach; local. Empty: $SERVEGATE_SERVER, else auto.")]


def exit_code(exc: errors.ServegateError) -> int:
    if isinstance(exc, errors.Interrupted):
        return exc.exit_code
    return next(c for cls, c in EXIT_CODES if isinstance(exc, cls))


def fail(exc: errors.ServegateError) -> NoReturn:
    code = exit_code(exc)
    console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(code)


def _settings(workdir: Path | None, **overrides: Any) -> TorchServeSettings:
    from pydantic import ValidationError

    values = {k: v for k, v in overrides.items() if v is not None}
    if workdir is not None:
        values["workdir"] = workdir
    try:
        return TorchServeSettings(**values)
    except ValidationError as exc:
        raise errors.ConfigError(f"invalid server settings: {_validation_message(exc)}") from exc


def _valid(name: str, version: str | None = None) -> None:
    """Every entry point checks names and versions the same way (``servegate.naming``)."""
    from servegate.naming import validate_name, validate_version

    validate_name(name)
    if version is not None:
        validate_version(version)


def _target_config(target: str, workdir: Path | None, server: str = "local") -> tuple[Any, Any]:
    """The registered target called ``target`` and the settings that reach its server
    (``workdir``: its local server's directory; ``server``: local, attach, auto or empty)."""
    from servegate.config import PipelineConfig, server_mode
    from servegate.targets import get_target

    chosen = get_target(target)
    section: dict[str, Any] = {}
    if workdir is not None:
        if target not in PipelineConfig.model_fields:
            raise errors.ConfigError(f"--workdir: {target} has no local server settings")
        section = {target: {"workdir": workdir}}
    return chosen, PipelineConfig(target=target, server=server_mode(server or None), **section)


@contextmanager
def _running_backend(target: str, workdir: Path | None, server: str = "local") -> Iterator[Any]:
    """``target``'s server that runs now (local, or attached by ``server``), closed afterwards;
    never started here."""
    chosen, config = _target_config(target, workdir, server)
    backend = chosen.running_backend(config)
    try:
        yield backend
    finally:
        backend.close()


@serve_app.command("start")
def serve_start(
    target: TargetOption = "torchserve",
    workdir: WorkdirOption = None,
    inference_port: Annotated[int, typer.Option(help="0 picks a free port.")] = 0,
    management_port: Annotated[int, typer.Option(help="0 picks a free port.")] = 0,
    metrics_port: Annotated[int, typer.Option(help="0 picks a free port.")] = 0,
    allow_url: Annotated[list[str] | None, typer.Option(
        "--allow-url", help="Also register archives from URLs under this prefix (repeatable), e.g. "
        "an mlflow server's artifacts: http://MLFLOW/api/2.0/mlflow-artifacts/artifacts/ "
        "(`allowed_urls` admits archives under it only).")] = None,
    allow_mlflow_artifacts: Annotated[bool, typer.Option(
        "--allow-mlflow-artifacts", help="--allow-url for the artifacts of $MLFLOW_TRACKING_URI.")] = False,
    token_expiration_min: Annotated[float | None, typer.Option(
        help="Minutes a key lives (TorchServe: 60); clients given the keys need longer than a run.")] = None,
    host: Annotated[str, typer.Option(
        help="The address HTTP (inference, management, metrics) and gRPC listen on. Anything but "
        "loopback is reachable from other hosts: give --tls-cert/--tls-key, or --insecure-http.")] = "127.0.0.1",
    tls_cert: Annotated[Path | None, typer.Option(
        help="PEM certificate (chain) of TorchServe's own TLS: https and gRPC over TLS.")] = None,
    tls_key: Annotated[Path | None, typer.Option(
        help="Its key: unencrypted RSA, PKCS#8 PEM (what TorchServe 0.12 reads).")] = None,
    insecure_http: Annotated[bool, typer.Option(
        "--insecure-http", help="Serve plain HTTP on a non-loopback --host (keys and requests "
        "readable on the network): only on a network you trust. Token auth stays on.")] = False,
    trust_ca: Annotated[Path | None, typer.Option(
        help="PEM CA bundle the server trusts when it fetches archives over https (e.g. a tracking "
        "server with a private CA); replaces Java's default CAs for those fetches.")] = None,
) -> None:
    """Start TorchServe with token auth, on 127.0.0.1 unless --host says otherwise (or show the
    one already running); ``--target tfserving``: a local TF Serving (binary or Docker), its
    gRPC on a Unix socket (the options below are TorchServe's)."""
    if target != "torchserve":
        given = {name for name, value, default in (
            ("--inference-port", inference_port, 0), ("--management-port", management_port, 0),
            ("--metrics-port", metrics_port, 0), ("--allow-url", allow_url or [], []),
            ("--allow-mlflow-artifacts", allow_mlflow_artifacts, False),
            ("--token-expiration-min", token_expiration_min, None), ("--host", host, "127.0.0.1"),
            ("--tls-cert", tls_cert, None), ("--tls-key", tls_key, None),
            ("--insecure-http", insecure_http, False), ("--trust-ca", trust_ca, None))
            if value != default}
        if given:
            raise errors.ConfigError(f"{', '.join(sorted(given))}: TorchServe's options, not {target}'s")
        chosen, config = _target_config(target, workdir)
        with console.status(f"starting {target}"):
            _print_state(target, chosen.local_server(config).start())
        return
    from servegate.backends.torchserve import LocalTorchServe
    from servegate.backends.torchserve.exposure import check_exposure, exposure
    from servegate.backends.torchserve.local import unapplied_options

    prefixes = list(allow_url or [])
    if allow_mlflow_artifacts:
        from servegate.artifact_urls import artifacts_prefix
        from servegate.config import tracking_uri_setting

        prefixes.append(artifacts_prefix(tracking_uri_setting()))
    settings = _settings(workdir, inference_port=inference_port, management_port=management_port,
                         metrics_port=metrics_port, allowed_url_prefixes=tuple(prefixes) or None,
                         token_expiration_min=token_expiration_min, host=host,
                         tls_cert=tls_cert, tls_key=tls_key, insecure_http=insecure_http,
                         trust_ca=trust_ca)
    check_exposure(settings)
    if exposed := exposure(settings):
        console.print(f"[{'yellow' if settings.tls_cert else 'bold red'}]{exposed}[/]")
    server = LocalTorchServe(settings)
    running = server.state()
    with console.status("starting TorchServe"):
        state = server.start()
    if running is not None and (unapplied := unapplied_options(settings, state)):
        console.print(f"[yellow]a TorchServe already runs in {server.workdir}; it was not "
                      f"restarted, so these options do not apply: {'; '.join(unapplied)}. "
                      "`servegate serve stop` first to start it with them (new keys: a restart "
                      "makes new ones)[/]")
    _print_state(target, state)


@serve_app.command("stop")
def serve_stop(target: TargetOption = "torchserve", workdir: WorkdirOption = None) -> None:
    """Stop the local server and every one of its processes."""
    chosen, config = _target_config(target, workdir)
    server = chosen.local_server(config)
    outcome = server.stop()
    if outcome.stale:
        out.print(f"stale state file in {server.workdir} removed: {outcome.stale}; "
                  "nothing was killed")
    elif outcome:
        out.print(f"stopped {target} in {server.workdir}")
    else:
        out.print(f"no {target} was running in {server.workdir}")


@serve_app.command("status")
def serve_status(target: TargetOption = "torchserve", workdir: WorkdirOption = None) -> None:
    """Show the local server and its models; exit 3 when none is running."""
    chosen, config = _target_config(target, workdir)
    table = Table("model", "version", "default", "ready workers")
    with _running_backend(target, workdir) as backend:
        for name in backend.names():
            for v in backend.versions(name):
                table.add_row(v.name, v.version, "yes" if v.is_default else "",
                              f"{v.ready_workers}/{v.workers}")
    if (state := chosen.local_server(config).state()) is not None:
        _print_state(target, state)
    out.print(table)


#: Fields of a local server's state a person does not need to see.
_UNSHOWN_STATE = {"pid", "ident", "create_time", "cmdline", "how"}


def _print_state(target: str, state: Any) -> None:
    """A local server's addresses and files, as its state file records them."""
    import dataclasses

    table = Table("endpoint", "address", title=f"{target} (local)")
    for field in dataclasses.fields(state):
        value = getattr(state, field.name)
        if field.name not in _UNSHOWN_STATE and value not in (None, "", [], ()):
            table.add_row(field.name.replace("_", " "), str(value))
    out.print(table)


# ---- package ----------------------------------------------------------------------------------
@app.command("package")
def package(
    model: Annotated[str, typer.Argument(help="Model source, e.g. builtin:digits.")] = RUN_DEFAULTS["model"],
    name: Annotated[str, typer.Option(help="Served model name.")] = "digits",
    version: Annotated[str, typer.Option(help="Model version recorded in the archive.")] = "1",
    output_dir: Annotated[Path | None, typer.Option(help="Where it goes.", show_default="the local model store (torchserve), else .")] = None,
    compiler: Annotated[str, typer.Option(help="auto, a compiler of the target (`servegate compilers`; TF: savedmodel, xla, tf-trt) or a comma list.")] = "eager",
    batch_size: Annotated[int, typer.Option(help="TorchServe batch size.")] = RUN_DEFAULTS["batch_size"],
    max_batch_delay_ms: Annotated[int, typer.Option(help="TorchServe max batch delay (ms).")] = RUN_DEFAULTS["max_batch_delay_ms"],
    workers: Annotated[int, typer.Option(help="TorchServe workers of the version.")] = RUN_DEFAULTS["workers"],
    eval_data: Annotated[str, typer.Option(help="Held-out data the compiled artifact is checked against (a user's Keras model needs it; see `servegate run --help`).")] = RUN_DEFAULTS["eval_data"],
    target: TargetOption = RUN_DEFAULTS["target"],
    workdir: WorkdirOption = None,
) -> None:
    """Build what the target's server serves: a .mar archive (handlers, model-config.yaml,
    labels, warm-up sample), or with --target tfserving a SavedModel version directory."""
    from pydantic import ValidationError

    from servegate import api

    _valid(name, version)
    try:
        batching = BatchingConfig(batch_size=batch_size, max_batch_delay_ms=max_batch_delay_ms,
                                  min_workers=workers, max_workers=workers)
    except ValidationError as exc:
        raise errors.ConfigError(f"invalid batching: {exc}") from exc
    store = output_dir or (_settings(workdir).workdir / "model-store" if target == "torchserve"
                           else Path.cwd())
    with console.status(f"packaging {model}"):
        built = api.package(model, name=name, version=version, compiler=compiler,
                            batching=batching, output_dir=store, target=target,
                            eval_data=eval_data or None)
    out.print(str(built))


# ---- models ----------------------------------------------------------------------------------
@models_app.command("register")
def models_register(
    artifact: Annotated[Path, typer.Argument(help="What the server serves: a .mar built by "
                                             "`servegate package`, a SavedModel version directory.")],
    name: Annotated[str, typer.Option(help="Model name in the archive.")],
    version: Annotated[str, typer.Option(help="Version in the archive.")],
    workers: int = 1,
    target: TargetOption = "torchserve",
    server: ServerOption = "",
    workdir: WorkdirOption = None,
) -> None:
    """Serve an artifact as a new version (no default traffic); returns once it is ready."""
    _valid(name, version)
    with _running_backend(target, workdir, server) as backend:
        with console.status(f"registering {name} v{version}"):
            backend.deploy(artifact, name, version, workers=workers)
        out.print(f"{name} v{version} is ready at {backend.endpoint(name, version)}")


@models_app.command("list")
def models_list(name: str, target: TargetOption = "torchserve", server: ServerOption = "",
                workdir: WorkdirOption = None) -> None:
    """The served versions of NAME."""
    _valid(name)
    with _running_backend(target, workdir, server) as backend:
        versions = backend.versions(name)
    out.print_json(json.dumps([v.__dict__ for v in versions]))


@models_app.command("default")
def models_default(name: str, version: str, target: TargetOption = "torchserve",
                   server: ServerOption = "", workdir: WorkdirOption = None) -> None:
    """Route NAME's default endpoint to VERSION."""
    _valid(name, version)
    with _running_backend(target, workdir, server) as backend:
        backend.set_default(name, version)
    out.print(f"{name} default -> v{version}")


@models_app.command("unregister")
def models_unregister(name: str, version: str, target: TargetOption = "torchserve",
                      server: ServerOption = "", workdir: WorkdirOption = None) -> None:
    """Stop serving VERSION of NAME."""
    _valid(name, version)
    with _running_backend(target, workdir, server) as backend:
        backend.undeploy(name, version)
    out.print(f"unregistered {name} v{version}")


@models_app.command("scale")
def models_scale(name: str, version: str, workers: int, server: ServerOption = "",
                 workdir: WorkdirOption = None) -> None:
    """Set the worker count of VERSION of NAME (TorchServe: TF Serving has no workers)."""
    _valid(name, version)
    with _running_backend("torchserve", workdir, server) as backend:
        client = getattr(backend, "client", None)
        if client is None:
            raise errors.ConfigError("scale one TorchServe at a time, not a fleet: set "
                                     "SERVEGATE_SERVER=local or attach to one replica")
        client.scale(name, version, min_workers=workers)
    out.print(f"{name} v{version}: {workers} workers")


# ---- predict ---------------------------------------------------------------------------------
@app.command("predict")
def predict(
    name: str,
    data: Annotated[str | None, typer.Option(help="JSON request body.")] = None,
    file: Annotated[Path | None, typer.Option(help="File holding the request body ('-': stdin).")] = None,
    version: Annotated[str | None, typer.Option(help="A version (default: the default one).")] = None,
    target: TargetOption = "torchserve",
    server: ServerOption = "",
    workdir: WorkdirOption = None,
) -> None:
    """Send one request to NAME's standard endpoint and print the answer: the local server (token
    from its key file, https verified against its certificate) or the attached one (its keys, an
    https URL verified against its $SERVEGATE_<TARGET>_CA_BUNDLE)."""
    _valid(name, version)
    if (data is None) == (file is None):
        raise errors.ConfigError("give exactly one of --data or --file")
    if file is not None:
        body = sys.stdin.read() if str(file) == "-" else file.read_text(encoding="utf-8")
    else:
        body = data or ""
    try:
        payload = json.loads(body)
    except json.JSONDecodeError as exc:
        raise errors.ConfigError(f"the request body is not JSON: {exc}") from exc
    with _running_backend(target, workdir, server) as backend:
        answer = backend.predict(name, payload, version)
    out.print_json(json.dumps(answer))


@app.command("compilers")
def compilers(
    model: Annotated[str, typer.Argument(help="Model source, e.g. builtin:digits.")] = RUN_DEFAULTS["model"],
    backends: Annotated[str, typer.Option(help="auto or a comma list of backends.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="The serving batch size to rank by.")] = 8,
    task: Annotated[str, typer.Option(help="Text models: embedding | text-classification (auto: the model's own).")] = "auto",
    threads: Annotated[int, typer.Option(help="Threads to time on (0: as one TorchServe worker runs).")] = 0,
) -> None:
    """Compile, parity-check and time compiler backends in process at every shape; print the
    table (``auto`` keeps the smallest worst-case slowdown against the fastest)."""
    import tempfile

    from servegate.compilers.driver import worker_threads
    from servegate.compilers.select import candidates_table, choose, evaluate, parse_compiler_option
    from servegate.compilers.shapes import timing_batch_sizes
    from servegate.devices import gpu_count
    from servegate.sources import load_torch_model

    names = parse_compiler_option(backends) or [backends]
    loaded = load_torch_model(model, task=None if task == "auto" else task)
    max_batch = batch_size * 8
    sizes = timing_batch_sizes(batch_size, max_batch, cuda=gpu_count() > 0)
    with tempfile.TemporaryDirectory() as tmp, console.status("compiling and measuring"):
        candidates = evaluate(loaded, names, Path(tmp), max_batch=max_batch,
                              batch_sizes=sizes, threads=threads or worker_threads())
        choose(candidates, batch_size)
    out.print(candidates_table(candidates))


# ---- pipeline --------------------------------------------------------------------------------
@app.command("run")
def run(
    model: Annotated[str, typer.Option(help="builtin:digits | models:/NAME/VERSION | models:/NAME@ALIAS | runs:/... | a .pt2 / torch.save / state_dict file | hf:<dir>; tfserving: builtin:digits-keras | a .keras file | a SavedModel | an MLflow Keras model.")] = RUN_DEFAULTS["model"],
    name: Annotated[str, typer.Option(help="Served and registered model name (default: NAME of models:/NAME, or the built-in's name; required otherwise).")] = RUN_DEFAULTS["name"],
    task: Annotated[str, typer.Option(help="auto | classification | regression | tensor | image-classification | embedding | text-classification (auto: inferred from the model and its data).")] = RUN_DEFAULTS["task"],
    eval_data: Annotated[str, typer.Option(help="Held-out data: a path or MLflow artifact URI of .npz (x | x0,x1.. | input names; y) / .csv / .parquet / .jsonl (features + label column; text column for text models). Default: the dataset logged with the model, else its input example (parity only).")] = RUN_DEFAULTS["eval_data"],
    label_column: Annotated[str, typer.Option(help="Label column of tabular eval_data.")] = RUN_DEFAULTS["label_column"],
    text_column: Annotated[str, typer.Option(help="Text column of a text model's eval_data.")] = RUN_DEFAULTS["text_column"],
    labels: Annotated[str, typer.Option(help="Class names: a file (JSON list/mapping, or one per line) or a comma list (default: the model's own, else indices).")] = RUN_DEFAULTS["labels"],
    trust_pickle: Annotated[str, typer.Option(help="Load pickled artifacts (they run code when loaded): true | false.")] = RUN_DEFAULTS["trust_pickle"],
    model_class: Annotated[str, typer.Option(help="A state_dict file's class: FILE.py:CLASS.")] = RUN_DEFAULTS["model_class"],
    model_kwargs: Annotated[str, typer.Option(help="JSON arguments of model_class's constructor.")] = RUN_DEFAULTS["model_kwargs"],
    handler: Annotated[str, typer.Option(help="Your own TorchServe handler file, packaged with ours.")] = RUN_DEFAULTS["handler"],
    image_size: Annotated[str, typer.Option(help="image-classification: HEIGHT,WIDTH the worker resizes to.")] = RUN_DEFAULTS["image_size"],
    image_mode: Annotated[str, typer.Option(help="image-classification: RGB | L.")] = RUN_DEFAULTS["image_mode"],
    image_mean: Annotated[str, typer.Option(help="image-classification: per-channel mean after scaling to [0, 1].")] = RUN_DEFAULTS["image_mean"],
    image_std: Annotated[str, typer.Option(help="image-classification: per-channel std.")] = RUN_DEFAULTS["image_std"],
    max_length: Annotated[int, typer.Option(help="Text models: truncation in tokens (0: the model's own).")] = RUN_DEFAULTS["max_length"],
    target: Annotated[str, typer.Option(help="torchserve | tfserving")] = RUN_DEFAULTS["target"],
    compiler: Annotated[str, typer.Option(help="auto | a backend | a comma list (see `servegate compilers`).")] = RUN_DEFAULTS["compiler"],
    compile_cache: Annotated[str, typer.Option(help="local (torch's own caches on this host) | shared (per device type, restored from and logged to the MLflow experiment: trust it as a pickle).")] = RUN_DEFAULTS["compile_cache"],
    max_artifacts: Annotated[int, typer.Option(help="auto: the most compiled artifacts one archive carries, each serving the shapes it is fastest at (1: the single best).")] = RUN_DEFAULTS["max_artifacts"],
    p95_ms: Annotated[float, typer.Option(help="SLO: p95 latency (ms).")] = RUN_DEFAULTS["p95_ms"],
    p99_ms: Annotated[float, typer.Option(help="SLO: p99 latency (ms).")] = RUN_DEFAULTS["p99_ms"],
    min_rps: Annotated[float, typer.Option(help="SLO: minimum throughput (req/s).")] = RUN_DEFAULTS["min_rps"],
    max_error_rate: Annotated[float, typer.Option(help="SLO: maximum error ratio.")] = RUN_DEFAULTS["max_error_rate"],
    max_regression_pct: Annotated[float, typer.Option(help="Allowed regression vs the champion (%).")] = RUN_DEFAULTS["max_regression_pct"],
    parity_atol: Annotated[float, typer.Option(help="Max |served - reference| of probabilities.")] = RUN_DEFAULTS["parity_atol"],
    parity_rtol: Annotated[float, typer.Option(help="Regression/tensor: max error relative to the reference.")] = RUN_DEFAULTS["parity_rtol"],
    min_top1_agreement: Annotated[float, typer.Option(help="Min top-1 agreement served vs reference.")] = RUN_DEFAULTS["min_top1_agreement"],
    max_accuracy_drop: Annotated[float, typer.Option(help="Max accuracy drop vs the champion.")] = RUN_DEFAULTS["max_accuracy_drop"],
    max_metric_regression: Annotated[float, typer.Option(help="Regression: max relative RMSE/MAE increase vs the champion.")] = RUN_DEFAULTS["max_metric_regression"],
    load_users: Annotated[int, typer.Option(help="Locust users.")] = RUN_DEFAULTS["load_users"],
    load_seconds: Annotated[float, typer.Option(help="Seconds of load per target.")] = RUN_DEFAULTS["load_seconds"],
    load_rounds: Annotated[int, typer.Option(help="Champion/challenger alternations.")] = RUN_DEFAULTS["load_rounds"],
    load_processes: Annotated[int, typer.Option(help="Locust processes (a master and workers when more than one).")] = RUN_DEFAULTS["load_processes"],
    batch_size: Annotated[int, typer.Option(help="TorchServe batch size.")] = RUN_DEFAULTS["batch_size"],
    max_batch_delay_ms: Annotated[int, typer.Option(help="TorchServe max batch delay (ms).")] = RUN_DEFAULTS["max_batch_delay_ms"],
    workers: Annotated[int, typer.Option(help="TorchServe workers of the version (CPU artifacts).")] = RUN_DEFAULTS["workers"],
    workers_per_gpu: Annotated[int, typer.Option(help="TorchServe workers on each GPU (CUDA artifacts).")] = RUN_DEFAULTS["workers_per_gpu"],
    threads: Annotated[int, typer.Option(help="Intra-op threads of each worker (0: the cores left to the frontend, divided among the workers).")] = RUN_DEFAULTS["threads"],
    promote: Annotated[str, typer.Option(help="Promote when the gates pass: true | false.")] = RUN_DEFAULTS["promote"],
    tune: Annotated[str, typer.Option(help="Search the challenger's batching within the SLO before the gates (servegate tune): true | false.")] = RUN_DEFAULTS["tune"],
    tune_points: Annotated[int, typer.Option(help="With tune: the most configurations measured.")] = RUN_DEFAULTS["tune_points"],
    server: Annotated[str, typer.Option(help="auto: attach when SERVEGATE_TORCHSERVE_* / SERVEGATE_TFSERVING_* name a server, else start a local one; attach: only a configured server (never a throwaway one); local. Empty: $SERVEGATE_SERVER, else auto.")] = RUN_DEFAULTS["server"],
    report_dir: Annotated[Path | None, typer.Option(
        help="Also copy the gate report here.", show_default="$SERVEGATE_REPORT_DIR")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Library logs and warnings on the terminal too.")] = False,
    workdir: WorkdirOption = None,
) -> None:
    """The pipeline: source -> package -> deploy -> gates -> promote or roll back (exit 1 if rejected).
    Gate options may tighten the gate policy's limits, never loosen them (`servegate policy`)."""
    from servegate.config import RUN_PARAMETERS, config_from_parameters, home_dir
    from servegate.runlog import new_log_path, run_log

    given = {name: value for name, value in locals().items() if name in RUN_PARAMETERS}
    config = config_from_parameters(given).model_copy(update={
        "torchserve": _settings(workdir), **({"report_dir": report_dir} if report_dir else {})})
    log_path = new_log_path(home_dir() / "logs")
    with run_log(log_path, verbose=verbose):
        result = _run_pipeline(config, log_path)
    _print_result(result)


def _run_pipeline(config: Any, log_path: Path) -> Any:
    """``api.deploy``; an unexpected failure becomes one line naming the log (the traceback
    goes to the log file; the MLflow run has ended FAILED)."""
    import logging

    from servegate import api

    console.print(f"[dim]servegate: library logs and warnings go to {log_path} (--verbose shows them)[/]")
    try:
        return api.deploy(config, console)
    except errors.ServegateError:
        raise
    except Exception as exc:  # a bug or a library failure: one line here, the traceback in the log
        logging.getLogger("servegate").error("servegate run failed", exc_info=exc)
        raise errors.PipelineError(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                                   f" (traceback in {log_path})") from exc


def _validation_message(exc: Any) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors())


def _print_result(result: Any) -> None:
    table = Table("check", "value", "threshold", "result", title=f"{result.name} v{result.version}: {result.decision}")
    for c in result.checks:
        table.add_row(f"{c.gate}.{c.name}", f"{c.value:.4g}", f"{c.comparison} {c.threshold:.4g}",
                      "[green]pass[/]" if c.passed else "[red]FAIL[/]")
    out.print(table)
    if result.endpoint:
        out.print(f"endpoint: {result.endpoint}")
        out.print("try it:")
        out.print(result.curl, soft_wrap=True, highlight=False, markup=False)
    out.print(f"MLflow run: {result.run_id}")


@app.command("policy")
def policy_command() -> None:
    """The gate policy runs are held to ($SERVEGATE_GATE_POLICY, else serving_configs/gate-policy.toml):
    a run's gate options may tighten these limits, never loosen them."""
    from servegate.config import gate_policy_path
    from servegate.policy import load_policy

    policy = load_policy(gate_policy_path())
    table = Table("parameter", "min", "max", title=f"gate policy {policy.path}")
    for name, bounds in policy.limits.items():
        table.add_row(name, *("" if b is None else f"{b:g}" for b in (bounds.minimum, bounds.maximum)))
    out.print(table)


@app.command("rollback")
def rollback_command(
    name: str,
    target: Annotated[str, typer.Option(help="torchserve | tfserving")] = "torchserve",
    server: Annotated[str, typer.Option(help="auto | attach | local (empty: $SERVEGATE_SERVER, else auto).")] = "",
    workdir: WorkdirOption = None,
) -> None:
    """Restore NAME's previous champion: registry alias and server default together."""
    from servegate import api

    restored, demoted = api.rollback(name, target=target, server=server or None,
                                     torchserve=_settings(workdir), console=console)
    out.print(f"{name}: champion is v{restored} again (v{demoted} kept as previous-champion)")


@app.command("reconcile")
def reconcile_command(
    name: str,
    target: Annotated[str, typer.Option(help="torchserve | tfserving")] = "torchserve",
    server: Annotated[str, typer.Option(help="auto | attach | local (empty: $SERVEGATE_SERVER, else auto).")] = "",
    workdir: WorkdirOption = None,
) -> None:
    """Bring the server (every replica of a fleet) to NAME's champion: restored from its
    verified archive where missing (a replica that restarted empty), and the default."""
    from servegate import api

    out.print(api.reconcile(name, target=target, server=server or None,
                            torchserve=_settings(workdir), console=console))


def _numbers(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise errors.ConfigError(f"{what}: a comma list of whole numbers, got {text!r}") from exc


@app.command("tune")
def tune_command(
    name: str,
    version: Annotated[str | None, typer.Option(help="The version to tune (default: the server's default).")] = None,
    p95_ms: Annotated[float | None, typer.Option(help="p95 budget (default: the pipeline's SLO).")] = None,
    p99_ms: Annotated[float | None, typer.Option(help="p99 budget (default: the pipeline's SLO).")] = None,
    max_points: Annotated[int, typer.Option(help="Most configurations measured.")] = 12,
    duration_s: Annotated[float, typer.Option(help="Seconds of load per point and load level.")] = 5.0,
    users: Annotated[str, typer.Option(help="Load levels (Locust users), walked upwards.")] = "4,8,16,32",
    batch_sizes: Annotated[str, typer.Option(help="Batch sizes searched.")] = "1,2,4,8,16,32",
    delays_ms: Annotated[str, typer.Option(help="Max batch delays searched (ms, >= 1: TorchServe reads 0 as 100).")] = "1,2,5,10,20",
    workers: Annotated[str, typer.Option(help="Workers searched (default: 1 to the cores, at most 4).")] = "",
    threads: Annotated[str, typer.Option(help="Threads per worker searched (0: the handler's rule, cores left to the frontend / workers).")] = "0",
    cores: Annotated[int | None, typer.Option(help="The server's cores (default: this host's).")] = None,
    all_points: Annotated[bool, typer.Option("--all", help="List pruned and unreached points too.")] = False,
    server: Annotated[str, typer.Option(help="auto | attach | local (empty: $SERVEGATE_SERVER, else auto).")] = "",
    target: TargetOption = "torchserve",
    workdir: WorkdirOption = None,
) -> None:
    """Search NAME's batch size, batch delay and workers (TF Serving: max_batch_size,
    batch_timeout_micros and num_batch_threads) on the live server for the highest throughput
    within the p95/p99 SLO (scratch versions beside the champion, loaded with Locust as the
    load gate loads); print the frontier and the winner as pipeline parameters."""
    import os

    from pydantic import ValidationError

    from servegate import api
    from servegate.config import SLOs
    from servegate.tuning.report import points_table, run_parameters
    from servegate.tuning.search import Space

    _valid(name, version)
    try:
        slos = SLOs(**{k: v for k, v in (("p95_ms", p95_ms), ("p99_ms", p99_ms)) if v is not None})
        _, where = _target_config(target, workdir, server)
        config = where.model_copy(update={"name": name, "slos": slos})
    except ValidationError as exc:
        raise errors.ConfigError(f"invalid tune settings: {_validation_message(exc)}") from exc
    host_cores = cores or os.cpu_count() or 1
    space = Space(batch_sizes=_numbers(batch_sizes, "--batch-sizes"),
                  delays_ms=_numbers(delays_ms, "--delays-ms"),
                  workers=_numbers(workers, "--workers") or tuple(range(1, min(host_cores, 4) + 1)),
                  users=_numbers(users, "--users"), threads=_numbers(threads, "--threads"))
    tuned = api.tune(name, version=version, config=config, space=space, max_points=max_points,
                     seconds=duration_s, cores=host_cores, console=console)
    result = tuned.result
    out.print(points_table(result, f"{name} v{tuned.version}", all_points=all_points))
    for note in result.notes:
        out.print(f"note: {note}")
    if result.winner is not None and result.winner.best is not None:
        p, m = result.winner.point, result.winner.best
        out.print(f"winner: batch_size={p.batch_size} max_batch_delay_ms={p.max_batch_delay_ms} "
                  f"workers={p.workers} threads={p.threads or 'auto'}: {m.rps:.1f} req/s at "
                  f"{m.users} users, p95 {m.p95_ms:.1f} ms, p99 {m.p99_ms:.1f} ms")
        out.print(f"deploy with it: mlflow run pipelines/deploy {run_parameters(result)}",
                  soft_wrap=True)
    if result.confirmation is not None and result.confirmation.kept:
        out.print(f"confirmed against the current {result.confirmation.incumbent.label}: "
                  f"{result.confirmation.reason}", soft_wrap=True)
    out.print(f"MLflow run: {tuned.run_id} (frontier plot: tune/{tuned.plot})")


@export_app.command("kserve")
def export_kserve(
    model: Annotated[str, typer.Argument(help="NAME or NAME@ALIAS (default alias: champion; the champion's export adds the challenger as a canary).")],
    image: Annotated[str, typer.Option(help="servegate's TorchServe image the ServingRuntime runs.")],
    storage_uri: Annotated[str, typer.Option(help="Where you upload out/storage/v<N> as <storage-uri>/v<N> (s3://, gs://, pvc://, https://).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory written.")] = Path("kserve"),
    namespace: Annotated[str, typer.Option(help="Kubernetes namespace.")] = "default",
    cpu: Annotated[str, typer.Option(help="CPU request and limit.")] = "1",
    memory: Annotated[str, typer.Option(help="Memory request and limit.")] = "2Gi",
    gpus: Annotated[int, typer.Option(help="nvidia.com/gpu per replica (0: CPU only).")] = 0,
    protocol: Annotated[str, typer.Option(help="v1 | v2: the KServe protocol clients speak.")] = "v1",
    canary_percent: Annotated[int, typer.Option(help="Traffic the challenger's revision gets.")] = 10,
    min_replicas: Annotated[int, typer.Option(help="Fewest replicas.")] = 1,
    max_replicas: Annotated[int, typer.Option(help="Most replicas.")] = 3,
    public: Annotated[bool, typer.Option("--public", help="Reachable from outside the cluster (default: cluster-local).")] = False,
) -> None:
    """KServe manifests (ServingRuntime, InferenceService, the challenger as a canary) and the
    storage TorchServe reads, from the registry's verified archives (docs/fleet.md)."""
    from servegate.kserve import KServeOptions, export

    name, _, alias = model.partition("@")
    _valid(name)
    options = KServeOptions(image=image, storage_uri=storage_uri, namespace=namespace, cpu=cpu,
                            memory=memory, gpus=gpus, protocol=protocol,  # type: ignore[arg-type]
                            canary_percent=canary_percent, min_replicas=min_replicas,
                            max_replicas=max_replicas, public=public)
    done = export(name, options, out_dir, alias=alias or "champion")
    out.print(f"{name}: v{done.champion}" + (f", canary v{done.challenger}" if done.challenger else "")
              + f" -> {done.directory}")
    for path in done.files:
        out.print(f"  {path}")


@image_app.command("build")
def image_build(
    tag: Annotated[str, typer.Argument(help="The image's tag, e.g. registry.example.com/servegate-torchserve:1.")],
    base: Annotated[str, typer.Option(help="A Python 3.11 image (Debian/Ubuntu); Java is installed into it when absent.")] = "python:3.11-slim",
    model: Annotated[list[str] | None, typer.Option("--model", help="Bake NAME or NAME@ALIAS (default alias: champion) in: its verified archive, loaded at start. Repeat for several; none: mount a model store at run.")] = None,
    allowed_url_prefix: Annotated[list[str] | None, typer.Option("--allowed-url-prefix", help="A URL prefix archives may be registered from (allowed_urls); none: the model store only.")] = None,
    token_expiration_min: Annotated[float | None, typer.Option(help="Minutes TorchServe's keys live (its default: 60).")] = None,
    gpus: Annotated[int, typer.Option(help="number_of_gpu in the image's config.properties.")] = 0,
    index_url: Annotated[str | None, typer.Option(help="pip index the wheelhouse is downloaded from (e.g. https://download.pytorch.org/whl/cpu for CPU torch).")] = None,
    extra_index_url: Annotated[list[str] | None, typer.Option("--extra-index-url", help="Further pip indexes.")] = None,
) -> None:
    """Build servegate's TorchServe image: this environment's package versions (a wheelhouse),
    our logging and metrics configuration, token auth and allowed_urls, archives baked in or a
    model store mounted at run (docs/fleet.md)."""
    from rich.markup import escape

    from servegate.image import service

    with console.status("building") as status:
        built = service.build(tag, base=base, models=model or (),
                              allowed_url_prefixes=allowed_url_prefix or (),
                              token_expiration_min=token_expiration_min, gpus=gpus,
                              index_url=index_url, extra_index_urls=extra_index_url or (),
                              progress=lambda line: status.update(escape(line[:100])))
    out.print(f"{built.tag}: {built.id[:19]} {built.size_bytes / 1e6:.0f} MB, "
              f"built in {built.seconds:.0f} s")


@image_app.command("run")
def image_run(
    image: Annotated[str, typer.Argument(help="A servegate image (servegate image build).")],
    name: Annotated[str, typer.Option(help="The container's name.")] = "servegate-torchserve",
    workdir: Annotated[Path, typer.Option(help="Host directory for its key file and logs.")] = Path("servegate-image"),
    model_store: Annotated[Path | None, typer.Option(help="Host model store mounted read-only; servegate run copies new versions there.")] = None,
    host: Annotated[str, typer.Option(help="Where the inference port is published (management and metrics: 127.0.0.1 only).")] = "127.0.0.1",
    inference_port: Annotated[int, typer.Option(help="0: a free port.")] = 0,
    management_port: Annotated[int, typer.Option(help="0: a free port.")] = 0,
    metrics_port: Annotated[int, typer.Option(help="0: a free port.")] = 0,
    user: Annotated[str | None, typer.Option(help="uid:gid TorchServe runs as (default: yours; the image's non-root user when you are root).")] = None,
    insecure_http: Annotated[bool, typer.Option("--insecure-http", help="Allow plain HTTP on an address other hosts reach.")] = False,
) -> None:
    """Start a container of the image and wait until it serves; prints the variables that
    attach servegate run to it."""
    from servegate.image import service
    from servegate.image.container import RunOptions

    options = RunOptions(image=image, name=name, workdir=workdir, model_store=model_store,
                         host=host, inference_port=inference_port,
                         management_port=management_port, metrics_port=metrics_port, user=user,
                         insecure_http=insecure_http)
    with console.status(f"starting {name}"):
        running = service.run(options)
    # plain lines (no markup, no wrapping): eval "$(servegate image run ...)" sets them
    print(f"# {running.name} ({running.container_id[:12]}) serves {running.inference_url}")
    for key, value in running.attach_environment().items():
        print(f"export {key}={shlex.quote(value)}")


@image_app.command("stop")
def image_stop(name: Annotated[str, typer.Argument(help="The container's name.")] = "servegate-torchserve") -> None:
    """Stop and remove a container image run started."""
    from servegate.image import service

    out.print(f"{name}: " + ("stopped" if service.stop(name) else "not running"))


@image_app.command("base")
def image_base(tag: Annotated[str, typer.Argument(help="The base image's tag.")] = "localhost/servegate-debian:bookworm") -> None:
    """Make a Debian bookworm base (Python 3.11, Java) with debootstrap, for machines that
    reach a Debian mirror but no image registry; build with --base TAG."""
    from servegate.image import service

    with console.status(f"debootstrap and import {tag}"):
        image_id = service.make_base(tag)
    out.print(f"{tag}: {image_id[:19]}")


def main(argv: list[str] | None = None) -> None:
    """The console script: SIGTERM/SIGINT become ``Interrupted`` (cleanup, then 143/130), and
    an unexpected exception exits 7 with its traceback, never 1 (1 means a gate failed)."""
    import traceback

    from servegate.interrupts import signals_as_errors

    try:
        with signals_as_errors():
            app(args=argv)
    except errors.ServegateError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        sys.exit(exit_code(exc))
    except Exception:  # noqa: BLE001 (a bug: say so, with the traceback)
        traceback.print_exc()
        console.print("[bold red]internal error[/] (a bug in servegate; the traceback is above)")
        sys.exit(INTERNAL_ERROR)


if __name__ == "__main__":
    main()
