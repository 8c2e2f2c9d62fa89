"""The search of ``servegate tune``: which batching points to measure, which to skip, which wins.

Pure decisions, no server: a ``Bench`` applies a point and measures it at a load level (the real
one registers a scratch version on TorchServe and runs Locust; tests use a cost model).

The search is cheaper than the full grid of batch sizes x delays x workers x threads per
worker x load levels:

1. **Costs first.** What the handler costs in process at batch 1 and at the largest batch, and
   what the frontend costs per request (``Costs``), bound each point before it is measured: a
   point whose latency floor (frontend + handler + the batch delay a lone request waits) is over
   the p95 budget is pruned, and so is one whose compute ceiling cannot beat the best throughput
   measured so far.
2. **TorchServe's traps.** A ``maxBatchDelay`` of 0 means its 100 ms default (refused), and the
   batcher waits the whole delay for a batch that does not fill even when the worker is free, so
   a delay over ``DELAY_SHARE`` of the p95 budget is pruned.
3. **One axis at a time** (batch size, then workers, threads, delay), each walked upwards and
   stopped as soon as throughput stops growing by ``gain``; at each point the load levels are
   walked upwards too, stopped when the SLO breaks or throughput stops growing.
4. **The frontier.** Measured points that another measured point beats on both throughput and
   p95 are dominated; the winner is the highest throughput within the SLO, a near tie (within
   ``gain``) going to the point quickest at the lowest load level.
5. **Confirmation** (``confirm_winner``). The winner meets the archive's own configuration in
   alternating rounds, at its best load level and at the lowest one; it replaces it only with
   more throughput there and no worse p95 at either.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace
from typing import Literal, Protocol

from servegate.errors import ConfigError, ServerError, ServerNotRunning

#: A step along an axis (or a load level) must add this share of throughput to go on.
GAIN = 0.05
#: A lone request waits the whole batch delay: a delay may take at most this share of the p95.
DELAY_SHARE = 0.25
#: The compute ceiling is interpolated between two measured batch sizes: this much slack before
#: it prunes a point.
CEILING_SLACK = 1.25
#: Rounds of coordinate ascent around the best point (each: workers, threads, delay, batch).
PASSES = 3


@dataclass(frozen=True, order=True)
class Point:
    """One TorchServe configuration of a model version."""

    batch_size: int
    max_batch_delay_ms: int
    workers: int
    #: Intra-op threads per worker (0: the handler's rule, the cores left to the frontend
    #: shared by the workers).
    threads: int = 0

    @property
    def label(self) -> str:
        threads = f"-t{self.threads}" if self.threads else ""
        return f"b{self.batch_size}-d{self.max_batch_delay_ms}ms-w{self.workers}{threads}"


@dataclass(frozen=True)
class Measurement:
    """Locust's figures of one point at one load level (``users``)."""

    users: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    error_rate: float
    requests: int = 0


@dataclass(frozen=True)
class SLO:
    """The latency and error budget a point must meet (the pipeline's ``SLOs``)."""

    p95_ms: float
    p99_ms: float
    max_error_rate: float = 0.0

    def met(self, m: Measurement) -> bool:
        return (m.requests > 0 or m.rps > 0) and m.p95_ms <= self.p95_ms \
            and m.p99_ms <= self.p99_ms and m.error_rate <= self.max_error_rate

    def why_not(self, m: Measurement) -> str:
        broken = [f"p95 {m.p95_ms:.1f} > {self.p95_ms:g} ms" if m.p95_ms > self.p95_ms else "",
                  f"p99 {m.p99_ms:.1f} > {self.p99_ms:g} ms" if m.p99_ms > self.p99_ms else "",
                  f"errors {m.error_rate:.1%}" if m.error_rate > self.max_error_rate else ""]
        return ", ".join(b for b in broken if b) or "no request answered"


