"""What reaches the TF Serving a run deploys to, and if not, why: the run's ``batch_size``, and
XLA-compiled versions (which need ``--xla_cpu_compilation_enabled=true``).

Batching. TF Serving reads its batching flags and ``--batching_parameters_file`` only at start, and the
ModelService API cannot change them. What does reach a running server is the version itself: a
server started with ``--enable_batching=true --enable_per_model_batching_parameters=true`` reads
each version's ``batching_params.pbtxt`` when it loads it, and the build writes that file into
every SavedModel. A local server servegate starts has those flags; an attached one may or may
not (no API reports its flags); a local one recorded before servegate set them has not.

XLA. A local server gets the XLA flag unless ``tfserving.xla`` is false; whether an attached one
has it cannot be read either, so ``auto`` leaves ``xla`` out there (ask for it by name).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from servegate.backends.tfserving.config import PER_MODEL_BATCHING_FILE, PER_MODEL_BATCHING_FLAG
from servegate.backends.tfserving.local import TFSERVING_XLA_FLAG, LocalTFServing
from servegate.config import ServerMode, TFServingAttach, TFServingSettings

Reach = Literal["applied", "unverified", "not applied"]
NEEDED_FLAGS = f"--enable_batching=true {PER_MODEL_BATCHING_FLAG}"


@dataclass(frozen=True)
class BatchingReach:
    """``applied``, ``unverified`` (an attached server whose flags cannot be read) or ``not
    applied``; ``detail`` says why and what to do, naming the value and the file."""

    status: Reach
    detail: str

    @property
    def notice(self) -> str | None:
        """What the run must tell the user, or None when the batching is applied."""
        return None if self.status == "applied" else self.detail


def attached(mode: ServerMode) -> TFServingAttach | None:
    """The attached server a run of ``mode`` deploys to (``backends.factory.open_tfserving``)."""
    return TFServingAttach.from_env() if mode != "local" else None


def xla_refusal(settings: TFServingSettings, mode: ServerMode) -> str | None:
    """Why ``auto`` must not pick ``xla`` for this run's server, or None."""
    server = attached(mode)
    if server is not None:
        return (f"the attached TF Serving at {server.url} runs XLA-compiled versions only if it "
                f"was started with {TFSERVING_XLA_FLAG}, which no API reports: auto leaves xla "
                "out; ask for compiler=xla if it was")
    if not settings.xla:
        return f"the local TF Serving runs without {TFSERVING_XLA_FLAG} (tfserving.xla is false)"
    return None


def batching_reach(settings: TFServingSettings, mode: ServerMode, batch_size: int, name: str,
                   version: str) -> BatchingReach:
    """Where ``batch_size``, written into version ``version`` of ``name`` as
    ``batching_params.pbtxt``, goes: the attached server of ``SERVEGATE_TFSERVING_URL`` (unless
    ``mode`` is ``local``), else the local server of ``settings`` (running or to be started).
    The file named is where the deployed version keeps it (the run's build directory goes)."""
    wanted = f"batch_size={batch_size}"
    relative = f"{name}/{version}/{PER_MODEL_BATCHING_FILE}"
    server = attached(mode)
    if server is not None:
        root = server.server_root or server.model_root or "<SERVEGATE_TFSERVING_MODEL_ROOT>"
        where = f"{root.rstrip('/')}/{relative}"  # as the server sees it
        return BatchingReach("unverified", (
            f"{wanted} is written into the version ({where} once deployed, and in the MLflow run), "
            f"but the attached TF Serving at {server.url} applies it only if it was started with "
            f"{NEEDED_FLAGS}: TF Serving reads batching flags only at start and no API reports "
            f"them. Started otherwise, its own --batching_parameters_file applies and {wanted} "
            f"does not: restart it with {NEEDED_FLAGS} (each version then brings its "
            f"{PER_MODEL_BATCHING_FILE}), or with --enable_batching=true "
            f"--batching_parameters_file={where}"))
    local = LocalTFServing(settings)
    where = str(local.model_root / relative)
    state = local.state()
    if state is not None and not state.per_model_batching:
        return BatchingReach("not applied", (
            f"{wanted} is not applied: the local TF Serving reused from {local.workdir} was started "
            f"without {PER_MODEL_BATCHING_FLAG}, so it batches every model with "
            f"{local.model_root / 'batching.config'} (read only at start). Stop it (the process "
            f"recorded in {local.state_path}) and run again: the next run starts it with "
            f"per-model batching and {wanted} applies from {where}"))
    how = "reused" if state is not None else "started by servegate"
    return BatchingReach("applied", (
        f"{wanted} from {where} (the local TF Serving, {how}, loads each version with its own "
        f"{PER_MODEL_BATCHING_FILE}: {PER_MODEL_BATCHING_FLAG})"))
