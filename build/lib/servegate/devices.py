"""What this host has to compile and serve on: CUDA devices, CPU bf16 support, and a key naming the
device type (for compile caches, which are valid only on the same device, driver and torch).

torch is imported lazily, inside functions: importing this module has no side effects."""

from __future__ import annotations

import platform
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

#: CPU flags (Linux ``/proc/cpuinfo``) that give native bf16 arithmetic.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")

Device = Literal["cpu", "cuda"]


@dataclass(frozen=True)
class CudaDevice:
    index: int
    name: str
    capability: str  # "major.minor", e.g. "9.0"
    total_memory: int  # bytes


def cuda_devices() -> list[CudaDevice]:
    """The CUDA devices torch sees ([] without torch, a CUDA build of it, or a device)."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    found = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        found.append(CudaDevice(index=i, name=str(props.name), capability=f"{props.major}.{props.minor}",
                                total_memory=int(props.total_memory)))
    return found


def gpu_count() -> int:
    """How many CUDA devices this host has (0 on a CPU-only host)."""
    return len(cuda_devices())


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> str:
    if not sys.platform.startswith("linux"):
        return ""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux; empty elsewhere)."""
    match = re.search(r"^flags\s*:\s*(.*)$", _cpuinfo(), re.MULTILINE)
    return set(match.group(1).split()) if match else set()


def cpu_supports_bf16() -> bool:
    """True where the CPU has native bf16 (AVX512_BF16 or AMX-BF16); False elsewhere."""
    return bool(cpu_flags() & set(BF16_CPU_FLAGS))


def cpu_model() -> str:
    match = re.search(r"^model name\s*:\s*(.*)$", _cpuinfo(), re.MULTILINE)
    return (match.group(1).strip() if match else platform.processor() or platform.machine()) or "cpu"


def _torch_versions() -> tuple[str, str | None]:
    try:
        import torch
    except ImportError:
        return "none", None
    return str(torch.__version__), torch.version.cuda


def safe_key(text: str, limit: int = 200) -> str:
    """``text`` as a file-, URL- and MLflow-safe name: letters, digits, ``.``, ``_`` and ``-``."""
    key = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")
    return key[:limit] or "unknown"


def built_for(device: str = "cuda") -> dict[str, Any]:
    """What an archive was compiled on: ``device_name``, ``capability`` (``"9.0"``; None on a CPU),
    ``cuda`` (the CUDA runtime torch was built with; None without CUDA) and ``torch``."""
    torch_version, cuda = _torch_versions()
    if device == "cuda":
        devices = cuda_devices()
        if devices:
            return {"device_name": devices[0].name, "capability": devices[0].capability,
                    "cuda": cuda, "torch": torch_version}
        return {"device_name": None, "capability": None, "cuda": cuda, "torch": torch_version}
    return {"device_name": cpu_model(), "capability": None, "cuda": None, "torch": torch_version}


def _driver_version() -> str | None:
    """The NVIDIA driver version (``/proc/driver/nvidia/version``, Linux), if readable."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    match = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9][0-9.]*)", text)
    return match.group(1) if match else None


def device_key(device: str = "cpu") -> str:
    """A key of the device type that compiled code is valid on, safe as a file name and in MLflow:
    CUDA: GPU model, compute capability, CUDA runtime, driver and torch version; CPU: CPU model,
    whether it has bf16, torch version."""
    torch_version, cuda = _torch_versions()
    if device == "cuda":
        info = built_for("cuda")
        if info["device_name"] is None:
            raise RuntimeError("no CUDA device: cannot key a CUDA compile cache")
        parts = [info["device_name"], f"sm{info['capability']}", f"cuda{cuda}",
                 f"driver{_driver_version() or 'unknown'}", f"torch{torch_version}"]
    else:
        parts = [cpu_model(), "bf16" if cpu_supports_bf16() else "nobf16", f"torch{torch_version}"]
    return safe_key("-".join(parts))


def missing_bf16_flags() -> str:
    """Why bf16 cannot run on this CPU (naming the missing flags), or '' where it can."""
    if cpu_supports_bf16():
        return ""
    return (f"this CPU lacks native bf16 (none of the flags {', '.join(BF16_CPU_FLAGS)}"
            + (")" if sys.platform.startswith("linux") else "; only checked on Linux)"))