@dataclass(frozen=True)
class Costs:
    """What one request costs, measured before the search.

    ``handler_ms_batch1`` / ``handler_ms_largest``: the handler (decode, forward, encode) on one
    request and on ``largest_batch`` requests, in process on one thread; ``frontend_ms``: a
    request's round trip at batch 1 on the live server minus the handler's part; ``cores``: the
    server's cores."""

    handler_ms_batch1: float
    handler_ms_largest: float
    largest_batch: int
    frontend_ms: float
    cores: int

    def handler_ms(self, batch: int) -> float:
        """Linear between the two measured batch sizes (at least batch 1's cost)."""
        if self.largest_batch <= 1:
            return self.handler_ms_batch1 * batch
        slope = (self.handler_ms_largest - self.handler_ms_batch1) / (self.largest_batch - 1)
        return max(self.handler_ms_batch1, self.handler_ms_batch1 + slope * (batch - 1))

    def floor_ms(self, point: Point) -> float:
        """The latency of a lone request: it waits the whole delay when batches are on."""
        wait = point.max_batch_delay_ms if point.batch_size > 1 else 0
        return self.frontend_ms + self.handler_ms_batch1 + wait

    def threads(self, point: Point) -> int:
        """Threads per worker: the point's, else the handler's rule (``sg_loaders``)."""
        return point.threads or max(1, (self.cores - 1) // max(1, point.workers))

    def ceiling_rps(self, point: Point) -> float:
        """The most the workers' compute can serve: full batches, no frontend cost, and every
        thread as fast as the one measured (cores busy: at most all of them)."""
        busy = min(point.workers * self.threads(point), self.cores)
        return busy * point.batch_size * 1000.0 / max(self.handler_ms(point.batch_size), 1e-6)

    def fill_ms(self, batch: int) -> float:
        """How long ``batch - 1`` more requests take to arrive through a saturated frontend
        (a compute-bound model's queue fills its batches without any delay)."""
        return (batch - 1) * self.frontend_ms / max(1, self.cores)


@dataclass(frozen=True)
class Space:
    """The values searched: the full grid is their product (batch 1 takes one delay: moot)."""

    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    delays_ms: tuple[int, ...] = (1, 2, 5, 10, 20)
    workers: tuple[int, ...] = (1, 2)
    users: tuple[int, ...] = (4, 16)
    #: Threads per worker (0: the handler's rule).
    threads: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        for what, values in (("batch sizes", self.batch_sizes), ("delays", self.delays_ms),
                             ("workers", self.workers), ("load levels (users)", self.users),
                             ("threads", self.threads)):
            if not values:
                raise ConfigError(f"tune: no {what} to search")
            if any(int(v) != v or v < 0 for v in values):
                raise ConfigError(f"tune: {what} must be whole numbers, got {list(values)}")
        if 0 in self.delays_ms:
            raise ConfigError("tune: a max batch delay of 0 is TorchServe's 100 ms default, not "
                              "'no delay'; give 1 ms or more")
        if min(self.batch_sizes) < 1 or min(self.workers) < 1 or min(self.users) < 1:
            raise ConfigError("tune: batch sizes, workers and users start at 1")
        for name in ("batch_sizes", "delays_ms", "workers", "users", "threads"):
            object.__setattr__(self, name, tuple(sorted(set(int(v) for v in getattr(self, name)))))

    def grid(self) -> list[Point]:
        return [Point(b, d, w, t) for b in self.batch_sizes
                for d in (self.delays_ms[:1] if b == 1 else self.delays_ms) for w in self.workers
                for t in self.threads]


Status = Literal["frontier", "dominated", "over SLO", "failed", "pruned", "not reached"]


@dataclass(frozen=True)
class Outcome:
    """What became of one grid point, and why."""

    point: Point
    status: Status
    reason: str = ""
    levels: tuple[Measurement, ...] = ()
    #: The highest-throughput load level within the SLO (None: none met it, or not measured).
    best: Measurement | None = None


@dataclass(frozen=True)
class TuneResult:
    outcomes: tuple[Outcome, ...]
    winner: Outcome | None
    slo: SLO
    costs: Costs
    #: Measurements a full grid would take (points x load levels), and those taken.
    grid_measurements: int
    measurements: int
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: The winner against the archive's own configuration (``confirm_winner``); None: not run.
    confirmation: Confirmation | None = None

    @property
    def measured(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.levels]

    @property
    def frontier(self) -> list[Outcome]:
        """Non-dominated points within the SLO, by throughput."""
        return sorted((o for o in self.outcomes if o.status == "frontier"),
                      key=lambda o: o.best.rps if o.best else 0.0)

    def by_status(self, status: Status) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]

    def to_json(self) -> str:
        """Every point with its status, reason and figures; the winner, SLO and costs."""
        import json

        return json.dumps({"slo": asdict(self.slo), "costs": asdict(self.costs),
                           "winner": asdict(self.winner.point) if self.winner else None,
                           "grid_measurements": self.grid_measurements,
                           "measurements": self.measurements, "notes": list(self.notes),
                           "confirmation": (self.confirmation.as_dict()
                                            if self.confirmation else None),
                           "points": [asdict(o) for o in self.outcomes]}, indent=1)


