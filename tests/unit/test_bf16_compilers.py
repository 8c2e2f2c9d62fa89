"""bf16 on a CPU with AVX512_BF16/AMX: the compiled programs really are bf16 and stay within the
reduced-precision limits, on the project's digits model and on a model it does not ship.

The ``evaluate`` tests run the artifacts through the handlers' loader, which casts to the spec's
``dtype`` once the handler side of the GPU contract (``load_model(..., gpu_id=None)``) is merged;
until then they skip, saying so."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest

from servegate import devices
from servegate.compilers import get_compiler
from servegate.compilers.select import choose, evaluate
from servegate.parity_limits import PARITY_LIMITS
from servegate.sources.base import TorchModel

pytestmark = pytest.mark.skipif(not devices.cpu_supports_bf16(),
                                reason="this CPU has neither avx512_bf16 nor amx_bf16")


@pytest.fixture(scope="module")
def digits2() -> TorchModel:
    from servegate.sources.digits import builtin_digits

    return builtin_digits(epochs=2)


@pytest.fixture(scope="module")
def blobs() -> TorchModel:
    """A small classifier the project does not ship (LayerNorm + GELU), trained here on three
    well-separated Gaussian blobs; no model file, so eager-bf16 ships an ExportedProgram."""
    import torch
    from torch import nn

    rng = np.random.default_rng(1)
    centres = rng.normal(scale=4.0, size=(3, 20))
    y = rng.integers(0, 3, size=600)
    x = (centres[y] + rng.normal(size=(600, 20))).astype(np.float32)
    torch.manual_seed(1)
    module = nn.Sequential(nn.Linear(20, 48), nn.LayerNorm(48), nn.GELU(), nn.Linear(48, 3))
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x[:500]), torch.from_numpy(y[:500])
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(module(xt), yt).backward()
        opt.step()
    module.eval()
    return TorchModel(module=module, input_shape=(20,), labels=["a", "b", "c"], eval_x=x[500:],
                      eval_y=y[500:])


def _close_in_reduced_precision(out: np.ndarray, ref: np.ndarray) -> None:
    limits = PARITY_LIMITS["reduced"]
    cos = (out * ref).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() >= limits.min_cosine
    assert (out.argmax(1) == ref.argmax(1)).mean() >= limits.min_top1
    assert np.abs(out - ref).max() > 0  # really computed in bf16, not fp32


def test_bf16_export_is_a_bf16_program_within_reduced_limits(blobs: TorchModel, tmp_path: Path) -> None:
    import torch

    from servegate.compilers.export import ExportCompiler
    from servegate.compilers.variants import Variant

    artifact = ExportCompiler(Variant("bf16")).compile(blobs, tmp_path, max_batch=64)
    assert (artifact.dtype, artifact.device, artifact.format) == ("bfloat16", "cpu", "exported_program")
    program = torch.export.load(artifact.path)
    assert {p.dtype for p in program.state_dict.values()} == {torch.bfloat16}
    x = blobs.eval_x[:64]
    out = program.module()(torch.from_numpy(x).to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    _close_in_reduced_precision(out.detach().float().numpy(), blobs.reference(x))
    # the source model is untouched: still fp32
    assert {p.dtype for p in blobs.module.parameters()} == {torch.float32}


def test_aoti_bf16_package_runs_in_bf16_on_this_cpu(digits2: TorchModel, tmp_path: Path) -> None:
    import torch
    import torch._inductor

    artifact = get_compiler("aoti-bf16").compile(digits2, tmp_path, max_batch=64)
    assert (artifact.backend, artifact.dtype, artifact.format) == ("aoti-bf16", "bfloat16", "aoti")
    assert artifact.fallback is None and artifact.built_for is None  # CPU: no recompile fallback
    runner = torch._inductor.aoti_load_package(str(artifact.path))
    x = digits2.eval_x[:64]
    out = runner(torch.from_numpy(x).to(torch.bfloat16))
    out = out[0] if isinstance(out, (list, tuple)) else out
    assert out.dtype == torch.bfloat16
    _close_in_reduced_precision(out.detach().float().numpy(), digits2.reference(x))


def _needs_handler_contract() -> None:
    from servegate._resources import handler_module

    if "gpu_id" not in inspect.signature(handler_module("sg_loaders").load_model).parameters:
        pytest.skip("needs the handler side of the GPU contract (sg_loaders casting to dtype)")


@pytest.mark.parametrize("model_name", ["digits2", "blobs"])
def test_bf16_candidates_pass_parity_as_reduced_through_evaluate(model_name: str, request,
                                                                 tmp_path: Path) -> None:
    _needs_handler_contract()
    model = request.getfixturevalue(model_name)
    names = ["eager", "eager-bf16"] + (["aoti-bf16"] if model_name == "digits2" else [])
    candidates = evaluate(model, names, tmp_path, max_batch=64, repeats=5)
    by_name = {c.backend: c for c in candidates}
    assert by_name["eager"].status == "passed" and by_name["eager"].max_abs == 0
    for name in names[1:]:
        c = by_name[name]
        assert c.status == "passed", (name, c.reason)
        assert c.artifact is not None and c.artifact.dtype == "bfloat16"
        assert 0 < c.max_abs < 1.0  # bf16 rounding, not fp32 and not garbage
        assert c.cosine >= 0.99 and c.top1 >= 0.98 and c.device == "cpu"
        assert c.accuracy >= by_name["eager"].accuracy - 0.01
    assert choose(candidates, 8).backend in names
