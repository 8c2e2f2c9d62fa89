"""Package the minimal handler the documented way: torch-model-archiver's Python API, defaults."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

MINIMAL_HANDLER = Path(__file__).with_name("minimal_handler.py")


def package_minimal(module: Any, model_file: Path, *, name: str, version: str,
                    output_dir: Path) -> Path:
    """A .mar of ``module``'s state_dict + its model file + the minimal handler (batch size 1).

    No model-config.yaml: batch size, delay and threads stay at TorchServe's defaults.
    """
    import torch
    from model_archiver.model_archiver_config import ModelArchiverConfig
    from model_archiver.model_packaging import package_model
    from model_archiver.model_packaging_utils import ModelExportUtils

    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-minimal-") as tmp:
        weights = Path(tmp) / "model.pt"
        torch.save(module.state_dict(), weights)
        config = ModelArchiverConfig(
            model_name=name,
            handler=str(MINIMAL_HANDLER),
            version=version,
            serialized_file=str(weights),
            model_file=str(model_file),
            export_path=str(output_dir),
            force=True,
        )
        # The archiver stages files in gettempdir()/<name>: keep that inside our own temp dir.
        saved, tempfile.tempdir = tempfile.tempdir, tmp
        try:
            package_model(config, ModelExportUtils.generate_manifest_json(config))
        finally:
            tempfile.tempdir = saved
    archive = output_dir / f"{name}.mar"
    if not archive.exists():
        raise RuntimeError(f"torch-model-archiver wrote no archive for {name}")
    return archive
