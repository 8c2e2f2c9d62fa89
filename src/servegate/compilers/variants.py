"""One parametrised description of a compiler variant: precision, device and torch.compile mode.

Names follow ``<backend>[-<mode>][-<precision>][-cuda]``: ``aoti-bf16``, ``eager-fp16-cuda``,
``inductor-cudagraphs-fp16-cuda``. The eager/export/aoti/inductor compilers take a ``Variant``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Precision = Literal["fp32", "fp16", "bf16"]

DTYPE_NAMES: dict[str, Literal["float32", "float16", "bfloat16"]] = {
    "fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}

#: torch.compile modes and the token that names them.
MODE_TOKENS = {"reduce-overhead": "cudagraphs", "max-autotune": "max-autotune"}
#: The modes that capture CUDA graphs (``max-autotune`` too, not ``max-autotune-no-cudagraphs``):
#: a graph per distinct input shape, so they run at fixed shape buckets. The handlers keep the
#: same list (``sg_base.CUDA_GRAPH_MODES``).
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")

NO_CUDA = "no CUDA device: this variant needs an NVIDIA GPU and a CUDA build of torch"


@dataclass(frozen=True)
class Variant:
    precision: Precision = "fp32"
    device: Literal["cpu", "cuda"] = "cpu"
    compile_mode: str | None = None

    def __post_init__(self) -> None:
        if self.precision not in DTYPE_NAMES:
            raise ValueError(f"unknown precision {self.precision!r}")
        if self.compile_mode is not None and self.compile_mode not in MODE_TOKENS:
            raise ValueError(f"unknown torch.compile mode {self.compile_mode!r}")
        if self.device == "cpu" and self.precision == "fp16":
            raise ValueError("fp16 variants are CUDA only")

    @property
    def default(self) -> bool:
        return self == FP32_CPU

    @property
    def cuda_graphs(self) -> bool:
        """Whether torch.compile captures CUDA graphs (and so needs shape buckets)."""
        return self.device == "cuda" and self.compile_mode in CUDA_GRAPH_MODES

    @property
    def dtype_name(self) -> Literal["float32", "float16", "bfloat16"]:
        return DTYPE_NAMES[self.precision]

    def torch_dtype(self):  # -> torch.dtype
        import torch

        return getattr(torch, self.dtype_name)

    def name(self, backend: str) -> str:
        parts = [backend]
        if self.compile_mode is not None:
            parts.append(MODE_TOKENS[self.compile_mode])
        if self.precision != "fp32":
            parts.append(self.precision)
        if self.device == "cuda":
            parts.append("cuda")
        return "-".join(parts)

    def unavailable_reason(self) -> str | None:
        """Why this host cannot run the variant (no CUDA device; a CPU without bf16), else None."""
        if self.device == "cuda":
            import torch

            return None if torch.cuda.is_available() else NO_CUDA
        if self.precision == "bf16":
            from servegate.devices import missing_bf16_flags

            return missing_bf16_flags() or None
        return None

    def place(self, module, tensors: tuple):  # -> (torch.nn.Module, tuple[torch.Tensor, ...])
        """``module`` and example ``tensors`` on the variant's device, the module and the floating
        tensors in its dtype (integer inputs such as token ids keep theirs)."""
        import copy

        dtype = self.torch_dtype()
        module = copy.deepcopy(module).to(device=self.device, dtype=dtype)  # the source stays fp32
        placed = tuple(t.to(device=self.device, dtype=dtype) if t.is_floating_point()
                       else t.to(device=self.device) for t in tensors)
        return module, placed


#: The default: fp32 on the CPU, compile mode None.
FP32_CPU = Variant()