class Bench(Protocol):
    """Applies a point (for as long as the context lasts) and measures it at a load level."""

    def applied(self, point: Point) -> AbstractContextManager[Callable[[int], Measurement]]:
        """Inside: ``measure(users)`` loads the point with that many users."""


def dominates(a: Measurement, b: Measurement) -> bool:
    """``a`` serves at least as much at a p95 at least as low, and is better in one of them."""
    return (a.rps >= b.rps and a.p95_ms <= b.p95_ms) and (a.rps > b.rps or a.p95_ms < b.p95_ms)


def prior_pruning(point: Point, costs: Costs, slo: SLO) -> str:
    """Why ``point`` cannot meet the SLO whatever the load (empty: it may)."""
    if point.batch_size > 1 and point.max_batch_delay_ms > DELAY_SHARE * slo.p95_ms:
        return (f"delay {point.max_batch_delay_ms} ms over {DELAY_SHARE:.0%} of the p95 budget "
                f"(a batch that does not fill waits all of it)")
    floor = costs.floor_ms(point)
    if floor > slo.p95_ms:
        return f"latency floor {floor:.1f} ms over the p95 budget {slo.p95_ms:g} ms"
    full = costs.frontend_ms + costs.handler_ms(point.batch_size) / CEILING_SLACK
    if full > slo.p95_ms:
        return f"a full batch takes {full:.1f} ms, over the p95 budget {slo.p95_ms:g} ms"
    return ""


def seed_delay(batch: int, costs: Costs, slo: SLO, delays: Sequence[int]) -> int:
    """The delay a batch sweep uses: the smallest that lets ``batch`` requests arrive at a
    saturated frontend, within ``DELAY_SHARE`` of the p95 (else the largest that is)."""
    allowed = [d for d in delays if d <= DELAY_SHARE * slo.p95_ms] or [min(delays)]
    if batch <= 1:
        return min(delays)
    need = costs.fill_ms(batch)
    return next((d for d in allowed if d >= need), max(allowed))


def seed_point(axis: list[Point], costs: Costs, pruned: dict[Point, str]) -> Point:
    """Where the batch sweep starts: the smallest batch whose compute ceiling reaches what the
    frontend can pass (``cores`` requests per ``frontend_ms``), else the largest batch; pruned
    points are passed over (all pruned: the first)."""
    open_points = [p for p in axis if p not in pruned] or axis[:1]
    frontend_rps = costs.cores * 1000.0 / max(costs.frontend_ms, 1e-6)
    return next((p for p in open_points if costs.ceiling_rps(p) >= frontend_rps), open_points[-1])


def _measure(point: Point, users: Iterable[int], slo: SLO, bench: Bench,
             gain: float) -> Outcome:
    """The point at rising load levels until the SLO breaks or throughput stops growing."""
    levels: list[Measurement] = []
    best: Measurement | None = None
    reason = ""
    try:
        with bench.applied(point) as measure:
            for count in users:
                m = measure(count)
                levels.append(m)
                if not slo.met(m):
                    reason = f"{count} users: {slo.why_not(m)}"
                    break
                if best is not None and m.rps < best.rps * (1 + gain):
                    best = m if m.rps > best.rps else best
                    reason = f"throughput stopped growing at {count} users"
                    break
                best = m
    except ServerNotRunning:
        raise  # the server is gone: nothing more can be measured
    except ServerError as exc:  # this point's version failed (a worker died, a refusal)
        return Outcome(point, "failed", f"{type(exc).__name__}: {exc}", tuple(levels))
    if best is None:
        return Outcome(point, "over SLO", reason, tuple(levels))
    return Outcome(point, "frontier", reason, tuple(levels), best)


