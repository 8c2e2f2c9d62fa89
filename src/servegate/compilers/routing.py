"""Routing by shape: which of several compiled artifacts serves which input shape.

``auto`` times every candidate at every shape (batch, and tokens for text). No one artifact is
always fastest (a GPU: CUDA graphs at batch 1, AOTInductor at 64, dynamic Inductor at 256; a CPU:
ONNX int8 at batch 1, AOTI bf16 at large batches), so an archive may carry several, each owning
some shapes. ``choose_routing`` picks at most ``max_artifacts`` of them and an owner per shape
that minimise the worst slowdown (owner's p50 / the fastest p50 at that shape) over all shapes.

A shape that was not measured belongs to the owner of ``owning_shape``: the smallest measured
batch at or above its batch (else the largest), crossed with the smallest measured token count
at or above its tokens (else the largest). The handler (``sg_base.Router``) looks chunks up the
same way, so every padded chunk has one definite owner.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from servegate.compilers.shapes import Shape
from servegate.errors import ConfigError
from servegate.probes import Probe

#: A second (third...) artifact is kept only when it lowers the worst slowdown by this fraction:
#: each one costs archive size and worker start-up.
MIN_GAIN = 0.05
#: Subsets of candidates tried at most (exhaustive search; ``auto`` has about a dozen).
MAX_SUBSETS = 5_000


@dataclass(frozen=True)
class Option:
    """A candidate as routing sees it: its p50 per shape (ms), artifact size and load time, and
    its ``group`` (the device: artifacts of one archive share one)."""

    name: str
    p50_ms: Mapping[Shape, float]
    bytes: int = 0
    load_seconds: float = 0.0
    group: str = "cpu"


@dataclass(frozen=True)
class Routing:
    """The chosen artifacts (``members``; the first is the archive's primary one: it owns the
    most shapes) and each measured shape's owner, with its slowdown against the fastest."""

    members: tuple[str, ...]
    owners: dict[Shape, str] = field(default_factory=dict)
    slowdowns: dict[Shape, float] = field(default_factory=dict)
    worst: float = 1.0
    total_bytes: int = 0

    def owned(self, name: str) -> list[Shape]:
        """The measured shapes ``name`` owns, smallest first."""
        return sorted(s for s, owner in self.owners.items() if owner == name)

    def owner(self, shape: Shape) -> str:
        """Who serves ``shape``, measured or not (``owning_shape``)."""
        if not self.owners:
            return self.members[0]
        return self.owners[owning_shape(shape, list(self.owners))]


def owning_shape(shape: Shape, measured: Sequence[Shape]) -> Shape:
    """The measured shape whose owner serves ``shape``: the smallest measured batch at or above
    ``shape.batch`` (else the largest), and likewise for tokens (None when not text)."""
    batches = sorted({s.batch for s in measured})
    tokens = sorted({s.tokens for s in measured if s.tokens is not None})
    batch = next((b for b in batches if b >= shape.batch), batches[-1])
    if not tokens:
        return Shape(batch)
    wanted = shape.tokens if shape.tokens is not None else tokens[-1]
    return Shape(batch, next((t for t in tokens if t >= wanted), tokens[-1]))


def _evaluate(subset: tuple[int, ...], options: Sequence[Option], shapes: list[Shape],
              fastest: dict[Shape, float]) -> tuple[dict[Shape, str], dict[Shape, float], float] | None:
    """Each shape's owner within ``subset`` (the fastest member; ties to the earlier one), its
    slowdown and the worst; None when a member owns no shape (it would only add cost)."""
    owners: dict[Shape, str] = {}
    slowdowns: dict[Shape, float] = {}
    for shape in shapes:
        best = min(subset, key=lambda i: (options[i].p50_ms[shape], i))
        owners[shape] = options[best].name
        slowdowns[shape] = options[best].p50_ms[shape] / fastest[shape] if fastest[shape] else 1.0
    if len(subset) > 1 and set(owners.values()) != {options[i].name for i in subset}:
        return None
    return owners, slowdowns, max(slowdowns.values(), default=1.0)


