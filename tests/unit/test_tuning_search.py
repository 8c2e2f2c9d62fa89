"""The batching search of ``servegate tune`` against a deterministic cost model of a server:
which points it measures, which it prunes and why, when it stops, and which one wins."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from servegate.errors import ConfigError, ServerNotRunning, ServerRequestError
from servegate.tuning import search as search_module
from servegate.tuning.search import (
    SLO,
    Costs,
    Measurement,
    Point,
    Space,
    dominates,
    search,
)


@dataclass
class CostModel:
    """A closed-loop server: ``users`` requests outstanding, batches of up to ``batch_size``
    that wait the whole delay when fewer requests than that are outstanding (TorchServe's
    batcher), ``fixed_ms + row_ms x rows`` per batch on each of up to ``cores`` workers (faster
    with more threads per worker, slower when workers x threads oversubscribe the cores), and a
    frontend that passes at most ``cores`` requests per ``frontend_ms``."""

    frontend_ms: float = 0.5
    fixed_ms: float = 1.0
    row_ms: float = 0.2
    cores: int = 2
    history: list[Point] = field(default_factory=list)
    open_points: int = 0
    fail: set[Point] = field(default_factory=set)

    def handler_ms(self, rows: int) -> float:
        return self.fixed_ms + self.row_ms * rows

    def costs(self, largest: int = 32) -> Costs:
        return Costs(self.handler_ms(1), self.handler_ms(largest), largest, self.frontend_ms,
                     self.cores)

    def figures(self, point: Point, users: int) -> Measurement:
        rows = min(users, point.batch_size)
        wait = point.max_batch_delay_ms if 1 < point.batch_size and users < point.batch_size else 0
        threads = point.threads or max(1, (self.cores - 1) // point.workers)
        service = (self.handler_ms(rows) / threads ** 0.8
                   * max(1.0, point.workers * threads / self.cores, point.workers / self.cores))
        capacity = min(min(point.workers, self.cores) * rows * 1000 / service,
                       self.cores * 1000 / self.frontend_ms)
        base = self.frontend_ms + wait + service
        rps = min(capacity, users * 1000 / base)
        latency = users * 1000 / rps
        return Measurement(users, rps, latency, latency * 1.3, latency * 1.6, 0.0, int(rps))

    def applied(self, point: Point) -> Iterator[Callable[[int], Measurement]]:
        return self._applied(point)

    @contextmanager
    def _applied(self, point: Point) -> Iterator[Callable[[int], Measurement]]:
        """The ``Bench`` protocol: records what was applied and that it was released."""
        self.history.append(point)
        if point in self.fail:
            raise ServerRequestError("register failed: worker died", status=500,
                                     server_message="worker died")
        self.open_points += 1
        try:
            yield lambda users: self.figures(point, users)
        finally:
            self.open_points -= 1


def grid_best(model: CostModel, space: Space, slo: SLO) -> float:
    """The full grid's answer: the most throughput any point reaches within the SLO."""
    return max((m.rps for p in space.grid() for u in space.users
                if slo.met(m := model.figures(p, u))), default=0.0)


SPACE = Space(batch_sizes=(1, 2, 4, 8, 16, 32), delays_ms=(1, 2, 5, 10, 20, 50),
              workers=(1, 2, 3, 4), users=(2, 4, 8, 16, 32, 64))
LIGHT = {}  # frontend-bound (TorchServe with a tiny MLP)
MIDDLE = {"fixed_ms": 5.0, "row_ms": 0.5}
HEAVY = {"fixed_ms": 20.0, "row_ms": 4.0}  # compute-bound (a transformer on CPU)
BATCH_HUNGRY = {"fixed_ms": 40.0, "row_ms": 0.5}  # a fixed cost per batch (a GPU launch)


def run(model: CostModel, p95_ms: float, **options) -> search_module.TuneResult:
    return search(SPACE, model.costs(), SLO(p95_ms, 2 * p95_ms), model, **options)


@pytest.mark.parametrize("kind", [LIGHT, MIDDLE, HEAVY],
                         ids=["light", "middle", "heavy"])
@pytest.mark.parametrize("p95_ms", [50.0, 200.0])
def test_finds_the_grid_best_within_the_slo_for_a_fraction_of_the_grid(kind, p95_ms) -> None:
    model = CostModel(**kind)
    slo = SLO(p95_ms, 2 * p95_ms)
    result = run(model, p95_ms)
    assert result.winner is not None and result.winner.best is not None
    assert slo.met(result.winner.best)
    assert result.winner.best.rps >= 0.95 * grid_best(model, SPACE, slo)
    assert result.measurements <= 0.1 * result.grid_measurements
    assert len(set(model.history)) == len(model.history) == len(result.measured)