def search(space: Space, costs: Costs, slo: SLO, bench: Bench, *, max_points: int = 12,
           gain: float = GAIN, say: Callable[[str], None] = lambda _: None) -> TuneResult:
    """Search ``space`` on ``bench`` for the highest throughput within ``slo``, measuring at
    most ``max_points`` points (each at up to ``len(space.users)`` load levels)."""
    if max_points < 1:
        raise ConfigError("tune: max_points must be at least 1")
    grid = space.grid()
    pruned: dict[Point, str] = {p: r for p in grid if (r := prior_pruning(p, costs, slo))}
    measured: dict[Point, Outcome] = {}
    best: list[Outcome] = []  # the best outcome so far (a one-element holder)
    stopped: dict[Point, str] = {}

    def visit(point: Point) -> Outcome | None:
        if point in measured:
            return measured[point]
        if point in pruned:
            return None
        if best and best[0].best is not None:
            ceiling = costs.ceiling_rps(point) * CEILING_SLACK
            if ceiling < best[0].best.rps:
                pruned[point] = (f"cannot beat {best[0].point.label}: compute ceiling "
                                 f"{ceiling:.0f} < {best[0].best.rps:.0f} req/s")
                return None
        if len(measured) >= max_points:
            stopped.setdefault(point, f"max_points ({max_points}) reached")
            return None
        say(f"measuring {point.label}")
        outcome = _measure(point, space.users, slo, bench, gain)
        measured[point] = outcome
        if outcome.best is not None and (not best or _better(outcome, best[0])):
            best[:] = [outcome]
        return outcome

    def walk(axis: str, points: list[Point], *, over_slo_stops: bool,
             previous: Measurement | None = None) -> None:
        """Along one axis until throughput stops growing past ``previous`` (or, where latency
        only grows along it, the SLO breaks); a point over the SLO on the other axes is
        stepped over."""
        before = previous.rps if previous is not None else None
        for i, point in enumerate(points):
            outcome = visit(point)
            if outcome is None or (outcome.best is None and not over_slo_stops):
                continue
            rps = outcome.best.rps if outcome.best else 0.0
            if outcome.best is None or (before is not None and rps < before * (1 + gain)):
                why = ("over the SLO at " + point.label if outcome.best is None
                       else f"throughput stopped growing at {point.label}")
                for later in points[i + 1:]:
                    if later not in measured and later not in pruned:
                        stopped.setdefault(later, f"{axis} sweep stopped: {why}")
                return
            before = max(before or 0.0, rps)

    # Pass 1: the batch axis from the seed the costs give, upwards, then downwards (smaller
    # batches only while their ceiling can beat the best).
    first_workers, first_threads = space.workers[0], space.threads[0]
    batch_axis = [Point(b, seed_delay(b, costs, slo, space.delays_ms), first_workers, first_threads)
                  for b in space.batch_sizes]
    start = batch_axis.index(seed_point(batch_axis, costs, pruned))
    walk("batch", batch_axis[start:], over_slo_stops=False)
    walk("batch", batch_axis[start - 1::-1] if start else [], over_slo_stops=False,
         previous=best[0].best if best else None)

    def around(axis: str, points: list[Point], at: int, *, latency_rises: bool) -> None:
        """From the best point (``points[at]``) upwards, then downwards, each way stopped as
        soon as a step does not beat the best by ``gain``."""
        anchor = best[0].best
        walk(axis, points[at + 1:], over_slo_stops=latency_rises, previous=anchor)
        walk(axis, points[at - 1::-1] if at else [], over_slo_stops=False, previous=anchor)

    # Then coordinate ascent around the best: workers, threads, delay, batch size; again
    # while it moves.
    for _ in range(PASSES):
        if not best:
            break
        anchor = best[0].point
        around("workers", [replace(anchor, workers=x) for x in space.workers],
               space.workers.index(anchor.workers), latency_rises=False)
        if len(space.threads) > 1:  # by the threads each would run (0: the handler's rule)
            at = best[0].point
            axis = sorted((replace(at, threads=x) for x in space.threads),
                          key=lambda p: (costs.threads(p), p.threads))
            around("threads", axis, axis.index(at), latency_rises=False)
        at = best[0].point
        if at.batch_size > 1:  # a longer delay only adds latency once batches are full
            around("delay", [replace(at, max_batch_delay_ms=x) for x in space.delays_ms],
                   space.delays_ms.index(at.max_batch_delay_ms), latency_rises=True)
        at = best[0].point

        def delay_for(x: int, at: Point = at) -> int:
            if x == 1:
                return space.delays_ms[0]
            return (at.max_batch_delay_ms if at.batch_size > 1
                    else seed_delay(x, costs, slo, space.delays_ms))

        around("batch", [replace(at, batch_size=x, max_batch_delay_ms=delay_for(x))
                         for x in space.batch_sizes],
               space.batch_sizes.index(at.batch_size), latency_rises=False)
        if best[0].point == anchor:
            break
    return _result(grid, measured, pruned, stopped, slo, costs, space, gain)