def choose_routing(options: Sequence[Option], *, max_artifacts: int = 1,
                   serving_batch: int | None = None, min_gain: float = MIN_GAIN) -> Routing:
    """The set of at most ``max_artifacts`` options, and an owner per shape, with the smallest
    worst slowdown against the fastest option at any shape (the shapes every option was timed
    at). Ties go to fewer artifacts, then to the lower p50 at ``serving_batch``, then to the
    smaller total size and load time, then to the earlier options. A larger set is kept only when its worst
    slowdown is at least ``min_gain`` below the smaller set kept so far. Members share one
    ``group``. With ``max_artifacts=1`` this is ``select.choose``'s single choice."""
    if not options:
        raise ConfigError("routing needs at least one candidate")
    if max_artifacts < 1:
        raise ConfigError(f"max_artifacts must be at least 1, got {max_artifacts}")
    largest = min(max_artifacts, len(options))
    count = sum(math.comb(len(options), k) for k in range(1, largest + 1))
    if count > MAX_SUBSETS:
        raise ConfigError(f"routing {len(options)} candidates into up to {max_artifacts} artifacts "
                          f"means {count} sets (more than {MAX_SUBSETS}): lower max_artifacts")
    shapes = sorted(set.intersection(*(set(o.p50_ms) for o in options)))
    fastest = {s: min(o.p50_ms[s] for o in options) for s in shapes}

    def key(subset: tuple[int, ...], owners: dict[Shape, str], worst: float) -> tuple:
        by_name = {options[i].name: options[i] for i in subset}
        serving = sum(by_name[owner].p50_ms[s] for s, owner in owners.items()
                      if s.batch == serving_batch)
        return (worst, len(subset), serving, sum(options[i].bytes for i in subset),
                sum(options[i].load_seconds for i in subset), subset)

    kept: Routing | None = None
    for size in range(1, largest + 1):
        best: tuple[tuple, Routing] | None = None
        for subset in itertools.combinations(range(len(options)), size):
            if len({options[i].group for i in subset}) > 1:
                continue
            evaluated = _evaluate(subset, options, shapes, fastest)
            if evaluated is None:
                continue
            owners, slowdowns, worst = evaluated
            rank = key(subset, owners, worst)
            if best is None or rank < best[0]:
                members = sorted((options[i].name for i in subset),
                                 key=lambda n: (-sum(o == n for o in owners.values()),
                                                [o.name for o in options].index(n)))
                best = rank, Routing(tuple(members), owners, slowdowns, worst,
                                     sum(options[i].bytes for i in subset))
        if best is None:
            continue
        if kept is None or best[1].worst <= kept.worst * (1 - min_gain):
            kept = best[1]
    assert kept is not None  # every single option forms a set of one
    return kept


def probes(owns: Mapping[str, Sequence[Shape]], most: int) -> dict[str, list[Probe]]:
    """Served requests that reach each routed artifact through the handler's ``Router``: for
    each shape it owns, the smallest row count routed there (one more than the next smaller
    measured batch), when that fits one request (``most`` rows); for a text model, with its
    longest text in the token counts routed there (above the next smaller measured count, up to
    the owned one; any longer for the largest)."""
    batches = sorted({s.batch for shapes in owns.values() for s in shapes})
    tokens = sorted({s.tokens for shapes in owns.values() for s in shapes if s.tokens is not None})
    found: dict[str, list[Probe]] = {}
    for name, shapes in owns.items():
        chosen: set[Probe] = set()
        for shape in shapes:
            rows = max((b for b in batches if b < shape.batch), default=0) + 1
            if rows > most:
                continue
            if shape.tokens is None:
                chosen.add(Probe(rows))
                continue
            below = max((t for t in tokens if t < shape.tokens), default=0)
            chosen.add(Probe(rows, below + 1, None if shape.tokens == tokens[-1] else shape.tokens))
        found[name] = sorted(chosen, key=lambda p: (p.rows, p.min_tokens or 0))
    return found