def test_the_winner_meets_the_slo_when_faster_points_break_it() -> None:
    model = CostModel(**HEAVY)
    slo = SLO(50.0, 100.0)
    result = run(model, 50.0)
    assert result.winner is not None and result.winner.best is not None
    faster_but_late = [m for o in result.measured for m in o.levels
                       if m.rps > result.winner.best.rps]
    assert faster_but_late, "the model must offer more throughput beyond the SLO"
    assert all(not slo.met(m) for m in faster_but_late)
    assert result.winner.best.p95_ms <= 50.0 and result.winner.best.p99_ms <= 100.0
    assert all(o.best is not None and slo.met(o.best) for o in result.frontier)
    over = result.by_status("over SLO") + [o for o in result.measured if o.best is None]
    assert all("p95" in o.reason or "p99" in o.reason for o in over)


def test_an_error_rate_over_the_budget_breaks_the_slo() -> None:
    slo = SLO(100.0, 200.0, max_error_rate=0.01)
    assert slo.met(Measurement(4, 100.0, 5.0, 9.0, 12.0, 0.0, 400))
    assert not slo.met(Measurement(4, 100.0, 5.0, 9.0, 12.0, 0.02, 400))
    assert not slo.met(Measurement(4, 0.0, 0.0, 0.0, 0.0, 0.0, 0))  # nothing answered


def test_delays_a_lone_request_would_wait_too_long_for_are_pruned_unmeasured() -> None:
    model = CostModel(**LIGHT)
    result = run(model, 40.0)  # 10 ms of delay at most: 20 and 50 are pruned
    trapped = [o for o in result.outcomes if o.point.max_batch_delay_ms > 10 and o.point.batch_size > 1]
    assert trapped and all(o.status == "pruned" and "waits all of it" in o.reason for o in trapped)
    assert not {o.point for o in trapped} & set(model.history)


def test_a_delay_of_zero_is_refused_as_torchserves_100_ms() -> None:
    with pytest.raises(ConfigError, match="100 ms"):
        Space(delays_ms=(0, 5))


def test_a_batch_hungry_model_starts_at_large_batches_and_prunes_small_ones_by_ceiling() -> None:
    model = CostModel(**BATCH_HUNGRY)
    result = run(model, 200.0)
    by_ceiling = [o for o in result.outcomes if o.reason.startswith("cannot beat")]
    assert by_ceiling and all(o.status == "pruned" for o in by_ceiling)
    assert {1, 2, 4, 8} <= {o.point.batch_size for o in by_ceiling}
    assert not {o.point for o in by_ceiling} & set(model.history)
    assert model.history[0].batch_size == max(SPACE.batch_sizes)  # the costs chose the seed
    assert result.winner is not None and result.winner.best is not None
    assert result.winner.best.rps >= 0.95 * grid_best(model, SPACE, SLO(200.0, 400.0))


def test_the_frontier_holds_no_dominated_point() -> None:
    model = CostModel(**MIDDLE)
    result = run(model, 50.0)
    frontier = result.frontier
    assert len(frontier) >= 2 and result.by_status("dominated")
    for a in frontier:
        assert not any(dominates(b.best, a.best) for b in result.measured
                       if b is not a and b.best is not None)
    measured = {o.point.label: o for o in result.measured}
    for o in result.by_status("dominated"):
        better = measured[o.reason.removeprefix("dominated by ")]
        assert dominates(better.best, o.best)


def test_the_batch_sweep_stops_when_throughput_stops_growing() -> None:
    model = CostModel(**LIGHT)
    result = run(model, 200.0)
    stopped = [o for o in result.outcomes if "stopped growing" in o.reason and not o.levels]
    assert stopped
    assert len(result.measured) < len(SPACE.grid()) // 10


def test_load_levels_stop_once_throughput_stops_growing() -> None:
    model = CostModel(**LIGHT)
    space = Space(SPACE.batch_sizes, SPACE.delays_ms, SPACE.workers, users=(2, 4, 8, 16, 32, 64, 128, 256))
    result = search(space, model.costs(), SLO(200.0, 400.0), model)
    assert result.measured
    assert all(len(o.levels) < len(space.users) for o in result.measured)
    assert any(o.reason.startswith("throughput stopped growing at") and o.reason.endswith("users")
               for o in result.measured)