def _better(a: Outcome, b: Outcome) -> bool:
    assert a.best is not None and b.best is not None
    return (a.best.rps, -a.best.p95_ms) > (b.best.rps, -b.best.p95_ms)


def _winner(frontier: list[Outcome], gain: float) -> Outcome | None:
    """The highest throughput within the SLO; among points within ``gain`` of it (one reading
    each: a near tie is noise), the one quickest at the lowest load level they share (a longer
    batch delay is waited by every request when batches do not fill), then the fastest."""
    if not frontier:
        return None
    best = max(frontier, key=lambda o: (o.best.rps, -o.best.p95_ms) if o.best else (0.0, 0.0))
    assert best.best is not None
    near = [o for o in frontier if o.best is not None and o.levels
            and o.best.rps >= best.best.rps * (1 - gain)]
    low = max(o.levels[0].users for o in near)
    at_low = {o.point: next((m for m in o.levels if m.users == low), None) for o in near}
    shared = [o for o in near if at_low[o.point] is not None]
    if len(shared) < 2:
        return best
    return min(shared, key=lambda o: (at_low[o.point].p95_ms,  # type: ignore[union-attr]
                                      -(o.best.rps if o.best else 0.0)))


def _result(grid: list[Point], measured: dict[Point, Outcome], pruned: dict[Point, str],
            stopped: dict[Point, str], slo: SLO, costs: Costs, space: Space,
            gain: float = GAIN) -> TuneResult:
    within = [o for o in measured.values() if o.best is not None]
    outcomes: list[Outcome] = []
    for point in grid:
        if point in measured:
            outcome = measured[point]
            if outcome.best is not None:
                beaten_by = next((o for o in within if o is not outcome and o.best is not None
                                  and dominates(o.best, outcome.best)), None)
                if beaten_by is not None:
                    outcome = Outcome(point, "dominated", f"dominated by {beaten_by.point.label}",
                                      outcome.levels, outcome.best)
            outcomes.append(outcome)
        elif point in pruned:
            outcomes.append(Outcome(point, "pruned", pruned[point]))
        else:
            outcomes.append(Outcome(point, "not reached", stopped.get(point, "not on the search path")))
    winner = _winner([o for o in outcomes if o.status == "frontier"], gain)
    notes = () if winner is not None else (
        "no measured point met the SLO: loosen it, or measure more points",)
    return TuneResult(tuple(outcomes), winner, slo, costs,
                      grid_measurements=len(grid) * len(space.users),
                      measurements=sum(len(o.levels) for o in measured.values()), notes=notes)


#: Alternating rounds in which the search's winner meets the archive's own configuration.
CONFIRM_ROUNDS = 3
#: At the lowest load level the winner's median p95 may exceed the current one's by this share
#: at most (two equal configurations differ about this much between rounds on a shared box).
LOW_LOAD_P95_TOLERANCE = 0.05


