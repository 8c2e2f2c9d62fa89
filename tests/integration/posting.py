"""Post bodies to a served model all at once, so that TorchServe batches mix them."""

from __future__ import annotations

import threading

import httpx


def post_together(backend, name: str, bodies: list[bytes], timeout: float = 60) -> dict[int, httpx.Response]:
    """Every body posted at the same moment (threads behind a barrier); answers by index."""
    results: dict[int, httpx.Response] = {}
    barrier = threading.Barrier(len(bodies))
    headers = backend.client.keys.header("inference") | {"Content-Type": "application/json"}

    def send(i: int, body: bytes) -> None:
        with httpx.Client(timeout=timeout) as client:
            barrier.wait()
            results[i] = client.post(backend.endpoint(name), content=body, headers=headers)

    threads = [threading.Thread(target=send, args=(i, b)) for i, b in enumerate(bodies)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results