def test_max_points_caps_what_is_applied() -> None:
    model = CostModel(**MIDDLE)
    result = run(model, 200.0, max_points=3)
    assert len(model.history) == 3
    assert any("max_points (3)" in o.reason for o in result.outcomes)


def test_every_applied_point_is_released_and_a_failed_one_does_not_stop_the_search() -> None:
    model = CostModel(**LIGHT)
    first = search(SPACE, model.costs(), SLO(200.0, 400.0), CostModel(**LIGHT)).measured
    model.fail = {first[1].point}
    result = run(model, 200.0)
    assert model.open_points == 0
    failed = result.by_status("failed")
    assert [o.point for o in failed] == [first[1].point] and "worker died" in failed[0].reason
    assert result.winner is not None


def test_no_point_meets_an_impossible_slo() -> None:
    model = CostModel(**HEAVY)
    result = run(model, 20.0)
    assert result.winner is None and result.notes
    assert all(o.status == "pruned" for o in result.outcomes) and not model.history


def test_costs_interpolate_between_the_measured_batches() -> None:
    costs = Costs(handler_ms_batch1=1.0, handler_ms_largest=32.0, largest_batch=32,
                  frontend_ms=0.5, cores=2)
    assert costs.handler_ms(1) == 1.0 and costs.handler_ms(32) == 32.0
    assert costs.handler_ms(16) == pytest.approx(16.0)
    assert costs.floor_ms(Point(8, 5, 1)) == pytest.approx(6.5)  # the lone request waits 5 ms
    assert costs.floor_ms(Point(1, 5, 1)) == pytest.approx(1.5)
    assert costs.ceiling_rps(Point(16, 5, 4)) == pytest.approx(2 * 16 * 1000 / 16.0)


def test_threads_per_worker_are_searched_when_asked_and_the_winner_holds() -> None:
    model = CostModel(cores=8, **HEAVY)
    space = Space(SPACE.batch_sizes, SPACE.delays_ms, (1, 2, 4), SPACE.users, threads=(0, 1, 2, 4))
    slo = SLO(200.0, 400.0)
    result = search(space, model.costs(), slo, model, max_points=16)
    assert {p.threads for p in model.history} - {0}, "the threads axis was walked"
    assert result.winner is not None and result.winner.best is not None
    assert slo.met(result.winner.best)
    assert result.winner.best.rps >= 0.9 * grid_best(model, space, slo)
    assert result.measurements <= 0.1 * result.grid_measurements
    assert Point(8, 5, 2, 4).label == "b8-d5ms-w2-t4" and Point(8, 5, 2).label == "b8-d5ms-w2"


def test_a_server_that_went_away_stops_the_search_instead_of_failing_every_point() -> None:
    class Gone(CostModel):
        def applied(self, point: Point):
            self.history.append(point)
            raise ServerNotRunning("TorchServe unreachable")

    model = Gone(**LIGHT)
    with pytest.raises(ServerNotRunning):
        run(model, 200.0)
    assert len(model.history) == 1


@dataclass
class Recorded(CostModel):
    """The cost model, recording the order of its measurements."""

    order: list[Point] = field(default_factory=list)

    def figures(self, point: Point, users: int) -> Measurement:
        self.order.append(point)
        return super().figures(point, users)


def test_a_lucky_winner_does_not_replace_the_current_configuration() -> None:
    model = Recorded(**MIDDLE)
    honest = run(model, 200.0)
    assert honest.winner is not None and honest.winner.best is not None
    incumbent = honest.winner.point  # the archive already has the best configuration
    # another point, measured once in a lucky moment (a neighbour went quiet): 1.6x its truth
    lucky = next(o for o in honest.measured if o.point != incumbent and o.best)
    assert lucky.best is not None
    reading = dataclasses.replace(lucky.best, rps=lucky.best.rps * 1.6,
                                  p95_ms=lucky.best.p95_ms * 0.7)
    fooled = dataclasses.replace(honest, winner=search_module.Outcome(
        lucky.point, "frontier", "", (reading,), reading))
    model.order.clear()
    confirmed = search_module.confirm_winner(fooled, incumbent, model)
    assert confirmed.winner is None and confirmed.confirmation is not None
    assert not confirmed.confirmation.kept
    assert any(f"keep the current configuration {incumbent.label}" in n for n in confirmed.notes)
    # alternating rounds, each in the other order, at the lucky reading's load level
    assert model.order == [lucky.point, incumbent, incumbent, lucky.point, lucky.point, incumbent]
    assert {m.users for m in confirmed.confirmation.winner} == {reading.users}
    assert model.open_points == 0