@dataclass(frozen=True)
class Confirmation:
    """The winner against the configuration the archive already has, loaded in alternating
    rounds (as the load gate alternates champion and challenger, so a busy neighbour slows both
    alike) at two levels: the winner's best load level (``users``), where it must serve more,
    and the lowest level of the search (``low_users``), where its batch delay must not cost
    latency (TorchServe's batcher waits the whole delay for a batch that does not fill)."""

    incumbent: Point
    users: int
    winner: tuple[Measurement, ...]
    current: tuple[Measurement, ...]
    kept: bool
    reason: str
    #: The low level (None: the winner's best level is already the lowest) and its rounds.
    low_users: int | None = None
    winner_low: tuple[Measurement, ...] = ()
    current_low: tuple[Measurement, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _median(values: Iterable[float]) -> float:
    import statistics

    return statistics.median(values)


def confirm_winner(result: TuneResult, incumbent: Point, bench: Bench, *,
                   rounds: int = CONFIRM_ROUNDS, gain: float = GAIN,
                   low_users: int | None = None,
                   say: Callable[[str], None] = lambda _: None) -> TuneResult:
    """``result`` with its winner checked against ``incumbent`` (the archive's configuration)
    over ``rounds`` alternating rounds: kept only when, at the winner's best load level, its
    median throughput beats the incumbent's by ``gain`` at a median p95 no higher and within
    the SLO every round, and at ``low_users`` (default: the lowest level the winner was measured
    at) its median p95 is at most ``LOW_LOAD_P95_TOLERANCE`` over the incumbent's. Otherwise
    there is no winner and a note says to keep the current configuration: one lucky measurement
    of a search never replaces what is deployed, and a delay that pays at full load is not
    bought with latency at low load."""
    winner = result.winner
    if winner is None or winner.best is None or winner.point == incumbent or rounds < 1:
        return result
    users = winner.best.users
    low = low_users if low_users is not None else min(m.users for m in winner.levels or (winner.best,))
    levels = [users] if low >= users else [users, low]
    say(f"confirming {winner.point.label} against the current {incumbent.label} "
        f"({rounds} alternating rounds at {' and '.join(map(str, levels))} users)")
    ours: dict[int, list[Measurement]] = {n: [] for n in levels}
    theirs: dict[int, list[Measurement]] = {n: [] for n in levels}
    with bench.applied(winner.point) as measure_winner, bench.applied(incumbent) as measure_current:
        pair = [(measure_winner, ours), (measure_current, theirs)]
        for round_ in range(rounds):  # each round in the other order
            for measure, into in (pair if round_ % 2 == 0 else pair[::-1]):
                for n in levels:
                    into[n].append(measure(n))
    rps, current_rps = _median(m.rps for m in ours[users]), _median(m.rps for m in theirs[users])
    p95 = _median(m.p95_ms for m in ours[users])
    current_p95 = _median(m.p95_ms for m in theirs[users])
    within = all(result.slo.met(m) for n in levels for m in ours[n])
    faster = rps >= current_rps * (1 + gain) and p95 <= current_p95
    reason = (f"{winner.point.label}: {rps:.1f} vs {current_rps:.1f} req/s, p95 {p95:.1f} vs "
              f"{current_p95:.1f} ms at {users} users")
    quick_at_low = True
    if len(levels) > 1:
        low_p95 = _median(m.p95_ms for m in ours[low])
        current_low_p95 = _median(m.p95_ms for m in theirs[low])
        quick_at_low = low_p95 <= current_low_p95 * (1 + LOW_LOAD_P95_TOLERANCE)
        reason += f", p95 {low_p95:.1f} vs {current_low_p95:.1f} ms at {low} users"
    reason += f" (medians of {rounds} alternating rounds)"
    kept = within and faster and quick_at_low
    confirmation = Confirmation(
        incumbent, users, tuple(ours[users]), tuple(theirs[users]), kept, reason,
        low_users=low if len(levels) > 1 else None,
        winner_low=tuple(ours[low]) if len(levels) > 1 else (),
        current_low=tuple(theirs[low]) if len(levels) > 1 else ())
    if kept:
        return replace(result, confirmation=confirmation)
    why = ("not within the SLO in every round" if not within else
           f"not {gain:.0%} more throughput at no higher p95" if not faster else
           f"slower at {low} users (its batch delay is waited when batches do not fill)")
    return replace(result, winner=None, confirmation=confirmation, notes=(*result.notes, (
        f"keep the current configuration {incumbent.label}: the search's best, {reason}, is "
        f"{why}")))
