"""Run an archive's handler in this process, the way a TorchServe worker would.

For tests and debugging of handlers without a server::

    with LocalHandler(Path("model-store/digits.v1.mar")) as handler:
        replies = handler.batch([b'{"inputs": [...]}', b"not json"])
        # [(200, {...}), (400, {"error": "malformed JSON", ...})]
"""

from __future__ import annotations

import importlib
import json
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servegate.errors import PackagingError


@dataclass
class HarnessContext:
    """The parts of ``ts.context.Context`` our handlers use, recording what they set."""

    model_dir: str
    model_name: str
    model_yaml_config: dict[str, Any]
    gpu_id: int | None = None
    statuses: dict[int, tuple[int, str]] = field(default_factory=dict)
    content_types: dict[int, str] = field(default_factory=dict)
    metrics: Any = None

    @property
    def system_properties(self) -> dict[str, Any]:
        return {"model_dir": self.model_dir, "gpu_id": self.gpu_id,
                "batch_size": self.model_yaml_config.get("batchSize", 1)}

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.statuses[idx] = (code, phrase)

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.content_types[idx] = value


class LocalHandler:
    """Unpack an archive and drive its handler in-process."""

    def __init__(self, archive: Path, gpu_id: int | None = None) -> None:
        """``gpu_id``: the GPU TorchServe would give this worker (CUDA archives)."""
        self.archive = archive
        self._tmp = tempfile.TemporaryDirectory(prefix="servegate-harness-")
        self.model_dir = Path(self._tmp.name)
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(self.model_dir)
            manifest = json.loads((self.model_dir / "MAR-INF" / "MANIFEST.json").read_text())
        except (OSError, zipfile.BadZipFile, ValueError) as exc:
            self._tmp.cleanup()
            raise PackagingError(f"cannot open archive {archive}: {exc}") from exc
        self.model_name = manifest["model"]["modelName"]
        handler_file = manifest["model"]["handler"]
        import yaml

        config_file = self.model_dir / "model-config.yaml"
        yaml_config = yaml.safe_load(config_file.read_text()) if config_file.exists() else {}
        # As TorchServe's worker does: the unpacked archive on sys.path and the handler imported by
        # its module name, so the archive's modules import each other as they do in the worker.
        # Modules of the same names imported before (another archive's) step aside until close():
        # each archive runs its own handler code.
        self._own = {p.stem for p in self.model_dir.glob("*.py")}
        self._displaced = {n: sys.modules.pop(n) for n in self._own if n in sys.modules}
        sys.path.insert(0, str(self.model_dir))
        try:
            module = importlib.import_module(Path(handler_file).stem)
            handler_cls = next(v for v in vars(module).values()
                               if isinstance(v, type) and v.__module__ == module.__name__
                               and callable(getattr(v, "handle", None)))
            self.handler = handler_cls()
            self._context_args = (str(self.model_dir), self.model_name, yaml_config or {}, gpu_id)
            self.handler.initialize(HarnessContext(*self._context_args))
        except BaseException:
            self.close()
            raise

    def batch(self, bodies: list[bytes | None]) -> list[tuple[int, Any]]:
        """Serve one batch of raw bodies (None: a request without body); (status, JSON) each."""
        context = HarnessContext(*self._context_args)
        data = [{} if b is None else {"body": b} for b in bodies]
        answers = self.handler.handle(data, context)
        if len(answers) != len(bodies):
            raise AssertionError(f"{len(bodies)} requests got {len(answers)} answers")
        return [(context.statuses.get(i, (200, "OK"))[0], json.loads(a)) for i, a in enumerate(answers)]

    def close(self) -> None:
        if str(self.model_dir) in sys.path:
            sys.path.remove(str(self.model_dir))
        for name in self._own:
            sys.modules.pop(name, None)
        sys.modules.update(self._displaced)
        self._tmp.cleanup()

    def __enter__(self) -> LocalHandler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