def test_a_better_winner_is_kept_after_the_alternating_rounds() -> None:
    model = CostModel(**MIDDLE)
    result = run(model, 200.0)
    assert result.winner is not None
    worse = Point(8, 20, 1)  # the archive's configuration: one worker, a long delay
    confirmed = search_module.confirm_winner(result, worse, model)
    assert confirmed.winner == result.winner
    assert confirmed.confirmation is not None and confirmed.confirmation.kept
    assert len(confirmed.confirmation.winner) == len(confirmed.confirmation.current) == 3
    assert confirmed.confirmation.low_users == min(SPACE.users)
    assert len(confirmed.confirmation.winner_low) == len(confirmed.confirmation.current_low) == 3
    assert search_module.confirm_winner(result, result.winner.point, model) is result  # nothing to do


def test_a_winner_that_waits_its_delay_at_low_load_does_not_replace_a_quicker_configuration() -> None:
    model = Recorded(**MIDDLE)
    result = run(model, 200.0)
    assert result.winner is not None and result.winner.best is not None
    winner, users = result.winner.point, result.winner.best.users
    low = min(SPACE.users)
    quick = Point(8, 1, 2)  # less throughput at full load, no wait for a batch at low load
    assert model.figures(winner, users).rps > 1.5 * model.figures(quick, users).rps
    assert model.figures(winner, low).p95_ms > 1.2 * model.figures(quick, low).p95_ms
    model.order.clear()
    confirmed = search_module.confirm_winner(result, quick, model, low_users=low)
    assert confirmed.winner is None and confirmed.confirmation is not None
    assert not confirmed.confirmation.kept and confirmed.confirmation.low_users == low
    assert {m.users for m in confirmed.confirmation.winner_low} == {low}
    assert any(f"slower at {low} users" in n for n in confirmed.notes), confirmed.notes
    # each round measures both levels of one configuration, then the other's, order alternating
    assert model.order == [winner, winner, quick, quick, quick, quick, winner, winner,
                           winner, winner, quick, quick]
    assert model.open_points == 0


def test_the_confirmation_reaches_the_logged_params_and_metrics() -> None:
    from servegate.tuning.report import mlflow_figures

    model = CostModel(**MIDDLE)
    result = run(model, 200.0)
    confirmed = search_module.confirm_winner(result, Point(8, 20, 1), model, low_users=2)
    params, metrics = mlflow_figures(confirmed)
    assert params["tune.confirmed"] is True and params["tune.incumbent"] == "b8-d20ms-w1"
    winner_rps = sorted(m.rps for m in confirmed.confirmation.winner)[1]
    assert metrics["confirm.winner.rps"] == pytest.approx(winner_rps)
    assert metrics["confirm.winner.low_load_p95_ms"] < metrics["confirm.current.low_load_p95_ms"]
    assert metrics["confirm.current.rps"] < metrics["confirm.winner.rps"]
    assert "tune.confirmed" not in mlflow_figures(result)[0]  # nothing confirmed: nothing said


def test_a_near_tie_goes_to_the_point_quickest_at_low_load() -> None:
    def outcome(point: Point, low_p95: float, rps: float) -> search_module.Outcome:
        low = Measurement(4, 300.0, low_p95 / 2, low_p95, low_p95 * 1.2, 0.0, 300)
        top = Measurement(32, rps, 20.0, 30.0, 40.0, 0.0, int(rps))
        return search_module.Outcome(point, "frontier", "", (low, top), top)

    long_delay = outcome(Point(8, 20, 2), low_p95=51.0, rps=340.0)
    short_delay = outcome(Point(8, 2, 2), low_p95=40.0, rps=330.0)  # 3% less: a tie on one reading
    slower = outcome(Point(4, 1, 2), low_p95=30.0, rps=300.0)  # 12% less: not a tie
    assert search_module._winner([long_delay, short_delay, slower], 0.05) is short_delay
    assert search_module._winner([long_delay, slower], 0.05) is long_delay
    assert search_module._winner([long_delay, short_delay], 0.0) is long_delay
    assert search_module._winner([], 0.05) is None
