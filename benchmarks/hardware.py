"""How close a model comes to the machine: its FLOPs per call against a large float32 matmul."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from servegate.compilers.shapes import Shape
from servegate.sources.base import TorchModel

MATMUL_N = 2048


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def matmul_flops_per_s(threads: int, n: int = MATMUL_N, repeats: int = 7) -> float:
    """The best of ``repeats`` float32 ``[n, n] @ [n, n]`` products, in FLOP/s, on ``threads``."""
    import torch

    with torch_threads(threads), torch.inference_mode():
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def model_flops(model: TorchModel, shape: Shape) -> int:
    """FLOPs of one eager forward pass at ``shape``, counted by ``torch.utils.flop_counter``
    (matmuls, linear layers and attention; element-wise work is not counted)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    inputs = [torch.from_numpy(a) for a in model.inputs_at(shape.batch, shape.tokens)]
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model.module(*inputs)
    return int(counter.get_total_flops())
