"""In-process cost of a TorchServe worker per request, inside and outside ``handle()``.

TorchServe 0.12's own worker loop is run in this process on a socket pair: a batch of 8 digits
requests framed as the frontend frames them (7 HTTP headers, as Locust sends), read by
``retrieve_msg``, served by ``ts.service.Service.predict`` around our handler (the archive built
by this tree), the response written back. Timed per request (CPU, median of interleaved rounds):
reading the message with TorchServe's field-by-field reader and with ``sg_worker_io``'s, the
whole of ``Service.predict`` and ``handle()`` alone (their difference is TorchServe's wrapper:
request and header dictionaries, the response frame, the ``PredictionTime`` metric), and the
"Backend received inference" log line TorchServe writes per batch::

    PYTHONPATH=$PWD/src .venv/bin/python -m benchmarks.worker_loop [--rounds 12]
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import socket
import statistics
import struct
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BATCH = 8
HEADERS = [(b"host", b"127.0.0.1:41234"), (b"user-agent", b"python/gevent-http-client-2.3.1"),
           (b"accept-encoding", b"gzip, deflate"), (b"content-type", b"application/json"),
           (b"authorization", b"Bearer " + b"k" * 32), (b"content-length", b"0"),
           (b"connection", b"keep-alive")]


def frame(bodies: list[bytes]) -> bytes:
    """A predict message as TorchServe's frontend frames it (command byte included)."""
    def field(data: bytes) -> bytes:
        return struct.pack("!i", len(data)) + data

    message = bytearray(b"I")
    for index, body in enumerate(bodies):
        message += field(f"{index:08d}-0000-4000-8000-000000000000".encode())
        for name, value in HEADERS:
            message += field(name) + field(str(len(body)).encode() if name == b"content-length"
                                           else value)
        message += struct.pack("!i", -1)
        message += field(b"body") + field(b"application/json") + field(body)
        message += struct.pack("!i", -1)
    return bytes(message + struct.pack("!i", -1))


def _cpu_us(action: Callable[[], Any], calls: int, setup: Callable[[], Any] | None = None) -> float:
    if setup is not None:
        setup()
    samples = []
    for _ in range(calls):
        start = time.thread_time_ns()
        action()
        samples.append(time.thread_time_ns() - start)
    return statistics.median(samples) / 1e3 / BATCH


def run(rounds: int, calls: int) -> dict[str, float]:
    os.environ["TS_DECODE_INPUT_REQUEST"] = "false"  # as servegate's config.properties sets it
    import torch
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
    from ts.protocol import otf_message_handler as protocol
    from ts.service import Service

    from servegate._resources import handler_module, serving_configs_dir
    from servegate.config import BatchingConfig
    from servegate.packaging.builder import package_model
    from servegate.sources.digits import builtin_digits

    torch.set_num_threads(1)
    logging.basicConfig(stream=open(os.devnull, "w"), format="%(message)s",  # noqa: SIM115
                        level=logging.INFO, force=True)
    digits = builtin_digits(epochs=2)
    bodies = [json.dumps({"inputs": row.tolist()}).encode() for row in digits.eval_x[:BATCH]]
    message = frame(bodies)
    worker_io = handler_module("sg_worker_io")
    readers = {"TorchServe": (protocol._retrieve_buffer, protocol._retrieve_inference_msg),
               "sg_worker_io": worker_io.buffered_protocol()}
    with tempfile.TemporaryDirectory(prefix="worker-loop-") as tmp:
        archive = package_model(digits, name="digits", version="1", compiler="eager",
                                batching=BatchingConfig(batch_size=BATCH),
                                output_dir=Path(tmp) / "store")
        model_dir = Path(tmp) / "model"
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(model_dir)
        manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
        metrics = MetricsCacheYamlImpl(
            config_file_path=str(serving_configs_dir() / "torchserve" / "metrics.yaml"))
        metrics.initialize_cache()
        service = Service("digits", str(model_dir), manifest, None, None, BATCH,
                          metrics_cache=metrics)
        sys.path.insert(0, str(model_dir))
        module = importlib.import_module(Path(manifest["model"]["handler"]).stem)
        handler_class = next(v for v in vars(module).values() if isinstance(v, type)
                             and v.__module__ == module.__name__ and hasattr(v, "handle"))
        handler = handler_class()
        handler.initialize(service.context)
        service._entry_point = handler.handle
        front, worker = socket.socketpair()
        service.set_cl_socket(worker)

        def read(reader: tuple[Any, Any]) -> Callable[[], Any]:
            def action() -> Any:
                protocol._retrieve_buffer, protocol._retrieve_inference_msg = reader
                front.sendall(message)
                return protocol.retrieve_msg(worker)
            return action

        _, batch = read(readers["TorchServe"])()
        _, inputs, _ = Service.retrieve_data_for_inference(batch)
        answer = service.predict(batch)
        if b"Prediction success" not in answer:
            raise RuntimeError(f"the worker loop failed: {bytes(answer[:300])!r}")
        actions = {f"read the message ({name})": read(reader) for name, reader in readers.items()}
        actions |= {
            "Service.predict (TorchServe's wrapper + handle())": lambda: service.predict(batch),
            "handle() alone": lambda: handler.handle(inputs, service.context),
        }

        def log_line() -> None:
            logging.info("Backend received inference at: %d", time.time())

        root = logging.getLogger()
        actions |= {"the per-batch log line, root logger at INFO (TorchServe)": log_line,
                    "the per-batch log line, root logger at WARNING (sg_worker_io)": log_line}
        # the root logger as each side leaves it: INFO in TorchServe's worker, WARNING once
        # sg_worker_io is installed (reading the message logs one line at INFO)
        setups = {name: (lambda: root.setLevel(logging.WARNING)) if "sg_worker_io" in name else
                  (lambda: root.setLevel(logging.INFO)) for name in actions}
        medians: dict[str, list[float]] = {name: [] for name in actions}
        for index in range(rounds):
            for name in (list(actions) if index % 2 == 0 else list(actions)[::-1]):
                medians[name].append(_cpu_us(actions[name], calls, setups.get(name)))
        front.close()
        worker.close()
    return {name: statistics.median(values) for name, values in medians.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--calls", type=int, default=200, help="timed calls per round and part")
    args = parser.parse_args(argv)
    results = run(args.rounds, args.calls)
    print(f"worker CPU µs per request, batch {BATCH} (digits, eager; median of {args.rounds} "
          "interleaved rounds)\n\n| part | µs |\n|---|---:|")
    for name, value in results.items():
        print(f"| {name} | {value:.1f} |")


if __name__ == "__main__":
    main()
