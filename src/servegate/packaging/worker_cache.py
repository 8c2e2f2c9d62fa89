"""The compile caches an archive ships for its workers (issue 23: a worker of an Inductor archive
compiled every bucket cold, each model directory once, up to TorchServe's start-up timeout).

``prime_worker_cache`` runs the built archive's own handler, load and warm-up, as a worker runs
them (``servegate.harness``), in a subprocess whose ``TORCHINDUCTOR_CACHE_DIR`` and
``TRITON_CACHE_DIR`` point into an empty folder (the handler keeps caches set by its
environment), and packs what it compiled into ``compile-cache.tar.gz``. The archive carries
that file with its sha256 (``ShippedCompileCache``); the worker unpacks it into the model
directory's cache before it compiles (``handlers/sg_loaders.unpack_shipped_cache``), so the
compile becomes cache hits wherever the compiler, its versions and the device match, and runs
cold, as before, wherever they do not.

The file is code compiled by this build for this archive, shipped inside it and covered by the
archive's recorded sha256 like the handler's own modules, never a cache restored from elsewhere.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from servegate.errors import PackagingError

#: The packed caches' name inside the archive.
SHIPPED_CACHE_FILE = "compile-cache.tar.gz"
#: Formats that compile in the worker (``handlers/sg_loaders.COMPILES_IN_WORKER``).
COMPILES_IN_WORKER = ("inductor",)


def compiles_in_worker(spec: dict[str, object]) -> bool:
    """Whether a worker of the archive whose spec is ``spec`` compiles when it loads (an Inductor
    artifact, routed or not)."""
    routes = spec.get("routes") or []
    assert isinstance(routes, list)
    return any(isinstance(s, dict) and s.get("format") in COMPILES_IN_WORKER
               for s in [spec, *routes])


def prime_worker_cache(archive: Path, target: Path, *, gpu_id: int | None = None,
                       timeout_s: float = 3600.0) -> tuple[Path, int]:
    """Run ``archive``'s handler load and warm-up in a subprocess with empty compile caches and
    pack them as ``target`` (members ``inductor/...`` and ``triton/...``); return it and the
    bytes it unpacks to. ``PackagingError`` when the handler fails or takes over ``timeout_s``."""
    from servegate.config import child_environment

    with tempfile.TemporaryDirectory(prefix="servegate-prime-") as tmp:
        caches = Path(tmp)
        env = child_environment(TORCHINDUCTOR_CACHE_DIR=str(caches / "inductor"),
                                 TRITON_CACHE_DIR=str(caches / "triton"))
        command = [sys.executable, "-m", "servegate.packaging.worker_cache", str(archive)]
        if gpu_id is not None:
            command.append(str(gpu_id))
        try:
            done = subprocess.run(command, capture_output=True, timeout=timeout_s, env=env)
        except subprocess.TimeoutExpired as exc:
            raise PackagingError(f"priming {archive.name}'s compile cache took over "
                                 f"{timeout_s:.0f} s") from exc
        if done.returncode != 0:
            raise PackagingError(f"priming {archive.name}'s compile cache failed: "
                                 f"{done.stderr.decode(errors='replace')[-1500:]}")
        unpacked = 0
        target.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(target, "w:gz") as tar:
            for folder in ("inductor", "triton"):
                if (caches / folder).is_dir():
                    unpacked += sum(p.stat().st_size for p in (caches / folder).rglob("*")
                                    if p.is_file())
                    tar.add(caches / folder, arcname=folder)
    return target, unpacked


def main(argv: list[str] | None = None) -> int:
    """``python -m servegate.packaging.worker_cache ARCHIVE [GPU_ID]``: the handler's load and
    warm-up, as a worker runs them, then one request of one row and a full batch of them from
    its warm-up sample: the sizes a worker's first requests bring (a shape the warm-up did not
    use makes Inductor compile again, generalised to any batch)."""
    import json

    from servegate.harness import LocalHandler

    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2):
        raise SystemExit("usage: python -m servegate.packaging.worker_cache ARCHIVE [GPU_ID]")
    handler = LocalHandler(Path(args[0]), gpu_id=int(args[1]) if len(args) == 2 else None)
    try:
        spec = json.loads((handler.model_dir / "servegate.json").read_text(encoding="utf-8"))
        warmup = handler.model_dir / str(spec.get("warmup_file") or "warmup.json")
        rows = json.loads(warmup.read_text(encoding="utf-8")).get("instances") or []
        if rows:
            body = json.dumps({"instances": rows[:1]}).encode()
            batch = max(2, int(handler.handler.batch_size))  # model-config's batchSize
            for requests in (1, batch):
                handler.batch([body] * requests)
    finally:
        handler.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
